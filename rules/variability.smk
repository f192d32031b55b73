# The variability stage: hidden-state variability ν per layer (Xie et al. 2022), the layer it
# recommends, a linear probe per layer to check the claim, ν on subsamples for robustness. docs/variability.md
validate_section("variability")

VAR = config["variability"]
VAR_DIR = "results/analysis/variability"


VAR_DATASETS = selected_names("variability.datasets", labelled_datasets(), "labelled datasets (with a label_column)",
                              enabled=VAR["enabled"])
VAR_MODELS = selected_names("variability.models", MODEL_NAMES, "configured models", enabled=VAR["enabled"])


wildcard_constraints:
    pooling="mean|first",


rule variability_nu:
    input:
        pooled="results/hidden/{dataset}/{model}/pooled.parquet",
    output:
        nu=f"{VAR_DIR}/{{dataset}}/{{pooling}}/{{model}}/nu.csv",
    params:
        code=library_code("variability_nu"),
        split=VAR["split"],
        small_classes=VAR["small_classes"],
        min_class_examples=VAR["min_class_examples"],
        pinv_rtol=VAR["pinv_rtol"],
        robustness=VAR["robustness"],
        memory_mb=VAR["memory_mb"],
    log:
        "results/logs/variability/nu/{dataset}/{pooling}/{model}.log",
    benchmark:
        "results/benchmarks/variability/nu/{dataset}/{pooling}/{model}.tsv"
    threads: RES["threads"]
    resources:
        mem_mb=VAR["memory_mb"] + RES["mem_mb_base"],
        runtime=VAR["runtime_minutes"],
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/variability_nu.py"


rule variability_probe:
    input:
        pooled="results/hidden/{dataset}/{model}/pooled.parquet",
    output:
        probe=f"{VAR_DIR}/{{dataset}}/{{pooling}}/{{model}}/probe.csv",
    params:
        code=library_code("variability_probe"),
        max_train=VAR["probe"]["max_train_examples"],
        max_test=VAR["probe"]["max_test_examples"],
        seed=VAR["probe"]["seed"],
    log:
        "results/logs/variability/probe/{dataset}/{pooling}/{model}.log",
    benchmark:
        "results/benchmarks/variability/probe/{dataset}/{pooling}/{model}.tsv"
    threads: RES["threads"]
    resources:
        mem_mb=VAR["memory_mb"] + RES["mem_mb_base"],
        runtime=VAR["runtime_minutes"],
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/variability_probe.py"


rule variability_summary:
    input:
        nu=expand(f"{VAR_DIR}/{{{{dataset}}}}/{{{{pooling}}}}/{{model}}/nu.csv", model=VAR_MODELS),
        probe=expand(f"{VAR_DIR}/{{{{dataset}}}}/{{{{pooling}}}}/{{model}}/probe.csv", model=VAR_MODELS),
    output:
        layers=f"{VAR_DIR}/{{dataset}}/{{pooling}}/layers.csv",
        selection=f"{VAR_DIR}/{{dataset}}/{{pooling}}/selection.csv",
        robustness=f"{VAR_DIR}/{{dataset}}/{{pooling}}/robustness.csv",
        png=report(
            "results/figures/variability/{dataset}_{pooling}.png",
            caption="../report/variability.rst",
            category="Variability",
            subcategory="{dataset}",
        ),
        svg="results/figures/variability/{dataset}_{pooling}.svg",
    params:
        code=library_code("variability_summary"),
        tolerance=VAR["tolerance"],
        max_noise_fraction=VAR["selection"]["max_noise_fraction"],
        model_index=model_index(VAR_MODELS),
    log:
        "results/logs/variability/summary/{dataset}/{pooling}.log",
    threads: 1
    resources:
        **light_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/variability_summary.py"


def variability_targets():
    """The variability tables and figures of every dataset and pooling (none when disabled)."""
    if not VAR["enabled"]:
        return []
    return (
        expand(
            [
                f"{VAR_DIR}/{{dataset}}/{{pooling}}/{name}.csv"
                for name in ("layers", "selection", "robustness")
            ]
            + ["results/figures/variability/{dataset}_{pooling}.png", "results/figures/variability/{dataset}_{pooling}.svg"],
            dataset=VAR_DATASETS,
            pooling=VAR["poolings"],
        )
    )
