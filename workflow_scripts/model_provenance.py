"""Rule model_provenance: one row per model (source, origin, revision, weights sha256, derivation)."""
from job import job_log
from lmcompare.report.provenance import write_provenance_table

with job_log(snakemake):  # noqa: F821
    write_provenance_table(dict(zip(snakemake.params.models, snakemake.input.models)),  # noqa: F821
                           snakemake.output.provenance)  # noqa: F821
