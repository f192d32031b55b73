"""Rule summary_figure: the one-page headline of every analysis, from the aggregated tables only."""
from job import job_log
from lmcompare.report.summary import draw_summary_from_tables

with job_log(snakemake):  # noqa: F821
    tables = {}
    for key in snakemake.params.panels:  # noqa: F821  (a panel whose analysis is disabled is given an empty list)
        value = getattr(snakemake.input, key, [])  # noqa: F821
        tables[key] = [value] if isinstance(value, str) else list(value)
    draw_summary_from_tables(tables, snakemake.input.provenance, snakemake.params.models,  # noqa: F821
                             snakemake.params.datasets, [snakemake.output.png, snakemake.output.svg])  # noqa: F821
