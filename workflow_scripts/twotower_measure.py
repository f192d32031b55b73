"""Rule twotower_measure: per-tower heads on one snapshot's frozen towers; held-out log-probabilities."""
from job import job_gpus, job_log
from lmcompare.runtime import torch_threads
from lmcompare.twotower.measure import measure_run
from lmcompare.twotower.model import job_device

with job_log(snakemake):  # noqa: F821
    job_gpus(snakemake, snakemake.params.device)  # noqa: F821  one GPU per concurrent job (docs/performance.md)
    torch_threads(snakemake.threads)  # noqa: F821
    measure_run(snakemake.input.corpus, snakemake.input.snapshot, dict(snakemake.params.twotower),  # noqa: F821
                int(snakemake.wildcards.seed), snakemake.output.logprobs,  # noqa: F821
                device=job_device(snakemake.params.device))  # noqa: F821
