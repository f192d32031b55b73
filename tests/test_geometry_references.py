"""Geometry measures against references that do not retype the implementation: Lloyd's definition of mean crowding,
closed forms for cell-count statistics on a cell layout solved by hand, and VRM's population value for clouds whose
principal axes and marginal entropies are known (Gaussian and uniform), to the Vasicek estimator's bias."""
import math

import numpy as np
import pytest

from lmcompare import geometry as g

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("seed", range(3))
def test_patchiness_of_one_codebook_is_lloyds_mean_crowding_over_mean_density(seed):
    """Lloyd (1967): mean crowding m* = Σ x(x−1) / Σ x over quadrats, patchiness = m* / mean(x). With one codebook
    the quadrats are its K cells."""
    rng = np.random.default_rng(seed)
    K = 12
    codes = rng.choice(K, size=(900, 1), p=rng.dirichlet(np.ones(K)))
    x = np.bincount(codes[:, 0], minlength=K).astype(float)
    lloyd = (np.sum(x * (x - 1)) / np.sum(x)) / x.mean()
    assert g.patchiness(g.cell_counts(codes, K), K) == pytest.approx(lloyd, rel=1e-12)


def test_patchiness_when_every_codebook_puts_all_points_in_one_cell():
    """M codebooks, n points each in a single cell: the concatenated counts are n on M of the M·K cells, so
    m = M·n/K, V = n²(K−1)/K², and (m + V/m − 1)/m = 1 + (K−1)/M² − K/(M·n) (for M = 1: K(n−1)/n, Lloyd's value
    for one occupied quadrat)."""
    K, M, n = 8, 3, 50
    codes = np.zeros((n, M), dtype=int)
    codes[:, 1] = 5
    assert g.patchiness(g.cell_counts(codes, K), K) == pytest.approx(1 + (K - 1) / M**2 - K / (M * n), rel=1e-12)
    assert g.patchiness(g.cell_counts(codes[:, :1], K), K) == pytest.approx(K * (n - 1) / n, rel=1e-12)


def _one_heavy_cell(K, n, heavy):
    """Counts of one codebook: `heavy` points in cell 0, the rest spread evenly over the other K − 1 cells."""
    rest = (n - heavy) // (K - 1)
    assert heavy + rest * (K - 1) == n
    return np.array([[heavy] + [rest] * (K - 1)])


@pytest.mark.parametrize("K,n,heavy", [(5, 100, 40), (4, 90, 9), (10, 1000, 100)])
def test_cell_odds_variance_and_kl_of_one_heavy_cell(K, n, heavy):
    """p = (q, r, …, r), r = (1 − q)/(K − 1). The odds p/(1−p)·(K−1) are A = q(K−1)/(1−q) once and
    B = (1−q)(K−1)/(K−2+q) K−1 times, so their variance is (K−1)(A−B)²/K²; KL(p‖U) = q log qK + (1−q) log rK."""
    counts = _one_heavy_cell(K, n, heavy)
    q = heavy / n
    r = (1 - q) / (K - 1)
    A = q * (K - 1) / (1 - q)
    B = (1 - q) * (K - 1) / (K - 2 + q)
    assert g.cell_count_variance(counts) == pytest.approx((K - 1) * (A - B) ** 2 / K**2, rel=1e-12)
    assert g.cell_count_kl(counts) == pytest.approx(q * math.log(q * K) + (1 - q) * math.log(r * K), rel=1e-12)
    if heavy * K == n:  # the uniform layout: every odds ratio is 1, KL 0
        assert g.cell_count_variance(counts) == pytest.approx(0.0, abs=1e-15)


# VRM rescales the PCA-projected cloud to total variance d and compares each column's entropy with N(0, 1)'s:
# r_j = exp(H_j) / sqrt(2πe). For a cloud with distinct axis variances λ_j, PCA recovers the axes, column j has
# variance s·λ_j with s = d / Σλ, and its entropy is known: ½ log(2πe s λ_j) for a Gaussian (r_j = sqrt(s λ_j)),
# log(2 a_j sqrt(s)) for U(−a_j, a_j) (λ_j = a_j²/3). The Vasicek estimator is biased low by O(1/m), window
# m = sqrt(n) + 0.5 (scipy's default): at n = 40,000 (m = 200) the measured gap is at most 2.4e-3 on these clouds,
# hence the tolerance 5e-3; dropping the rescaling moves these values by > 0.05.
N_POINTS = 40_000
VASICEK_TOLERANCE = 5e-3


def test_vrm_of_an_anisotropic_gaussian_is_its_population_value():
    rng = np.random.default_rng(0)
    lam = np.array([4.0, 2.0, 1.0, 0.5, 0.25])
    cloud = rng.standard_normal((N_POINTS, len(lam))) * np.sqrt(lam) @ _rotation(rng, len(lam))
    s = len(lam) / lam.sum()
    expected = np.sum((1 - np.sqrt(s * lam)) ** 2) / len(lam)
    assert g.vrm(cloud) == pytest.approx(expected, abs=VASICEK_TOLERANCE)


def test_vrm_of_an_anisotropic_uniform_box_is_its_population_value():
    rng = np.random.default_rng(1)
    a = np.array([6.0, 4.0, 2.0, 1.0])
    cloud = rng.uniform(-1, 1, (N_POINTS, len(a))) * a @ _rotation(rng, len(a))
    s = len(a) / np.sum(a**2 / 3)
    r = 2 * a * math.sqrt(s) / math.sqrt(2 * math.pi * math.e)
    assert g.vrm(cloud) == pytest.approx(np.sum((1 - r) ** 2) / len(a), abs=VASICEK_TOLERANCE)


def _rotation(rng, d):
    """A random orthogonal matrix: VRM is rotation invariant, so the axes need not be the coordinates."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q
