# [CLS] compression (Matton & de Oliveira). See docs/compression.md; fine-tuned models are a model source
# (rules/sources.smk).
validate_section("compression")

from lmcompare.compression import resolve_pairs, view_name

COMPRESSION = config["compression"]


# ------------------------------------------------------------------------------------- selection
def _compression_datasets():
    """compression.datasets: every labelled dataset by default; a dataset listed must have labels."""
    chosen = selected_names("compression.datasets", DATASET_NAMES, "configured datasets",
                            enabled=COMPRESSION["enabled"])
    if COMPRESSION["datasets"] is None:
        return labelled_datasets()
    for name in chosen:
        if not DATASETS[name].get("label_column"):
            raise WorkflowInputError(
                f"config: compression.datasets lists {name!r}, which has no label_column: the probes need labels. "
                f"Set its label_column or remove it from compression.datasets ({where('compression.datasets')})."
            )
    return chosen


COMPRESSION_MODELS = selected_names("compression.models", MODEL_NAMES, "configured models",
                                    enabled=COMPRESSION["enabled"])
COMPRESSION_DATASETS = _compression_datasets()
COMPRESSION_VIEWS = [view_name(p, l) for p in COMPRESSION["poolings"] for l in COMPRESSION["layers"]]
COMPRESSION_PAIRS = resolve_pairs(COMPRESSION["pairs"], config["models"], COMPRESSION_MODELS,
                                  COMPRESSION["derive_pairs"])
COMPRESSION_MODEL_DIR = "results/analysis/compression/{dataset}/{view}/{model}"


def compression_model_outputs(kind):
    return [f"{COMPRESSION_MODEL_DIR}/{kind}.csv".format(dataset="{dataset}", view="{view}", model=model)
            for model in COMPRESSION_MODELS]


# ----------------------------------------------------------------------------------- per model
rule compression_model:
    input:
        pooled="results/hidden/{dataset}/{model}/pooled.parquet",
    output:
        curve=f"{COMPRESSION_MODEL_DIR}/pca_curve.csv",
        dims=f"{COMPRESSION_MODEL_DIR}/single_dims.csv",
        best=f"{COMPRESSION_MODEL_DIR}/best_dims.csv",
        summary=f"{COMPRESSION_MODEL_DIR}/summary.csv",
    wildcard_constraints:
        view=r"(first|mean)_layer-?[0-9]+",
    params:
        code=library_code("compression_model"),
        k_values=COMPRESSION["k_values"],
        alpha=COMPRESSION["alpha"],
        single_dim_c=COMPRESSION["single_dim_c"],
        n_best=COMPRESSION["n_best"],
        seed=COMPRESSION["seed"],
        folds=COMPRESSION["folds"],
    log:
        "results/logs/compression_model/{dataset}/{view}/{model}.log",
    benchmark:
        "results/benchmarks/compression_model/{dataset}/{view}/{model}.tsv"
    threads: 1
    resources:
        **light_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/compression_model.py"


# ------------------------------------------------------------------------- per dataset and view
rule compression_dataset:
    input:
        summaries=compression_model_outputs("summary"),
        curves=compression_model_outputs("pca_curve"),
        dims=compression_model_outputs("single_dims"),
        finetuned=[paths.model_dir(b) for _, b in COMPRESSION_PAIRS if b in FINETUNED_MODELS],
    output:
        summary="results/analysis/compression/{dataset}/{view}/summary.csv",
        pairs="results/analysis/compression/{dataset}/{view}/pairs.csv",
        curve_png=report(
            "results/figures/compression/{dataset}/{view}/accuracy_vs_k.png",
            caption="../report/compression_curves.rst",
            category="Compression",
            subcategory="{dataset} / {view}",
            labels={"figure": "probe accuracy vs PCA k", "view": "{view}"},
        ),
        curve_svg="results/figures/compression/{dataset}/{view}/accuracy_vs_k.svg",
        dims_png=report(
            "results/figures/compression/{dataset}/{view}/single_dims.png",
            caption="../report/compression_single_dims.rst",
            category="Compression",
            subcategory="{dataset} / {view}",
            labels={"figure": "single-dimension accuracy", "view": "{view}"},
        ),
        dims_svg="results/figures/compression/{dataset}/{view}/single_dims.svg",
    wildcard_constraints:
        view=r"(first|mean)_layer-?[0-9]+",
    params:
        code=library_code("compression_dataset"),
        pairs=COMPRESSION_PAIRS,
        model_index=model_index(COMPRESSION_MODELS),
    log:
        "results/logs/compression_dataset/{dataset}/{view}.log",
    threads: 1
    resources:
        **light_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/compression_dataset.py"


def compression_targets():
    """The compression tables and figures of every dataset and view (none when disabled)."""
    if not COMPRESSION["enabled"]:
        return []
    return (
        expand(
            [
                "results/analysis/compression/{dataset}/{view}/summary.csv",
                "results/analysis/compression/{dataset}/{view}/pairs.csv",
                "results/figures/compression/{dataset}/{view}/accuracy_vs_k.png",
                "results/figures/compression/{dataset}/{view}/single_dims.png",
            ],
            dataset=COMPRESSION_DATASETS,
            view=COMPRESSION_VIEWS,
        )
    )
