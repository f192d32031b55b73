"""Rule geometry_measures: the quantizer and spread measures of one model's token cloud on one dataset."""
from job import job_log
from lmcompare.geometry import faiss_threads, measure_tokens

with job_log(snakemake):  # noqa: F821
    faiss_threads(snakemake.threads)  # noqa: F821
    measure_tokens(snakemake.input.tokens, snakemake.output.measures,  # noqa: F821
                   model=snakemake.wildcards.model, dataset=snakemake.wildcards.dataset,  # noqa: F821
                   layer=snakemake.params.layer, max_points=snakemake.params.max_points,  # noqa: F821
                   seed=snakemake.params.seed, quantizer=snakemake.params.quantizer)  # noqa: F821
