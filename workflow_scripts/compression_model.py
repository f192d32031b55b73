"""Rule compression_model: the PCA curve with k*, the single dimensions and the summary of one model's view."""
from job import job_log
from lmcompare.compression import run_model

with job_log(snakemake):  # noqa: F821
    p, w, out = snakemake.params, snakemake.wildcards, snakemake.output  # noqa: F821
    run_model(snakemake.input.pooled, model=w.model, dataset=w.dataset, view=w.view, curve_out=out.curve,  # noqa: F821
              dims_out=out.dims, best_out=out.best, summary_out=out.summary, k_values=p.k_values, alpha=p.alpha,
              single_dim_c=p.single_dim_c, n_best=p.n_best, seed=p.seed, folds=p.folds)
