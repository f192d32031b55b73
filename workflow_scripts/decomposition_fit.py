"""Rule decomposition_fit: TRANSITIONAL forwarder into the library (being made thin)."""
from job import job_log
from lmcompare.decomposition import main

with job_log(snakemake):  # noqa: F821
    main(snakemake)  # noqa: F821
