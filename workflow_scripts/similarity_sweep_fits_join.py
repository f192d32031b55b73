"""Rule similarity_sweep_fits_join: the layer-pair R² tables joined, the best basis layer per target layer, and the
group R² per target layer from every pair's sweep file; their figures per fit setting."""
from job import job_log
from lmcompare.runtime import blas_threads
from lmcompare.similarity.layer_fits import write_layer_fits_join

with job_log(snakemake), blas_threads(snakemake.threads):  # noqa: F821
    p, out, inp, wc = snakemake.params, snakemake.output, snakemake.input, snakemake.wildcards  # noqa: F821
    write_layer_fits_join(out.table, out.best, out.group, inp.fits, inp.moments, p.pairs, p.models, modes=p.modes,
                          alphas=p.alphas, alpha_grid=p.alpha_grid, min_train=p.min_train, min_test=p.min_test,
                          dataset=wc.dataset, unit=wc.unit, model_index=p.model_index,
                          best_figures={s: [png, svg] for s, png, svg in zip(p.settings, out.best_png, out.best_svg)},
                          group_figures={s: [png, svg] for s, png, svg in zip(p.settings, out.group_png,
                                                                              out.group_svg)})
