"""Shared I/O for every stage: paths, Parquet hidden states, tidy tables, atomic writes, job logging.

Every stage reads and writes through this module so that the on-disk contracts (see docs/ARCHITECTURE.md)
live in one place.
"""

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CODE_VERSION = "0.1.0"

LOG = logging.getLogger("workflow")


class WorkflowInputError(Exception):
    """Bad input or configuration. The message names the offending input and how to fix it."""


# --------------------------------------------------------------------------------------------- paths
def model_dir(model: str) -> str:
    return f"results/models/{model}"


def dataset_path(dataset: str) -> str:
    return f"results/data/{dataset}.parquet"


def pooled_path(dataset: str, model: str) -> str:
    return f"results/hidden/{dataset}/{model}/pooled.parquet"


def tokens_path(dataset: str, model: str) -> str:
    return f"results/hidden/{dataset}/{model}/tokens.parquet"


# ------------------------------------------------------------------------------- hidden-state columns
def pooled_column(layer: int, kind: str) -> str:
    """Column of the pooled file holding one layer's vectors. kind: 'first' ([CLS]/first token) or 'mean'."""
    if kind not in ("first", "mean"):
        raise ValueError(f"pooling kind must be 'first' or 'mean', got {kind!r}")
    return f"layer_{layer:02d}_{kind}"


def token_column(layer: int) -> str:
    """Column of the tokens file holding one layer's per-token vectors."""
    return f"layer_{layer:02d}"


def resolve_layer(layer: int, n_layers: int, what: str = "layer") -> int:
    """Map a possibly negative layer index onto 0..n_layers-1 (0 = embedding output, -1 = last layer)."""
    resolved = layer + n_layers if layer < 0 else layer
    if not 0 <= resolved < n_layers:
        raise WorkflowInputError(
            f"{what} {layer} is out of range: this model has {n_layers} hidden-state layers "
            f"(0 = embeddings ... {n_layers - 1} = last; negative indices count from the end). "
            f"Fix the layer in the config file."
        )
    return resolved


HIDDEN_PATH = re.compile(r"(?:^|/)results/hidden/(?P<dataset>[^/]+)/(?P<model>[^/]+)/(?:pooled|tokens)\.parquet$")


def hidden_path_owner(path: str | os.PathLike) -> tuple[str, str] | None:
    """(dataset, model) of a path laid out as pooled_path / tokens_path lay it out; None for any other path."""
    match = HIDDEN_PATH.search(Path(path).as_posix())
    return (match["dataset"], match["model"]) if match else None


def read_hidden_metadata(path: str | os.PathLike) -> dict:
    """The metadata an extraction wrote into a hidden-state Parquet file (model, dataset, n_layers, hidden_size, ...);
    check_hidden_metadata also refuses a file of another model or dataset (copied, moved or left over)."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise WorkflowInputError(
            f"{path} is not a readable Parquet file ({err}); delete it and rerun the workflow to re-extract it."
        ) from err
    raw = (schema.metadata or {}).get(b"hidden_states")
    if raw is None:
        raise WorkflowInputError(
            f"{path} has no hidden-state metadata: it was not written by this workflow's extraction. "
            f"Delete it and rerun."
        )
    return json.loads(raw)


def check_hidden_metadata(path, *, dataset: str | None = None, model: str | None = None, n_layers: int | None = None,
                          hidden_size: int | None = None) -> dict:
    """Read the metadata and fail with a clear message when the file belongs to another model/dataset/shape."""
    meta = read_hidden_metadata(path)
    for key, expected in (("model", model), ("dataset", dataset), ("n_layers", n_layers),
                          ("hidden_size", hidden_size)):
        if expected is not None and meta.get(key) != expected:
            wanted = " on ".join(f"{what} {name!r}" for what, name in (("model", model), ("dataset", dataset))
                                 if name is not None) or "this model"
            raise WorkflowInputError(
                f"{path} holds {key}={meta.get(key)!r} but {expected!r} was expected: it was extracted for model "
                f"{meta.get('model')!r} on dataset {meta.get('dataset')!r} (another model or dataset, or an older "
                f"extraction). Rerun the extraction for {wanted}: delete {path} and rerun the workflow."
            )
    return meta


def check_hidden_inputs(snakemake) -> None:
    """Check every hidden-state input of a job against the (dataset, model) its path names.

    Called by job_logging for every rule, so each stage that reads pooled/tokens Parquet refuses a file written for
    another model or dataset before it reads a row (one check for all readers, not one per stage).
    """
    for path in getattr(snakemake, "input", ()):
        owner = hidden_path_owner(path) if isinstance(path, (str, os.PathLike)) else None
        if owner is not None:
            check_hidden_metadata(path, dataset=owner[0], model=owner[1])


def vectors(table: pa.Table | pa.RecordBatch, column: str, dtype=np.float32) -> np.ndarray:
    """A FixedSizeList column as an (n, d) numpy array."""
    col = table.column(column)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    width = col.type.list_size
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(col), width).astype(dtype, copy=False)


def iter_row_groups(path, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
    """Stream a Parquet file one row group at a time (memory bounded by the row-group size)."""
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise WorkflowInputError(
            f"{path} is not a readable Parquet file ({err}); delete it and rerun the workflow."
        ) from err
    for index in range(parquet.num_row_groups):
        yield parquet.read_row_group(index, columns=list(columns) if columns is not None else None)


def fixed_size_list(array: np.ndarray, value_type=pa.float32()) -> pa.FixedSizeListArray:
    """(n, d) numpy -> Arrow FixedSizeList<value_type, d>."""
    n, d = array.shape
    flat = pa.array(np.ascontiguousarray(array).reshape(n * d), type=value_type)
    return pa.FixedSizeListArray.from_arrays(flat, d)


def read_dataset(path) -> "pandas.DataFrame":  # noqa: F821
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise WorkflowInputError(f"{path} is not a readable dataset Parquet ({err}); rerun prepare_dataset.") from err


def labelled_examples(dataset_frame, dataset_name: str = "dataset", min_classes: int = 2):
    """example_id -> (integer label, split) for the labelled rows; class names sorted. Raises if unusable."""
    frame = dataset_frame[dataset_frame["label"].notna()]
    if frame.empty:
        raise WorkflowInputError(
            f"dataset {dataset_name!r} has no labels: this analysis needs a labelled dataset "
            f"(set label_column for it in the config file, or disable the analysis for it)."
        )
    classes = sorted(frame["label"].astype(str).unique())
    if len(classes) < min_classes:
        raise WorkflowInputError(
            f"dataset {dataset_name!r} has {len(classes)} class(es) ({classes}); at least {min_classes} are needed."
        )
    codes = {name: code for code, name in enumerate(classes)}
    return frame.assign(label_code=frame["label"].astype(str).map(codes).astype(np.int64)), classes


# ------------------------------------------------------------------------------------ atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto `path`, on failure delete it.

    A file under its final name is therefore always complete.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
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


def write_json(obj, path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def json_bytes(obj) -> bytes:
    """Compact, key-sorted JSON for Parquet schema metadata."""
    return json.dumps(obj, sort_keys=True, default=str).encode()


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def save_figure(fig, paths: Sequence[str]) -> None:
    """Save a matplotlib figure to each path (png/svg/pdf) atomically, then close it."""
    import matplotlib.pyplot as plt

    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix.lstrip("."), dpi=150, bbox_inches="tight")
    plt.close(fig)


# --------------------------------------------------------------------------------------- job logging
def limit_heap_fragmentation(threshold_bytes: int = 1 << 16) -> bool:
    """Make glibc serve large blocks by mmap and give freed memory back to the system.

    Batches of varying shapes otherwise fragment the heap and a long job's resident memory creeps up with the
    number of batches (measured in docs/performance.md); with this it stays flat. No-op off glibc. Used by the
    extraction only: it made training jobs (many short-lived tensors) markedly slower.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, threshold_bytes)) and bool(libc.mallopt(m_trim_threshold,
                                                                                            threshold_bytes))
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def job_logging(snakemake_or_log, name: str | None = None) -> Iterator[logging.Logger]:
    """Log to the rule's log file (and stderr): what ran, on what, how long; the traceback on failure.

    Accepts the `snakemake` object of a script rule, or a log path (None: stderr only).
    """
    log_path = None
    rule = name
    if hasattr(snakemake_or_log, "log"):
        log_path = snakemake_or_log.log[0] if len(snakemake_or_log.log) else None
        rule = rule or getattr(snakemake_or_log, "rule", None)
    elif snakemake_or_log is not None:
        log_path = str(snakemake_or_log)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    logging.captureWarnings(True)
    started = time.perf_counter()
    if hasattr(snakemake_or_log, "input"):
        LOG.info("rule %s: wildcards %s", rule, dict(snakemake_or_log.wildcards.items()))
        LOG.info("inputs: %s", list(snakemake_or_log.input))
        LOG.info("outputs: %s", list(snakemake_or_log.output))
    try:
        check_hidden_inputs(snakemake_or_log)  # a hidden-state input of another model/dataset stops the job here
        yield LOG
    except WorkflowInputError as err:
        LOG.error("%s", err)
        LOG.info("failed after %.1f s", time.perf_counter() - started)
        raise
    except BaseException:
        LOG.error("unexpected failure:\n%s", traceback.format_exc())
        LOG.info("failed after %.1f s", time.perf_counter() - started)
        raise
    LOG.info("done in %.1f s", time.perf_counter() - started)
