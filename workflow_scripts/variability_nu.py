"""Rule variability_nu: ν of every layer of one model on one dataset, on the full data and the robustness subsets."""
from job import job_log
from lmcompare.variability import run_nu

with job_log(snakemake):  # noqa: F821
    p, w = snakemake.params, snakemake.wildcards  # noqa: F821
    run_nu(snakemake.input.pooled, snakemake.output.nu, dataset=w.dataset, model=w.model, pooling=w.pooling,  # noqa: F821
           split=p.split, small_classes=p.small_classes, min_class_examples=p.min_class_examples,
           pinv_rtol=p.pinv_rtol, robustness=dict(p.robustness), memory_mb=p.memory_mb)
