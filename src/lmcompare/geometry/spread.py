"""Spread (isotropy) measures of a point cloud: EEE (explained-variance excess), VRM (Vasicek ratio mean-squared)
and IsoScore (the pinned IsoScore package), each on the (n_points, dims) cloud (docs/geometry.md)."""

import math

import numpy as np

SPREAD_MEASURES = ("eee", "vrm", "isoscore")


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
    """Every SPREAD_MEASURES value of the cloud."""
    return {"eee": eee(points), "vrm": vrm(points), "isoscore": isoscore(points)}
