"""The hidden-state contract, in one place: the Parquet schemas extraction writes, their column names and
metadata, layer resolution, the check that a file belongs to its (dataset, model), streaming by row group, and a
reader that hands an analysis a layer's vectors with their labels and splits.

Two files per (dataset, model) (docs/ARCHITECTURE.md):
- pooled.parquet: one row per example; example_id, split, label, n_tokens, n_content_tokens, truncated,
  summary_position, and per layer `layer_LL_first` and `layer_LL_mean` (FixedSizeList<float, hidden_size>).
  `first` is the summary token's vector: the tokenizer's classification token wherever it stands (position 0 for
  BERT-style encoders, the last position for XLNet), or the last token for decoders (GPT-2, Llama, ...); the
  metadata's `summary_token` names the rule, `summary_position` the token's position per example
  (extraction/pooling.py). `mean` is the mean over the non-special tokens;
- tokens.parquet: one row per token; example_id, split, position, token_id, word_id, is_special, char_start,
  char_end, and per stored layer `layer_LL`.
Both carry the extraction's metadata as JSON under the schema key `hidden_states` (model, dataset, n_layers,
hidden_size, ...). Layer 0 is the embedding output; negative layers count from the end.

    >>> from lmcompare import load_hidden_states
    >>> states = load_hidden_states("results/hidden/reviews/minilm/pooled.parquet")
    >>> x = states["mean", -1]                 # (n_examples, hidden_size), float32, the last layer
    >>> layer = states.labelled_layer(-1, "mean")   # x, y, split, classes of the labelled rows
"""

import json
import logging
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmcompare.errors import WorkflowInputError
from lmcompare.files import json_bytes
from lmcompare.paths import hidden_path_owner

LOG = logging.getLogger("workflow")

POOLINGS = ("first", "mean")
POOLED_LABEL_COLUMNS = ("example_id", "split", "label", "n_content_tokens")
METADATA_KEY = b"hidden_states"


def pooled_column(layer: int, kind: str) -> str:
    """Column of the pooled file holding one layer's vectors. kind: 'first' (the summary token: the classification
    token, or the last token of a decoder; the file's metadata `summary_token` says which) or 'mean'."""
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


def pooled_schema(n_layers, width, value_type, metadata):
    """Schema of pooled.parquet: one row per example, two pooled vectors per layer."""
    fields = [("example_id", pa.int64()), ("split", pa.string()), ("label", pa.string()),
              ("n_tokens", pa.int32()), ("n_content_tokens", pa.int32()), ("truncated", pa.bool_()),
              ("summary_position", pa.int32())]
    for layer in range(n_layers):
        for kind in POOLINGS:
            fields.append((pooled_column(layer, kind), pa.list_(value_type, width)))
    return pa.schema(fields, metadata={METADATA_KEY: json_bytes(metadata)})


def tokens_schema(token_layers, width, value_type, metadata):
    """Schema of tokens.parquet: one row per token, one vector per stored layer."""
    fields = [("example_id", pa.int64()), ("split", pa.string()), ("position", pa.int32()),
              ("token_id", pa.int32()), ("word_id", pa.int32()), ("is_special", pa.bool_()),
              ("char_start", pa.int32()), ("char_end", pa.int32())]
    fields += [(token_column(layer), pa.list_(value_type, width)) for layer in token_layers]
    return pa.schema(fields, metadata={METADATA_KEY: json_bytes(metadata)})


def read_hidden_metadata(path: str | os.PathLike) -> dict:
    """The metadata an extraction wrote into a hidden-state Parquet file (model, dataset, n_layers, hidden_size, ...);
    check_hidden_metadata also refuses a file of another model or dataset (copied, moved or left over)."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise WorkflowInputError(
            f"{path} is not a readable Parquet file ({err}); delete it and rerun the workflow to re-extract it."
        ) from err
    raw = (schema.metadata or {}).get(METADATA_KEY)
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


def check_hidden_inputs(paths: Sequence) -> None:
    """Check every hidden-state file among a job's input paths against the (dataset, model) its path names.

    Called by runtime.job_logging for every rule, so each stage that reads pooled/tokens Parquet refuses a file
    written for another model or dataset before it reads a row (one check for all readers, not one per stage).
    """
    for path in paths:
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


# ------------------------------------------------------------------------------------------------ the reader
@dataclass
class LabelledLayer:
    """One layer's pooled vectors of the labelled rows of a file, with what a probe or a class statistic needs."""

    x: np.ndarray  # (n, hidden_size) float32
    y: np.ndarray  # (n,) int64 class codes, indices into `classes`
    split: np.ndarray  # (n,) str
    classes: list[str]  # sorted class names
    layer: int  # resolved (non-negative) layer index
    column: str  # the Parquet column read

    def train_test(self, *, model: str = "model", dataset: str = "dataset"):
        """(train_x, train_y, test_x, test_y); both splits must be usable by a probe (else a named error)."""
        train = self.split == "train"
        test = self.split == "test"
        train_y, test_y = self.y[train], self.y[test]
        if len(test_y) == 0:
            raise WorkflowInputError(
                f"dataset {dataset!r} (model {model!r}) has no labelled test examples; the probe needs a test split "
                f"(set test_fraction or splits for the dataset in the config file)."
            )
        present = np.unique(train_y)
        if len(present) < 2:
            names = [self.classes[i] for i in present]
            raise WorkflowInputError(
                f"dataset {dataset!r} (model {model!r}): the train split holds a single class {names}; a probe "
                f"needs at least two classes in train (check label_column and max_examples of the dataset)."
            )
        return self.x[train], train_y, self.x[test], test_y


class HiddenStates:
    """A (dataset, model)'s pooled hidden-state file: its metadata, its layers by name and index, its labels.

    Opening checks the file's metadata against `dataset` / `model` when given (else against the pair its path
    names, when it is laid out as paths.pooled_path lays it out). Vectors are read one column at a time, one row
    group at a time, so memory grows with one layer of the file, never with the whole file.
    `states[pooling, layer]` is the (n_examples, hidden_size) array of every row; negative layers count from the end.
    """

    def __init__(self, path: str | os.PathLike, *, dataset: str | None = None, model: str | None = None):
        self.path = str(path)
        owner = hidden_path_owner(self.path) or (None, None)
        self.metadata = check_hidden_metadata(self.path, dataset=dataset or owner[0], model=model or owner[1])
        self.model = self.metadata.get("model")
        self.dataset = self.metadata.get("dataset")
        self.n_layers = int(self.metadata["n_layers"])
        self.hidden_size = int(self.metadata["hidden_size"])
        # which token the `first` columns hold (extraction/pooling.py); None in a file of an older extraction
        self.summary_token = self.metadata.get("summary_token")

    def __repr__(self) -> str:
        return (f"HiddenStates({self.path!r}: model {self.model!r} on {self.dataset!r}, {self.n_layers} layers x "
                f"{self.hidden_size})")

    def layer(self, layer: int, what: str = "layer") -> int:
        """A layer index resolved onto 0..n_layers-1 (a named error when out of range)."""
        return resolve_layer(int(layer), self.n_layers, what=what)

    def column(self, layer: int, pooling: str) -> str:
        return pooled_column(self.layer(layer), pooling)

    def require_columns(self, columns: Sequence[str]) -> None:
        """Fail with the missing column names when the file lacks the layers asked for."""
        present = set(pq.read_schema(self.path).names)
        missing = [c for c in columns if c not in present]
        if missing:
            raise WorkflowInputError(
                f"{self.path} lacks the columns {missing[:5]}{' ...' if len(missing) > 5 else ''}: it was written by "
                f"an older or different extraction. Delete it and rerun the workflow to re-extract it."
            )

    def row_groups(self, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
        return iter_row_groups(self.path, columns)

    def __getitem__(self, key: tuple[str, int]) -> np.ndarray:
        pooling, layer = key
        column = self.column(layer, pooling)
        blocks = [vectors(group, column) for group in self.row_groups([column])]
        return np.concatenate(blocks) if blocks else np.empty((0, self.hidden_size), np.float32)

    def rows(self, column: str, rows: np.ndarray) -> np.ndarray:
        """Vectors of the given (sorted, unique) file rows of one column, streamed: memory grows with len(rows)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = None
        filled = 0
        offset = 0
        for table in self.row_groups([column]):
            n = table.num_rows
            lo, hi = np.searchsorted(rows, [offset, offset + n])
            if hi > lo:
                x = vectors(table.take(rows[lo:hi] - offset), column)
                if out is None:
                    out = np.empty((len(rows), x.shape[1]), dtype=np.float32)
                out[filled:filled + len(x)] = x
                filled += len(x)
            offset += n
        if filled != len(rows):
            raise WorkflowInputError(f"{self.path}: {len(rows) - filled} requested rows are beyond the file's "
                                     f"{offset} rows; the file is corrupt: delete it and rerun the extraction.")
        return out

    def labels(self, pooling: str = "mean"):
        """example_id, split, label, n_content_tokens of every row, in file order (a pandas DataFrame).

        With mean pooling, rows without a content token (their mean vector is a placeholder zero) lose their label,
        so that every analysis leaves them out; their number is logged. A file without the n_content_tokens column
        (not this workflow's extraction, e.g. one written by hand) cannot tell them apart: every label is kept.
        """
        try:
            present = pq.read_schema(self.path).names
            columns = [c for c in POOLED_LABEL_COLUMNS if c != "n_content_tokens" or c in present]
            frame = pq.read_table(self.path, columns=columns).to_pandas()
        except (OSError, KeyError, ValueError, pa.ArrowInvalid) as err:
            raise WorkflowInputError(
                f"{self.path} lacks the columns {list(POOLED_LABEL_COLUMNS)} or is unreadable ({err}); it was not "
                f"written by this workflow's extraction: delete it and rerun."
            ) from err
        if pooling == "mean" and "n_content_tokens" in frame:
            empty = frame["n_content_tokens"] == 0
            if empty.any():
                LOG.warning("%s: %d examples have no content token (mean undefined); left out", self.path,
                            int(empty.sum()))
                frame["label"] = frame["label"].where(~empty, None)
        return frame

    def labelled_layer(self, layer: int, pooling: str, *, what: str = "layer") -> LabelledLayer:
        """One layer's vectors of the labelled rows (labels()), their class codes and splits; non-finite vectors
        are a named error. `what` names the setting the layer came from in an out-of-range error."""
        resolved = self.layer(layer, what=what)
        column = pooled_column(resolved, pooling)
        frame = self.labels(pooling)
        labelled, classes = labelled_examples(frame, str(self.dataset))
        keep = frame.index.get_indexer(labelled.index)
        dropped = len(frame) - len(keep)
        if dropped:
            LOG.info("%s: %d of %d rows carry no label and are left out", self.path, dropped, len(frame))
        x = self.rows(column, keep) if len(keep) else np.empty((0, self.hidden_size), np.float32)
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x).all(axis=1)).sum())
            raise WorkflowInputError(
                f"{self.path} ({column}) holds {bad} non-finite vectors; re-extract model {self.model!r} on "
                f"{self.dataset!r} (extraction.nonfinite: drop leaves them out)."
            )
        return LabelledLayer(x=x, y=labelled["label_code"].to_numpy(), split=labelled["split"].to_numpy().astype(str),
                             classes=classes, layer=resolved, column=column)


def load_hidden_states(path: str | os.PathLike, *, dataset: str | None = None,
                       model: str | None = None) -> HiddenStates:
    """Open a pooled hidden-state file (see HiddenStates)."""
    return HiddenStates(path, dataset=dataset, model=model)
