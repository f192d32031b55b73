"""Rule twotower_corpus: a dataset's train and test split as token streams of a model's tokenizer."""
from job import job_log
from lmcompare.twotower.corpus import write_corpus

with job_log(snakemake):  # noqa: F821
    where = (f"dataset {snakemake.wildcards.dataset!r} with the tokenizer of model "  # noqa: F821
             f"{snakemake.wildcards.model!r}")  # noqa: F821
    write_corpus(snakemake.input.dataset, snakemake.input.model, dict(snakemake.params.twotower),  # noqa: F821
                 snakemake.output.corpus, snakemake.output.info, where=where)  # noqa: F821
