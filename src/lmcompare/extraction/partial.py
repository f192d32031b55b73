"""Resume an extraction inside a job: finished windows kept as fsynced part files in a hidden partial folder.

An extraction killed after k windows (SIGKILL, a SLURM time limit, preemption, a node failure) restarts at
window k when it is run again with the same inputs and settings; the final pooled.parquet and tokens.parquet equal
an uninterrupted run's byte for byte, because every run, interrupted or not, writes the same part files and
assembles the final files from them in the same way (row groups copied one at a time, in window order).

Layout, next to the outputs (`results/hidden/{dataset}/{model}/.pooled.parquet.partial/`; not a declared output of
the rule, so Snakemake neither deletes it when a job fails nor counts it as a result):

- `manifest.json`: the fingerprint of what the parts belong to (the extraction settings, the model's weights
  sha256, the dataset file's sha256, the code of the extraction, the device and precision) and the same in clear;
- per finished window k: `pooled-K.parquet`, `tokens-K.parquet` (the window's rows, in the final files' schema
  and row groups) and `window-K.json`, the window's counts: written last, it is the window's commit record.

Each file is written under a temporary name, fsynced, renamed and its folder fsynced, so a window is either
committed whole or not at all. A run starts at the first window without a commit record and deletes whatever a
killed run left beyond it. A manifest of other settings (or an unreadable one) discards the folder, with a log line
naming what changed. The folder is removed only after both final files are renamed into place, and when a job stops
on bad input (WorkflowInputError: the same run would stop there again); any other failure keeps it for the rerun.
"""

import dataclasses
import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from lmcompare.code_digest import code_digest
from lmcompare.files import atomic_path, file_sha256, write_json
from lmcompare.models.loading import environment_summary, weights_sha256

LOG = logging.getLogger("workflow")
FORMAT = 1
KINDS = ("pooled", "tokens")
_COMMIT = re.compile(r"^window-(\d{6})\.json$")


def partial_dir(pooled_out) -> Path:
    """The hidden folder of an extraction's finished windows, next to its pooled output."""
    pooled_out = Path(pooled_out)
    return pooled_out.parent / f".{pooled_out.name}.partial"


def fingerprint(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PartialWindows:
    """The finished windows of one extraction in `folder`, for the inputs and settings in `description`."""

    def __init__(self, folder, description: dict):
        self.folder = Path(folder)
        # through JSON, as the manifest stores it (tuples become lists), so that stored and current compare equal
        self.description = json.loads(json.dumps({"format": FORMAT, **description}, sort_keys=True, default=str))
        self.key = fingerprint(self.description)
        self.records: list[dict] = []

    # ------------------------------------------------------------------------------------------ start
    def open(self) -> int:
        """Keep the committed windows 0..k-1 of a matching manifest (discard a stale folder); returns k."""
        manifest = self.folder / "manifest.json"
        if self.folder.exists():
            try:
                stored = json.loads(manifest.read_text())
            except (OSError, ValueError):
                stored = None
            if stored is None or stored.get("fingerprint") != self.key:
                LOG.warning("discarding %s: its finished windows belong to other inputs or settings (%s); "
                            "extracting from the first window", self.folder, self._what_changed(stored))
                shutil.rmtree(self.folder)
        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            write_json({"fingerprint": self.key, "description": self.description}, manifest, durable=True)
            return 0
        self.records = []
        while True:
            record = self._read_commit(len(self.records))
            if record is None:
                break
            self.records.append(record)
        done = len(self.records)
        for path in self.folder.iterdir():  # what a killed run left beyond the last committed window
            index = self._index_of(path.name)
            if path.name != "manifest.json" and (index is None or index >= done):
                path.unlink()
        return done

    def _what_changed(self, stored) -> str:
        if stored is None:
            return "no readable manifest.json"
        before = stored.get("description") or {}
        changed = [f"{key}: {before.get(key)!r} -> {value!r}" for key, value in self.description.items()
                   if before.get(key) != value]
        changed += [f"{key}: {value!r} -> None" for key, value in before.items() if key not in self.description]
        return "; ".join(changed) or f"fingerprint {stored.get('fingerprint')} -> {self.key}"

    @staticmethod
    def _index_of(name: str):
        match = re.match(r"^(?:\.)?(?:pooled|tokens|window)-(\d{6})\.", name)
        return int(match.group(1)) if match else None

    def part(self, kind: str, index: int) -> Path:
        return self.folder / f"{kind}-{index:06d}.parquet"

    def _read_commit(self, index: int):
        path = self.folder / f"window-{index:06d}.json"
        try:
            record = json.loads(path.read_text())
            if record.get("fingerprint") != self.key or record.get("index") != index:
                return None
            for kind in KINDS:  # the parts' footers say what the commit record says
                if pq.read_metadata(self.part(kind, index)).num_rows != record[f"{kind}_rows"]:
                    return None
        except (OSError, ValueError, KeyError):
            return None
        return record

    # ------------------------------------------------------------------------------------------ write
    def write_part(self, kind: str, index: int, table, schema, row_group_size=None) -> None:
        """One window's rows of `kind`, in the final file's schema and row groups, fsynced and renamed."""
        with atomic_path(self.part(kind, index), durable=True) as tmp:
            with pq.ParquetWriter(tmp, schema, compression="none") as writer:
                writer.write_table(table, row_group_size=row_group_size)

    def commit(self, index: int, counts: dict) -> None:
        """Record window `index` as finished (after both its parts are written): its counts and row numbers."""
        record = {"fingerprint": self.key, "index": index, **counts,
                  **{f"{kind}_rows": pq.read_metadata(self.part(kind, index)).num_rows for kind in KINDS}}
        write_json(record, self.folder / f"window-{index:06d}.json", durable=True)
        self.records.append(record)

    # ------------------------------------------------------------------------------------------ finish
    def assemble(self, kind: str, out_path, schema) -> int:
        """Concatenate the parts of `kind`, window by window and row group by row group (one row group in
        memory at a time), into `out_path` (a temporary name: the caller renames it, durably). Returns the row
        count."""
        rows = 0
        with pq.ParquetWriter(out_path, schema, compression="none") as writer:
            for index in range(len(self.records)):
                with pq.ParquetFile(self.part(kind, index)) as part:  # closed at once: thousands of parts
                    for group in range(part.num_row_groups):
                        table = part.read_row_group(group)
                        writer.write_table(table, row_group_size=max(table.num_rows, 1))
                        rows += table.num_rows
        return rows

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def extraction_code_digest() -> str:
    """The extraction's own code (this module and the library modules it imports): a partial folder written by
    other code is not resumed."""
    extract = Path(__file__).with_name("extract.py")
    return hashlib.sha256(extract.read_bytes() + code_digest(str(extract)).encode()).hexdigest()[:16]


def resume_description(settings, metadata, *, model_dir, dataset_path, device) -> dict:
    """Everything the part files of a partial extraction depend on (the fingerprint of its manifest)."""
    import torch

    environment = environment_summary()
    weights = metadata.get("weights_sha256") or weights_sha256(model_dir)
    return {
        **{f"extraction.{key}": value for key, value in dataclasses.asdict(settings).items()},
        **{f"metadata.{key}": value for key, value in metadata.items() if key != "weights_sha256"},
        "model_weights_sha256": weights, "dataset_sha256": file_sha256(dataset_path),
        "extraction_code": extraction_code_digest(), "torch": environment["torch"],
        "transformers": environment["transformers"], "torch_threads": environment["threads"],
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
