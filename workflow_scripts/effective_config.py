"""Rule effective_config: the configuration this run used, as YAML, for the report."""
from job import job_log
from lmcompare.report.provenance import write_effective_config

with job_log(snakemake):  # noqa: F821
    write_effective_config(snakemake.params.config, snakemake.output.config)  # noqa: F821
