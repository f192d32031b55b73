"""The geometry measures of one (dataset, model): its final-layer token cloud (a seeded subsample of
tokens.parquet, streamed) measured by both quantizers (quantizers.py) and the spread measures (spread.py), one row
per measure (MEASURE_COLUMNS)."""

import logging
import time

import numpy as np
import pandas as pd

from lmcompare import files, hidden_states
from lmcompare.errors import WorkflowInputError
from lmcompare.geometry.quantizers import (QUANTIZER_MEASURES, QUANTIZERS, choose_nbits, quantizer_measures,
                                           train_quantizer)
from lmcompare.geometry.spread import spread_measures

LOG = logging.getLogger("workflow")

MEASURE_COLUMNS = ["model", "dataset", "layer", "n", "n_total", "dims", "quantizer", "M", "nbits", "measure", "value"]


def subsample_indices(n_total: int, max_points: int | None, seed: int) -> np.ndarray:
    """Sorted row indices of a seeded uniform subsample without replacement (all rows when n_total <= max)."""
    if max_points is None or n_total <= max_points:
        return np.arange(n_total, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=max_points, replace=False)).astype(np.int64)


def read_token_cloud(path, layer: int, max_points: int | None, seed: int):
    """Stream tokens.parquet and keep a seeded subsample of one layer's token vectors.

    Returns (points (n, d) float32, n_total, resolved layer, metadata). Memory: the subsample only.
    """
    import pyarrow.parquet as pq

    meta = hidden_states.read_hidden_metadata(path)
    resolved = hidden_states.resolve_layer(layer, meta["n_layers"], what="geometry.layer")
    column = hidden_states.token_column(resolved)
    names = pq.read_schema(path).names
    if column not in names:
        stored = sorted(int(n[len("layer_"):]) for n in names if n.startswith("layer_"))
        raise WorkflowInputError(
            f"{path} holds the token layers {stored} of model {meta.get('model')!r} but geometry.layer={layer} "
            f"(= layer {resolved}) is not among them: add {layer} to extraction.token_layers in the config file "
            f"(and rerun the extraction), or set geometry.layer to a stored layer."
        )
    n_total = pq.ParquetFile(path).metadata.num_rows
    if n_total == 0:
        raise WorkflowInputError(f"{path} holds no tokens: the dataset is empty for model {meta.get('model')!r}.")
    keep = subsample_indices(n_total, max_points, seed)
    chunks, offset = [], 0
    for table in hidden_states.iter_row_groups(path, [column]):
        rows = table.num_rows
        lo, hi = np.searchsorted(keep, [offset, offset + rows])
        if hi > lo:
            chunks.append(hidden_states.vectors(table, column)[keep[lo:hi] - offset])
        offset += rows
    points = np.ascontiguousarray(np.concatenate(chunks).astype(np.float32, copy=False))
    if not np.isfinite(points).all():
        raise WorkflowInputError(
            f"{path}: layer {resolved} of model {meta.get('model')!r} holds non-finite values; the model output "
            f"is broken (for a perturbed model: lower its alpha). Set extraction.nonfinite: drop to skip them."
        )
    return points, n_total, resolved, meta


def measure_cloud(points: np.ndarray, *, M: int = 4, nbits: int = 8, seed: int = 0, min_points_per_centroid: int = 39,
                  small_cloud: str = "fail", lsq_train_iters: int = 25, where: str = "token cloud") -> list[dict]:
    """Every measure on one point cloud: rows (quantizer, M, nbits, measure, value)."""
    rows = []
    bits = choose_nbits(len(points), nbits, min_points_per_centroid, small_cloud, where)
    for kind in QUANTIZERS:
        started = time.perf_counter()
        quantizer = train_quantizer(kind, points, M, bits, seed, lsq_train_iters)
        values = quantizer_measures(points, quantizer, M, bits)
        LOG.info("%s quantizer (M=%d, nbits=%d) on %d x %d: trained and measured in %.1f s",
                 kind, M, bits, *points.shape, time.perf_counter() - started)
        rows += [dict(quantizer=kind, M=M, nbits=bits, measure=f"{kind}_{name}", value=values[name])
                 for name in QUANTIZER_MEASURES]
    started = time.perf_counter()
    for name, value in spread_measures(points).items():
        rows.append(dict(quantizer="none", M=0, nbits=0, measure=name, value=value))
    LOG.info("spread measures in %.1f s", time.perf_counter() - started)
    return rows


def measure_tokens(tokens_path, out_path, *, model: str, dataset: str, layer: int = -1, max_points: int | None = None,
                   seed: int = 0, quantizer: dict) -> pd.DataFrame:
    """Measure the token cloud of one layer of a tokens.parquet and write the table of measures (MEASURE_COLUMNS)
    to out_path. quantizer: geometry.quantizer's M, nbits, min_points_per_centroid, small_cloud, lsq_train_iters."""
    started = time.perf_counter()
    points, n_total, layer, _ = read_token_cloud(tokens_path, layer, max_points, seed)
    LOG.info("token cloud of %s on %s: %d of %d tokens (layer %d, %d dims) read in %.1f s",
             model, dataset, len(points), n_total, layer, points.shape[1], time.perf_counter() - started)
    rows = measure_cloud(points, M=quantizer["M"], nbits=quantizer["nbits"], seed=seed,
                         min_points_per_centroid=quantizer["min_points_per_centroid"],
                         small_cloud=quantizer["small_cloud"], lsq_train_iters=quantizer["lsq_train_iters"],
                         where=f"geometry of model {model!r} on dataset {dataset!r}")
    frame = pd.DataFrame(rows).assign(model=model, dataset=dataset, layer=layer, n=len(points), n_total=n_total,
                                      dims=points.shape[1])[MEASURE_COLUMNS]
    files.write_table(frame, out_path)
    return frame
