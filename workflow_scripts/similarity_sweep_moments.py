"""Rule similarity_sweep_moments: one streamed pass over a model pair's hidden states, the co-moments of every
swept layer pair per split part written as the pair's sweep file."""
from job import job_log
from lmcompare.runtime import blas_threads
from lmcompare.similarity.sweep import write_sweep_moments

with job_log(snakemake), blas_threads(snakemake.threads):  # noqa: F821
    p, wc = snakemake.params, snakemake.wildcards  # noqa: F821
    write_sweep_moments(snakemake.output.moments, wc.model_a, snakemake.input.a, wc.model_b,  # noqa: F821
                        snakemake.input.b, dataset=wc.dataset, unit=wc.unit, layers=p.layers,  # noqa: F821
                        pooling=p.pooling, chunk_tokens=p.chunk_tokens, block_rows=p.block_rows,
                        validation_fraction=p.validation_fraction, validation_seed=p.validation_seed)
