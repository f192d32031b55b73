"""Rule variability_summary: every model's layers, the recommended layers, robustness and the figure of a dataset."""
from job import job_log
from lmcompare.variability import run_summary

with job_log(snakemake):  # noqa: F821
    p, out = snakemake.params, snakemake.output  # noqa: F821
    run_summary(list(snakemake.input.nu), list(snakemake.input.probe), dataset=snakemake.wildcards.dataset,  # noqa: F821
                pooling=snakemake.wildcards.pooling, tolerance=p.tolerance,  # noqa: F821
                max_noise_fraction=p.max_noise_fraction, model_index=p.model_index, layers_out=out.layers,
                selection_out=out.selection, robustness_out=out.robustness, figure_paths=[out.png, out.svg])
