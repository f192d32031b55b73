"""Rule variability_probe: the shared linear probe per layer of one model on one dataset."""
from job import job_log
from lmcompare.variability import run_probe

with job_log(snakemake):  # noqa: F821
    p, w = snakemake.params, snakemake.wildcards  # noqa: F821
    run_probe(snakemake.input.pooled, snakemake.output.probe, dataset=w.dataset, model=w.model,  # noqa: F821
              pooling=w.pooling, max_train=p.max_train, max_test=p.max_test, seed=p.seed)
