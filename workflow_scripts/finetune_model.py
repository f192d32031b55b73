"""Rule finetune_model: a base model fine-tuned for classification on a labelled dataset (compression pairs)."""
import os

from job import job_gpus, job_log
from lmcompare.models.finetune import run

with job_log(snakemake):  # noqa: F821
    job_gpus(snakemake, snakemake.params.device)  # noqa: F821  one GPU per concurrent job (docs/performance.md)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run(dict(snakemake.params.entry), snakemake.input.base, snakemake.input.dataset,  # noqa: F821
        snakemake.output.model, device=snakemake.params.device, threads=snakemake.threads)  # noqa: F821
