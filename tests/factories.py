"""Hidden-state Parquet for tests, written through the contract's own schemas and metadata
(lmcompare.hidden_states.pooled_schema / tokens_schema / json_bytes), so that every test file reads like an
extraction's output (docs/ARCHITECTURE.md).

- `write_pooled(path, vectors_by_layer, labels, splits, ...)`: a pooled.parquet, one row per example.
- `write_tokens(path, vectors_by_layer, rows, ...)`: a tokens.parquet, one row per token.
- `latent_models(rng, n, dims)`: vectors of models that share a latent; `token_table(...)`: token rows of examples.

`vectors_by_layer` is {layer: (n, hidden_size) array} or a list (the list index is the layer). A file holds the
layers given, in the contract's column order and types; the metadata's n_layers may claim more (as a file of an
older extraction would), which is how tests build files that lack a layer.
"""
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lmcompare import hidden_states


def reversed_dims(x: np.ndarray) -> np.ndarray:
    return x[:, ::-1]


def _by_layer(vectors_by_layer) -> dict:
    items = vectors_by_layer.items() if isinstance(vectors_by_layer, dict) else enumerate(vectors_by_layer)
    return {int(layer): np.asarray(values) for layer, values in items}


def _write(path, schema: pa.Schema, columns: dict, row_group_size: int | None):
    """The schema's fields that `columns` fills, in the schema's order, with its metadata; row groups of
    `row_group_size` rows (default: one row group)."""
    unknown = set(columns) - set(schema.names)
    assert not unknown, f"columns outside the hidden-state contract: {sorted(unknown)}"
    fields = [field for field in schema if field.name in columns]
    table = pa.Table.from_arrays([columns[field.name] for field in fields],
                                 schema=pa.schema(fields, metadata=schema.metadata))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size or max(table.num_rows, 1))
    return path


def write_pooled(path, vectors_by_layer, labels=None, splits=None, *, first=None, model="m", dataset="ds",
                 example_ids=None, n_tokens=5, n_content_tokens=3, n_layers=None, row_group_size=None,
                 value_type=pa.float32(), metadata=None):
    """A pooled.parquet. vectors_by_layer: each layer's `layer_LL_mean` vectors; `first`: the `layer_LL_first`
    vectors, as the same kind of mapping/list or a function of a layer's mean vectors (default: the mean vectors
    with their dimensions reversed, so that a reader of the wrong pooling gets other numbers).
    labels (None = unlabelled) and splits per example; example_ids default 0..n-1; n_tokens and n_content_tokens
    a number or one per example. `metadata` adds to (or overrides) the extraction metadata."""
    mean = _by_layer(vectors_by_layer)
    first = reversed_dims if first is None else first
    first = {layer: first(values) for layer, values in mean.items()} if callable(first) else _by_layer(first)
    n, width = next(iter(mean.values())).shape
    n_layers = n_layers or max(mean) + 1
    meta = {"model": model, "dataset": dataset, "n_layers": n_layers, "hidden_size": width, "token_layers": [],
            "store_dtype": "float32", "n_examples": n, **(metadata or {})}
    schema = hidden_states.pooled_schema(n_layers, width, value_type, meta)
    labels = [None] * n if labels is None else [None if label is None else str(label) for label in labels]
    splits = ["train"] * n if splits is None else list(splits)
    columns = {
        "example_id": pa.array(np.arange(n) if example_ids is None else np.asarray(example_ids), pa.int64()),
        "split": pa.array(splits, pa.string()),
        "label": pa.array(labels, pa.string()),
        "n_tokens": pa.array(np.broadcast_to(n_tokens, n), pa.int32()),
        "n_content_tokens": pa.array(np.broadcast_to(n_content_tokens, n), pa.int32()),
        "truncated": pa.array(np.zeros(n, bool)),
    }
    for layer in sorted(mean):
        columns[hidden_states.pooled_column(layer, "first")] = hidden_states.fixed_size_list(first[layer], value_type)
        columns[hidden_states.pooled_column(layer, "mean")] = hidden_states.fixed_size_list(mean[layer], value_type)
    return _write(path, schema, columns, row_group_size)


def write_tokens(path, vectors_by_layer, rows, *, model="m", dataset="ds", n_layers=None, row_group_size=None,
                 value_type=pa.float32(), metadata=None):
    """A tokens.parquet. rows: a DataFrame (or dict of columns) with example_id, split, position and is_special,
    optionally word_id (default -1), token_id (default 0), char_start and char_end (default 0), one per token."""
    vectors = _by_layer(vectors_by_layer)
    n, width = next(iter(vectors.values())).shape
    n_layers = n_layers or max(vectors) + 1
    meta = {"model": model, "dataset": dataset, "n_layers": n_layers, "hidden_size": width,
            "token_layers": sorted(vectors), "store_dtype": "float32", **(metadata or {})}
    schema = hidden_states.tokens_schema(sorted(vectors), width, value_type, meta)

    def column(name, default=None):
        values = np.asarray(rows[name]) if name in rows else np.full(n, default)
        return pa.array(values if name != "split" else list(values), schema.field(name).type)

    columns = {name: column(name) for name in ("example_id", "split", "position", "is_special")}
    columns |= {name: column(name, default) for name, default in
                (("token_id", 0), ("word_id", -1), ("char_start", 0), ("char_end", 0))}
    for layer in sorted(vectors):
        columns[hidden_states.token_column(layer)] = hidden_states.fixed_size_list(vectors[layer], value_type)
    return _write(path, schema, columns, row_group_size)


# ------------------------------------------------------------------------------------------ synthetic data
def latent_models(rng, n, dims, latent=6, noise=0.3, offset=5.0):
    """Models that are noisy linear views of one shared latent, with large means (as hidden states have)."""
    shared = rng.normal(size=(n, latent))
    out = []
    for d in dims:
        mix = rng.normal(size=(latent, d))
        out.append(shared @ mix + noise * rng.normal(size=(n, d)) + offset * rng.normal(size=d))
    return out


def token_table(words_per_example, tokens_per_word, split_of):
    """Token rows: [special] word tokens... [special] per example (example_id, split, position, word_id,
    is_special; word_id -1 on the specials)."""
    rows = []
    for example, n_words in enumerate(words_per_example):
        position = 0
        rows.append((example, split_of(example), position, -1, True)); position += 1
        for word in range(n_words):
            for _ in range(tokens_per_word(example, word)):
                rows.append((example, split_of(example), position, word, False)); position += 1
        rows.append((example, split_of(example), position, -1, True))
    return pd.DataFrame(rows, columns=["example_id", "split", "position", "word_id", "is_special"])
