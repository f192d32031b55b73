"""What the report records besides the figures: one provenance row per model, and the effective configuration."""
import logging
from pathlib import Path

import pandas as pd
import yaml

from lmcompare import files
from lmcompare.models.loading import read_provenance

LOG = logging.getLogger("workflow")


def provenance_table(model_dirs: dict) -> pd.DataFrame:
    """One row per model: name, source, where from, revision, weights sha256, derivation."""
    rows = []
    for name, folder in model_dirs.items():
        record = read_provenance(folder)
        origin = (record.get("repo_id") or record.get("package") or record.get("path")
                  or ", ".join(Path(p).name for p in record.get("archive_parts", [])) or record.get("base"))
        derivation = {k: record[k] for k in ("base", "alpha", "seed", "dataset", "epochs", "learning_rate",
                                            "train_accuracy", "test_accuracy") if k in record}
        rows.append({"model": name, "source": record.get("source"), "origin": origin,
                     "revision": record.get("revision") or record.get("package_version"),
                     "architecture": record.get("architecture"), "weights_sha256": record.get("weights_sha256"),
                     "derivation": "; ".join(f"{k}={v}" for k, v in derivation.items())})
    return pd.DataFrame(rows)


def read_provenance_table(path) -> pd.DataFrame:
    """The provenance table as text (empty cells as empty strings), as the models panel prints it."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def write_provenance_table(model_dirs: dict, path) -> pd.DataFrame:
    """The model_provenance job: provenance_table of the materialised model folders, written to `path`."""
    provenance = provenance_table(model_dirs)
    files.write_table(provenance, path)
    return provenance


def write_effective_config(config: dict, path) -> None:
    """The effective_config job: the configuration the run used (user file, --config, schema defaults), as YAML."""
    with files.atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    LOG.info("wrote %s", path)
