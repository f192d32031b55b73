r"""Mutual k-nearest-neighbour alignment (Huh, Cheung, Wang & Isola, "The Platonic Representation Hypothesis",
ICML 2024; their code, minyoungg/platonic-rep, metrics.py `mutual_knn`): on the same n units of two models,

    score = (1/n) sum_i |kNN_X(i) ∩ kNN_Y(i)| / k

where kNN_X(i) are the k units nearest to unit i in X's space by cosine similarity (inner product of the
L2-normalised vectors), unit i itself excluded (their code fills the diagonal of X X^T with -1e8 before the
argsort). It is invariant to any transform of a side that keeps every unit's neighbour ranking (rotations,
isotropic scaling; not a shift, which changes cosines), and is 1 only when the neighbourhoods coincide.

It needs the vectors, not moments: the pair's kNN rule reads both models' units, keeps the units both have,
caps them at `max_units` by a seeded splitmix64 hash of the unit key (the same units in every model pair and
run; all of them when fewer), and computes each swept layer's neighbour lists with faiss (IndexFlatIP: exact
inner products in float32). Memory: the keys of every unit (8 bytes each), one layer's vectors of the sample
(max_units x d x 8 bytes) and the neighbour lists of every swept layer ((L_x + L_y) x max_units x k x 8 bytes);
time: L_x + L_y exact searches of max_units² d, then L_x L_y intersections of max_units x k².
"""

import logging
import time
import numpy as np

from lmcompare import files
from lmcompare.decomposition.units import ModelLayers, iter_units
from lmcompare.decomposition.validation_split import splitmix64
from lmcompare.errors import WorkflowInputError

LOG = logging.getLogger("workflow")


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row is an error: its cosine neighbours are undefined)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    if np.any(norms == 0):
        raise ValueError(f"{int(np.sum(norms == 0))} zero vectors: cosine neighbours are undefined for them")
    return x / norms[:, None]


def knn_indices(x: np.ndarray, k: int, threads: int | None = None) -> np.ndarray:
    """(n, k) indices of each row's k nearest other rows by cosine similarity, nearest first (faiss IndexFlatIP
    on the L2-normalised rows; the row itself is removed from its k + 1 results, or the last one when a duplicate
    outranks it)."""
    import faiss

    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k = {k} nearest neighbours need 1 <= k < n = {n} units")
    if threads:
        faiss.omp_set_num_threads(int(threads))
    vectors = np.ascontiguousarray(normalise_rows(x), dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    _, found = index.search(vectors, k + 1)
    is_self = found == np.arange(n)[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
    keep = np.ones(found.shape, bool)
    keep[np.arange(n), drop] = False
    return found[keep].reshape(n, k).astype(np.int64)


def mutual_knn_score(knn_x: np.ndarray, knn_y: np.ndarray) -> float:
    """Mean over units of |kNN_X(i) ∩ kNN_Y(i)| / k (the neighbour lists of the same units, k each)."""
    if knn_x.shape != knn_y.shape:
        raise ValueError(f"neighbour lists of shapes {knn_x.shape} and {knn_y.shape}: the same units and k needed")
    k = knn_x.shape[1]
    shared = (knn_x[:, :, None] == knn_y[:, None, :]).any(axis=2).sum(axis=1)
    return float(np.mean(shared / k))


def sample_keys(keys: np.ndarray, max_units: int | None, seed: int) -> np.ndarray:
    """The units kept (sorted keys): all when at most max_units (None: no cap), else the max_units with the
    smallest splitmix64 hash of their key and the seed."""
    keys = np.asarray(keys, np.int64)
    if max_units is None or keys.size <= max_units:
        return np.sort(keys)
    order = np.argsort(splitmix64(keys, seed), kind="stable")[:max_units]
    return np.sort(keys[order])


def unit_keys(source: ModelLayers, unit: str, pooling: str, chunk_tokens: int | None) -> np.ndarray:
    """Every unit key of a model's file (a pass over its first swept layer)."""
    first = ModelLayers(source.model, source.hidden_file, source.layers[:1], source.hidden_size)
    blocks = [keys for keys, _, _ in iter_units(first, unit, pooling, chunk_tokens)]
    return np.concatenate(blocks) if blocks else np.zeros(0, np.int64)


def layer_vectors(source: ModelLayers, layer: int, unit: str, keys: np.ndarray, pooling: str,
                  chunk_tokens: int | None) -> np.ndarray:
    """One layer's vectors of the given (sorted) unit keys, streamed: memory grows with len(keys)."""
    one = ModelLayers(source.model, source.hidden_file, (layer,), source.hidden_size)
    out = np.empty((keys.size, source.hidden_size))
    filled = 0
    for block_keys, _, vectors in iter_units(one, unit, pooling, chunk_tokens):
        wanted = np.isin(block_keys, keys, assume_unique=True)
        count = int(wanted.sum())
        out[filled:filled + count] = vectors[wanted]
        filled += count
    if filled != keys.size:
        raise WorkflowInputError(f"{source.hidden_file} (model {source.model!r}) changed while it was read: "
                                 f"{filled} of {keys.size} units found; re-run the job.")
    return out


def mutual_knn_table(x, y, unit: str, *, k: int, max_units: int | None, seed: int, pooling: str = "mean",
                     chunk_tokens: int | None = None, threads: int | None = None):
    """The mutual kNN of every swept layer pair of two SweptModels (similarity.sweep), as sweep-table rows
    (measure mutual_knn; n_units the units used, kept_a = kept_b = k, cut = the max_units cap)."""
    import pandas as pd

    from lmcompare.similarity.sweep import SWEEP_COLUMNS

    keys = np.intersect1d(unit_keys(x.source, unit, pooling, chunk_tokens),
                          unit_keys(y.source, unit, pooling, chunk_tokens), assume_unique=True)
    sample = sample_keys(keys, max_units, seed)
    if sample.size <= k:
        raise WorkflowInputError(
            f"models {x.source.model!r} and {y.source.model!r} share {sample.size} {unit!r} units, too few for "
            f"k = {k} nearest neighbours; lower similarity.knn_k or use more examples.")
    LOG.info("mutual kNN of %s ~ %s: %d units in common, %d used (cap %s, seed %d), k = %d", x.source.model,
             y.source.model, keys.size, sample.size, max_units, seed, k)
    neighbours = []
    for model in (x, y):
        lists = []
        for layer in model.source.layers:
            started = time.perf_counter()
            lists.append(knn_indices(layer_vectors(model.source, layer, unit, sample, pooling, chunk_tokens), k,
                                     threads))
            LOG.info("%s layer %d: neighbour lists in %.2f s", model.source.model, layer, time.perf_counter() - started)
        neighbours.append(lists)
    depth_x, depth_y = x.depths(), y.depths()
    rows = []
    for i, layer_a in enumerate(x.source.layers):
        for j, layer_b in enumerate(y.source.layers):
            rows.append({"model_a": x.source.model, "model_b": y.source.model, "layer_a": layer_a, "layer_b": layer_b,
                         "depth_a": depth_x[i], "depth_b": depth_y[j], "n_layers_a": x.n_layers,
                         "n_layers_b": y.n_layers, "measure": "mutual_knn",
                         "value": mutual_knn_score(neighbours[0][i], neighbours[1][j]), "n_units": int(sample.size),
                         "dims_a": x.source.hidden_size, "dims_b": y.source.hidden_size, "kept_a": k, "kept_b": k,
                         "cut": float("nan") if max_units is None else float(max_units)})
    return pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))


def write_mutual_knn(path, model_a: str, hidden_file_a: str, model_b: str, hidden_file_b: str, *, unit: str, layers,
                     k: int, max_units: int | None, seed: int, pooling: str | None, chunk_tokens: int | None,
                     threads: int | None = None) -> None:
    """The kNN rule: the mutual kNN of every swept layer pair of one model pair, a table."""
    from lmcompare.similarity.sweep import swept_model

    x, y = swept_model(model_a, hidden_file_a, unit, layers), swept_model(model_b, hidden_file_b, unit, layers)
    started = time.perf_counter()
    table = mutual_knn_table(x, y, unit, k=k, max_units=max_units, seed=seed, pooling=pooling or "mean",
                             chunk_tokens=chunk_tokens, threads=threads)
    files.write_table(table, path)
    LOG.info("%d rows out (%d x %d layers), %.1f s", len(table), len(x.source.layers), len(y.source.layers),
             time.perf_counter() - started)


def direct_knn(x: np.ndarray, k: int) -> np.ndarray:
    """The reference: platonic-rep's compute_nearest_neighbors in numpy, float64 (normalise, fill the diagonal of
    X X^T with -1e8, the k largest per row). Quadratic memory: tests and benchmarks only."""
    xn = normalise_rows(x)
    similarity = xn @ xn.T
    np.fill_diagonal(similarity, -1e8)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def direct_mutual_knn(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """platonic-rep's mutual_knn on materialised rows, with masks as their code does (numpy, float64)."""
    n = x.shape[0]
    mask_x, mask_y = np.zeros((n, n)), np.zeros((n, n))
    rows = np.arange(n)[:, None]
    mask_x[rows, direct_knn(x, k)] = 1.0
    mask_y[rows, direct_knn(y, k)] = 1.0
    return float(((mask_x * mask_y).sum(axis=1) / k).mean())

