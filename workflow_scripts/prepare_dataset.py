"""Rule prepare_dataset: a configured dataset into results/data/{dataset}.parquet (+ the rows dropped, and why)."""
import logging

from job import job_log
from lmcompare.data.prepare import prepare

LOG = logging.getLogger("workflow")

with job_log(snakemake):  # noqa: F821
    entry = dict(snakemake.params.entry)  # noqa: F821
    dropped = snakemake.output.dropped  # noqa: F821
    LOG.info("preparing dataset %r from source %r", entry["name"], entry["source"])
    counts = prepare(entry, snakemake.output.dataset, dropped)  # noqa: F821
    LOG.info("rows in %d, out %d (train %d, test %d; split: %s); empty texts dropped %d (listed in %s); rows "
             "left out by max_examples %d; control characters replaced %d; U+FFFD characters %d; unlabelled "
             "rows %d; words %d", counts["rows_in"], counts["rows_out"], counts["train"], counts["test"],
             counts["split_from"], counts["empty_texts_dropped"], dropped, counts.get("subsampled_out", 0),
             counts["control_characters_replaced"], counts["replacement_characters"], counts["unlabelled_rows"],
             counts["words"])
