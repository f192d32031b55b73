"""k*: each PCA k against the full vector on the same test examples. The shared probe with its per-example
outcomes, the exact McNemar test of two classifiers, and the smallest k not significantly worse."""

import numpy as np

from lmcompare.probe import C_GRID, probe_outcomes


def probe_with_predictions(train_x, train_y, test_x, test_y, *, seed: int = 0, c_grid=C_GRID, folds: int = 3):
    """The shared probe (`probe.linear_probe`) and, per test example, whether it was classified correctly: the
    same fit (`probe.probe_outcomes`, of which linear_probe returns the first part). Returns (ProbeResult,
    correct: bool array of n_test)."""
    return probe_outcomes(train_x, train_y, test_x, test_y, seed=seed, c_grid=c_grid, folds=folds)


def mcnemar_exact(reference_correct, candidate_correct, alpha: float = 0.05) -> dict:
    """Exact McNemar test of a candidate classifier against a reference on the same test examples.

    b = examples only the reference gets right, c = only the candidate; under H0 (equal accuracy) c given the
    m = b + c discordant pairs is Binomial(m, 1/2). Returns
      only_reference_correct (b), only_candidate_correct (c), n,
      p_value: two-sided exact p, min(1, 2 P(X <= min(b, c))) with X ~ Bin(m, 1/2) (= scipy.stats.binomtest);
      accuracy_diff: candidate minus reference accuracy, (c - b) / n;
      diff_ci_low, diff_ci_high: the exact conditional (1 - alpha) interval of that difference: the
        Clopper-Pearson interval [pi_lo, pi_hi] of pi = c / m, mapped by (m / n)(2 pi - 1); [0, 0] when m = 0;
      worse: the candidate is significantly worse (p < alpha and b > c), which happens exactly when
        diff_ci_high < 0, so the drawn interval and the decision agree.
    """
    from scipy.stats import beta, binom

    reference = np.asarray(reference_correct, dtype=bool)
    candidate = np.asarray(candidate_correct, dtype=bool)
    if reference.shape != candidate.shape or reference.ndim != 1 or len(reference) == 0:
        raise ValueError(f"mcnemar_exact needs two equal-length outcome vectors, got {reference.shape} and "
                         f"{candidate.shape}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    n = len(reference)
    b = int((reference & ~candidate).sum())
    c = int((~reference & candidate).sum())
    m = b + c
    if m == 0:
        p_value, low, high = 1.0, 0.0, 0.0
    else:
        p_value = float(min(1.0, 2.0 * binom.cdf(min(b, c), m, 0.5)))
        pi_low = float(beta.ppf(alpha / 2, c, m - c + 1)) if c > 0 else 0.0
        pi_high = float(beta.ppf(1 - alpha / 2, c + 1, m - c)) if c < m else 1.0
        low, high = m * (2 * pi_low - 1) / n, m * (2 * pi_high - 1) / n
    return {"n": n, "only_reference_correct": b, "only_candidate_correct": c, "p_value": p_value,
            "accuracy_diff": (c - b) / n, "diff_ci_low": low, "diff_ci_high": high,
            "worse": bool(p_value < alpha and b > c)}


def probe_row(result) -> dict:
    """The probe's columns of a curve or best-dimensions row."""
    return {"accuracy": result.accuracy, "ci_low": result.ci_low, "ci_high": result.ci_high,
            "n_train": result.n_train, "n_test": result.n_test, "C": result.C}


def paired_row(paired: dict) -> dict:
    """The paired comparison's columns of a curve row (mcnemar_exact against the full vector)."""
    return {"only_full_correct": paired["only_reference_correct"], "only_k_correct": paired["only_candidate_correct"],
            "mcnemar_p": paired["p_value"], "accuracy_diff": paired["accuracy_diff"],
            "diff_ci_low": paired["diff_ci_low"], "diff_ci_high": paired["diff_ci_high"],
            "worse_than_full": paired["worse"]}


def k_star(curve: "pandas.DataFrame"):  # noqa: F821
    """k*: the smallest k of the PCA rows not significantly worse than the full vector (paired exact McNemar test
    of `pca_curve`); None if every probed k is. Returns (k*, its row or None)."""
    pca = curve[curve["kind"] == "pca"].sort_values("k")
    ok = pca[~pca["worse_than_full"].astype(bool)]
    if not len(ok):
        return None, None
    return int(ok["k"].iloc[0]), ok.iloc[0]
