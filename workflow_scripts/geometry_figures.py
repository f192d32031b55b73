"""Rule geometry_figures: r of score on every measure, and the scatter of score on each top-k measure."""
from job import job_log
from lmcompare.geometry import draw_figures

with job_log(snakemake):  # noqa: F821
    out = snakemake.output  # noqa: F821
    draw_figures(snakemake.input.measures, snakemake.input.scores, snakemake.input.regression,  # noqa: F821
                 dataset=snakemake.wildcards.dataset, score_name=snakemake.params.score_name,  # noqa: F821
                 top_k=snakemake.params.top_k, model_index=snakemake.params.model_index,  # noqa: F821
                 r2_paths=[out.r2_png, out.r2_svg], scatter_paths=list(zip(out.scatter_png, out.scatter_svg)))
