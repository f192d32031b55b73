"""k* of the compression stage decided by a paired test (issue 13, item 5): the exact McNemar test against
scipy, and k* on synthetic cases whose answer is known."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lmcompare import compression
from lmcompare.probe import linear_probe

pytestmark = pytest.mark.unit


def outcomes(n, both, only_reference, only_candidate):
    """Two per-example outcome vectors of length n with the given concordant-correct and discordant counts
    (the remaining examples are wrong under both), in a shuffled order."""
    reference = np.zeros(n, dtype=bool)
    candidate = np.zeros(n, dtype=bool)
    reference[:both] = candidate[:both] = True
    reference[both:both + only_reference] = True
    candidate[both + only_reference:both + only_reference + only_candidate] = True
    order = np.random.default_rng(n + both + only_reference).permutation(n)
    return reference[order], candidate[order]


@pytest.mark.parametrize("b, c", [(0, 0), (0, 3), (5, 0), (12, 2), (2, 12), (6, 1), (7, 7), (30, 18), (1, 40)])
def test_mcnemar_exact_equals_scipy_binomtest_on_the_discordant_pairs(b, c):
    from scipy.stats import binomtest

    reference, candidate = outcomes(120, 60, b, c)
    result = compression.mcnemar_exact(reference, candidate, alpha=0.05)
    assert (result["only_reference_correct"], result["only_candidate_correct"], result["n"]) == (b, c, 120)
    assert result["accuracy_diff"] == pytest.approx(candidate.mean() - reference.mean(), abs=1e-15)
    if b + c == 0:
        assert result["p_value"] == 1.0 and result["diff_ci_low"] == result["diff_ci_high"] == 0.0
        assert not result["worse"]
        return
    test = binomtest(c, b + c, 0.5)
    assert result["p_value"] == pytest.approx(test.pvalue, rel=1e-12, abs=1e-15)
    # the difference interval is the Clopper-Pearson interval of c / (b + c), scaled by (b + c) / n
    ci = test.proportion_ci(confidence_level=0.95, method="exact")
    m, n = b + c, 120
    assert result["diff_ci_low"] == pytest.approx(m * (2 * ci.low - 1) / n, abs=1e-12)
    assert result["diff_ci_high"] == pytest.approx(m * (2 * ci.high - 1) / n, abs=1e-12)
    assert result["diff_ci_low"] <= result["accuracy_diff"] <= result["diff_ci_high"]
    assert result["worse"] == (test.pvalue < 0.05 and b > c)


def test_worse_is_exactly_an_interval_below_zero():
    """The figure draws the interval, the table reports the test: they must never disagree."""
    for b in range(0, 26):
        for c in range(0, 26):
            reference, candidate = outcomes(60, 5, b, c)
            for alpha in (0.01, 0.05, 0.2):
                result = compression.mcnemar_exact(reference, candidate, alpha=alpha)
                assert result["worse"] == (result["diff_ci_high"] < 0), (b, c, alpha)


def test_mcnemar_exact_refuses_unpaired_outcomes():
    with pytest.raises(ValueError, match="equal-length"):
        compression.mcnemar_exact(np.ones(5, bool), np.ones(6, bool))
    with pytest.raises(ValueError, match="alpha"):
        compression.mcnemar_exact(np.ones(5, bool), np.ones(5, bool), alpha=0.0)


def _curve_from_outcomes(full, by_k):
    rows = []
    for k, correct in by_k.items():
        paired = compression.mcnemar_exact(full, correct)
        rows.append({"kind": "pca", "k": k, "accuracy": correct.mean(), **compression._paired_row(paired)})
    rows.append({"kind": "full", "k": 8, "accuracy": full.mean(),
                 **compression._paired_row(compression.mcnemar_exact(full, full))})
    return pd.DataFrame(rows)


def test_k_star_on_known_discordant_counts():
    """120 test examples, the full vector right on 100. k = 1 loses 12 examples and wins 2: exact two-sided
    p = 2 (1 + 14 + 91) / 2^14 = 0.0129, worse. k = 2 loses 6 and wins 1: p = 2 (1 + 7) / 2^7 = 0.125, not
    significantly worse (although 4.2 points below, more than the former one-point tolerance). So k* = 2."""
    full, k1 = outcomes(120, 88, 12, 2)
    k2 = full.copy()
    right = np.flatnonzero(full)[:6]
    wrong = np.flatnonzero(~full)[:1]
    k2[right], k2[wrong] = False, True
    k4 = full.copy()
    curve = _curve_from_outcomes(full, {1: k1, 2: k2, 4: k4})
    p = curve.set_index("k")["mcnemar_p"]
    assert p[1] == pytest.approx(2 * sum(math.comb(14, i) for i in range(3)) / 2 ** 14, rel=1e-12)
    assert p[2] == pytest.approx(2 * sum(math.comb(7, i) for i in range(2)) / 2 ** 7, rel=1e-12)
    best, row = compression.k_star(curve)
    assert best == 2 and row["accuracy"] == pytest.approx(95 / 120)
    # nothing passes: k* is None
    assert compression.k_star(_curve_from_outcomes(full, {1: k1}))[0] is None


def label_in_third_component(n_train=300, n_test=200, d=8, seed=0):
    """Binary labels living in dimension 2 only (+-2 plus a little noise: variance ~4.4); dimensions 0 and 1
    are label-free noise of variance 25 and 16, the rest variance 1. The train PCA orders the axes 0, 1, 2, ...:
    the label is the third principal component, so k = 1, 2 are at chance and k = 4 holds it: k* = 4."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    y = rng.integers(0, 2, size=n)
    x = rng.normal(size=(n, d))
    x[:, 0] *= 5.0
    x[:, 1] *= 4.0
    x[:, 2] = 2.0 * ((2 * y - 1) + 0.2 * rng.normal(size=n))
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def test_k_star_through_the_pca_curve_on_a_known_synthetic_case():
    train_x, train_y, test_x, test_y = label_in_third_component(n_train=200, n_test=120)
    curve = compression.pca_curve(train_x, train_y, test_x, test_y, [1, 2, 4, 8])
    by_k = curve[curve["kind"] == "pca"].set_index("k")
    full = curve[curve["kind"] == "full"].iloc[0]
    assert full["accuracy"] >= 0.99
    assert by_k.loc[[1, 2], "worse_than_full"].all() and not by_k.loc[[4, 8], "worse_than_full"].any()
    assert compression.k_star(curve)[0] == 4
    # the paired counts are those of the accuracies: acc(k) - acc(full) = (only_k - only_full) / n_test
    np.testing.assert_allclose(by_k["accuracy"] - full["accuracy"],
                               (by_k["only_k_correct"] - by_k["only_full_correct"]) / len(test_y), atol=1e-12)
    assert (full["only_full_correct"], full["only_k_correct"], full["mcnemar_p"]) == (0, 0, 1.0)


def test_probe_with_predictions_is_the_shared_probe():
    train_x, train_y, test_x, test_y = label_in_third_component(n_train=120, n_test=80, seed=3)
    train_x[:, 2] += 3.0 * np.random.default_rng(4).normal(size=len(train_x))  # make it imperfect
    result, correct = compression.probe_with_predictions(train_x, train_y, test_x, test_y)
    reference = linear_probe(train_x, train_y, test_x, test_y)
    assert result == reference
    assert correct.shape == (80,) and correct.mean() == pytest.approx(reference.accuracy)
