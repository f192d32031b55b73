# The geometry stage (docs/geometry.md): geometry measures of each model's final-layer token cloud, each model's
# downstream score, and the regression of score on each measure. Perturbed models (the family included) are a model
# source: rules/sources.smk.
# The family's hidden states: the extraction rule itself, for family members only, writing only the token
# layer that geometry measures (pooled vectors of every layer are always written; the score reads one of them).
use rule extract_hidden_states as geometry_family_extract with:
    wildcard_constraints:
        model=name_regex(FAMILY_NAMES),
    params:
        extraction=lambda wildcards: model_extraction_settings(wildcards.model, token_layers=[GEOMETRY["layer"]]),


# ------------------------------------------------------------------ geometry analysis
def geometry_datasets():
    return selected_names("geometry.datasets", DATASET_NAMES, "configured datasets", enabled=GEOMETRY["enabled"])


def geometry_score_dataset():
    """The labelled dataset whose probe accuracy is each model's score (score.source: probe)."""
    wanted = GEOMETRY["score"]["dataset"]
    labelled = labelled_datasets()
    if wanted is not None:
        if wanted not in labelled:
            raise WorkflowInputError(
                f"config: geometry.score.dataset {wanted!r} is not a configured dataset with a label_column "
                f"(labelled datasets: {labelled}); fix {where('geometry.score.dataset')}, or use "
                f"geometry.score.source: table."
            )
        return wanted
    if not labelled:
        raise WorkflowInputError(
            "config: geometry.score.source is 'probe' but no configured dataset has a label_column; add a labelled "
            "dataset, or give a score table (geometry.score.source: table, geometry.score.table: scores.csv)."
        )
    return labelled[0]


def geometry_score_name():
    if GEOMETRY["score"]["name"]:
        return GEOMETRY["score"]["name"]
    if GEOMETRY["score"]["source"] == "probe":
        return f"probe accuracy ({geometry_score_dataset()})"
    return "score"


def geometry_score_inputs(wc):
    if GEOMETRY["score"]["source"] == "table":
        if not GEOMETRY["score"]["table"]:
            raise WorkflowInputError(
                "config: geometry.score.source is 'table' but geometry.score.table is empty; give the path of a "
                "CSV with columns model, score."
            )
        return {"score_table": GEOMETRY["score"]["table"]}
    return {
        "scores": expand(
            "results/analysis/geometry/scores/{score_dataset}/{model}.csv",
            score_dataset=geometry_score_dataset(),
            model=REGRESSION_MODELS,
        )
    }


# the models of the regression: every configured model and family member by default
REGRESSION_MODELS = selected_names("geometry.regression.models", GEOMETRY_MODELS,
                                   "configured models or members of geometry.family") if GEOMETRY["enabled"] else MODEL_NAMES


GEOMETRY_TOP_K = GEOMETRY["regression"]["top_k"]


rule geometry_measures:
    input:
        tokens=lambda wc: paths.tokens_path(wc.dataset, wc.model),
    output:
        measures="results/analysis/geometry/{dataset}/measures/{model}.csv",
    wildcard_constraints:
        model=name_regex(GEOMETRY_MODELS),
    params:
        code=library_code("geometry_measures"),
        mode=GEOMETRY["mode"],
        layer=GEOMETRY["layer"],
        max_points=GEOMETRY["max_points"],
        seed=GEOMETRY["seed"],
        quantizer=GEOMETRY["quantizer"],
    log:
        "results/logs/geometry/measures/{dataset}/{model}.log",
    benchmark:
        "results/benchmarks/geometry/measures/{dataset}/{model}.tsv"
    threads: RES["threads"]
    resources:
        mem_mb=RES["mem_mb_base"] + 2000,
        runtime=RES["runtime_minutes_base"],
    conda:
        "../envs/geometry.yaml"
    script:
        "../workflow_scripts/geometry_measures.py"


rule geometry_score:
    input:
        pooled=lambda wc: paths.pooled_path(wc.dataset, wc.model),
    output:
        score="results/analysis/geometry/scores/{dataset}/{model}.csv",
    wildcard_constraints:
        model=name_regex(GEOMETRY_MODELS),
    params:
        code=library_code("geometry_score"),
        layer=GEOMETRY["score"]["layer"],
        pooling=GEOMETRY["score"]["pooling"],
        protocol=GEOMETRY["score"]["protocol"],
        folds=GEOMETRY["score"]["folds"],
        # a model fine-tuned on this dataset saw its train labels: cross-validate it on the test split only
        cv_splits=lambda wc: ["test"] if (MODELS.get(wc.model, {}).get("source") == "finetune"
                                          and MODELS[wc.model].get("dataset") == wc.dataset) else None,
        seed=GEOMETRY["seed"],
    log:
        "results/logs/geometry/scores/{dataset}/{model}.log",
    benchmark:
        "results/benchmarks/geometry/scores/{dataset}/{model}.tsv"
    threads: 1
    resources:
        **light_resources(),
    conda:
        "../envs/geometry.yaml"
    script:
        "../workflow_scripts/geometry_score.py"


rule geometry_regression:
    input:
        unpack(geometry_score_inputs),
        measures=expand("results/analysis/geometry/{{dataset}}/measures/{model}.csv", model=REGRESSION_MODELS),
    output:
        measures="results/analysis/geometry/{dataset}/measures.csv",
        scores="results/analysis/geometry/{dataset}/scores.csv",
        regression="results/analysis/geometry/{dataset}/regression.csv",
    params:
        code=library_code("geometry_regression"),
        models=REGRESSION_MODELS,
        score_source=GEOMETRY["score"]["source"],
        score_name=geometry_score_name() if GEOMETRY["enabled"] else "score",
        min_models=GEOMETRY["regression"]["min_models"],
        bootstrap=GEOMETRY["regression"]["bootstrap"],
        permutations=GEOMETRY["regression"]["permutations"],
        confidence=GEOMETRY["regression"]["confidence"],
        seed=GEOMETRY["seed"],
    log:
        "results/logs/geometry/regression/{dataset}.log",
    threads: 1
    resources:
        **light_resources(),
    conda:
        "../envs/geometry.yaml"
    script:
        "../workflow_scripts/geometry_regression.py"


rule geometry_figures:
    input:
        measures="results/analysis/geometry/{dataset}/measures.csv",
        scores="results/analysis/geometry/{dataset}/scores.csv",
        regression="results/analysis/geometry/{dataset}/regression.csv",
    output:
        r2_png=report(
            "results/figures/geometry/{dataset}/r2_by_measure.png",
            caption="../report/geometry_r2.rst",
            category="Geometry",
        ),
        r2_svg="results/figures/geometry/{dataset}/r2_by_measure.svg",
        scatter_png=[
            report(
                f"results/figures/geometry/{{dataset}}/scatter_top{rank}.png",
                caption="../report/geometry_scatter.rst",
                category="Geometry",
            )
            for rank in range(1, GEOMETRY_TOP_K + 1)
        ],
        scatter_svg=[
            f"results/figures/geometry/{{dataset}}/scatter_top{rank}.svg" for rank in range(1, GEOMETRY_TOP_K + 1)
        ],
    params:
        code=library_code("geometry_figures"),
        score_name=geometry_score_name() if GEOMETRY["enabled"] else "score",
        top_k=GEOMETRY_TOP_K,
        model_index=model_index(MODEL_NAMES),
    log:
        "results/logs/geometry/figures/{dataset}.log",
    threads: 1
    resources:
        **light_resources(),
    conda:
        "../envs/geometry.yaml"
    script:
        "../workflow_scripts/geometry_figures.py"


def geometry_targets():
    """The geometry regression and figures of every dataset (none when disabled)."""
    if not GEOMETRY["enabled"]:
        return []
    return (
        expand(
            "results/analysis/geometry/{dataset}/regression.csv",
            dataset=geometry_datasets(),
        )
        + expand(
            "results/figures/geometry/{dataset}/{figure}.{ext}",
            dataset=geometry_datasets(),
            figure=["r2_by_measure"] + [f"scatter_top{rank}" for rank in range(1, GEOMETRY_TOP_K + 1)],
            ext=["png", "svg"],
        )
    )
