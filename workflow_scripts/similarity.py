"""Rule similarity: every measure of every model pair from the decomposition's pair files, a table and a heatmap per
measure."""
from job import job_log
from lmcompare.runtime import blas_threads
from lmcompare.similarity.table import write_similarity

with job_log(snakemake), blas_threads(snakemake.threads):  # noqa: F821
    p, wc, out = snakemake.params, snakemake.wildcards, snakemake.output  # noqa: F821
    write_similarity(p.pairs, snakemake.input.moments, p.models, p.measures,  # noqa: F821
                     svcca_variance=p.svcca_variance, rank_tolerance=p.cca_rank_tolerance, dataset=wc.dataset,
                     unit=wc.unit, layers=wc.layers, table_path=out.table, knn_files=snakemake.input.knn,  # noqa: F821
                     figure_paths={m: [png, svg] for m, png, svg in zip(p.measures, out.png, out.svg)})
