# Similarity of model pairs (CKA, debiased CKA, CCA, SVCCA, PWCCA, Procrustes) from the decomposition's pair files:
# one job per (dataset, unit, layers) of the decomposition, no pass over the hidden states. See docs/similarity.md.
validate_section("similarity")

from lmcompare.similarity import MEASURES

SIM = config["similarity"]
SIM_DIR = "results/analysis/similarity"
SIM_FIG_DIR = "results/figures/similarity"
if SIM["enabled"] and not LMD["enabled"]:
    raise WorkflowInputError(
        "config: similarity.enabled is true but decomposition.enabled is false; the similarity measures are computed "
        "from the decomposition's pair files (its models, datasets, units and layers): enable the decomposition or "
        "set similarity.enabled: false (the default, null, follows the decomposition)."
    )


def _sim_figure(measure, ext):
    path = f"{SIM_FIG_DIR}/{{dataset}}/{{unit}}/{{layers}}/{measure}.{ext}"
    if ext != "png":
        return path
    return report(path, caption="../report/similarity.rst", category="Similarity",
                  subcategory="{dataset} / {unit} units / {layers}", labels={"figure": measure, "layers": "{layers}"})


rule similarity:
    input:
        moments=_lmd_pair_files,
    output:
        table=SIM_DIR + "/{dataset}/{unit}/{layers}/similarity.csv",
        png=[_sim_figure(measure, "png") for measure in SIM["measures"]],
        svg=[_sim_figure(measure, "svg") for measure in SIM["measures"]],
    wildcard_constraints:
        unit="|".join(UNITS),
        layers=r"t-?\d+_b-?\d+",
    params:
        code=library_code("similarity"),
        models=LMD_MODELS,
        pairs=model_pairs(LMD_MODELS),
        measures=SIM["measures"],
        svcca_variance=SIM["svcca_variance"],
        cca_rank_tolerance=SIM["cca_rank_tolerance"],
    log:
        "results/logs/similarity/{dataset}/{unit}/{layers}.log",
    benchmark:
        "results/benchmarks/similarity/{dataset}/{unit}/{layers}.tsv"
    threads: RES["threads"]
    resources:
        **light_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/similarity.py"


def similarity_targets():
    """The similarity table and heatmaps of every (dataset, unit) of the decomposition (none when disabled)."""
    if not SIM["enabled"]:
        return []
    targets = []
    for dataset, unit in lmd_jobs():
        stem = f"{dataset}/{unit}/{LMD_LAYERS}"
        targets.append(f"{SIM_DIR}/{stem}/similarity.csv")
        targets += [f"{SIM_FIG_DIR}/{stem}/{measure}.{ext}" for measure in SIM["measures"] for ext in ("png", "svg")]
    return targets
