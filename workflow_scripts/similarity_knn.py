"""Rule similarity_knn: the mutual k-nearest-neighbour alignment of every swept layer pair of one model pair, from
the vectors (capped at knn_max_units units)."""
from job import job_log
from lmcompare.runtime import blas_threads
from lmcompare.similarity.knn import write_mutual_knn

with job_log(snakemake), blas_threads(snakemake.threads):  # noqa: F821
    p, wc = snakemake.params, snakemake.wildcards  # noqa: F821
    write_mutual_knn(snakemake.output.table, wc.model_a, snakemake.input.a, wc.model_b,  # noqa: F821
                     snakemake.input.b, unit=wc.unit, layers=p.layers, k=p.k, max_units=p.max_units,  # noqa: F821
                     seed=p.seed, pooling=p.pooling, chunk_tokens=p.chunk_tokens,
                     threads=snakemake.threads)  # noqa: F821
