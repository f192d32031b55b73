"""What every rule's script shares: the job's log, opened from the `snakemake` object.

The scripts of this folder are the only code that sees the `snakemake` object: each reads its rule's inputs,
params and wildcards, calls the lmcompare library, and writes its outputs (Snakemake puts this folder on the
scripts' import path).
"""
from lmcompare.devices import claim_gpus
from lmcompare.runtime import job_logging


def job_log(snakemake):
    """runtime.job_logging for this job: its log file, rule, wildcards, inputs (hidden-state files are checked
    against the (dataset, model) their paths name) and outputs."""
    return job_logging(snakemake.log[0] if len(snakemake.log) else None, rule=snakemake.rule,
                       wildcards=dict(snakemake.wildcards.items()), inputs=list(snakemake.input),
                       outputs=list(snakemake.output))


def job_gpus(snakemake, device: str = "auto"):
    """One GPU of the machine's for a job of a rule that declares gpu (devices.claim_gpus; the device list from the
    config's resources.gpu_devices, else the visible GPUs), before torch initialises CUDA. Nothing for a CPU job."""
    if device == "cpu":
        return None
    return claim_gpus(int(getattr(snakemake.resources, "gpu", 0) or 0),
                      devices=(snakemake.config.get("resources") or {}).get("gpu_devices"))
