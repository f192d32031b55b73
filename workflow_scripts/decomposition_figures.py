"""Rule decomposition_figures: the pairwise R² heatmap and the group R² bars of one fit."""
from job import job_log
from lmcompare.decomposition.figures import draw_figures
from lmcompare.decomposition.tags import alpha_from_tag
from lmcompare.runtime import blas_threads

with job_log(snakemake), blas_threads(snakemake.threads):  # noqa: F821
    wc, out = snakemake.wildcards, snakemake.output  # noqa: F821
    draw_figures(snakemake.input.group, snakemake.input.matrix, dataset=wc.dataset, unit=wc.unit,  # noqa: F821
                 layers=wc.layers, mode=wc.mode, alpha=alpha_from_tag(wc.alpha),
                 heatmap_paths=[out.heatmap_png, out.heatmap_svg], group_paths=[out.group_png, out.group_svg])
