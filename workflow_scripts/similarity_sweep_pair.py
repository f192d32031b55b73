"""Rule similarity_sweep_pair: every measure of every swept layer pair of one model pair from its sweep file (and
the kNN table), a layer x layer heatmap per measure."""
from job import job_log
from lmcompare.runtime import blas_threads
from lmcompare.similarity.sweep import write_sweep_pair

with job_log(snakemake), blas_threads(snakemake.threads):  # noqa: F821
    p, wc, out, inp = snakemake.params, snakemake.wildcards, snakemake.output, snakemake.input  # noqa: F821
    write_sweep_pair(out.table, inp.moments, inp.knn[0] if inp.knn else None, measures=p.measures,
                     svcca_variance=p.svcca_variance, rank_tolerance=p.cca_rank_tolerance, dataset=wc.dataset,
                     unit=wc.unit, figure_paths={m: [png, svg] for m, png, svg in zip(p.measures, out.png, out.svg)})
