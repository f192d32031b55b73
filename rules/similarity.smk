# Similarity of model pairs (CKA, debiased CKA, CCA, SVCCA, PWCCA, Procrustes) from the decomposition's pair files:
# one job per (dataset, unit, layers) of the decomposition, no pass over the hidden states. See docs/similarity.md.
validate_section("similarity")

from lmcompare.similarity import KNN_MEASURE, MEASURES
from lmcompare.similarity.tags import selection_from_tag, selection_tag

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


def _table_knn_files(wc):
    """With mutual_knn in similarity.measures: the kNN table of every pair at the decomposition's target layer (the
    layer sweep's kNN rule on the layer selection [target_layer])."""
    if KNN_MEASURE not in SIM["measures"]:
        return []
    folder = f"{SIM_DIR}/{wc.dataset}/{wc.unit}/sweep/{selection_tag([LMD['target_layer']])}/knn"
    return [f"{folder}/{a}/{b}.csv" for a, b in model_pairs(LMD_MODELS)]


rule similarity:
    input:
        moments=_lmd_pair_files,
        knn=_table_knn_files,
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
    """The similarity table and heatmaps of every (dataset, unit) of the decomposition, and the layer sweep's
    outputs (none when disabled)."""
    if not SIM["enabled"]:
        return []
    targets = []
    for dataset, unit in lmd_jobs():
        stem = f"{dataset}/{unit}/{LMD_LAYERS}"
        targets.append(f"{SIM_DIR}/{stem}/similarity.csv")
        targets += [f"{SIM_FIG_DIR}/{stem}/{measure}.{ext}" for measure in SIM["measures"] for ext in ("png", "svg")]
    return targets + sweep_targets()


# ---------------------------------------------------------------------------------------------- layer sweeps
# Every swept layer of one model against every swept layer of the other (docs/similarity.md, "Layer sweeps"): per
# unordered model pair one streamed pass (similarity_sweep_moments, the cached sweep file, per split part), the mutual
# kNN from the vectors (similarity_knn, when listed), the measures from the sweep file (similarity_sweep_pair: a new
# measure reruns this job only), then the join over pairs (similarity_sweep). The decomposition's R² of every layer
# pair (similarity_sweep_fits, per pair, from the sweep file) and the group R² per target layer
# (similarity_sweep_fits_join, from every sweep file): a new alpha or mode reruns these only. Adding a model adds its
# pairs and the joins.
from lmcompare.decomposition.tags import alpha_tag
from lmcompare.similarity import SWEEP_FORMAT
from lmcompare.similarity.tags import sweep_memory_bytes

SWEEP = SIM["layer_sweep"]
LMD_ALPHA_VALUES = LMD["alpha"] if isinstance(LMD["alpha"], list) else [LMD["alpha"]]
# the R² fits' settings, one per decomposition mode and alpha choice (their tag: layer_fits.setting_tag)
SWEEP_SETTINGS = [f"{mode}_{alpha_tag(alpha)}" for mode in LMD["modes"] for alpha in LMD_ALPHA_VALUES]
SWEEP_FIT_PARAMS = dict(modes=LMD["modes"], alphas=LMD_ALPHA_VALUES, alpha_grid=LMD["alpha_grid"],
                        min_train=LMD["min_train_units"], min_test=LMD["min_test_units"], settings=SWEEP_SETTINGS)
SWEEP_TAG = selection_tag(SWEEP["layers"])
SWEEP_DIR = SIM_DIR + "/{dataset}/{unit}/sweep/{sweep}"
SWEEP_FIG_DIR = SIM_FIG_DIR + "/{dataset}/{unit}/sweep/{sweep}"
if SWEEP["enabled"] and not SIM["enabled"]:
    raise WorkflowInputError(
        "config: similarity.layer_sweep.enabled is true but the similarity stage is off (similarity.enabled false, "
        "or the decomposition off); enable both, or set similarity.layer_sweep.enabled: false."
    )


def sweep_jobs():
    """(dataset, unit) of the layer sweep: the decomposition's datasets, the 'chunk' unit only on chunks datasets."""
    if not (SIM["enabled"] and SWEEP["enabled"]):
        return []
    return [(dataset, unit) for dataset in LMD_DATASETS for unit in SWEEP["units"]
            if unit != "chunk" or DATASETS[dataset]["source"] == "chunks"]


def _sweep_mem_mb(wildcards):
    """similarity.layer_sweep.mem_mb, or, for two 768-dimensional models with the configured number of swept layers
    (13, a base model's, when every layer is swept): the statistics of the three split parts and once more for the
    norm shifts' temporaries (sweep.sweep_memory_bytes; the job logs the actual size), a pending block of rows per
    part and twice one block for the update's temporaries, and 1 GB (6.3 GB at 13 layers)."""
    if SWEEP["mem_mb"]:
        return SWEEP["mem_mb"]
    layers = len(SWEEP["layers"] or []) or 13
    block = SWEEP["block_rows"] * 2 * 768 * layers * 8
    return int(1000 + (4 * sweep_memory_bytes((768, 768), (layers, layers)) + 5 * block) / 1e6)


def _sweep_file_mem_mb(wc, input):
    """A job that merges a sweep file's parts in memory (one part's size) and reads them memory-mapped."""
    size = os.path.getsize(input.moments) if os.path.exists(input.moments) else 3 * 1e9
    return int(1000 + 1.5 * size / 1e6)


def _sweep_pooling(wc):
    return LMD["example_pooling"] if wc.unit == "example" else None


def _sweep_chunk_tokens(wc):
    return DATASETS[wc.dataset].get("chunk_tokens") if wc.unit == "chunk" else None


_SWEEP_CONSTRAINTS = dict(model_a=name_regex(MODEL_NAMES), model_b=name_regex(MODEL_NAMES), unit="|".join(UNITS),
                          sweep=r"all|l-?\d+(_-?\d+)*")


rule similarity_sweep_moments:
    input:
        a=_lmd_hidden_file("model_a"),
        b=_lmd_hidden_file("model_b"),
    output:
        moments=SWEEP_DIR + "/moments/{model_a}/{model_b}.npz",
    wildcard_constraints:
        **_SWEEP_CONSTRAINTS,
    params:
        code=library_code("similarity_sweep_moments"),
        layers=SWEEP["layers"],
        pooling=_sweep_pooling,
        chunk_tokens=_sweep_chunk_tokens,
        block_rows=SWEEP["block_rows"],
        validation_fraction=LMD["validation_fraction"],  # the decomposition's cut of the train split
        validation_seed=LMD["validation_seed"],
        format=SWEEP_FORMAT,  # a new file format changes the params: old files are recomputed
    log:
        "results/logs/similarity/sweep/moments/{dataset}/{unit}/{sweep}/{model_a}/{model_b}.log",
    benchmark:
        "results/benchmarks/similarity/sweep/moments/{dataset}/{unit}/{sweep}/{model_a}/{model_b}.tsv"
    threads: RES["threads"]
    resources:
        mem_mb=_sweep_mem_mb,
        runtime=LMD["runtime_minutes"],
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/similarity_sweep_moments.py"


rule similarity_knn:
    input:
        a=_lmd_hidden_file("model_a"),
        b=_lmd_hidden_file("model_b"),
    output:
        table=SWEEP_DIR + "/knn/{model_a}/{model_b}.csv",
    wildcard_constraints:
        **_SWEEP_CONSTRAINTS,
    params:
        code=library_code("similarity_knn"),
        layers=lambda wc: selection_from_tag(wc.sweep),  # the sweep's layers, or the table's [target_layer]
        pooling=_sweep_pooling,
        chunk_tokens=_sweep_chunk_tokens,
        k=SIM["knn_k"],
        max_units=SIM["knn_max_units"],
        seed=SIM["knn_seed"],
    log:
        "results/logs/similarity/sweep/knn/{dataset}/{unit}/{sweep}/{model_a}/{model_b}.log",
    benchmark:
        "results/benchmarks/similarity/sweep/knn/{dataset}/{unit}/{sweep}/{model_a}/{model_b}.tsv"
    threads: RES["threads"]
    resources:
        # one layer's vectors of the sampled units, the neighbour lists of every layer, faiss's search buffers
        mem_mb=lambda wc: int(1000 + (SIM["knn_max_units"] or 200000) * (768 * 8 * 3 + 40 * SIM["knn_k"] * 8) / 1e6),
        runtime=LMD["runtime_minutes"],
    conda:
        "../envs/geometry.yaml"  # faiss
    script:
        "../workflow_scripts/similarity_knn.py"


rule similarity_sweep_pair:
    input:
        moments=SWEEP_DIR + "/moments/{model_a}/{model_b}.npz",
        knn=lambda wc: [SWEEP_DIR.format(**wc) + f"/knn/{wc.model_a}/{wc.model_b}.csv"]
                       if KNN_MEASURE in SWEEP["measures"] else [],
    output:
        table=SWEEP_DIR + "/pairs/{model_a}/{model_b}.csv",
        png=[report(SWEEP_FIG_DIR + "/{model_a}/{model_b}/" + measure + ".png",
                    caption="../report/similarity_sweep.rst", category="Layer sweeps",
                    subcategory="{dataset} / {unit} units / layers {sweep}",
                    labels={"pair": "{model_a} ~ {model_b}", "measure": measure})
             for measure in SWEEP["measures"]],
        svg=[SWEEP_FIG_DIR + "/{model_a}/{model_b}/" + measure + ".svg" for measure in SWEEP["measures"]],
    wildcard_constraints:
        **_SWEEP_CONSTRAINTS,
    params:
        code=library_code("similarity_sweep_pair"),
        measures=SWEEP["measures"],
        svcca_variance=SIM["svcca_variance"],
        cca_rank_tolerance=SIM["cca_rank_tolerance"],
    log:
        "results/logs/similarity/sweep/pairs/{dataset}/{unit}/{sweep}/{model_a}/{model_b}.log",
    benchmark:
        "results/benchmarks/similarity/sweep/pairs/{dataset}/{unit}/{sweep}/{model_a}/{model_b}.tsv"
    threads: RES["threads"]
    resources:
        mem_mb=_sweep_file_mem_mb,
        runtime=LMD["runtime_minutes"],
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/similarity_sweep_pair.py"


rule similarity_sweep:
    input:
        pairs=lambda wc: [SWEEP_DIR.format(**wc) + f"/pairs/{a}/{b}.csv" for a, b in model_pairs(LMD_MODELS)],
    output:
        table=SWEEP_DIR + "/sweep.csv",
        best=SWEEP_DIR + "/best_layers.csv",
        png=[report(SWEEP_FIG_DIR + f"/best_layer_{measure}.png", caption="../report/similarity_best_layers.rst",
                    category="Layer sweeps", subcategory="{dataset} / {unit} units / layers {sweep}",
                    labels={"pair": "best-matching layers", "measure": measure})
             for measure in SWEEP["measures"]],
        svg=[SWEEP_FIG_DIR + f"/best_layer_{measure}.svg" for measure in SWEEP["measures"]],
    wildcard_constraints:
        unit="|".join(UNITS),
        sweep=_SWEEP_CONSTRAINTS["sweep"],
    params:
        code=library_code("similarity_sweep"),
        measures=SWEEP["measures"],
        model_index=model_index(LMD_MODELS),
    log:
        "results/logs/similarity/sweep/join/{dataset}/{unit}/{sweep}.log",
    threads: 1
    resources:
        **light_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/similarity_sweep.py"


# ------------------------------------------------------------------------- the decomposition's R² across depth
def _sweep_r2_figure(stem, setting, ext, caption=None, label=None):
    """A figure of one fit setting; the png registered in the report under the layer sweeps."""
    path = f"{SWEEP_FIG_DIR}/{stem}r2_{setting}.{ext}"
    if ext != "png":
        return path
    return report(path, caption=caption, category="Layer sweeps", subcategory="{dataset} / {unit} units / layers {sweep}",
                  labels={"pair": label, "measure": f"R² {setting}"})


rule similarity_sweep_fits:
    input:
        moments=SWEEP_DIR + "/moments/{model_a}/{model_b}.npz",
    output:
        table=SWEEP_DIR + "/r2/{model_a}/{model_b}.csv",
        png=[_sweep_r2_figure("{model_a}/{model_b}/", s, "png", "../report/similarity_sweep_r2.rst",
                              "{model_a} ~ {model_b}") for s in SWEEP_SETTINGS],
        svg=[_sweep_r2_figure("{model_a}/{model_b}/", s, "svg") for s in SWEEP_SETTINGS],
    wildcard_constraints:
        **_SWEEP_CONSTRAINTS,
    params:
        code=library_code("similarity_sweep_fits"),
        **SWEEP_FIT_PARAMS,
    log:
        "results/logs/similarity/sweep/fits/{dataset}/{unit}/{sweep}/{model_a}/{model_b}.log",
    benchmark:
        "results/benchmarks/similarity/sweep/fits/{dataset}/{unit}/{sweep}/{model_a}/{model_b}.tsv"
    threads: RES["threads"]
    resources:
        mem_mb=_sweep_file_mem_mb,
        runtime=LMD["runtime_minutes"],
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/similarity_sweep_fits.py"


def _sweep_fits_join_mem_mb(wildcards):
    """The group fits' joint matrices (fit, valid, train, test, and a factorisation) of all other models' bases, at
    768 dimensions each."""
    basis = 768 * (len(LMD_MODELS) - 1)
    return int(1000 + 5 * 8 * basis * basis / 1e6)


rule similarity_sweep_fits_join:
    input:
        fits=lambda wc: [SWEEP_DIR.format(**wc) + f"/r2/{a}/{b}.csv" for a, b in model_pairs(LMD_MODELS)],
        moments=lambda wc: [SWEEP_DIR.format(**wc) + f"/moments/{a}/{b}.npz" for a, b in model_pairs(LMD_MODELS)],
    output:
        table=SWEEP_DIR + "/r2.csv",
        best=SWEEP_DIR + "/r2_best_layers.csv",
        group=SWEEP_DIR + "/group_r2.csv",
        best_png=[_sweep_r2_figure("best_layer_", s, "png", "../report/similarity_best_layers.rst",
                                   "best-matching layers") for s in SWEEP_SETTINGS],
        best_svg=[_sweep_r2_figure("best_layer_", s, "svg") for s in SWEEP_SETTINGS],
        group_png=[_sweep_r2_figure("group_", s, "png", "../report/similarity_group_r2.rst", "group R² per layer")
                   for s in SWEEP_SETTINGS],
        group_svg=[_sweep_r2_figure("group_", s, "svg") for s in SWEEP_SETTINGS],
    wildcard_constraints:
        unit="|".join(UNITS),
        sweep=_SWEEP_CONSTRAINTS["sweep"],
    params:
        code=library_code("similarity_sweep_fits_join"),
        models=LMD_MODELS,
        pairs=model_pairs(LMD_MODELS),
        model_index=model_index(LMD_MODELS),
        **SWEEP_FIT_PARAMS,
    log:
        "results/logs/similarity/sweep/fits_join/{dataset}/{unit}/{sweep}.log",
    benchmark:
        "results/benchmarks/similarity/sweep/fits_join/{dataset}/{unit}/{sweep}.tsv"
    threads: RES["threads"]
    resources:
        mem_mb=_sweep_fits_join_mem_mb,
        runtime=LMD["runtime_minutes"],
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/similarity_sweep_fits_join.py"


def sweep_targets():
    """The layer sweep's joined table, best layers and figures of every (dataset, unit) (none when off)."""
    targets = []
    for dataset, unit in sweep_jobs():
        stem = f"{dataset}/{unit}/sweep/{SWEEP_TAG}"
        targets += [f"{SIM_DIR}/{stem}/sweep.csv", f"{SIM_DIR}/{stem}/best_layers.csv"]
        targets += [f"{SIM_FIG_DIR}/{stem}/best_layer_{measure}.{ext}" for measure in SWEEP["measures"]
                    for ext in ("png", "svg")]
        targets += [f"{SIM_FIG_DIR}/{stem}/{a}/{b}/{measure}.{ext}" for a, b in model_pairs(LMD_MODELS)
                    for measure in SWEEP["measures"] for ext in ("png", "svg")]
        if SWEEP["r2"]:
            targets += [f"{SIM_DIR}/{stem}/{name}.csv" for name in ("r2", "r2_best_layers", "group_r2")]
            targets += [f"{SIM_FIG_DIR}/{stem}/{kind}r2_{setting}.{ext}" for kind in ("best_layer_", "group_")
                        for setting in SWEEP_SETTINGS for ext in ("png", "svg")]
            targets += [f"{SIM_FIG_DIR}/{stem}/{a}/{b}/r2_{setting}.{ext}" for a, b in model_pairs(LMD_MODELS)
                        for setting in SWEEP_SETTINGS for ext in ("png", "svg")]
    return targets
