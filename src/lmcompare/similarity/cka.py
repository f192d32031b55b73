r"""Linear CKA (Kornblith et al., ICML 2019) and its debiased form (the unbiased HSIC estimator of Song et al.,
JMLR 2012, as Nguyen et al., ICLR 2021, use it), from streamed statistics (statistics.PairStatistics).

Linear CKA of centred X (n x p) and Y (n x q):

    CKA = ||Sxy||_F² / (||Sxx||_F ||Syy||_F),   Sxy = Xc^T Yc, ...

the biased HSIC of the linear kernels K = Xc Xc^T, L = Yc Yc^T normalised (tr(KL) = ||Sxy||_F²).

Debiased CKA replaces each HSIC by the unbiased estimator on the kernel matrices with their diagonals set to zero,
K~ = K - diag(K), L~ = L - diag(L):

    HSIC_1(K, L) = [ tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1 ] / (n (n-3))

and CKA_debiased = HSIC_1(K, L) / sqrt(HSIC_1(K, K) HSIC_1(L, L)). Song et al. define it on the uncentred kernel
matrix; with linear kernels it does not change when a constant vector is added to every row of X: HSIC_1 is the
U-statistic of h(i, j, q, r) = (k_ij + k_qr - k_iq - k_jr)(l_ij + l_qr - l_iq - l_jr) / 4 over distinct indices
(symmetrised), and for k_ij = x_i.x_j, k_ij + k_qr - k_iq - k_jr = (x_i - x_r).(x_j - x_q), free of the shift. So
the rows may be centred first. With centred rows x_i, y_i, their squared norms a_i = ||x_i||², b_i = ||y_i||²,
A = sum a_i = tr Sxx, B = tr Syy and sum_i x_i = 0:

    tr(K~ L~)    = sum_{i != j} (x_i.x_j)(y_i.y_j) = tr(X X^T Y Y^T) - sum a_i b_i = ||Sxy||_F² - sum a_i b_i
    1^T K~ 1     = ||sum_i x_i||² - A = -A,         1^T L~ 1 = -B
    1^T K~ L~ 1  = sum_i ((K~ 1)_i)((L~ 1)_i) = sum_i (x_i.sum_j x_j - a_i)(y_i.sum_j y_j - b_i) = sum a_i b_i

hence

    n (n-3) HSIC_1(X, Y) = ||Sxy||_F² - n/(n-2) sum a_i b_i + A B / ((n-1)(n-2))

(and with Y = X: ||Sxx||_F², sum a_i², A²). Besides the co-moment blocks this needs the three sums sum a_i b_i,
sum a_i², sum b_i² about the means of all units; a pair file streams them per split about each split's mean with
the third-order sums sum a_i y_i, sum b_i x_i, sum a_i x_i, sum b_i y_i that moving the centre needs
(decomposition/moments.py, Moments._shifted_norms), so they merge across chunks and splits exactly and memory does
not grow with n. The factor n (n-3) cancels in the ratio; it needs n >= 4.
"""

import numpy as np

from lmcompare.similarity.statistics import PairStatistics


def linear_cka(sxx: np.ndarray, syy: np.ndarray, sxy: np.ndarray) -> float:
    """||Sxy||_F² / (||Sxx||_F ||Syy||_F) of the co-moment blocks of centred rows."""
    denominator = np.linalg.norm(sxx) * np.linalg.norm(syy)
    return float(np.sum(sxy * sxy) / denominator) if denominator > 0 else float("nan")


def unbiased_hsic_scaled(n: int, cross_fro2: float, norm_products: float, trace_x: float, trace_y: float) -> float:
    """n (n-3) HSIC_1 of two linear kernels (module docstring): ||Sxy||_F² - n/(n-2) sum a_i b_i + A B/((n-1)(n-2))."""
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 units, got {n}")
    return cross_fro2 - n / (n - 2) * norm_products + trace_x * trace_y / ((n - 1) * (n - 2))


def debiased_cka(stats: PairStatistics) -> float:
    """HSIC_1(X, Y) / sqrt(HSIC_1(X, X) HSIC_1(Y, Y)) from the statistics; nan where a self term is not positive
    (a representation constant on the units, or too few units for the estimate)."""
    tx, ty = float(np.trace(stats.sxx)), float(np.trace(stats.syy))
    xy = unbiased_hsic_scaled(stats.n, float(np.sum(stats.sxy * stats.sxy)), stats.norm_xy, tx, ty)
    xx = unbiased_hsic_scaled(stats.n, float(np.sum(stats.sxx * stats.sxx)), stats.norm4_x, tx, tx)
    yy = unbiased_hsic_scaled(stats.n, float(np.sum(stats.syy * stats.syy)), stats.norm4_y, ty, ty)
    return float(xy / np.sqrt(xx * yy)) if xx > 0 and yy > 0 else float("nan")
