# The geometry stage (docs/geometry.md): perturbed models as a model source, geometry measures of each
# model's final-layer token cloud, each model's downstream score, and the regression of score on each measure.
validate_section("geometry")

GEOMETRY = config["geometry"]
PERTURBED_MODELS = models_of_source("perturb")


# ------------------------------------------------------------------ perturbed models (a model source)
# Built whether or not the geometry analysis is enabled: perturbed models are models, every analysis covers them.
rule perturb_model:
    input:
        base=lambda wc: storage.model_dir(MODELS[wc.model]["base"]),
    output:
        model=directory("results/models/{model}"),
    wildcard_constraints:
        model=name_regex(PERTURBED_MODELS),
    params:
        base=lambda wc: MODELS[wc.model]["base"],
        alpha=lambda wc: float(MODELS[wc.model]["alpha"]),
        seed=lambda wc: int(MODELS[wc.model].get("seed", 0)),
        tensors=GEOMETRY["perturb_tensors"],
        trust_remote_code=lambda wc: bool(MODELS[MODELS[wc.model]["base"]].get("trust_remote_code", False)),
    log:
        "results/logs/perturb_model/{model}.log",
    benchmark:
        "results/benchmarks/perturb_model/{model}.tsv"
    threads: RES["threads"]
    resources:
        mem_mb=lambda wc: int(RES["mem_mb_base"] + 4 * model_weights_mb(MODELS[wc.model]["base"])),
        runtime=RES["runtime_minutes_base"],
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/perturb_model.py"


# ------------------------------------------------------------------ geometry analysis
def geometry_datasets():
    names = GEOMETRY["datasets"] if GEOMETRY["datasets"] is not None else DATASET_NAMES
    unknown = [name for name in names if name not in DATASETS]
    if unknown:
        raise storage.WorkflowInputError(
            f"config: geometry.datasets names {unknown}, which are not configured datasets ({DATASET_NAMES}); "
            f"fix {where('geometry.datasets')} or set it to null for all datasets."
        )
    return list(names)


def geometry_score_dataset():
    """The labelled dataset whose probe accuracy is each model's score (score.source: probe)."""
    wanted = GEOMETRY["score"]["dataset"]
    labelled = labelled_datasets()
    if wanted is not None:
        if wanted not in labelled:
            raise storage.WorkflowInputError(
                f"config: geometry.score.dataset {wanted!r} is not a configured dataset with a label_column "
                f"(labelled datasets: {labelled}); fix {where('geometry.score.dataset')}, or use "
                f"geometry.score.source: table."
            )
        return wanted
    if not labelled:
        raise storage.WorkflowInputError(
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
            raise storage.WorkflowInputError(
                "config: geometry.score.source is 'table' but geometry.score.table is empty; give the path of a "
                "CSV with columns model, score."
            )
        return {"score_table": GEOMETRY["score"]["table"]}
    return {
        "scores": expand(
            "results/analysis/geometry/scores/{score_dataset}/{model}.csv",
            score_dataset=geometry_score_dataset(),
            model=MODEL_NAMES,
        )
    }


GEOMETRY_TOP_K = GEOMETRY["regression"]["top_k"]


rule geometry_measures:
    input:
        tokens=lambda wc: storage.tokens_path(wc.dataset, wc.model),
    output:
        measures="results/analysis/geometry/{dataset}/measures/{model}.csv",
    params:
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
        "../workflow_scripts/geometry.py"


rule geometry_score:
    input:
        pooled=lambda wc: storage.pooled_path(wc.dataset, wc.model),
    output:
        score="results/analysis/geometry/scores/{dataset}/{model}.csv",
    params:
        layer=GEOMETRY["score"]["layer"],
        pooling=GEOMETRY["score"]["pooling"],
        seed=GEOMETRY["seed"],
    log:
        "results/logs/geometry/scores/{dataset}/{model}.log",
    threads: 1
    resources:
        **light_resources(),
    conda:
        "../envs/geometry.yaml"
    script:
        "../workflow_scripts/geometry.py"


rule geometry_regression:
    input:
        unpack(geometry_score_inputs),
        measures=expand("results/analysis/geometry/{{dataset}}/measures/{model}.csv", model=MODEL_NAMES),
    output:
        measures="results/analysis/geometry/{dataset}/measures.csv",
        scores="results/analysis/geometry/{dataset}/scores.csv",
        regression="results/analysis/geometry/{dataset}/regression.csv",
    params:
        models=MODEL_NAMES,
        score_source=GEOMETRY["score"]["source"],
        score_name=geometry_score_name() if GEOMETRY["enabled"] else "score",
        min_models=GEOMETRY["regression"]["min_models"],
    log:
        "results/logs/geometry/regression/{dataset}.log",
    threads: 1
    resources:
        **light_resources(),
    conda:
        "../envs/geometry.yaml"
    script:
        "../workflow_scripts/geometry.py"


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
        "../workflow_scripts/geometry.py"


if GEOMETRY["enabled"]:
    ALL_TARGETS.extend(
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
