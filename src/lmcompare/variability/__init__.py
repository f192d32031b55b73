"""Hidden-state variability per layer (Xie et al., Findings of EMNLP 2022, arXiv:2210.10041).

For every layer l, with h_n the pooled hidden state of example n (mean over non-special tokens, or the first token)
and classes y = 1..C with example sets G_y:

    Σ_w(l) = (1/C) Σ_y Cov_pop(G_y)                       (unweighted mean of per-class population covariances)
    Σ_b(l) = Cov_pop(μ_1, ..., μ_C) about (1/C) Σ_y μ_y    (the class means about their unweighted mean)
    ν(l)   = (1/C) tr(Σ_w(l) · pinv(Σ_b(l)))               (low = the layer is specialised for the task)

Everything is computed from moments streamed row group by row group in one pass per group of layers:
memory grows with the hidden size (one d x d matrix per layer and subset), never with the corpus.
See docs/variability.md for the variant, the numerics and every output column.
"""

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow.parquet as pq

from lmcompare import plotting
from lmcompare import files, hidden_states
from lmcompare.probe import linear_probe
from lmcompare.errors import WorkflowInputError

LOG = logging.getLogger("workflow")

EPS = float(np.finfo(np.float64).eps)
# Between-class scatter below this fraction of the data's mean squared norm is rounding noise: the class means
# coincide, ν is undefined (pinv of a zero matrix would report a perfect 0).
DEGENERATE_RELATIVE = 1e-12
POOLINGS = ("mean", "first")
SPLITS = ("train", "test", "all")
SUBSETS = ("full", "imbalanced", "subsample")
# A recommended layer whose between-class scatter is more than this fraction sampling noise is logged as unreliable.
NOISY_FRACTION = 0.5
LABEL_COLUMNS = ("example_id", "split", "label", "n_content_tokens")


# ============================================================================================ the metric
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


# ====================================================================================== labels, subsets
def read_labels(pooled_path, pooling: str = "mean") -> "pandas.DataFrame":  # noqa: F821
    """example_id, split, label, n_content_tokens of every row of a pooled hidden-state file, in file order.

    With mean pooling, rows without a content token (their mean vector is a placeholder zero) lose their label,
    so that every analysis leaves them out; their number is logged.
    """
    try:
        frame = pq.read_table(pooled_path, columns=list(LABEL_COLUMNS)).to_pandas()
    except (OSError, KeyError, ValueError) as err:
        raise WorkflowInputError(
            f"{pooled_path} lacks the columns {list(LABEL_COLUMNS)} or is unreadable ({err}); it was not written by "
            f"this workflow's extraction: delete it and rerun."
        ) from err
    if pooling == "mean":
        empty = frame["n_content_tokens"] == 0
        if empty.any():
            LOG.warning("%s: %d examples have no content token (mean undefined); left out", pooled_path,
                        int(empty.sum()))
            frame["label"] = frame["label"].where(~empty, None)
    return frame


def class_codes(frame, *, dataset: str, split: str, small_classes: str = "fail", min_class_examples: int = 2):
    """Integer class codes per row (-1 = not used) for the rows of `split` that carry a label.

    Returns (codes (n_rows,), class_names (C,), dropped {name: count}). Raises WorkflowInputError on an
    unlabelled dataset, a split without labelled rows, a single class, or a class below `min_class_examples`
    (unless small_classes == 'drop', which drops such classes and reports them).
    """
    if split not in SPLITS:
        raise WorkflowInputError(f"variability.split must be one of {SPLITS}, got {split!r}; fix the config file.")
    labelled, names = hidden_states.labelled_examples(frame, dataset)
    if split != "all":
        labelled = labelled[labelled["split"] == split]
    if labelled.empty:
        raise WorkflowInputError(
            f"dataset {dataset!r} has no labelled examples in split {split!r}; set variability.split in "
            f"the config file to a split that has labels (train, test or all)."
        )
    counts = labelled["label_code"].value_counts().sort_index()
    small = {names[code]: int(n) for code, n in counts.items() if n < min_class_examples}
    if small and small_classes != "drop":
        listing = ", ".join(f"{name!r}: {n}" for name, n in sorted(small.items()))
        raise WorkflowInputError(
            f"dataset {dataset!r}, split {split!r}: class(es) with fewer than {min_class_examples} examples "
            f"({listing}); a class covariance needs at least 2. Add examples, or set "
            f"variability.small_classes: drop in the config file to leave such classes out."
        )
    kept_codes = sorted(code for code, n in counts.items() if n >= min_class_examples)
    if len(kept_codes) < 2:
        raise WorkflowInputError(
            f"dataset {dataset!r}, split {split!r} has {len(kept_codes)} usable class(es) "
            f"({[names[c] for c in kept_codes]}); ν needs at least two classes with {min_class_examples}+ examples "
            f"each. Use a dataset with two or more classes, or another variability.split."
        )
    remap = {old: new for new, old in enumerate(kept_codes)}
    codes = np.full(len(frame), -1, dtype=np.int64)
    positions = frame.index.get_indexer(labelled.index)
    mapped = labelled["label_code"].map(remap)
    ok = mapped.notna().to_numpy()
    codes[positions[ok]] = mapped[ok].astype(np.int64).to_numpy()
    return codes, [names[c] for c in kept_codes], small


def _take(rng, indices: np.ndarray, k: int) -> np.ndarray:
    return np.sort(rng.choice(indices, size=k, replace=False)) if k < len(indices) else indices


def subset_masks(codes: np.ndarray, *, imbalanced_keep: float, subsample_fraction: float, seed: int,
                 min_examples: int = 2) -> dict[str, np.ndarray]:
    """Boolean row masks of the subsets ν is computed on (rows with code -1 are never used).

    full: every usable row. imbalanced: the largest class (ties: lowest code) keeps all its rows, every other
    class keeps round(imbalanced_keep · n_y) rows. subsample: every class keeps round(subsample_fraction · n_y)
    rows (stratified). Both draw without replacement with `seed` and keep at least `min_examples` per class.
    """
    rng = np.random.default_rng(seed)
    full = codes >= 0
    n_classes = int(codes.max()) + 1 if full.any() else 0
    by_class = [np.flatnonzero(codes == c) for c in range(n_classes)]
    sizes = np.array([len(rows) for rows in by_class])
    largest = int(np.argmax(sizes)) if n_classes else -1
    imbalanced = np.zeros_like(full)
    subsample = np.zeros_like(full)
    for code, rows in enumerate(by_class):
        keep = len(rows) if code == largest else max(min_examples, int(round(imbalanced_keep * len(rows))))
        imbalanced[_take(rng, rows, min(keep, len(rows)))] = True
    for code, rows in enumerate(by_class):
        keep = max(min_examples, int(round(subsample_fraction * len(rows))))
        subsample[_take(rng, rows, min(keep, len(rows)))] = True
    return {"full": full, "imbalanced": imbalanced, "subsample": subsample}


# ============================================================================================ streaming
def require_columns(pooled_path, columns) -> None:
    """Fail with the missing column names when a pooled file lacks the layers asked for."""
    present = set(pq.read_schema(pooled_path).names)
    missing = [c for c in columns if c not in present]
    if missing:
        raise WorkflowInputError(
            f"{pooled_path} lacks the columns {missing[:5]}{' ...' if len(missing) > 5 else ''}: it was written by an "
            f"older or different extraction. Delete it and rerun the workflow to re-extract it."
        )


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
    meta = hidden_states.read_hidden_metadata(pooled_path)
    n_layers, dim = int(meta["n_layers"]), int(meta["hidden_size"])
    layers = list(range(n_layers)) if layers is None else [hidden_states.resolve_layer(l, n_layers) for l in layers]
    require_columns(pooled_path, [hidden_states.pooled_column(l, pooling) for l in layers])
    names = list(masks)
    members = np.stack([masks[name] for name in names])
    n_classes = int(codes.max()) + 1
    class_counts = np.stack([np.bincount(codes[m], minlength=n_classes) for m in members])
    per_pass = layers_per_pass(dim, len(names), memory_mb)
    rows_out = []
    for start in range(0, len(layers), per_pass):
        group = layers[start:start + per_pass]
        columns = [hidden_states.pooled_column(l, pooling) for l in group]
        accumulators = {l: MomentAccumulator(class_counts, dim) for l in group}
        offset = 0
        started = time.perf_counter()
        for table in hidden_states.iter_row_groups(pooled_path, columns):
            n = table.num_rows
            chunk_codes = codes[offset:offset + n]
            chunk_members = members[:, offset:offset + n]
            used = chunk_members.any(axis=0)
            for layer, column in zip(group, columns):
                x = hidden_states.vectors(table, column, dtype=np.float64)
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


# ================================================================================================ probe
def stratified_subsample(codes: np.ndarray, max_n: int | None, seed: int) -> np.ndarray:
    """Indices of at most max_n rows, class proportions kept (every class keeps at least one row), sorted."""
    indices = np.arange(len(codes))
    if max_n is None or len(codes) <= max_n:
        return indices
    rng = np.random.default_rng(seed)
    fraction = max_n / len(codes)
    chosen = [_take(rng, indices[codes == c], max(1, int(round(fraction * (codes == c).sum()))))
              for c in np.unique(codes)]
    return np.sort(np.concatenate(chosen))


def gather_rows(pooled_path, column: str, rows: np.ndarray) -> np.ndarray:
    """Vectors of the given (sorted, unique) file rows of one column, streamed: memory grows with len(rows)."""
    rows = np.asarray(rows, dtype=np.int64)
    out = None
    filled = 0
    offset = 0
    for table in hidden_states.iter_row_groups(pooled_path, [column]):
        n = table.num_rows
        lo, hi = np.searchsorted(rows, [offset, offset + n])
        if hi > lo:
            x = hidden_states.vectors(table.take(rows[lo:hi] - offset), column)
            if out is None:
                out = np.empty((len(rows), x.shape[1]), dtype=np.float32)
            out[filled:filled + len(x)] = x
            filled += len(x)
        offset += n
    if filled != len(rows):
        raise WorkflowInputError(f"{pooled_path}: {len(rows) - filled} requested rows are beyond the file's {offset} "
                                 f"rows; the file is corrupt: delete it and rerun the extraction.")
    return out


def probe_layers(pooled_path, frame, *, dataset: str, pooling: str = "mean", layers: list[int] | None = None,
                 max_train: int | None = None, max_test: int | None = None, seed: int = 0) -> list[dict]:
    """The shared linear probe (probe.py) per layer: train split -> test split accuracy."""
    meta = hidden_states.read_hidden_metadata(pooled_path)
    n_layers = int(meta["n_layers"])
    layers = list(range(n_layers)) if layers is None else [hidden_states.resolve_layer(l, n_layers) for l in layers]
    require_columns(pooled_path, [hidden_states.pooled_column(l, pooling) for l in layers])
    labelled, _ = hidden_states.labelled_examples(frame, dataset)
    positions = frame.index.get_indexer(labelled.index)
    splits = labelled["split"].to_numpy()
    codes = labelled["label_code"].to_numpy()
    train, test = positions[splits == "train"], positions[splits == "test"]
    train_codes, test_codes = codes[splits == "train"], codes[splits == "test"]
    if len(test) == 0 or len(train) == 0:
        raise WorkflowInputError(
            f"dataset {dataset!r} has {len(train)} labelled train and {len(test)} labelled test examples; the probe "
            f"needs both splits. Give the dataset a test split (splits / split_column / test_fraction in the config file)."
        )
    if len(np.unique(train_codes)) < 2:
        raise WorkflowInputError(f"dataset {dataset!r}: the train split holds a single class; the probe needs two.")
    keep_train = stratified_subsample(train_codes, max_train, seed)
    keep_test = stratified_subsample(test_codes, max_test, seed + 1)
    train, train_codes = train[keep_train], train_codes[keep_train]
    test, test_codes = test[keep_test], test_codes[keep_test]
    wanted = np.concatenate([train, test])
    order = np.argsort(wanted)
    back = np.empty_like(order)
    back[order] = np.arange(len(order))  # position of each wanted row in the sorted read
    rows = []
    for layer in layers:
        column = hidden_states.pooled_column(layer, pooling)
        started = time.perf_counter()
        x = gather_rows(pooled_path, column, wanted[order])[back]
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise WorkflowInputError(
                f"{pooled_path}: non-finite hidden state in {column} at example_id "
                f"{int(frame['example_id'].iloc[wanted[np.flatnonzero(bad)[0]]])} ({int(bad.sum())} rows); "
                f"re-extract with extraction.nonfinite: drop or in float32."
            )
        result = linear_probe(x[:len(train)], train_codes, x[len(train):], test_codes, seed=seed)
        LOG.info("probe layer %d: accuracy %.4f (C=%g) in %.1f s", layer, result.accuracy, result.C,
                 time.perf_counter() - started)
        rows.append({"layer": layer, "n": result.n_train, "n_test": result.n_test, "dims": result.n_features,
                     "accuracy": result.accuracy, "ci_low": result.ci_low, "ci_high": result.ci_high, "C": result.C})
    return rows


# =========================================================================================== selection
def authors_last_layer(layers):
    """The authors' `--last_layer` value of our layer index (Xie et al.'s released code).

    Ours counts hidden states with 0 = the embedding output, so layer k is the output of transformer block k;
    theirs counts the blocks from 0: our layer k is their `--last_layer k - 1`. Layer 0 (the embeddings) and the
    selection's -1 ("no eligible layer") have no authors' value: <NA>. A scalar gives an int or pandas.NA, a
    sequence a pandas nullable-integer array."""
    import pandas as pd

    if np.ndim(layers) == 0:
        return int(layers) - 1 if int(layers) >= 1 else pd.NA
    values = pd.array(np.asarray(layers, dtype=np.int64) - 1, dtype="Int64")
    values[np.asarray(layers, dtype=np.int64) < 1] = pd.NA
    return values


def _insert_authors_layer(table, after: str = "layer", name: str = "authors_last_layer"):
    """Put the authors' numbering of column `after` right beside it (recomputed, so CSV round trips keep ints)."""
    if name in table:
        table = table.drop(columns=[name])
    table.insert(table.columns.get_loc(after) + 1, name, authors_last_layer(table[after].to_numpy()))
    return table


def select_layers(layers, nu, tolerance: float) -> tuple[int, int]:
    """(argmin layer, recommended layer): the recommended layer is the smallest layer whose ν is within
    `tolerance` (relative) of the minimum. Layers with undefined ν are skipped; (-1, -1) when none is defined."""
    layers = np.asarray(layers)
    nu = np.asarray(nu, dtype=np.float64)
    defined = np.isfinite(nu)
    if not defined.any():
        return -1, -1
    best = float(nu[defined].min())
    argmin = int(layers[defined][np.argmin(nu[defined])])
    within = defined & (nu <= best * (1.0 + tolerance))
    return argmin, int(layers[within].min())


def spearman(x, y) -> tuple[float, float, int]:
    """Spearman rank correlation over the pairs where both are finite: (rho, p-value, n)."""
    from scipy.stats import spearmanr

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan"), float("nan"), n
    result = spearmanr(x[ok], y[ok])
    rho, p_value = float(result.statistic), float(result.pvalue)
    if p_value == 0.0 and len(np.unique(x[ok])) == n and len(np.unique(y[ok])) == n:
        # |rho| = 1: the t approximation gives exactly 0; without ties only the identity and the reversed ordering
        # of n ranks reach |rho| = 1, so the exact two-sided permutation p-value is 2 / n!
        p_value = 2.0 / math.factorial(n)
    return rho, p_value, n


def eligible_nu(frame, max_noise_fraction: float | None):
    """ν per row, NaN where the layer is not eligible for selection: `paper` selection (max_noise_fraction None)
    keeps every defined layer; the `noise_guard` option drops layers whose between-class scatter is more than
    max_noise_fraction expected sampling noise (their ν is biased low, see docs/variability.md)."""
    nu = frame["nu"].to_numpy(dtype=np.float64).copy()
    if max_noise_fraction is not None:
        nu[~(frame["between_noise_fraction"].to_numpy(dtype=np.float64) <= max_noise_fraction)] = np.nan
    return nu


def selection_table(nu_frame, probe_frame, tolerance: float, max_noise_fraction: float | None = None):
    """One row per model: the layers ν recommends, their probe accuracies, and the claim check.

    The Spearman correlation uses every layer with a defined ν, whatever the selection rule."""
    import pandas as pd

    rows = []
    for model, group in nu_frame[nu_frame["subset"] == "full"].groupby("model", sort=False):
        group = group.sort_values("layer")
        argmin, recommended = select_layers(group["layer"], eligible_nu(group, max_noise_fraction), tolerance)
        probes = probe_frame[probe_frame["model"] == model].set_index("layer")["accuracy"]
        acc = group["layer"].map(probes).to_numpy(dtype=np.float64)
        rho, p_value, n_used = spearman(group["nu"], acc)
        nu_by_layer = group.set_index("layer")["nu"]
        best_probe = int(probes.idxmax()) if len(probes) else -1
        last = int(group["layer"].max())
        rows.append({
            "model": model, "n_layers": int(len(group)), "n": int(group["n"].iloc[0]), "dims": int(group["dims"].iloc[0]),
            "argmin_layer": argmin, "argmin_authors_last_layer": authors_last_layer(argmin),
            "nu_min": float(nu_by_layer.get(argmin, np.nan)),
            "recommended_layer": recommended, "recommended_authors_last_layer": authors_last_layer(recommended),
            "nu_recommended": float(nu_by_layer.get(recommended, np.nan)),
            "between_noise_fraction_recommended": float(
                group.set_index("layer")["between_noise_fraction"].get(recommended, np.nan)),
            "tolerance": tolerance,
            "max_noise_fraction": np.nan if max_noise_fraction is None else max_noise_fraction,
            "eligible_layers": int(np.isfinite(eligible_nu(group, max_noise_fraction)).sum()),
            "accuracy_recommended": float(probes.get(recommended, np.nan)),
            "accuracy_argmin": float(probes.get(argmin, np.nan)),
            "best_probe_layer": best_probe, "best_probe_authors_last_layer": authors_last_layer(best_probe),
            "accuracy_best": float(probes.get(best_probe, np.nan)),
            "accuracy_last": float(probes.get(last, np.nan)),
            "spearman_rho": rho, "spearman_p": p_value, "spearman_n_layers": n_used,
            "undefined_layers": int((~np.isfinite(group["nu"].to_numpy(dtype=np.float64))).sum()),
        })
    table = pd.DataFrame(rows)
    for column in ("argmin_authors_last_layer", "recommended_authors_last_layer", "best_probe_authors_last_layer"):
        if column in table:
            table[column] = table[column].astype("Int64")
    return table


def robustness_table(nu_frame, tolerance: float, max_noise_fraction: float | None = None):
    """Per model and subset: ν on the subset vs on the full data, and how far the selected layers move."""
    import pandas as pd

    rows = []
    for model, group in nu_frame.groupby("model", sort=False):
        full = group[group["subset"] == "full"].set_index("layer").sort_index()
        full_argmin, full_rec = select_layers(full.index, eligible_nu(full, max_noise_fraction), tolerance)
        for subset, part in group.groupby("subset", sort=False):
            part = part.set_index("layer").sort_index()
            argmin, rec = select_layers(part.index, eligible_nu(part, max_noise_fraction), tolerance)
            ratio = (part["nu"] / full["nu"].reindex(part.index)).to_numpy(dtype=np.float64)
            log_ratio = np.abs(np.log(ratio[np.isfinite(ratio) & (ratio > 0)]))
            rho, _, _ = spearman(full["nu"].reindex(part.index), part["nu"])
            rows.append({
                "model": model, "subset": subset, "n": int(part["n"].iloc[0]),
                "min_class_n": int(part["min_class_n"].iloc[0]), "max_class_n": int(part["max_class_n"].iloc[0]),
                "argmin_layer": argmin, "recommended_layer": rec,
                "recommended_authors_last_layer": authors_last_layer(rec),
                "argmin_shift": argmin - full_argmin if argmin >= 0 and full_argmin >= 0 else np.nan,
                "recommended_shift": rec - full_rec if rec >= 0 and full_rec >= 0 else np.nan,
                "spearman_vs_full": rho,
                "median_abs_log_ratio": float(np.median(log_ratio)) if log_ratio.size else np.nan,
                "max_abs_log_ratio": float(log_ratio.max()) if log_ratio.size else np.nan,
            })
    table = pd.DataFrame(rows)
    if "recommended_authors_last_layer" in table:
        table["recommended_authors_last_layer"] = table["recommended_authors_last_layer"].astype("Int64")
    return table


# ============================================================================================== figure
def plot_variability(nu_frame, probe_frame, selection, *, dataset: str, pooling: str, paths) -> None:
    """ν (log scale, top) and probe accuracy (bottom) by layer for every model; the recommended layer starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    full = nu_frame[nu_frame["subset"] == "full"]
    models = list(dict.fromkeys(full["model"]))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for index, model in enumerate(models):
        colour, marker = plotting.model_style(model, index)
        curve = full[full["model"] == model].sort_values("layer")
        probes = probe_frame[probe_frame["model"] == model].sort_values("layer")
        pick = selection[selection["model"] == model].iloc[0]
        label = f"{model} (Spearman ρ(ν, accuracy) = {pick['spearman_rho']:.2f})"
        bottom.plot(probes["layer"], probes["accuracy"], marker=marker, ms=3, color=colour, label=model)
        bottom.fill_between(probes["layer"], probes["ci_low"], probes["ci_high"], color=colour, alpha=0.15, lw=0)
        undefined = curve[~np.isfinite(curve["nu"].to_numpy(dtype=np.float64))]["layer"].tolist()
        if undefined:
            label += f"; ν undefined at layer {', '.join(map(str, undefined))}"
        top.plot(curve["layer"], curve["nu"], marker=marker, ms=3, color=colour, label=label)
        rec = int(pick["recommended_layer"])
        if rec >= 0:
            top.plot([rec], [pick["nu_recommended"]], marker="*", ms=14, color=colour, mec="black", ls="none")
            acc = probes.set_index("layer")["accuracy"].get(rec, np.nan)
            bottom.plot([rec], [acc], marker="*", ms=14, color=colour, mec="black", ls="none")
    top.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    top.yaxis.set_major_formatter(plain)
    low, high = top.get_ylim()
    # label the minor ticks only when the curves span less than a decade (otherwise they crowd)
    top.yaxis.set_minor_formatter(plain if high / low < 10 else matplotlib.ticker.NullFormatter())
    top.tick_params(axis="y", which="minor", labelsize=7)
    # two-line labels aligned on one x: the long single-line ones ran into each other across the two panels
    top.set_ylabel("variability ν\n(log scale, lower = more specialised)")
    rule = f"tolerance {float(selection['tolerance'].iloc[0]):g}"
    guard = float(selection["max_noise_fraction"].iloc[0])
    if np.isfinite(guard):
        rule += f", noise guard {guard:g}"
    top.set_title(f"Hidden-state variability and probe accuracy by layer\n{dataset}, {pooling} pooling; "
                  f"★ = recommended layer ({rule})")
    # legends beside the panels (outside the axes): long model names neither cover curves nor labels
    top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    top.grid(alpha=0.3)
    bottom.set_ylabel("linear-probe test\naccuracy (95% CI)")
    bottom.set_xlabel("layer (ours: 0 = embedding output; the authors' --last_layer = layer − 1)")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    bottom.xaxis.get_major_locator().set_params(integer=True)
    fig.align_ylabels([top, bottom])
    plotting.save_figure(fig, paths)


# ========================================================================================== rule entry
def run_nu(pooled_path, out_path, *, dataset: str, model: str, pooling: str, split: str, small_classes: str,
           min_class_examples: int, pinv_rtol, robustness: dict, memory_mb: float) -> None:
    import pandas as pd

    frame = read_labels(pooled_path, pooling)
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
    table = _insert_authors_layer(table)
    undefined = table[(table["subset"] == "full") & table["degenerate"]]["layer"].tolist()
    if undefined:
        LOG.warning("layers %s: class means coincide, ν undefined (NaN) and excluded from selection", undefined)
    files.write_table(table, out_path)


def run_probe(pooled_path, out_path, *, dataset: str, model: str, pooling: str, max_train, max_test, seed) -> None:
    import pandas as pd

    frame = read_labels(pooled_path, pooling)
    rows = probe_layers(pooled_path, frame, dataset=dataset, pooling=pooling, max_train=max_train,
                        max_test=max_test, seed=seed)
    table = pd.DataFrame(rows)
    for position, (key, value) in enumerate((("model", model), ("dataset", dataset), ("pooling", pooling))):
        table.insert(position, key, value)
    files.write_table(_insert_authors_layer(table), out_path)


def run_summary(nu_paths, probe_paths, *, dataset: str, pooling: str, tolerance: float, layers_out, selection_out,
                robustness_out, figure_paths, max_noise_fraction: float | None = None) -> None:
    import pandas as pd

    nu_frame = pd.concat([pd.read_csv(p) for p in nu_paths], ignore_index=True)
    probe_frame = pd.concat([pd.read_csv(p) for p in probe_paths], ignore_index=True)
    selection = selection_table(nu_frame, probe_frame, tolerance, max_noise_fraction)
    robustness = robustness_table(nu_frame, tolerance, max_noise_fraction)
    full = nu_frame[nu_frame["subset"] == "full"].drop(columns=["subset"])
    layers = full.merge(probe_frame[["model", "layer", "n_test", "accuracy", "ci_low", "ci_high", "C"]],
                        on=["model", "layer"], how="left")
    rec = selection.set_index("model")
    layers["is_argmin"] = layers["layer"] == layers["model"].map(rec["argmin_layer"])
    layers["is_recommended"] = layers["layer"] == layers["model"].map(rec["recommended_layer"])
    layers = _insert_authors_layer(layers)
    noisy = selection[selection["between_noise_fraction_recommended"] > NOISY_FRACTION]["model"].tolist()
    if noisy:
        LOG.warning("%s: at the recommended layer more than half of the between-class scatter is expected from "
                    "sampling noise alone; ν is biased low there (docs/variability.md): use more examples", noisy)
    for _, row in selection.iterrows():
        LOG.info("%s: argmin layer %d, recommended %d = the authors' --last_layer %s (acc %.4f; best probe layer %d "
                 "acc %.4f); Spearman %.3f", row["model"], row["argmin_layer"], row["recommended_layer"],
                 row["recommended_authors_last_layer"], row["accuracy_recommended"], row["best_probe_layer"],
                 row["accuracy_best"], row["spearman_rho"])
    files.write_table(layers, layers_out)
    files.write_table(selection, selection_out)
    files.write_table(robustness, robustness_out)
    plot_variability(nu_frame, probe_frame, selection, dataset=dataset, pooling=pooling, paths=figure_paths)


def main(snakemake) -> None:
    with contextlib.nullcontext():  # TRANSITIONAL: the rule script opens the job log
        p = snakemake.params
        w = snakemake.wildcards
        plotting.use_model_order(getattr(p, "model_index", None))
        if snakemake.rule == "variability_nu":
            run_nu(snakemake.input.pooled, snakemake.output.nu, dataset=w.dataset, model=w.model, pooling=w.pooling,
                   split=p.split, small_classes=p.small_classes, min_class_examples=p.min_class_examples,
                   pinv_rtol=p.pinv_rtol, robustness=dict(p.robustness), memory_mb=p.memory_mb)
        elif snakemake.rule == "variability_probe":
            run_probe(snakemake.input.pooled, snakemake.output.probe, dataset=w.dataset, model=w.model,
                      pooling=w.pooling, max_train=p.max_train, max_test=p.max_test, seed=p.seed)
        elif snakemake.rule == "variability_summary":
            run_summary(list(snakemake.input.nu), list(snakemake.input.probe), dataset=w.dataset, pooling=w.pooling,
                        tolerance=p.tolerance, max_noise_fraction=p.max_noise_fraction,
                        layers_out=snakemake.output.layers,
                        selection_out=snakemake.output.selection, robustness_out=snakemake.output.robustness,
                        figure_paths=[snakemake.output.png, snakemake.output.svg])
        else:
            raise ValueError(f"variability.py has no entry for rule {snakemake.rule!r}")

