"""Rule compression_dataset: one view's models side by side, the (pretrained, fine-tuned) pairs and the figures."""
from job import job_log
from lmcompare.compression import run_dataset

with job_log(snakemake):  # noqa: F821
    i, out = snakemake.input, snakemake.output  # noqa: F821
    run_dataset(i.summaries, i.curves, i.dims, i.finetuned, dataset=snakemake.wildcards.dataset,  # noqa: F821
                view=snakemake.wildcards.view, pairs=snakemake.params.pairs,  # noqa: F821
                model_index=snakemake.params.model_index, summary_out=out.summary, pairs_out=out.pairs,  # noqa: F821
                curve_figure=[out.curve_png, out.curve_svg], dims_figure=[out.dims_png, out.dims_svg])
