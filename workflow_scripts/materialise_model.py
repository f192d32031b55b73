"""Rule materialise_model: a configured model (hub, local, package, archive, onnx) into results/models/{model}."""
import logging

from job import job_log
from lmcompare.models.materialise import materialise

LOG = logging.getLogger("workflow")

with job_log(snakemake):  # noqa: F821
    entry = dict(snakemake.params.entry)  # noqa: F821
    LOG.info("materialising model %r from source %r", entry["name"], entry["source"])
    record = materialise(entry, snakemake.output.model)  # noqa: F821
    LOG.info("model %r: %s, weights sha256 %s", entry["name"], record["architecture"], record["weights_sha256"])
