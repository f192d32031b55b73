"""The variability ν of a layer (Xie et al., Findings of EMNLP 2022, arXiv:2210.10041), and its streaming.

For every layer l, with h_n the pooled hidden state of example n (mean over non-special tokens, or the first token)
and classes y = 1..C with example sets G_y:

    Σ_w(l) = (1/C) Σ_y Cov_pop(G_y)                       (unweighted mean of per-class population covariances)
    Σ_b(l) = Cov_pop(μ_1, ..., μ_C) about (1/C) Σ_y μ_y    (the class means about their unweighted mean)
    ν(l)   = (1/C) tr(Σ_w(l) · pinv(Σ_b(l)))               (low = the layer is specialised for the task)

Everything is computed from moments streamed row group by row group in one pass per group of layers:
memory grows with the hidden size (one d x d matrix per layer and subset), never with the corpus.
`run_nu` is the nu.csv of one (dataset, model, pooling). See docs/variability.md.
"""

import logging
import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from lmcompare import files
from lmcompare.errors import WorkflowInputError
from lmcompare.hidden_states import HiddenStates, pooled_column, vectors
from lmcompare.variability.numbering import insert_authors_layer
from lmcompare.variability.subsets import class_codes, subset_masks

LOG = logging.getLogger("workflow")

EPS = float(np.finfo(np.float64).eps)
# Between-class scatter below this fraction of the data's mean squared norm is rounding noise: the class means
# coincide, ν is undefined (pinv of a zero matrix would report a perfect 0).
DEGENERATE_RELATIVE = 1e-12
POOLINGS = ("mean", "first")

@dataclass(frozen=True)
class Variability:
    """ν of one layer on one set of examples, with the quantities it is made of."""

    nu: float
    trace_within: float
    trace_between: float
    rank_between: int
    n_classes: int
    degenerate: bool
    between_noise_fraction: float = float("nan")

    def as_dict(self) -> dict:
        return asdict(self)


def between_class_eigen(class_means: np.ndarray, rtol: float | None = None):
    """Non-zero eigenpairs of Σ_b = population covariance of the class means about their unweighted mean.

    Σ_b = Mᵀ M / C with M the (C, d) centred means, so its eigenpairs come from the thin SVD of M / √C (O(d C²),
    and accurate where forming the d x d matrix and decomposing it would square the condition number).
    Eigenvalues are kept as numpy/torch `pinv(Σ_b, rtol=rtol)` would keep them: λ > rtol · λ_max with
    rtol = d · eps by default; Σ_b has rank at most C - 1 by construction, so no more are kept.
    Returns (eigenvalues (k,), eigenvectors (k, d)).
    """
    means = np.asarray(class_means, dtype=np.float64)
    n_classes, dim = means.shape
    centred = means - means.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred / math.sqrt(n_classes), full_matrices=False)
    eigen = singular**2
    if eigen.size == 0 or eigen[0] <= 0:
        return eigen[:0], vt[:0]
    cutoff = (dim * EPS if rtol is None else rtol) * eigen[0]
    keep = np.flatnonzero(eigen > cutoff)[: max(n_classes - 1, 0)]
    return eigen[keep], vt[keep]


def variability_from_statistics(within: np.ndarray, class_means: np.ndarray, *, rtol: float | None = None,
                                scale: float | None = None, noise_between: float | None = None) -> Variability:
    """ν = (1/C) tr(Σ_w pinv(Σ_b)) from Σ_w (d, d) and the C class means (C, d).

    tr(Σ_w pinv(Σ_b)) = Σ_k u_kᵀ Σ_w u_k / λ_k over the kept eigenpairs (λ_k, u_k) of Σ_b.
    `scale` is the data's mean squared norm (defaults to tr Σ_w + tr Σ_b + |mean of the means|²): when tr Σ_b is
    below DEGENERATE_RELATIVE of it the class means coincide up to rounding and ν is NaN (flagged `degenerate`).
    `noise_between`, the expected tr Σ_b from sampling noise of the class means alone, is reported as a fraction
    of tr Σ_b (see `expected_noise_between`).
    """
    within = np.asarray(within, dtype=np.float64)
    means = np.asarray(class_means, dtype=np.float64)
    n_classes = means.shape[0]
    eigen, vectors = between_class_eigen(means, rtol)
    centred = means - means.mean(axis=0)
    trace_between = float((centred**2).sum() / n_classes)
    trace_within = float(np.trace(within))
    if scale is None:
        scale = trace_within + trace_between + float(means.mean(axis=0) @ means.mean(axis=0))
    degenerate = eigen.size == 0 or trace_between <= DEGENERATE_RELATIVE * max(scale, np.finfo(np.float64).tiny)
    if degenerate:
        nu = float("nan")
    else:
        projected = np.einsum("kd,de,ke->k", vectors, within, vectors)
        nu = float((projected / eigen).sum() / n_classes)
    noise_fraction = float("nan")
    if noise_between is not None and trace_between > 0:
        noise_fraction = float(noise_between / trace_between)
    return Variability(nu=nu, trace_within=trace_within, trace_between=trace_between,
                       rank_between=0 if degenerate else int(eigen.size), n_classes=int(n_classes),
                       degenerate=bool(degenerate), between_noise_fraction=noise_fraction)


def variability_of(x: np.ndarray, y: np.ndarray, *, rtol: float | None = None) -> Variability:
    """ν of one layer from its vectors in memory: x (n, d) and the class of each row, y (n,) (any labels; at least
    two examples of each of at least two classes). The same statistics as the streamed path (Σ_w the unweighted
    mean of the classes' population covariances, Σ_b that of the class means), with the sampling-noise fraction of
    the between-class scatter."""
    x = np.asarray(x, dtype=np.float64)
    _, codes, counts = np.unique(np.asarray(y), return_inverse=True, return_counts=True)
    if len(counts) < 2 or counts.min() < 2:
        raise ValueError(f"ν needs at least two examples of each of at least two classes; the classes have {counts}")
    groups = [x[codes == c] for c in range(len(counts))]
    means = np.stack([group.mean(axis=0) for group in groups])
    within = np.mean([np.atleast_2d(np.cov(group, rowvar=False, ddof=0)) for group in groups], axis=0)
    traces = np.array([np.trace(np.atleast_2d(np.cov(group, rowvar=False, ddof=1))) for group in groups])
    return variability_from_statistics(within, means, rtol=rtol, noise_between=expected_noise_between(traces, counts))


def expected_noise_between(class_traces: np.ndarray, counts: np.ndarray) -> float:
    """E[tr Σ̂_b] - tr Σ_b: the between-class scatter that sampling noise in the class means adds on its own.

    With m̂_y = μ_y + e_y, Cov(e_y) = Σ_y / n_y, independent: E[Σ̂_b] = Σ_b + ((C-1)/C²) Σ_y Σ_y / n_y.
    class_traces are the unbiased (n-1) per-class traces tr Σ_y.
    """
    counts = np.asarray(counts, dtype=np.float64)
    n_classes = len(counts)
    return float((n_classes - 1) / n_classes**2 * np.sum(np.asarray(class_traces) / counts))


class MomentAccumulator:
    """Streams, for one layer and several subsets of the examples, what ν needs.

    The class sizes of every subset are known before the pass (labels are read first), so the within-class
    second moments are accumulated already weighted by 1 / n_y into one d x d matrix per subset:
        A = Σ_y (1/n_y) Σ_{i∈y} x̃_i x̃_iᵀ,   S_y = Σ_{i∈y} x̃_i,   x̃ = x - shift
    and Σ_w = (1/C) (A - Σ_y m_y m_yᵀ) with m_y = S_y / n_y. The shift (the first row group's mean) makes the
    float64 sums well conditioned for hidden states with a large common offset; covariances do not depend on it.
    """

    def __init__(self, class_counts: np.ndarray, dim: int):
        self.class_counts = np.asarray(class_counts, dtype=np.int64)  # (n_subsets, C)
        n_subsets, n_classes = self.class_counts.shape
        with np.errstate(divide="ignore"):
            self.inverse_counts = np.where(self.class_counts > 0, 1.0 / np.maximum(self.class_counts, 1), 0.0)
        self.dim = dim
        self.weighted_outer = np.zeros((n_subsets, dim, dim))
        self.class_sums = np.zeros((n_subsets, n_classes, dim))
        self.sum_squares = np.zeros((n_subsets, n_classes))
        self.seen = np.zeros((n_subsets, n_classes), dtype=np.int64)
        self.shift: np.ndarray | None = None

    def update(self, x: np.ndarray, codes: np.ndarray, members: np.ndarray) -> None:
        """x (n, d); codes (n,) class codes; members (n_subsets, n) bool: which rows each subset holds."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape[1] != self.dim:
            raise ValueError(f"expected vectors of width {self.dim}, got {x.shape[1]}")
        rows = members.any(axis=0)
        if not rows.any():
            return
        if self.shift is None:
            self.shift = x[rows].mean(axis=0)
        shifted = x - self.shift
        n_classes = self.class_counts.shape[1]
        for subset, member in enumerate(members):
            if not member.any():
                continue
            xs = shifted[member]
            code = codes[member]
            weights = self.inverse_counts[subset, code]
            self.weighted_outer[subset] += (xs * weights[:, None]).T @ xs
            onehot = np.zeros((len(code), n_classes))
            onehot[np.arange(len(code)), code] = 1.0
            self.class_sums[subset] += onehot.T @ xs
            self.sum_squares[subset] += onehot.T @ np.einsum("nd,nd->n", xs, xs)
            self.seen[subset] += np.bincount(code, minlength=n_classes)

    def result(self, subset: int = 0, rtol: float | None = None) -> Variability:
        counts = self.class_counts[subset]
        if not np.array_equal(self.seen[subset], counts):
            raise RuntimeError(f"streamed class counts {self.seen[subset]} differ from the expected {counts}")
        present = counts > 0
        n_present = int(present.sum())
        means = self.class_sums[subset][present] / counts[present, None]
        within = (self.weighted_outer[subset] - means.T @ means) / n_present
        within = (within + within.T) / 2
        # mean squared norm of the (unshifted) vectors, averaged over classes: the scale rounding errors live on
        shift = self.shift if self.shift is not None else np.zeros(self.dim)
        mean_square = self.sum_squares[subset][present] / counts[present]
        scale = float(np.mean(mean_square + 2 * means @ shift + shift @ shift))
        n = counts[present].astype(np.float64)
        class_traces = np.maximum(mean_square - (means**2).sum(axis=1), 0.0) * n / np.maximum(n - 1, 1)
        return variability_from_statistics(within, means, rtol=rtol, scale=scale,
                                           noise_between=expected_noise_between(class_traces, n))


# ============================================================================================ streaming
def layers_per_pass(dim: int, n_subsets: int, memory_mb: float) -> int:
    """How many layers' accumulators fit in half of `memory_mb` (the rest is for the row group being read)."""
    per_layer = n_subsets * dim * dim * 8 * 1.2
    return max(1, int(memory_mb * 1e6 * 0.5 // per_layer))


def stream_variability(pooled_path, *, codes: np.ndarray, masks: dict[str, np.ndarray], pooling: str = "mean",
                       layers: list[int] | None = None, rtol: float | None = None, memory_mb: float = 4000,
                       example_ids: np.ndarray | None = None) -> list[dict]:
    """ν of every layer and subset of a pooled file, streamed row group by row group.

    codes: class code per file row (-1 unused); masks: subset name -> bool per file row. Returns one dict per
    (subset, layer) with n, dims, class sizes and the Variability fields.
    """
    if pooling not in POOLINGS:
        raise WorkflowInputError(f"variability pooling must be one of {POOLINGS}, got {pooling!r}; fix the config file.")
    states = HiddenStates(pooled_path)
    dim = states.hidden_size
    layers = list(range(states.n_layers)) if layers is None else [states.layer(l) for l in layers]
    states.require_columns([pooled_column(l, pooling) for l in layers])
    names = list(masks)
    members = np.stack([masks[name] for name in names])
    n_classes = int(codes.max()) + 1
    class_counts = np.stack([np.bincount(codes[m], minlength=n_classes) for m in members])
    per_pass = layers_per_pass(dim, len(names), memory_mb)
    rows_out = []
    for start in range(0, len(layers), per_pass):
        group = layers[start:start + per_pass]
        columns = [pooled_column(l, pooling) for l in group]
        accumulators = {l: MomentAccumulator(class_counts, dim) for l in group}
        offset = 0
        started = time.perf_counter()
        for table in states.row_groups(columns):
            n = table.num_rows
            chunk_codes = codes[offset:offset + n]
            chunk_members = members[:, offset:offset + n]
            used = chunk_members.any(axis=0)
            for layer, column in zip(group, columns):
                x = vectors(table, column, dtype=np.float64)
                if x.shape[1] != dim:
                    raise WorkflowInputError(
                        f"{pooled_path}: column {column} has width {x.shape[1]} but the metadata says hidden_size "
                        f"{dim}; the file is corrupt: delete it and rerun the extraction."
                    )
                bad = used & ~np.isfinite(x).all(axis=1)
                if bad.any():
                    row = offset + int(np.flatnonzero(bad)[0])
                    which = f"example_id {int(example_ids[row])}" if example_ids is not None else f"row {row}"
                    raise WorkflowInputError(
                        f"{pooled_path}: non-finite hidden state in {column} at {which} "
                        f"({int(bad.sum())} such rows in this row group); re-extract with extraction.nonfinite: drop "
                        f"or in float32 (extraction.compute_dtype)."
                    )
                accumulators[layer].update(x[used], chunk_codes[used], chunk_members[:, used])
            offset += n
        if offset != len(codes):
            raise WorkflowInputError(
                f"{pooled_path} has {offset} rows in its row groups but {len(codes)} labels; the file is corrupt: "
                f"delete it and rerun the extraction."
            )
        LOG.info("layers %s: %d rows streamed in %.1f s", group, offset, time.perf_counter() - started)
        for layer in group:
            for index, name in enumerate(names):
                counts = class_counts[index][class_counts[index] > 0]
                result = accumulators[layer].result(index, rtol)
                rows_out.append({
                    "subset": name, "layer": layer, "n": int(counts.sum()), "dims": dim,
                    "min_class_n": int(counts.min()), "max_class_n": int(counts.max()), **result.as_dict(),
                })
    return rows_out


def run_nu(pooled_path, out_path, *, dataset: str, model: str, pooling: str, split: str, small_classes: str,
           min_class_examples: int, pinv_rtol, robustness: dict, memory_mb: float) -> None:
    """nu.csv of one (dataset, model, pooling): ν of every layer on the full data and the robustness subsets."""
    import pandas as pd

    frame = HiddenStates(pooled_path).labels(pooling)
    codes, classes, dropped = class_codes(frame, dataset=dataset, split=split, small_classes=small_classes,
                                          min_class_examples=min_class_examples)
    if dropped:
        LOG.warning("dataset %s, split %s: dropped small classes %s", dataset, split, dropped)
    masks = subset_masks(codes, imbalanced_keep=robustness["imbalanced_keep"],
                         subsample_fraction=robustness["subsample_fraction"], seed=robustness["seed"],
                         min_examples=min_class_examples)
    LOG.info("%s / %s, %s pooling, split %s: %d rows in, %d classes %s; subsets %s", dataset, model, pooling, split,
             len(frame), len(classes), classes, {k: int(v.sum()) for k, v in masks.items()})
    rows = stream_variability(pooled_path, codes=codes, masks=masks, pooling=pooling, rtol=pinv_rtol,
                              memory_mb=memory_mb, example_ids=frame["example_id"].to_numpy())
    table = pd.DataFrame(rows)
    table.insert(0, "model", model)
    table.insert(1, "dataset", dataset)
    table.insert(2, "pooling", pooling)
    table.insert(3, "split", split)
    table = insert_authors_layer(table)
    undefined = table[(table["subset"] == "full") & table["degenerate"]]["layer"].tolist()
    if undefined:
        LOG.warning("layers %s: class means coincide, ν undefined (NaN) and excluded from selection", undefined)
    files.write_table(table, out_path)

