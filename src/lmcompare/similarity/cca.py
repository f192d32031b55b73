r"""Canonical correlation analysis from co-moment blocks: mean canonical correlation, its mean square (Yanai's
R²_CCA as Kornblith et al. 2019 tabulate it), SVCCA (Raghu et al., NeurIPS 2017) and PWCCA (Morcos et al., NeurIPS
2018).

Canonical correlations are the singular values of Sxx^{-1/2} Sxy Syy^{-1/2}. The inverse square root is taken on
each side's retained eigen-directions: with Sxx = V diag(lambda) V^T, the directions with lambda below
rank_tolerance x lambda_max are dropped (a rank cut, no ridge), so that exactly singular co-moments (more
dimensions than units; LayerNorm outputs, which lie in a hyperplane) give the CCA of the retained subspace and
not the noise of a null direction. Whitening W = V_k diag(lambda_k)^{-1/2}, M = W_x^T Sxy W_y = U diag(rho) V'^T;
the min(k_x, k_y) canonical correlations rho are the same for any invertible linear map of X or of Y.

PWCCA weights the canonical correlations by how much of X's neurons each canonical variate accounts for: with
h_i = Xc w_i the i-th canonical variate of X scaled to unit norm (w_i = W_x u_i, so w_i^T Sxx w_i = 1) and x_j the
j-th centred column of X, alpha~_i = sum_j |<h_i, x_j>|, alpha = alpha~ / sum alpha~, PWCCA = sum_i alpha_i rho_i.
<h_i, x_j> = (Sxx w_i)_j = (V_x diag(lambda_x)^{1/2} u_i)_j: a function of the co-moments. As Morcos et al.'s
code (google/svcca, pwcca.py) does, the weights are those of the side with fewer retained directions (here: on a
tie, X, the first model of the pair).

SVCCA keeps, per side, the fewest top principal directions whose eigenvalues sum to at least `variance` of the
trace (the projected co-moments: diag(lambda_k), V_k^T Sxy V'_k), then takes the mean canonical correlation of
the projections.
"""

from dataclasses import dataclass

import numpy as np

from lmcompare.similarity.tags import DEFAULT_CCA_RANK_TOLERANCE, DEFAULT_SVCCA_VARIANCE


@dataclass
class CanonicalCorrelations:
    rho: np.ndarray  # min(kept_x, kept_y) canonical correlations, largest first
    kept_x: int  # retained eigen-directions of each side (the rank cut)
    kept_y: int
    loadings_x: np.ndarray  # (d_x, k): <h_i, x_j> for unit-norm canonical variates h_i of X
    loadings_y: np.ndarray  # (d_y, k)


def spectrum(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (largest first) and eigenvectors of a symmetric co-moment; computed once per side by
    table.measure_pair and shared by the CCA measures and SVCCA (the `spectra` arguments)."""
    values, vectors = np.linalg.eigh(s)
    return values[::-1], vectors[:, ::-1]


def retained_directions(eigen: tuple[np.ndarray, np.ndarray], rank_tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """The eigenvalues and eigenvectors of a spectrum above rank_tolerance x the largest."""
    values, vectors = eigen
    if not values.size or values[0] <= 0:
        raise ValueError("a representation is constant over the units (zero co-moment): no canonical correlations")
    keep = values > rank_tolerance * values[0]
    return values[keep], vectors[:, keep]


def canonical_correlations(sxx: np.ndarray, syy: np.ndarray, sxy: np.ndarray,
                           rank_tolerance: float = DEFAULT_CCA_RANK_TOLERANCE, spectra=None) -> CanonicalCorrelations:
    """Canonical correlations of centred X and Y from their co-moment blocks, with the rank cut (module docstring);
    spectra: (spectrum(sxx), spectrum(syy)) when already computed."""
    spectra = spectra or (spectrum(sxx), spectrum(syy))
    lx, vx = retained_directions(spectra[0], rank_tolerance)
    ly, vy = retained_directions(spectra[1], rank_tolerance)
    m = (vx / np.sqrt(lx)).T @ sxy @ (vy / np.sqrt(ly))
    u, rho, vt = np.linalg.svd(m, full_matrices=False)
    return CanonicalCorrelations(rho, lx.size, ly.size, (vx * np.sqrt(lx)) @ u, (vy * np.sqrt(ly)) @ vt.T)


def pwcca(cca: CanonicalCorrelations) -> float:
    """Morcos et al.'s projection-weighted mean of the canonical correlations (module docstring)."""
    loadings = cca.loadings_x if cca.kept_x <= cca.kept_y else cca.loadings_y
    weights = np.abs(loadings).sum(axis=0)
    return float(weights @ cca.rho / weights.sum())


def principal_projection(sxx: np.ndarray, syy: np.ndarray, sxy: np.ndarray, variance: float = DEFAULT_SVCCA_VARIANCE,
                         spectra=None):
    """The co-moment blocks of both sides projected on their top principal directions explaining at least
    `variance` of the trace: (Sxx', Syy', Sxy', kept_x, kept_y)."""
    if not 0 < variance <= 1:
        raise ValueError(f"the SVCCA variance fraction must lie in (0, 1], got {variance}")
    projected = []
    for values, vectors in spectra or (spectrum(sxx), spectrum(syy)):
        values = np.clip(values, 0, None)
        share = np.cumsum(values) / values.sum()
        kept = min(int(np.searchsorted(share, variance * (1 - 1e-12))) + 1, values.size)
        projected.append((values[:kept], vectors[:, :kept]))
    (lx, vx), (ly, vy) = projected
    return np.diag(lx), np.diag(ly), vx.T @ sxy @ vy, lx.size, ly.size


def svcca(sxx: np.ndarray, syy: np.ndarray, sxy: np.ndarray, variance: float = DEFAULT_SVCCA_VARIANCE,
          rank_tolerance: float = DEFAULT_CCA_RANK_TOLERANCE, spectra=None) -> tuple[float, int, int]:
    """Mean canonical correlation of the top principal directions explaining `variance` of each side; with the
    numbers of directions kept."""
    px, py, pxy, kept_x, kept_y = principal_projection(sxx, syy, sxy, variance, spectra)
    cca = canonical_correlations(px, py, pxy, rank_tolerance)
    return float(cca.rho.mean()), kept_x, kept_y
