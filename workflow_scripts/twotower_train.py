"""Rule twotower_train: one seed's two-tower LM, resumable; the measured steps' snapshots and the loss history."""
from job import job_gpus, job_log
from lmcompare.runtime import torch_threads
from lmcompare.twotower.model import job_device
from lmcompare.twotower.training import train_run

with job_log(snakemake):  # noqa: F821
    job_gpus(snakemake, snakemake.params.device)  # noqa: F821  one GPU per concurrent job (docs/performance.md)
    torch_threads(snakemake.threads)  # noqa: F821
    train_run(snakemake.input.corpus, dict(snakemake.params.twotower), int(snakemake.wildcards.seed),  # noqa: F821
              snakemake.params.work_dir, snakemake.output.snapshots, snakemake.output.history,  # noqa: F821
              model=snakemake.wildcards.model, dataset=snakemake.wildcards.dataset,  # noqa: F821
              device=job_device(snakemake.params.device))  # noqa: F821
