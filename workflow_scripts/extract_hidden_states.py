"""Rules extract_hidden_states and geometry_family_extract: every layer's pooled (and token) hidden states of a
model on a dataset, streamed to Parquet."""
from job import job_gpus, job_log
from lmcompare.extraction.extract import ExtractionSettings, extract
from lmcompare.runtime import limit_heap_fragmentation, torch_threads

with job_log(snakemake):  # noqa: F821
    job_gpus(snakemake, snakemake.params.extraction.get("device", "auto"))  # noqa: F821  one GPU per concurrent job (docs/performance.md)
    limit_heap_fragmentation()  # resident memory flat in the corpus size (docs/performance.md)
    torch_threads(snakemake.threads)  # noqa: F821
    extract(snakemake.input.model, snakemake.input.dataset, snakemake.output.pooled,  # noqa: F821
            snakemake.output.tokens, ExtractionSettings.from_config(snakemake.params.extraction),  # noqa: F821
            model_name=snakemake.wildcards.model, dataset_name=snakemake.wildcards.dataset)  # noqa: F821
