"""Rule decomposition_moments: the streamed moments of one model pair's units, written as the pair file."""
from job import job_log
from lmcompare.decomposition.pair_file import write_pair_moments
from lmcompare.runtime import blas_threads

with job_log(snakemake), blas_threads(snakemake.threads):  # noqa: F821
    p, wc = snakemake.params, snakemake.wildcards  # noqa: F821
    write_pair_moments(snakemake.output.moments, wc.model_a, snakemake.input.a, wc.model_b,  # noqa: F821
                       snakemake.input.b, dataset=wc.dataset, unit=wc.unit, target_layer=p.target_layer,  # noqa: F821
                       basis_layer=p.basis_layer, pooling=p.pooling, chunk_tokens=p.chunk_tokens,
                       validation_fraction=p.validation_fraction, validation_seed=p.validation_seed)
