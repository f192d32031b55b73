"""Rule twotower_figures: loss curves, the preference distribution against the shuffled control, split halves."""
from job import job_log
from lmcompare.twotower.figures import draw_figures

with job_log(snakemake):  # noqa: F821
    out = snakemake.output  # noqa: F821
    draw_figures(snakemake.input.history, snakemake.input.preference, snakemake.input.consistency,  # noqa: F821
                 snakemake.input.logprobs, model=snakemake.wildcards.model,  # noqa: F821
                 dataset=snakemake.wildcards.dataset, min_count=snakemake.params.twotower["min_count"],  # noqa: F821
                 control_seed=snakemake.params.twotower["control_seed"],  # noqa: F821
                 loss_paths=[out.loss_png, out.loss_svg], distribution_paths=[out.distribution_png,
                                                                              out.distribution_svg],
                 split_half_paths=[out.split_half_png, out.split_half_svg])
