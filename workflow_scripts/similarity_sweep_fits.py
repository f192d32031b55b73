"""Rule similarity_sweep_fits: the decomposition's R² of every swept layer pair of one model pair, both directions,
from its sweep file, and a heatmap per fit setting."""
from job import job_log
from lmcompare.runtime import blas_threads
from lmcompare.similarity.layer_fits import write_pair_layer_fits

with job_log(snakemake), blas_threads(snakemake.threads):  # noqa: F821
    p, wc, out = snakemake.params, snakemake.wildcards, snakemake.output  # noqa: F821
    write_pair_layer_fits(out.table, snakemake.input.moments, modes=p.modes, alphas=p.alphas,  # noqa: F821
                          alpha_grid=p.alpha_grid, min_train=p.min_train, min_test=p.min_test, dataset=wc.dataset,
                          unit=wc.unit, figure_paths={s: [png, svg] for s, png, svg in zip(p.settings, out.png, out.svg)})
