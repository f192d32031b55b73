"""Text units read from one model's hidden-state file, streamed row group by row group.

A model's part of a pair file is a `ModelLayers`: its hidden-state file and the layers read from it (the target
layer, then the basis layer when the two differ). `iter_units` streams its units in increasing key order, each
block as (keys, split codes, vectors), the vectors of its layers side by side:
- ``example``: the pooled per-example vector of pooled.parquet (key: example_id);
- ``word``: the mean of a word's tokens from tokens.parquet (key: example_id << WORD_BITS | word_id);
- ``chunk``: the sum over every token the model read (special tokens included) divided by the chunk length T.
Column names, metadata, layer resolution and row-group streaming come from lmcompare.hidden_states.
"""

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from lmcompare import hidden_states
from lmcompare.decomposition.tags import UNITS
from lmcompare.errors import WorkflowInputError

SPLITS = ("train", "test")  # the dataset's splits (codes 0, 1 in the unit streams)
WORD_BITS = 24  # word keys: example_id << WORD_BITS | word_id

UnitBlock = tuple[np.ndarray, np.ndarray, np.ndarray]  # (keys, split codes, vectors (n, hidden_size * layers))


@dataclass(frozen=True)
class ModelLayers:
    """What one model contributes to a pair file: its hidden-state file and the layers read from it."""

    model: str
    hidden_file: str
    layers: tuple  # resolved layer indices: (target,) when target and basis layers coincide, else (target, basis)
    hidden_size: int


def resolve_layers(target_layer: int, basis_layer: int, n_layers: int, model: str) -> tuple:
    """A model's resolved layers: (target,) when target and basis layers coincide, else (target, basis)."""
    target = hidden_states.resolve_layer(target_layer, n_layers, f"decomposition.target_layer for model {model!r}:")
    basis = hidden_states.resolve_layer(basis_layer, n_layers, f"decomposition.basis_layer for model {model!r}:")
    return (target,) if target == basis else (target, basis)


def model_layers(model: str, hidden_file: str, unit: str, target_layer: int, basis_layer: int) -> ModelLayers:
    """The layers of a model's hidden-state file a unit reads, checked against the file's metadata (a file of
    another model is refused; word and chunk units need the layers among the file's per-token layers)."""
    meta = hidden_states.check_hidden_metadata(hidden_file, model=model)
    n_layers = int(meta["n_layers"])
    layers = resolve_layers(target_layer, basis_layer, n_layers, model)
    if unit in ("word", "chunk"):
        stored = sorted({hidden_states.resolve_layer(int(l), n_layers) for l in meta.get("token_layers", [])})
        missing = [l for l in layers if l not in stored]
        if missing:
            raise WorkflowInputError(
                f"{hidden_file} (model {model!r}) stores per-token vectors for layers {stored} only, but the {unit!r} "
                f"unit needs layer(s) {missing}. Add them to extraction.token_layers (e.g. "
                f"[{', '.join(str(l) for l in missing)}]) or change decomposition.target_layer / basis_layer."
            )
    return ModelLayers(model, str(hidden_file), layers, int(meta["hidden_size"]))


def unit_example_ids(keys: np.ndarray, unit: str) -> np.ndarray:
    """The example each unit key belongs to."""
    return keys >> WORD_BITS if unit == "word" else keys


def _check_finite(array: np.ndarray, keys: np.ndarray, model: str, path: str, unit: str) -> None:
    if not np.all(np.isfinite(array)):
        bad = int(np.where(~np.all(np.isfinite(array), axis=1))[0][0])
        key = int(keys[bad])
        where = f"example_id {key}" if unit != "word" else f"example_id {key >> WORD_BITS}, word {key & ((1 << WORD_BITS) - 1)}"
        raise WorkflowInputError(
            f"{path} (model {model!r}): non-finite hidden state at {where}. Re-extract the model (in float32: "
            f"extraction.store_dtype / compute_dtype) or set extraction.nonfinite: drop."
        )


def _split_codes(column) -> np.ndarray:
    """'train' -> 0, 'test' -> 1 (vectorised in Arrow: token files have many rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    codes = pc.index_in(column, value_set=pa.array(list(SPLITS)))
    if codes.null_count:
        values = column.filter(pc.is_null(codes))
        raise WorkflowInputError(
            f"split value {values[0].as_py()!r} is neither 'train' nor 'test'; re-run prepare_dataset and the extraction."
        )
    return codes.to_numpy(zero_copy_only=False).astype(np.int8)


def _ensure_sorted(keys: np.ndarray, last: int | None, path: str) -> None:
    if keys.size and ((last is not None and keys[0] <= last) or np.any(np.diff(keys) <= 0)):
        raise WorkflowInputError(
            f"{path}: units are not in increasing example order (or are duplicated); the hidden-state file does "
            f"not follow the contract. Delete it and re-run the extraction."
        )


def iter_example_units(source: ModelLayers, pooling: str = "mean") -> Iterator[UnitBlock]:
    """(keys=example_id, split codes, vectors (n, d*layers)) per row group of pooled.parquet."""
    columns = [hidden_states.pooled_column(layer, pooling) for layer in source.layers]
    last = None
    for table in hidden_states.iter_row_groups(source.hidden_file, ["example_id", "split", *columns]):
        keys = table.column("example_id").to_numpy().astype(np.int64)
        _ensure_sorted(keys, last, source.hidden_file)
        last = int(keys[-1]) if keys.size else last
        vecs = np.hstack([hidden_states.vectors(table, c, np.float64) for c in columns]) if keys.size else np.zeros((0, source.hidden_size * len(columns)))
        _check_finite(vecs, keys, source.model, source.hidden_file, "example")
        yield keys, _split_codes(table.column("split")), vecs


def iter_token_units(source: ModelLayers, unit: str, chunk_tokens: int | None = None) -> Iterator[UnitBlock]:
    """Units aggregated from tokens.parquet, one block per row group.

    word: mean of the tokens of each (example_id, word_id), word_id >= 0;
    chunk: sum over every token of the example (special tokens included) / chunk_tokens.
    An example cut across row groups is carried over to the next one.
    """
    path = source.hidden_file
    columns = [hidden_states.token_column(layer) for layer in source.layers]
    width = source.hidden_size * len(columns)
    carry = None  # (example_id, word_id, split, vectors) of the last example of the previous row group
    last_key = None
    wanted = ["example_id", "split", "word_id", *columns]

    def aggregate(example_id, word_id, split, vecs):
        if unit == "word":
            keep = word_id >= 0
            example_id, word_id, split, vecs = example_id[keep], word_id[keep], split[keep], vecs[keep]
            if np.any(word_id >= (1 << WORD_BITS)):
                raise WorkflowInputError(f"{path}: a word id exceeds 2^{WORD_BITS}; examples are too long for word units.")
            keys = (example_id << WORD_BITS) | word_id
        else:
            keys = example_id
        if keys.size == 0:
            return keys, split, np.zeros((0, width))
        if not np.all(np.isfinite(vecs)):
            bad = int(np.flatnonzero(~np.all(np.isfinite(vecs), axis=1))[0])
            _check_finite(vecs[bad:bad + 1].astype(np.float64), keys[bad:bad + 1], source.model, path, unit)
        order = np.argsort(keys, kind="stable")
        keys, split, vecs = keys[order], split[order], vecs[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        sums = np.add.reduceat(vecs, starts, axis=0, dtype=np.float64)
        counts = np.diff(np.r_[starts, keys.size])
        denominators = counts[:, None] if unit == "word" else float(chunk_tokens)
        return keys[starts], split[starts], sums / denominators

    for table in hidden_states.iter_row_groups(path, wanted):
        example_id = table.column("example_id").to_numpy().astype(np.int64)
        word_id = table.column("word_id").to_numpy().astype(np.int64)
        split = _split_codes(table.column("split"))
        # float32 rows (a token row group can be large); the per-unit sums accumulate in float64
        vecs = np.hstack([hidden_states.vectors(table, c) for c in columns]) if example_id.size else np.zeros((0, width), np.float32)
        if carry is not None:
            example_id = np.r_[carry[0], example_id]
            word_id = np.r_[carry[1], word_id]
            split = np.r_[carry[2], split]
            vecs = np.vstack([carry[3], vecs])
            carry = None
        if example_id.size == 0:
            continue
        tail = example_id == example_id[-1]
        carry = (example_id[tail], word_id[tail], split[tail], vecs[tail])
        body = ~tail
        keys, codes, units = aggregate(example_id[body], word_id[body], split[body], vecs[body])
        _check_finite(units, keys, source.model, path, unit)
        _ensure_sorted(keys, last_key, path)
        last_key = int(keys[-1]) if keys.size else last_key
        yield keys, codes, units
    if carry is not None:
        keys, codes, units = aggregate(*carry)
        _check_finite(units, keys, source.model, path, unit)
        _ensure_sorted(keys, last_key, path)
        yield keys, codes, units


def iter_units(source: ModelLayers, unit: str, pooling: str = "mean", chunk_tokens: int | None = None
               ) -> Iterator[UnitBlock]:
    """A model's units of one kind (UNITS), in increasing key order, one block per row group."""
    if unit == "example":
        return iter_example_units(source, pooling)
    if unit in ("word", "chunk"):
        if unit == "chunk" and not chunk_tokens:
            raise WorkflowInputError("unit 'chunk' needs the chunk length T (chunk_tokens) of a chunks dataset.")
        return iter_token_units(source, unit, chunk_tokens)
    raise WorkflowInputError(f"unknown decomposition unit {unit!r}; use one of {UNITS} in decomposition.units.")
