"""Atomic writes of tables, JSON and folders (a file under its final name is always complete), and the dataset
reader. Standard library at import: the rule files reach it."""

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

from lmcompare.errors import WorkflowInputError

LOG = logging.getLogger("workflow")


def update_digest(digest, path) -> None:
    """Feed a file's content into a hashlib digest, 4 MiB at a time."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)


def file_sha256(path) -> str:
    """The sha256 of a file's content (hex), read in blocks."""
    import hashlib

    digest = hashlib.sha256()
    update_digest(digest, path)
    return digest.hexdigest()


def fsync_path(path) -> None:
    """fsync a file or a folder (a folder's fsync makes the renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto `path`, on failure delete it.

    A file under its final name is therefore always complete. `durable`: the file is fsynced before the rename and
    its folder after it, so the file survives a crash of the machine, not only of the process (checkpoints and the
    extraction's finished windows, which a rerun resumes from).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        os.replace(tmp, final)
        if durable:
            fsync_path(final.parent)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_table(frame, path) -> None:
    """Write a tidy table (CSV, or Parquet when the path ends in .parquet) atomically."""
    with atomic_path(path) as tmp:
        if str(path).endswith(".parquet"):
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False, float_format="%.10g")
    LOG.info("wrote %s (%d rows)", path, len(frame))


def write_json(obj, path, durable: bool = False) -> None:
    with atomic_path(path, durable) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def json_bytes(obj) -> bytes:
    """Compact, key-sorted JSON for Parquet schema metadata."""
    return json.dumps(obj, sort_keys=True, default=str).encode()


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def read_dataset(path) -> "pandas.DataFrame":  # noqa: F821
    import pandas as pd
    import pyarrow as pa

    try:
        return pd.read_parquet(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise WorkflowInputError(f"{path} is not a readable dataset Parquet ({err}); rerun prepare_dataset.") from err
