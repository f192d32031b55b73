"""Ridge from per-split statistics: the solvers of the two fit modes, R² from moments, the alpha grid's
validation path.

Mode ``paper`` is the released code (haozhg/lmd, PyPI ``nlp.lmd`` 0.2.0, ``lmd/cli.py``
``LanguageModelDecomposition``; the published .743-.930 come from it):

    W = S(u, z) (S(z, z) + alpha I)^-1,   b = E[u] - W E[z]
    R² = 1 - sum_n ||u_n - W z_n - b||² / sum_n ||u_n - mean_test(u)||²

with S the sample covariance of the train split, divided by n - 1 (``torch.cov``): alpha is on the scale of the
(n - 1)-divided covariance, scikit-learn's ``Ridge(alpha_sk)`` equals ``alpha_sk = (n_train - 1) * alpha``.
Mode ``uncentred`` is the superseded development code of haozhg/lmd before commit c3810d8 ("add intercept",
2022-10-10; i.e. at 1eae068): W = U Z^T (Z Z^T + alpha d_z I)^-1 from raw second moments (their A = Z Z^T /
Z.shape[0] divides by the basis dims d_z, Z being d_z x n), no intercept, SST = sum ||u_n||^2 uncentred.
"""

import logging
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.linalg

from lmcompare.decomposition.tags import MODES
from lmcompare.errors import WorkflowInputError

LOG = logging.getLogger("workflow")


@dataclass
class SplitStats:
    """Per-split statistics of a target u and a basis z, as population covariances (divided by n) and means.

    n_groups: the number of independent examples the n units come from (n for example and chunk units; the
    number of reviews for word units); between_share: the share of u's variance that lies between examples
    (sum_e n_e ||mean_e(u) - mean(u)||^2 / sum_n ||u_n - mean(u)||^2), NaN when unknown.
    """

    n: int
    mean_u: np.ndarray
    mean_z: np.ndarray
    cov_uu_trace: float
    cov_uz: np.ndarray  # (d_u, d_z)
    cov_zz: np.ndarray  # (d_z, d_z)
    n_groups: int | None = None
    between_share: float = float("nan")

    @classmethod
    def from_rows(cls, u: np.ndarray, z: np.ndarray, groups: np.ndarray | None = None) -> "SplitStats":
        """Direct (unstreamed) statistics of materialised rows; used by tests and the benchmark."""
        u = np.asarray(u, dtype=np.float64)
        z = np.asarray(z, dtype=np.float64)
        n = u.shape[0]
        mu, mz = u.mean(axis=0), z.mean(axis=0)
        uc, zc = u - mu, z - mz
        n_groups, share = None, float("nan")
        if groups is not None:
            labels, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
            means = np.zeros((labels.size, u.shape[1]))
            np.add.at(means, inverse, u)
            means /= counts[:, None]
            n_groups = int(labels.size)
            share = float((counts[:, None] * (means - mu) ** 2).sum() / (uc * uc).sum())
        return cls(n, mu, mz, float((uc * uc).sum() / n), uc.T @ zc / n, zc.T @ zc / n, n_groups, share)

    @property
    def groups(self) -> int:
        return self.n if self.n_groups is None else self.n_groups


def is_underdetermined(n_units: int, n_groups: int, basis_dims: int) -> bool:
    """True when the train split cannot pin down a fit on basis_dims dimensions.

    Counted in units *and* in independent groups (examples): words of one review share a review-level
    component, and that component is fitted from one sample per review. With fewer groups than basis
    dimensions, the between-example part of the fit can interpolate the train examples (an alpha near zero then
    over-fits, whatever the number of words).
    """
    return int(n_units) <= int(basis_dims) or int(n_groups) <= int(basis_dims)


@dataclass
class Fit:
    W: np.ndarray
    b: np.ndarray
    solver: str
    condition: float


def solve_spd(matrix: np.ndarray, rhs: np.ndarray, what: str = "basis") -> tuple[np.ndarray, str, float]:
    """Solve matrix X = rhs for a symmetric positive semi-definite matrix (ridge normal equations).

    Cholesky first; when the matrix is not numerically positive definite or is ill-conditioned (scipy's
    LinAlgWarning), fall back to an eigendecomposition with a pseudo-inverse on the numerical null space.
    Returns the solution, the solver used and (for the fallback) the condition number of the kept part.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
            solution = scipy.linalg.solve(matrix, rhs, assume_a="pos", check_finite=False)
        if np.all(np.isfinite(solution)):
            return solution, "cholesky", float("nan")
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError, scipy.linalg.LinAlgWarning, ValueError):
        pass
    values, vectors = scipy.linalg.eigh(matrix, check_finite=False)
    top = float(values.max()) if values.size else 0.0
    tolerance = max(top, 0.0) * matrix.shape[0] * np.finfo(float).eps
    keep = values > tolerance
    inverse = np.zeros_like(values)
    inverse[keep] = 1.0 / values[keep]
    solution = vectors @ (inverse[:, None] * (vectors.T @ rhs))
    smallest = float(values[keep].min()) if keep.any() else float("nan")
    condition = top / smallest if keep.any() else float("inf")
    LOG.warning(
        "%s: the ridge system (%d x %d) is ill-conditioned (condition ~%.3g, %d of %d eigenvalues at or below "
        "%.3g treated as zero): solved by eigendecomposition (pseudo-inverse on the null space) instead of Cholesky",
        what, matrix.shape[0], matrix.shape[1], condition, int((~keep).sum()), values.size, tolerance,
    )
    return solution, "eigh_fallback", condition


def _normal_equations(train: SplitStats, mode: str, rhs: bool = True):
    """(lhs, rhs) of W (lhs + alpha I) = rhs, on the scale the mode's alpha is defined on (lhs alone: rhs=False).

    paper (nlp.lmd 0.2.0): the sample covariances of torch.cov, divided by n - 1;
    uncentred (haozhg/lmd at 1eae068): raw second moments Z Z^T / d_z and U Z^T / d_z (d_z = basis dims, the
    dev code divided by Z.shape[0] with Z of shape (d_z, n)).
    """
    n = train.n
    if mode == "paper":
        if n < 2:
            raise WorkflowInputError(f"a fit needs at least 2 train units, got {n}.")
        scale = n / (n - 1)
        lhs = train.cov_zz * scale
        return (lhs, train.cov_uz * scale) if rhs else lhs
    if mode == "uncentred":
        scale = n / train.cov_zz.shape[0]
        lhs = (train.cov_zz + np.outer(train.mean_z, train.mean_z)) * scale
        return (lhs, (train.cov_uz + np.outer(train.mean_u, train.mean_z)) * scale) if rhs else lhs
    raise ValueError(f"unknown mode {mode!r}; one of {MODES}")


def _intercept(train: SplitStats, W: np.ndarray, mode: str) -> np.ndarray:
    return train.mean_u - W @ train.mean_z if mode == "paper" else np.zeros(W.shape[0])


def fit_ridge(train: SplitStats, alpha: float, mode: str = "paper", what: str = "basis") -> Fit:
    """Ridge from train statistics. paper: centred, with intercept; uncentred: raw moments, no intercept."""
    lhs, rhs = _normal_equations(train, mode)
    lhs = lhs + alpha * np.eye(lhs.shape[0])
    solution, solver, condition = solve_spd(lhs, rhs.T, what)
    W = solution.T
    return Fit(W, _intercept(train, W, mode), solver, condition)


def r_squared(fit: Fit, stats: SplitStats, mode: str = "paper") -> tuple[float, float, float]:
    """R², mean squared error and mean total sum of squares on a split, from its moments.

    MSE = tr Σuu - 2 tr(W Σzu) + tr(W Σzz W^T) + ||mean_u - W mean_z - b||²  (exact for any W, b).
    SST about the split's mean (paper, as nlp.lmd's score) or about zero (uncentred).
    """
    W = fit.W
    offset = stats.mean_u - W @ stats.mean_z - fit.b
    mse = (stats.cov_uu_trace - 2.0 * float(np.sum(W * stats.cov_uz)) + float(np.sum((W @ stats.cov_zz) * W))
           + float(offset @ offset))
    sst = stats.cov_uu_trace if mode == "paper" else stats.cov_uu_trace + float(stats.mean_u @ stats.mean_u)
    mse = max(mse, 0.0)  # rounding can push an exact fit a hair below zero
    r2 = 1.0 - mse / sst if sst > 0 else float("nan")
    return r2, mse, sst


@dataclass
class BasisPath:
    """What a validation path needs of the basis alone (no target): the fit part's basis matrix lhs = V diag(l) V^T
    of the mode's normal equations, and the valid part's basis covariance and means in that eigenbasis. A layer
    sweep computes it once per basis layer and shares it across every target layer."""

    values: np.ndarray  # l, clipped at 0 (the matrix is positive semi-definite)
    vectors: np.ndarray  # V
    valid_zz: np.ndarray  # V^T Cov_valid(z, z) V
    mean_shift: np.ndarray  # V^T (mean_valid(z) - mean_fit(z)) for mode paper, V^T mean_valid(z) for uncentred


def basis_path(fit_part: SplitStats, valid_part: SplitStats, mode: str = "paper") -> BasisPath:
    lhs = _normal_equations(fit_part, mode, rhs=False)
    values, vectors = scipy.linalg.eigh(lhs, check_finite=False)
    shift = valid_part.mean_z - fit_part.mean_z if mode == "paper" else valid_part.mean_z
    return BasisPath(np.clip(values, 0.0, None), vectors, vectors.T @ valid_part.cov_zz @ vectors, vectors.T @ shift)


def validation_path(fit_part: SplitStats, valid_part: SplitStats, alphas: Sequence[float], mode: str = "paper",
                    basis: BasisPath | None = None) -> list[float]:
    """The validation R² of the ridge fitted on fit_part, for each alpha, from one eigendecomposition of the basis
    matrix, without forming any W (r_squared's formula in the eigenbasis).

    With lhs = V diag(l) V^T, P = rhs V and D = diag(1 / (l + alpha)), W(alpha) = P D V^T, and on the valid part
        tr(W Sigma_zu) = sum_j D_j g_j,          g_j = sum_i P_ij (Cov(u, z) V)_ij
        tr(W Sigma_zz W^T) = D^T (B o Q) D,      B = V^T Cov(z, z) V, Q = P^T P
        offset = shift_u - P (D o V^T shift_z)   (the intercept's: fit means for mode paper, none for uncentred)
    so one target costs three d_u x d_z x d_z products and each alpha O(d_z²), where building W and scoring it
    costs two such products per alpha. Exact: equal to r_squared(fit_ridge(...)) up to rounding (tested).
    """
    basis = basis or basis_path(fit_part, valid_part, mode)
    _, rhs = _normal_equations(fit_part, mode)
    projected = rhs @ basis.vectors  # P (d_u, d_z)
    g = np.einsum("ij,ij->j", projected, valid_part.cov_uz @ basis.vectors)
    weights = basis.valid_zz * (projected.T @ projected)  # B o Q
    shift_u = valid_part.mean_u - fit_part.mean_u if mode == "paper" else valid_part.mean_u
    sst = valid_part.cov_uu_trace if mode == "paper" else valid_part.cov_uu_trace + float(valid_part.mean_u @ valid_part.mean_u)
    scores = []
    for alpha in alphas:
        d = 1.0 / (basis.values + alpha)
        offset = shift_u - projected @ (d * basis.mean_shift)
        mse = max(valid_part.cov_uu_trace - 2.0 * float(d @ g) + float(d @ weights @ d) + float(offset @ offset), 0.0)
        scores.append(1.0 - mse / sst if sst > 0 else float("nan"))
    return scores


def choose_alpha(fit_part: SplitStats, valid_part: SplitStats, grid: Sequence[float], mode: str = "paper",
                 what: str = "basis", basis: BasisPath | None = None) -> tuple[float, float, list[float]]:
    """The alpha of `grid` with the best validation R² (fit on `fit_part`, R² on `valid_part`; validation_path,
    with the basis's precomputed BasisPath when given).

    Ties (R² equal to 1e-12) go to the larger alpha (the more regularised fit). Returns (alpha, its validation
    R², the validation R² of every grid alpha in grid order).
    """
    grid = [float(a) for a in grid]
    if not grid:
        raise WorkflowInputError(
            f"{what}: decomposition.alpha is 'validation' but decomposition.alpha_grid is empty; list the alphas to "
            f"try (e.g. [1.0e-6, 1.0e-5, ..., 1.0e4], the default)."
        )
    if any(not np.isfinite(a) or a <= 0 for a in grid):
        raise WorkflowInputError(f"{what}: decomposition.alpha_grid holds {grid}; every alpha must be a finite number > 0.")
    scores = validation_path(fit_part, valid_part, grid, mode, basis)
    best = max(scores)
    tolerance = 1e-12 * max(1.0, abs(best))
    chosen = max(a for a, r2 in zip(grid, scores) if r2 >= best - tolerance)
    return chosen, scores[grid.index(chosen)], scores
