"""The paper's question across models: for each geometry measure, the least-squares line of score on measure
(slope, intercept, Pearson r, R², n, p), the percentile bootstrap interval of r over models, its permutation
p value and the Holm adjustment over the measures; sorted by R² (REGRESSION_COLUMNS).

Correlations are scipy's: the fit's r from scipy.stats.linregress, the r of each bootstrap resample and
permutation from scipy.stats.pearsonr along the rows of a batch (rowwise_pearson)."""

import logging
import math
import time
import warnings

import numpy as np
import pandas as pd

from lmcompare import files
from lmcompare.geometry.score import read_score_table

LOG = logging.getLogger("workflow")

REGRESSION_COLUMNS = ["dataset", "measure", "n", "slope", "intercept", "pearson_r", "r2", "p_value", "r_ci_low",
                      "r_ci_high", "confidence", "n_bootstrap", "p_permutation", "permutations", "p_holm",
                      "score_name", "note"]
MIN_MODELS = 3


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
    """Pearson r of each row pair of a and b (shape (B, n)), scipy.stats.pearsonr along the last axis; NaN where a
    row of either is constant."""
    from scipy.stats import pearsonr

    with warnings.catch_warnings():  # constant rows (r undefined, NaN) and nearly constant ones are expected here
        warnings.simplefilter("ignore")
        r = pearsonr(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), axis=-1).statistic
    return np.asarray(r, dtype=np.float64)


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



def write_regression(measure_paths, out_measures, out_scores, out_regression, *, score_source: str,
                     score_paths=(), score_table=None, models=(), dataset: str, score_name: str,
                     min_models: int = MIN_MODELS, bootstrap: int = 2000, permutations: int = 9999,
                     confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """The regression of one dataset: gather the models' measures and scores (the per-model score files, or the
    user's score_table when score_source is 'table'), write both, fit (regression_table), log the best five and
    write the table."""
    measures = pd.concat([pd.read_csv(path) for path in measure_paths], ignore_index=True)
    if score_source == "table":
        scores = read_score_table(score_table, list(models))
    else:
        scores = pd.concat([pd.read_csv(path) for path in score_paths], ignore_index=True)
    files.write_table(measures, out_measures)
    files.write_table(scores, out_scores)
    started = time.perf_counter()
    table = regression_table(measures, scores, dataset=dataset, score_name=score_name, min_models=min_models,
                             bootstrap=bootstrap, permutations=permutations, confidence=confidence, seed=seed)
    LOG.info("regression of %s on %d measures across %d models (%d with a score): %d bootstrap resamples, %s "
             "permutations, Holm over %d fitted measures, in %.1f s", score_name, len(table),
             measures["model"].nunique(), len(scores), bootstrap, next((v for v in table["permutations"] if v), "no"),
             int(table["p_holm"].notna().sum()), time.perf_counter() - started)
    for row in table.head(5).itertuples():
        LOG.info("  %s: r = %+.3f [%+.3f, %+.3f], R² = %.3f, permutation p = %.4f, Holm p = %.4f (n = %d)",
                 row.measure, row.pearson_r, row.r_ci_low, row.r_ci_high, row.r2, row.p_permutation, row.p_holm,
                 row.n)
    files.write_table(table, out_regression)
    return table
