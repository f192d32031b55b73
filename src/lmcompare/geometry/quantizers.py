"""Quantizer measures of a point cloud: a faiss product quantizer and additive quantizer (LocalSearchQuantizer),
trained seeded, their codes and centroids, and the density measures of Marbut et al. computed from them as the
authors' code computes them (docs/geometry.md): reconstruction error (mean, IQR, skew), centroid nearest-neighbour
distance variance, cell-count variance and KL from uniform, patchiness. faiss is imported only here."""

import logging

import numpy as np

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


def faiss_threads(threads: int) -> None:
    """faiss's OpenMP threads for this process (a job's `threads`)."""
    import faiss

    faiss.omp_set_num_threads(max(1, int(threads)))


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
    """Every QUANTIZER_MEASURES value of a trained quantizer on the points it encodes."""
    codes, recon = encode(quantizer, points, M, nbits)
    counts = cell_counts(codes, 1 << nbits)
    out = reconstruction_measures(points, recon)
    out["centroid_nn_dist_var"] = centroid_nn_distance_variance(quantizer_centroids(quantizer))
    out["cell_count_var"] = cell_count_variance(counts)
    out["cell_count_kl"] = cell_count_kl(counts)
    out["patchiness"] = patchiness(counts, 1 << nbits)
    return out
