"""Latent-space geometry and downstream performance (Marbut et al., arXiv:2406.12159).

For each (dataset, model): the final-layer token cloud (every token, special tokens included; a seeded
subsample of at most `max_points` tokens) is quantized with a product quantizer and an additive quantizer
(faiss LocalSearchQuantizer), and measured:

- per quantizer (`product`, `additive`), as the authors' code computes them (`mode: paper`):
  recon_error_mean   Σ_i ||x_i − x̂_i||² / Σ_i ||x_i||²          (relative reconstruction error)
  recon_error_iqr    IQR of e_i / max_j e_j, e_i = ||x_i − x̂_i||  (normalised error distribution)
  recon_error_skew   Fisher skewness (biased) of e_i
  centroid_nn_dist_var  variance of the squared L2 distance from each centroid to its nearest other centroid
                     of the same codebook, pooled over codebooks and divided by the largest one
  cell_count_var     per codebook: p_k = count_k / n, odds_k = p_k / (1 − p_k) · (K − 1); variance over k;
                     mean over codebooks
  cell_count_kl      per codebook: KL(p ‖ uniform 1/K); mean over codebooks
  patchiness         counts = concatenated per-codebook cell counts (M·K values); m = Σ counts / K;
                     V = var(counts); patchiness = (m + V/m − 1) / m
- spread: EEE, VRM (Vasicek entropy), IsoScore.

The downstream score of each model is its cross-validated linear-probe accuracy over every labelled example (the
shared protocol of probe.py inside each fold; `protocol: split` for the train/test split) on a labelled dataset,
or a user table. The paper's question: for each measure, the least-squares line of score on measure across models
(slope, intercept, Pearson r, R², n, p), with a bootstrap interval of r over models, a permutation p value and
its Holm correction over the measures; sorted by R².

All maths lives in plain functions; `main(snakemake)` dispatches on the rule name.
"""

import contextlib
import logging
import math
import time

import numpy as np
import pandas as pd

from lmcompare import plotting
from lmcompare import files, hidden_states
from lmcompare.errors import WorkflowInputError

LOG = logging.getLogger("workflow")
# faiss logs at INFO which of its builds it tried ("No module named 'faiss.swigfaiss_avx2'" on CPUs without the build):
# noise in every geometry log, so only its warnings and errors are kept
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

QUANTIZERS = ("product", "additive")
QUANTIZER_MEASURES = (
    "recon_error_mean",
    "recon_error_iqr",
    "recon_error_skew",
    "centroid_nn_dist_var",
    "cell_count_var",
    "cell_count_kl",
    "patchiness",
)
SPREAD_MEASURES = ("eee", "vrm", "isoscore")
MEASURE_COLUMNS = ["model", "dataset", "layer", "n", "n_total", "dims", "quantizer", "M", "nbits", "measure", "value"]
REGRESSION_COLUMNS = ["dataset", "measure", "n", "slope", "intercept", "pearson_r", "r2", "p_value", "r_ci_low",
                      "r_ci_high", "confidence", "n_bootstrap", "p_permutation", "permutations", "p_holm",
                      "score_name", "note"]
MIN_MODELS = 3


# ------------------------------------------------------------------------------------ token cloud
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


# ------------------------------------------------------------------------------------ quantizers
def fitting_nbits(n_points: int, nbits: int, min_points_per_centroid: int) -> int:
    """Largest codebook size 2^b <= 2^nbits with at least min_points_per_centroid points per centroid (0: none)."""
    for bits in range(nbits, 0, -1):
        if n_points >= min_points_per_centroid * (1 << bits):
            return bits
    return 0


def choose_nbits(n_points: int, nbits: int, min_points_per_centroid: int, small_cloud: str, where: str) -> int:
    """The codebook size to train with; fails with the minimum, or shrinks with a log line (small_cloud)."""
    needed = min_points_per_centroid * (1 << nbits)
    if n_points >= needed:
        return nbits
    if small_cloud == "fail":
        raise WorkflowInputError(
            f"{where}: {n_points} token vectors, but codebooks of 2^{nbits} = {1 << nbits} centroids need at least "
            f"{needed} ({min_points_per_centroid} per centroid, geometry.quantizer.min_points_per_centroid). Use a "
            f"larger dataset (or raise geometry.max_points), lower geometry.quantizer.nbits, or set "
            f"geometry.quantizer.small_cloud: shrink to train a smaller codebook."
        )
    bits = fitting_nbits(n_points, nbits, min_points_per_centroid)
    if bits == 0:
        raise WorkflowInputError(
            f"{where}: {n_points} token vectors are too few for any codebook: even 2 centroids need "
            f"{2 * min_points_per_centroid} points ({min_points_per_centroid} per centroid). Use a larger dataset."
        )
    LOG.warning(
        "%s: %d points < %d needed for 2^%d centroids; training smaller codebooks of 2^%d = %d centroids "
        "(geometry.quantizer.small_cloud: shrink). Quantizer measures are not comparable with nbits=%d runs.",
        where, n_points, needed, nbits, bits, 1 << bits, nbits,
    )
    return bits


def train_quantizer(kind: str, points: np.ndarray, M: int, nbits: int, seed: int, lsq_train_iters: int = 25):
    """Train a faiss ProductQuantizer or LocalSearchQuantizer (seeded) on the points."""
    import faiss

    d = points.shape[1]
    if kind == "product":
        if d % M:
            raise WorkflowInputError(
                f"the product quantizer splits the {d} dimensions into geometry.quantizer.M={M} equal blocks; "
                f"{d} is not divisible by {M}. Pick an M that divides {d}."
            )
        quantizer = faiss.ProductQuantizer(d, M, nbits)
        quantizer.cp.seed = int(seed)
    elif kind == "additive":
        quantizer = faiss.LocalSearchQuantizer(d, M, nbits)
        quantizer.random_seed = int(seed)
        quantizer.train_iters = int(lsq_train_iters)
    else:
        raise ValueError(f"unknown quantizer kind {kind!r}")
    quantizer.train(np.ascontiguousarray(points, dtype=np.float32))
    return quantizer


def unpack_codes(codes: np.ndarray, M: int, nbits: int) -> np.ndarray:
    """faiss bit-packed codes (n, code_size) uint8 -> (n, M) int64 centroid indices (LSB-first packing)."""
    codes = np.asarray(codes, dtype=np.uint8)
    if nbits == 8:
        return codes[:, :M].astype(np.int64)
    bits = np.unpackbits(codes, axis=1, bitorder="little")[:, : M * nbits].reshape(len(codes), M, nbits)
    return (bits.astype(np.int64) << np.arange(nbits, dtype=np.int64)).sum(axis=2)


def quantizer_centroids(quantizer) -> np.ndarray:
    """Centroids as (M, K, dim): PQ sub-space centroids (dim = d/M), or additive codebooks (dim = d)."""
    import faiss

    if hasattr(quantizer, "centroids"):
        flat = faiss.vector_float_to_array(quantizer.centroids)
        return flat.reshape(quantizer.M, quantizer.ksub, quantizer.dsub)
    flat = faiss.vector_float_to_array(quantizer.codebooks)
    return flat.reshape(quantizer.M, quantizer.K, quantizer.d)


def encode(quantizer, points: np.ndarray, M: int, nbits: int):
    """(codes (n, M) int64, reconstruction (n, d) float32)."""
    packed = quantizer.compute_codes(np.ascontiguousarray(points, dtype=np.float32))
    return unpack_codes(packed, M, nbits), quantizer.decode(packed)


# ------------------------------------------------------------------------------- quantizer measures
def reconstruction_measures(points: np.ndarray, recon: np.ndarray) -> dict:
    """Relative error Σ||x − x̂||² / Σ||x||²; IQR of the max-normalised error norms; skew of the error norms."""
    from scipy.stats import skew

    points = np.asarray(points, dtype=np.float64)
    diff = points - np.asarray(recon, dtype=np.float64)
    errors = np.linalg.norm(diff, axis=1)
    total = float((points**2).sum())
    top = float(errors.max())
    q75, q25 = np.percentile(errors / top, [75, 25]) if top > 0 else (0.0, 0.0)
    return {
        "recon_error_mean": float((diff**2).sum() / total) if total > 0 else float("nan"),
        "recon_error_iqr": float(q75 - q25),
        "recon_error_skew": float(skew(errors)) if errors.std() > 0 else float("nan"),
    }


def centroid_nn_distance_variance(centroids: np.ndarray) -> float:
    """Variance of each centroid's squared L2 distance to its nearest other centroid (same codebook),
    pooled over the M codebooks and normalised by the largest such distance (the authors' compare_centroids)."""
    nearest = []
    for book in np.asarray(centroids, dtype=np.float64):
        sq = (book**2).sum(axis=1)
        dist = sq[:, None] + sq[None, :] - 2.0 * book @ book.T
        np.fill_diagonal(dist, np.inf)
        nearest.append(np.maximum(dist.min(axis=1), 0.0))
    nearest = np.concatenate(nearest)
    top = nearest.max()
    return float(np.var(nearest / top)) if top > 0 else 0.0


def cell_counts(codes: np.ndarray, K: int) -> np.ndarray:
    """(M, K) number of points assigned to each centroid of each codebook."""
    codes = np.asarray(codes)
    return np.stack([np.bincount(codes[:, m], minlength=K) for m in range(codes.shape[1])])


def cell_count_variance(counts: np.ndarray) -> float:
    """Mean over codebooks of the variance of the cell odds p/(1−p)·(K−1), p = count/n (1 = uniform)."""
    counts = np.asarray(counts, dtype=np.float64)
    K = counts.shape[1]
    p = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        odds = p / (1.0 - p) * (K - 1)
    return float(np.mean(np.var(odds, axis=1)))


def cell_count_kl(counts: np.ndarray) -> float:
    """Mean over codebooks of KL(p ‖ uniform), p = count/n, in nats."""
    from scipy.special import rel_entr

    counts = np.asarray(counts, dtype=np.float64)
    K = counts.shape[1]
    p = counts / counts.sum(axis=1, keepdims=True)
    return float(np.mean(rel_entr(p, 1.0 / K).sum(axis=1)))


def patchiness(counts: np.ndarray, K: int | None = None) -> float:
    """Lloyd's patchiness on the concatenated cell counts: m = Σ counts / K, V = var(counts), (m + V/m − 1)/m."""
    counts = np.asarray(counts, dtype=np.float64)
    K = K if K is not None else counts.shape[-1]
    flat = counts.reshape(-1)
    m = flat.sum() / K
    V = flat.var()
    return float((m + V / m - 1.0) / m)


def quantizer_measures(points: np.ndarray, quantizer, M: int, nbits: int) -> dict:
    codes, recon = encode(quantizer, points, M, nbits)
    counts = cell_counts(codes, 1 << nbits)
    out = reconstruction_measures(points, recon)
    out["centroid_nn_dist_var"] = centroid_nn_distance_variance(quantizer_centroids(quantizer))
    out["cell_count_var"] = cell_count_variance(counts)
    out["cell_count_kl"] = cell_count_kl(counts)
    out["patchiness"] = patchiness(counts, 1 << nbits)
    return out


# ---------------------------------------------------------------------------------- spread measures
def pca_variances(points: np.ndarray) -> np.ndarray:
    """PCA explained variances (covariance eigenvalues, ddof=1), descending, min(n, d) of them (as sklearn)."""
    points = np.asarray(points, dtype=np.float64)
    n, d = points.shape
    centred = points - points.mean(axis=0)
    if n >= d:
        values = np.linalg.eigvalsh(centred.T @ centred / (n - 1))[::-1]
    else:
        values = np.linalg.svd(centred, compute_uv=False) ** 2 / (n - 1)
    return np.maximum(values[: min(n, d)], 0.0)


def eee(points: np.ndarray) -> float:
    """Explained-variance Excess: trapezoid area between the cumulative explained-variance curve and the
    uniform (isotropic) line over components 0..k−1, divided by the largest possible area total·k/2.
    0 = isotropic, → 1 = all variance in one direction."""
    values = pca_variances(points)
    k = len(values)
    cumulative = np.cumsum(values)
    reference = np.cumsum(np.full(k, cumulative[-1] / k))
    area = np.trapezoid(cumulative - reference, x=np.arange(k))
    return float(area / (cumulative[-1] * k / 2.0))


def vrm(points: np.ndarray) -> float:
    """Vasicek Ratio Mean-squared: PCA-project, rescale so the total variance equals that of N(0, I_d) (= d),
    r_j = exp(H_Vasicek(column j)) / exp(H(N(0, 1))); VRM = Σ_j (1 − r_j)² / d. 0 = isotropic Gaussian."""
    from scipy.stats import differential_entropy

    points = np.asarray(points, dtype=np.float64)
    n, d = points.shape
    centred = points - points.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ vt.T
    total = float((singular**2).sum() / (n - 1))
    if total <= 0:
        return float("nan")
    projected *= math.sqrt(d / total)
    with np.errstate(divide="ignore"):
        entropy = differential_entropy(projected, axis=0, method="vasicek")
    reference = math.log(math.sqrt(2.0 * math.pi * math.e))
    ratio = np.exp(entropy - reference)
    return float(np.sum((1.0 - ratio) ** 2) / d)


def isoscore(points: np.ndarray) -> float:
    """IsoScore (pinned IsoScore 2.0.1, input (n_samples, dim)): 1 = isotropic, 0 = one direction."""
    from IsoScore.IsoScore import IsoScore

    return float(IsoScore(np.asarray(points, dtype=np.float64)))


def spread_measures(points: np.ndarray) -> dict:
    return {"eee": eee(points), "vrm": vrm(points), "isoscore": isoscore(points)}


# ------------------------------------------------------------------------------------ one job
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


# ------------------------------------------------------------------------------------ scores
def cv_probe_accuracy(x: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0, threads: int = 1) -> dict:
    """Cross-validated accuracy of the shared probe over all examples: stratified `folds`-fold (shuffled, seeded;
    fewer folds when the smallest class has fewer examples), on each fold the probe of probe.py fitted on the
    other folds (its C chosen by its own inner CV on them) predicts the fold; every example is predicted once.
    Returns accuracy, its Wilson 95% interval over the n predictions, the folds' accuracies' standard deviation,
    n, the number of folds and the C chosen per fold. BLAS is held to `threads` threads: the fits are small, and
    two BLAS threads on them cost several times the CPU of one (measured: docs/geometry.md)."""
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    from lmcompare.probe import linear_probe, wilson_interval

    x = np.asarray(x)
    y = np.asarray(y)
    smallest = int(np.bincount(np.unique(y, return_inverse=True)[1]).min())
    k = max(2, min(int(folds), smallest))
    if smallest < 2:
        raise ValueError("cross-validation needs at least two examples of every class")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    correct, fold_accuracy, chosen = 0, [], []
    with threadpool_limits(limits=max(1, int(threads))):
        for train, test in splitter.split(x, y):
            result = linear_probe(x[train], y[train], x[test], y[test], seed=seed)
            hits = int(round(result.accuracy * result.n_test))
            correct += hits
            fold_accuracy.append(hits / result.n_test)
            chosen.append(result.C)
    low, high = wilson_interval(correct, len(y))
    return dict(score=correct / len(y), ci_low=low, ci_high=high, fold_sd=float(np.std(fold_accuracy, ddof=1)),
                n=int(len(y)), folds=k, C=";".join(f"{c:g}" for c in chosen))


def probe_score(pooled_path, *, layer: int = -1, pooling: str = "mean", seed: int = 0, dataset: str = "dataset",
                protocol: str = "cv", folds: int = 5, threads: int = 1, cv_splits: list[str] | None = None) -> dict:
    """Linear-probe accuracy from one pooled layer of pooled.parquet: cross-validated over every labelled example
    (`protocol: cv`, cv_probe_accuracy; `cv_splits` restricts it to those splits, e.g. ["test"] for a model
    fine-tuned on the train split's labels) or fitted on train and scored on test (`split`, probe.py's protocol)."""
    from lmcompare.probe import linear_probe

    meta = hidden_states.read_hidden_metadata(pooled_path)
    resolved = hidden_states.resolve_layer(layer, meta["n_layers"], what="geometry.score.layer")
    column = hidden_states.pooled_column(resolved, pooling)
    xs, labels, splits = [], [], []
    for table in hidden_states.iter_row_groups(pooled_path, [column, "label", "split"]):
        xs.append(hidden_states.vectors(table, column))
        labels += table.column("label").to_pylist()
        splits += table.column("split").to_pylist()
    x = np.concatenate(xs) if xs else np.zeros((0, meta["hidden_size"]), np.float32)
    labels = np.array(labels, dtype=object)
    splits = np.array(splits, dtype=object)
    labelled = np.array([label is not None for label in labels], dtype=bool)
    if not labelled.any():
        raise WorkflowInputError(
            f"{pooled_path}: dataset {dataset!r} has no labels; geometry.score.source: probe needs a labelled "
            f"dataset (set geometry.score.dataset to one with a label_column, or use geometry.score.source: table)."
        )
    classes = sorted({str(label) for label in labels[labelled]})
    y = np.array([classes.index(str(label)) if label is not None else -1 for label in labels])
    if protocol == "cv":
        used = "all"
        if cv_splits:
            labelled = labelled & np.isin(splits, list(cv_splits))
            used = "+".join(cv_splits)
        counts = np.bincount(y[labelled], minlength=len(classes))
        if len(classes) < 2 or counts.min() < 2:
            raise WorkflowInputError(
                f"{pooled_path}: dataset {dataset!r} needs at least two labelled examples of each of at least two "
                f"classes for the cross-validated probe (class counts {dict(zip(classes, counts.tolist()))})."
            )
        result = cv_probe_accuracy(x[labelled], y[labelled], folds=folds, seed=seed, threads=threads)
        return dict(model=meta["model"], dataset=dataset, layer=resolved, pooling=pooling, protocol="cv",
                    score=result["score"], ci_low=result["ci_low"], ci_high=result["ci_high"],
                    fold_sd=result["fold_sd"], folds=result["folds"], splits=used, n_train=int(labelled.sum()),
                    n_test=result["n"], dims=int(x.shape[1]), C=result["C"])
    if protocol != "split":
        raise WorkflowInputError(f"geometry.score.protocol must be 'cv' or 'split', got {protocol!r}.")
    train = labelled & (splits == "train")
    test = labelled & (splits == "test")
    if train.sum() == 0 or test.sum() == 0 or len(np.unique(y[train])) < 2:
        raise WorkflowInputError(
            f"{pooled_path}: dataset {dataset!r} needs labelled train and test examples with at least two classes "
            f"in train for the probe (train {int(train.sum())}, test {int(test.sum())})."
        )
    result = linear_probe(x[train], y[train], x[test], y[test], seed=seed)
    return dict(model=meta["model"], dataset=dataset, layer=resolved, pooling=pooling, protocol="split",
                score=result.accuracy,
                ci_low=result.ci_low, ci_high=result.ci_high, n_train=result.n_train, n_test=result.n_test,
                dims=result.n_features, C=result.C)


def read_score_table(path, models: list[str]) -> pd.DataFrame:
    """A user score table: CSV with columns model, score (extra columns ignored). Returns model, score."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise WorkflowInputError(f"geometry.score.table {path!r} cannot be read as CSV ({err}); fix the path.") from err
    missing = [c for c in ("model", "score") if c not in frame.columns]
    if missing:
        raise WorkflowInputError(
            f"geometry.score.table {path!r} lacks the column(s) {missing}; it needs 'model' (configured model "
            f"names) and 'score' (e.g. GLUE average), one row per model."
        )
    frame = frame[["model", "score"]].assign(model=lambda f: f["model"].astype(str))
    duplicated = frame["model"][frame["model"].duplicated()].unique().tolist()
    if duplicated:
        raise WorkflowInputError(f"geometry.score.table {path!r} lists the model(s) {duplicated} more than once.")
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce")
    unknown = sorted(set(frame["model"]) - set(models))
    if unknown:
        LOG.warning("score table %s: rows for models not in this run ignored: %s", path, unknown)
    absent = [m for m in models if m not in set(frame["model"][frame["score"].notna()])]
    if absent:
        LOG.warning("score table %s has no numeric score for %s: they are left out of the regression", path, absent)
    return frame[frame["model"].isin(models) & frame["score"].notna()].reset_index(drop=True)


# ------------------------------------------------------------------------------------ regression
def fit_line(x: np.ndarray, y: np.ndarray, min_models: int = MIN_MODELS) -> dict:
    """Least-squares line y = slope·x + intercept, Pearson r, R² = r², two-sided p; NaN with a note when unfit."""
    from scipy.stats import linregress

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(len(x))
    nan = dict(n=n, slope=np.nan, intercept=np.nan, pearson_r=np.nan, r2=np.nan, p_value=np.nan)
    if n < min_models:
        return {**nan, "note": f"fewer than {min_models} models with a finite measure and score (n={n}): no fit"}
    if np.ptp(x) == 0:
        return {**nan, "note": "measure is constant across models: no fit"}
    if np.ptp(y) == 0:
        return {**nan, "note": "score is constant across models: no fit"}
    fit = linregress(x, y)
    p_value = float(fit.pvalue) if n > 2 else np.nan
    return dict(n=n, slope=float(fit.slope), intercept=float(fit.intercept), pearson_r=float(fit.rvalue),
                r2=float(fit.rvalue**2), p_value=p_value, note="")


def rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of a and b (shape (B, n)); NaN where a row of either is constant."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    constant = (np.ptp(a, axis=-1) == 0) | (np.ptp(b, axis=-1) == 0)
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=-1) / np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    return np.where(constant, np.nan, np.clip(r, -1.0, 1.0))


def bootstrap_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) indices drawn with replacement (numpy default_rng(seed))."""
    return np.random.default_rng(seed).integers(0, n, size=(int(n_resamples), n))


def bootstrap_r_interval(x, y, *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Percentile bootstrap interval of Pearson r over the pairs (x_i, y_i): the pairs (models) are resampled with
    replacement; resamples in which x or y is constant (r undefined) are left out and counted.
    Returns low, high and n_used (resamples with a defined r)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    index = bootstrap_indices(len(x), n_resamples, seed)
    r = rowwise_pearson(x[index], y[index])
    r = r[np.isfinite(r)]
    if len(r) == 0:
        return dict(low=np.nan, high=np.nan, n_used=0)
    tail = (1.0 - confidence) / 2.0
    low, high = np.percentile(r, [100.0 * tail, 100.0 * (1.0 - tail)])
    return dict(low=float(low), high=float(high), n_used=int(len(r)))


def permutation_orders(n: int, n_permutations: int, seed: int) -> tuple[np.ndarray, bool]:
    """(orders (P, n), exact): every permutation of range(n) when n! <= n_permutations (exact), else
    n_permutations seeded random permutations (numpy default_rng(seed))."""
    import itertools

    if math.factorial(n) <= n_permutations:
        return np.array(list(itertools.permutations(range(n))), dtype=np.int64).reshape(-1, n), True
    rng = np.random.default_rng(seed)
    return rng.permuted(np.tile(np.arange(n), (int(n_permutations), 1)), axis=1), False


def permutation_p_value(x, y, *, n_permutations: int = 9999, seed: int = 0) -> dict:
    """Two-sided permutation p value of Pearson r: the share of pairings of y with x whose |r| is at least the
    observed |r| (ties within 100 ulp of it count, as in scipy.stats.permutation_test). Exact over all n!
    pairings when n! <= n_permutations (p = count / n!, the observed pairing included); otherwise over
    n_permutations random ones, p = (count + 1) / (n_permutations + 1). Returns p, r, exact, permutations."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    observed = abs(float(rowwise_pearson(x[None, :], y[None, :])[0]))
    orders, exact = permutation_orders(len(x), n_permutations, seed)
    null = np.abs(rowwise_pearson(np.broadcast_to(x, orders.shape), y[orders]))
    count = int(np.sum(null >= observed - abs(observed) * 100 * np.finfo(np.float64).eps))
    p = count / len(orders) if exact else (count + 1) / (len(orders) + 1)
    return dict(p=float(p), r=observed, exact=exact, permutations=int(len(orders)))


def holm_adjust(p_values) -> np.ndarray:
    """Holm's step-down adjusted p values (family-wise error), in the input order; NaN entries are not counted
    among the m tests and stay NaN. p_(i) sorted ascending -> max_{j <= i} min(1, (m - j + 1) p_(j))."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    if m == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="mergesort")]
    scaled = (m - np.arange(m)) * p[order]
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted


def regression_table(measures: pd.DataFrame, scores: pd.DataFrame, *, dataset: str, score_name: str,
                     min_models: int = MIN_MODELS, bootstrap: int = 2000, permutations: int = 9999,
                     confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """One row per measure: the fit of score on measure across models, the percentile bootstrap interval of r over
    models, the permutation p value of r and its Holm adjustment over the fitted measures; sorted by R² (unfit
    rows last). Every measure uses the same bootstrap resamples and permutations of the models (seed)."""
    wide = measures.pivot_table(index="model", columns="measure", values="value", aggfunc="first")
    merged = wide.join(scores.set_index("model")["score"], how="inner")
    rows = []
    for measure in wide.columns:
        x, y = merged[measure].to_numpy(dtype=np.float64), merged["score"].to_numpy(dtype=np.float64)
        fit = fit_line(x, y, min_models)
        extra = dict(r_ci_low=np.nan, r_ci_high=np.nan, confidence=confidence, n_bootstrap=0,
                     p_permutation=np.nan, permutations="")
        if np.isfinite(fit["r2"]):
            ok = np.isfinite(x) & np.isfinite(y)
            interval = bootstrap_r_interval(x[ok], y[ok], n_resamples=bootstrap, confidence=confidence, seed=seed)
            test = permutation_p_value(x[ok], y[ok], n_permutations=permutations, seed=seed)
            extra.update(r_ci_low=interval["low"], r_ci_high=interval["high"], n_bootstrap=interval["n_used"],
                         p_permutation=test["p"],
                         permutations=f"exact {test['permutations']}" if test["exact"] else f"random {test['permutations']}")
        rows.append(dict(dataset=dataset, measure=measure, score_name=score_name, **fit, **extra))
    table = pd.DataFrame(rows, columns=REGRESSION_COLUMNS)
    table["p_holm"] = holm_adjust(table["p_permutation"].to_numpy(dtype=np.float64))
    table = table.sort_values(["r2", "measure"], ascending=[False, True], na_position="last", kind="mergesort")
    return table.reset_index(drop=True)


# ------------------------------------------------------------------------------------ figures
def scatter_figure(merged: pd.DataFrame, fit: dict, *, measure: str, score_name: str, dataset: str, rank: int):
    """Score against one measure, one labelled point per model, with the fitted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    # models at the same point (e.g. a base and its alpha = 0 copy) share one marker and one label
    frame = merged.reset_index()
    ylabel = score_name
    groups = frame.groupby([measure, "score"], sort=False)["model"].apply(list)
    if {"ci_low", "ci_high"} <= set(frame.columns):  # probe scores: Wilson 95% interval as error bars
        ok = frame[["ci_low", "ci_high"]].notna().all(axis=1)
        low = frame.loc[ok, "score"] - frame.loc[ok, "ci_low"]
        high = frame.loc[ok, "ci_high"] - frame.loc[ok, "score"]
        ax.errorbar(frame.loc[ok, measure], frame.loc[ok, "score"], yerr=[low, high], fmt="none", ecolor="0.6",
                    elinewidth=1, capsize=3, zorder=1)
        ylabel = f"{score_name}\n(bars: Wilson 95% interval)"
    for index, ((x, y), models) in enumerate(groups.items()):
        point_colour, point_marker = plotting.model_style(models[0], index)
        ax.scatter(x, y, color=point_colour, marker=point_marker, s=45, zorder=3)
        ax.annotate(", ".join(map(str, models)), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if np.isfinite(fit.get("slope", np.nan)):
        xs = np.linspace(merged[measure].min(), merged[measure].max(), 50)
        interval = ""
        if np.isfinite(fit.get("r_ci_low", np.nan)) and np.isfinite(fit.get("r_ci_high", np.nan)):
            interval = f" [{fit['r_ci_low']:.2f}, {fit['r_ci_high']:.2f}]"
        holm = f", Holm p = {fit['p_holm']:.2g}" if np.isfinite(fit.get("p_holm", np.nan)) else ""
        ax.plot(xs, fit["slope"] * xs + fit["intercept"], color="black", lw=1.2, zorder=2,
                label=f"fit: r = {fit['pearson_r']:.3f}{interval}, R² = {fit['r2']:.3f}{holm}, n = {fit['n']}")
        ax.legend(loc="best", fontsize=9)
    else:
        ax.text(0.5, 0.5, fit.get("note", "no fit"), transform=ax.transAxes, ha="center", va="center", fontsize=9,
                wrap=True)
    ax.set_xlabel(f"{measure} ({measure_unit(measure)})")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{score_name} vs {measure}\n(dataset {dataset}; #{rank} of the measures by R²)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def r2_figure(table: pd.DataFrame, *, dataset: str, score_name: str):
    """One row per measure (the table's order, best R² on top): Pearson r of score on measure across models as a
    dot with its bootstrap interval as a bar, coloured by the sign of r; labelled with R², the Holm-adjusted
    permutation p value and n."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = table.iloc[::-1].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8.0, 0.34 * len(shown) + 1.8))
    confidence = None
    for y, row in shown.iterrows():
        r = row["pearson_r"]
        if not np.isfinite(r):
            ax.text(-0.98, y, f"no fit (n={row['n']})", va="center", fontsize=7, color="0.4")
            continue
        colour = plotting.POSITIVE if r >= 0 else plotting.NEGATIVE
        low, high = row.get("r_ci_low", np.nan), row.get("r_ci_high", np.nan)
        if np.isfinite(low) and np.isfinite(high):
            ax.plot([low, high], [y, y], color=colour, lw=2.2, alpha=0.55, solid_capstyle="butt")
            confidence = row.get("confidence", confidence)
        ax.plot([r], [y], "o", color=colour, ms=5)
        p_holm = row.get("p_holm", np.nan)
        holm = f", Holm p={p_holm:.2g}" if np.isfinite(p_holm) else ""
        ax.text(1.04, y, f"R²={row['r2']:.2f}{holm}, n={row['n']}", va="center", fontsize=7)
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels(shown["measure"], fontsize=8)
    ax.set_ylim(-0.7, len(shown) - 0.3)
    ax.axvline(0.0, color="0.5", lw=0.8)
    ax.set_xlim(-1.0, 1.75)
    ax.set_xticks([-1.0, -0.5, 0.0, 0.5, 1.0])
    level = f"{100 * float(confidence):.0f}% " if confidence is not None and np.isfinite(confidence) else ""
    ax.set_xlabel(f"Pearson r of score on measure across models (unitless); bar: {level}bootstrap interval over "
                  f"models;\nblue: r > 0, orange: r < 0; Holm p: permutation p value adjusted over the measures",
                  fontsize=8)
    ax.set_title(f"Which geometry measure predicts {score_name}?\n(dataset {dataset}, one point per model; "
                 f"sorted by R²)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def measure_unit(measure: str) -> str:
    if measure.endswith(("recon_error_mean", "recon_error_iqr")):
        return "fraction"
    if measure.endswith("cell_count_kl"):
        return "nats"
    return "unitless"


# ------------------------------------------------------------------------------------ snakemake glue
def run_measures(smk) -> None:
    p = smk.params
    q = p.quantizer
    faiss_threads(smk.threads)
    started = time.perf_counter()
    points, n_total, layer, meta = read_token_cloud(smk.input.tokens, p.layer, p.max_points, p.seed)
    LOG.info("token cloud of %s on %s: %d of %d tokens (layer %d, %d dims) read in %.1f s",
             smk.wildcards.model, smk.wildcards.dataset, len(points), n_total, layer, points.shape[1],
             time.perf_counter() - started)
    rows = measure_cloud(points, M=q["M"], nbits=q["nbits"], seed=p.seed,
                         min_points_per_centroid=q["min_points_per_centroid"], small_cloud=q["small_cloud"],
                         lsq_train_iters=q["lsq_train_iters"],
                         where=f"geometry of model {smk.wildcards.model!r} on dataset {smk.wildcards.dataset!r}")
    frame = pd.DataFrame(rows).assign(model=smk.wildcards.model, dataset=smk.wildcards.dataset, layer=layer,
                                      n=len(points), n_total=n_total, dims=points.shape[1])
    files.write_table(frame[MEASURE_COLUMNS], smk.output.measures)


def run_score(smk) -> None:
    p = smk.params
    started = time.perf_counter()
    from threadpoolctl import threadpool_limits

    if p.cv_splits:
        LOG.info("%s was fine-tuned on the labels of %s's train split: its cross-validated score uses only the "
                 "split(s) %s (examples it never saw)", smk.wildcards.model, smk.wildcards.dataset, p.cv_splits)
    with threadpool_limits(limits=max(1, int(smk.threads))):  # small fits: extra BLAS threads only cost CPU
        row = probe_score(smk.input.pooled, layer=p.layer, pooling=p.pooling, seed=p.seed,
                          dataset=smk.wildcards.dataset, protocol=p.protocol, folds=p.folds, threads=smk.threads,
                          cv_splits=p.cv_splits)
    row["model"] = smk.wildcards.model
    if row["protocol"] == "cv":
        LOG.info("probe accuracy of %s on %s, %d-fold cross-validated over %d labelled examples (splits: %s): "
                 "%.4f [%.4f, %.4f] (Wilson 95%%; sd over folds %.4f; C per fold %s) in %.1f s", row["model"],
                 row["dataset"], row["folds"], row["n_test"], row["splits"], row["score"], row["ci_low"],
                 row["ci_high"], row["fold_sd"], row["C"], time.perf_counter() - started)
    else:
        LOG.info("probe accuracy of %s on %s: %.4f [%.4f, %.4f] (train %d, test %d)", row["model"], row["dataset"],
                 row["score"], row["ci_low"], row["ci_high"], row["n_train"], row["n_test"])
    files.write_table(pd.DataFrame([row]), smk.output.score)


def run_regression(smk) -> None:
    p = smk.params
    measures = pd.concat([pd.read_csv(path) for path in smk.input.measures], ignore_index=True)
    if p.score_source == "table":
        scores = read_score_table(smk.input.score_table, list(p.models))
    else:
        scores = pd.concat([pd.read_csv(path) for path in smk.input.scores], ignore_index=True)
    files.write_table(measures, smk.output.measures)
    files.write_table(scores, smk.output.scores)
    started = time.perf_counter()
    table = regression_table(measures, scores, dataset=smk.wildcards.dataset, score_name=p.score_name,
                             min_models=p.min_models, bootstrap=p.bootstrap, permutations=p.permutations,
                             confidence=p.confidence, seed=p.seed)
    LOG.info("regression of %s on %d measures across %d models (%d with a score): %d bootstrap resamples, %s "
             "permutations, Holm over %d fitted measures, in %.1f s", p.score_name, len(table),
             measures["model"].nunique(), len(scores), p.bootstrap, next((v for v in table["permutations"] if v), "no"),
             int(table["p_holm"].notna().sum()), time.perf_counter() - started)
    for row in table.head(5).itertuples():
        LOG.info("  %s: r = %+.3f [%+.3f, %+.3f], R² = %.3f, permutation p = %.4f, Holm p = %.4f (n = %d)",
                 row.measure, row.pearson_r, row.r_ci_low, row.r_ci_high, row.r2, row.p_permutation, row.p_holm,
                 row.n)
    files.write_table(table, smk.output.regression)


def run_figures(smk) -> None:
    p = smk.params
    measures = pd.read_csv(smk.input.measures)
    scores = pd.read_csv(smk.input.scores)
    table = pd.read_csv(smk.input.regression, keep_default_na=False, na_values=[""])
    wide = measures.pivot_table(index="model", columns="measure", values="value", aggfunc="first")
    score_columns = [c for c in ("score", "ci_low", "ci_high") if c in scores.columns]
    merged = wide.join(scores.set_index("model")[score_columns], how="inner")
    plotting.save_figure(r2_figure(table, dataset=smk.wildcards.dataset, score_name=p.score_name),
                        [smk.output.r2_png, smk.output.r2_svg])
    for rank in range(1, p.top_k + 1):
        row = table.iloc[min(rank, len(table)) - 1].to_dict()
        fig = scatter_figure(merged[[row["measure"]] + score_columns].dropna(subset=[row["measure"], "score"]),
                             row, measure=row["measure"],
                             score_name=p.score_name, dataset=smk.wildcards.dataset, rank=rank)
        plotting.save_figure(fig, [smk.output.scatter_png[rank - 1], smk.output.scatter_svg[rank - 1]])


def faiss_threads(threads: int) -> None:
    import faiss

    faiss.omp_set_num_threads(max(1, int(threads)))


RULES = {
    "geometry_measures": run_measures,
    "geometry_score": run_score,
    "geometry_regression": run_regression,
    "geometry_figures": run_figures,
}


def main(smk) -> None:
    with contextlib.nullcontext():  # TRANSITIONAL: the rule script opens the job log
        plotting.use_model_order(getattr(smk.params, "model_index", None))
        RULES[smk.rule](smk)

