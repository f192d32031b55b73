# Extract every layer's hidden states per (dataset, model): a GPU rule that runs on the CPU when there is none.
from lmcompare.extraction.pooling import configured_summary_token


def extraction_mem_mb(wildcards, attempt):
    """Model weights (x3 for activations and copies) plus one sort window of token vectors, grown per retry."""
    section = config["extraction"]
    window_mb = section["sort_window"] * section["max_length"] * 1024 * 4 * (len(section["token_layers"]) + 2) / 1e6
    return int((3000 + 3 * model_weights_mb(wildcards.model) + window_mb) * attempt)


def extraction_runtime(wildcards, attempt):
    """Minutes: generous for CPU runs, scaled with the dataset's example cap and the model size."""
    entry = DATASETS[wildcards.dataset]
    examples = entry.get("max_examples") or 100_000
    return int(max(30, examples * model_weights_mb(wildcards.model) / 20_000) * attempt)


def model_extraction_settings(model, **overrides):
    """The extraction section with the model's summary token (models[].summary_token, a derived model's base's)."""
    return {**config["extraction"], "summary_token": configured_summary_token(config["models"], model), **overrides}


def extraction_settings(wildcards):
    """The extraction section; a chunks dataset is read as the LMD release reads it: every model's input
    truncated at the chunk length T, special tokens included (docs/decomposition.md)."""
    entry = DATASETS[wildcards.dataset]
    if entry["source"] != "chunks":
        return model_extraction_settings(wildcards.model)
    T = int(entry["chunk_tokens"])
    return {**model_extraction_settings(wildcards.model), "max_length": T, "truncation_note": (
        f"dataset {wildcards.dataset!r} is a chunks dataset: its inputs are truncated at chunk_tokens = {T} "
        f"(special tokens included), as the LMD release does; extraction.max_length does not apply to it")}


def default_extraction_datasets():
    """extraction.datasets, or every dataset except those that only serve as the base of a chunks dataset
    (analyses that read a base dataset still request its hidden states)."""
    chosen = config["extraction"]["datasets"]
    if chosen is not None:
        return [d for d in DATASET_NAMES if d in chosen]
    bases = {entry["base"] for entry in DATASETS.values() if entry["source"] == "chunks"}
    return [d for d in DATASET_NAMES if d not in bases]


rule extract_hidden_states:
    input:
        model="results/models/{model}",
        dataset="results/data/{dataset}.parquet",
    output:
        pooled="results/hidden/{dataset}/{model}/pooled.parquet",
        tokens="results/hidden/{dataset}/{model}/tokens.parquet",
    params:
        code=library_code("extract_hidden_states"),
        extraction=extraction_settings,
    log:
        "results/logs/extract_hidden_states/{dataset}/{model}.log",
    benchmark:
        "results/benchmarks/extract_hidden_states/{dataset}/{model}.tsv"
    threads: RES["threads"]
    resources:
        mem_mb=extraction_mem_mb,
        runtime=extraction_runtime,
        **gpu_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/extract_hidden_states.py"


def extraction_targets():
    """Every (dataset, model)'s pooled hidden states of the datasets extracted by default."""
    return (
        expand(
            "results/hidden/{dataset}/{model}/pooled.parquet",
            dataset=default_extraction_datasets(),
            model=MODEL_NAMES,
        )
    )
