"""Rule prepare_chunk_dataset: the LMD paper's text unit as a dataset, chunks of T tokens of one tokenizer."""
from job import job_log
from lmcompare.data.chunks import prepare_chunk_dataset

with job_log(snakemake):  # noqa: F821
    prepare_chunk_dataset(dict(snakemake.params.entry), snakemake.input.base, snakemake.input.tokenizer,  # noqa: F821
                          snakemake.output.dataset)  # noqa: F821
