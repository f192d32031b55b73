"""The shared linear probe against independent references: scikit-learn's own scaler, grid search and pipeline on
the same folds (accuracy, chosen C, train-only standardisation) and scipy's Wilson interval."""
from functools import lru_cache

import numpy as np
import pytest
from scipy.stats import binomtest

from lmcompare.probe import C_GRID, linear_probe, wilson_interval

pytestmark = pytest.mark.unit


def _task(seed, n_train=150, n_test=90, d=6, classes=3, shift=0.0):
    """A noisy multi-class linear task on features of very different scales; `shift` moves the test features."""
    rng = np.random.default_rng(seed)
    scales = np.geomspace(0.01, 100.0, d)
    centres = rng.normal(size=(classes, d))
    y = rng.integers(0, classes, n_train + n_test)
    x = (centres[y] + 1.4 * rng.normal(size=(len(y), d))) * scales
    x[n_train:] += shift * scales
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def _sklearn_reference(train_x, train_y, test_x, test_y, seed=0, folds=3):
    """The protocol written with scikit-learn's parts: StandardScaler fit on the train split, GridSearchCV over C
    on stratified shuffled folds of the train split, refit on the whole train split, accuracy on test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    search = GridSearchCV(LogisticRegression(max_iter=1000), {"C": list(C_GRID)},
                          cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed))
    search.fit(scaler.transform(train_x), train_y)
    accuracy = float(np.mean(search.predict(scaler.transform(test_x)) == test_y))
    return accuracy, float(search.best_params_["C"]), search.cv_results_["mean_test_score"]


@lru_cache(maxsize=None)
def _reference_on_task(seed):
    """(accuracy, C) of the scikit-learn reference on `_task(seed)`, computed once per seed."""
    return _sklearn_reference(*_task(seed), seed=seed)[:2]


@pytest.mark.parametrize("seed", range(4))
def test_accuracy_and_chosen_c_equal_scikit_learns_grid_search(seed):
    train_x, train_y, test_x, test_y = _task(seed)
    result = linear_probe(train_x, train_y, test_x, test_y, seed=seed)
    accuracy, best_c = _reference_on_task(seed)
    assert result.C == best_c
    assert result.accuracy == accuracy
    assert (result.n_train, result.n_test, result.n_features) == (len(train_y), len(test_y), train_x.shape[1])


def test_the_grid_search_is_not_trivial():
    """Across the seeds above, the folds prefer more than one C, so agreeing on C is a real check."""
    chosen = {_reference_on_task(seed)[1] for seed in range(4)}
    assert len(chosen) > 1


def test_standardisation_uses_the_train_split_only():
    """With test features shifted far from the train split, a pipeline fit on train alone predicts the test split
    as the probe does; statistics taken from train and test together would predict differently."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, train_y, test_x, test_y = _task(3, shift=1.5)
    result = linear_probe(train_x, train_y, test_x, test_y, seed=3)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=result.C, max_iter=1000)).fit(train_x, train_y)
    assert result.accuracy == float(np.mean(pipeline.predict(test_x) == test_y))
    pooled = StandardScaler().fit(np.vstack([train_x, test_x]))
    leaky = LogisticRegression(C=result.C, max_iter=1000).fit(pooled.transform(train_x), train_y)
    assert float(np.mean(leaky.predict(pooled.transform(test_x)) == test_y)) != result.accuracy


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (1, 7), (37, 50), (120, 240), (499, 1000), (3, 400)])
def test_wilson_interval_equals_scipy(k, n):
    low, high = wilson_interval(k, n)
    reference = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert low == pytest.approx(reference.low, abs=1e-12)
    assert high == pytest.approx(reference.high, abs=1e-12)


def test_probe_interval_is_scipys_wilson_interval_of_its_test_correct_count():
    train_x, train_y, test_x, test_y = _task(1)
    result = linear_probe(train_x, train_y, test_x, test_y, seed=1)
    correct = round(result.accuracy * result.n_test)
    reference = binomtest(correct, result.n_test).proportion_ci(confidence_level=0.95, method="wilson")
    assert (result.ci_low, result.ci_high) == pytest.approx((reference.low, reference.high), abs=1e-12)


# --------------------------------------------------------------------------------- the solver itself
def _sklearn_fit(x, y, C):
    """scikit-learn's LogisticRegression at a tolerance far below its default, as the objective's optimum."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(C=C, tol=1e-12, max_iter=20000).fit(x, y)


def _objective(x, y, C, coef, intercept):
    """C * sum log-loss + 1/2 ||coef||^2 of scikit-learn's model (binary: one weight vector)."""
    from scipy.special import logsumexp

    z = x @ np.atleast_2d(coef).T + intercept
    if z.shape[1] == 1:
        z = np.hstack([np.zeros_like(z), z])
    codes = np.unique(y, return_inverse=True)[1]
    return C * float(np.sum(logsumexp(z, axis=1) - z[np.arange(len(y)), codes])) + 0.5 * float(np.sum(coef ** 2))


@pytest.mark.parametrize("classes", [2, 3, 4])
@pytest.mark.parametrize("C", C_GRID)
def test_solver_reaches_scikit_learns_optimum(classes, C):
    """At every C of the grid, binary and multinomial: the objective at the new solver's solution is not above
    scikit-learn's (tol 1e-12) by more than 1e-9 relative, the coefficients agree to 1e-5 of their largest, the
    intercepts (centred, for more than two classes) to 1e-5, the predictions are the same and the probabilities
    agree to 1e-5 (the stopping tolerance, max |gradient| <= 1e-8 C n, bounds how close it gets)."""
    from lmcompare.probe import _standardise, fit_logistic

    train_x, train_y, test_x, _ = _task(5, n_train=200, d=8, classes=classes)
    train_x, test_x = _standardise(train_x, test_x)
    ours = fit_logistic(train_x, train_y, C)
    theirs = _sklearn_fit(train_x, train_y, C)
    reference = _objective(train_x, train_y, C, theirs.coef_, theirs.intercept_)
    assert ours.objective == pytest.approx(_objective(train_x, train_y, C, ours.coef, ours.intercept), rel=1e-12)
    assert ours.objective <= reference * (1 + 1e-9)
    assert ours.coef.shape == theirs.coef_.shape
    scale = np.abs(theirs.coef_).max()
    assert np.abs(ours.coef - theirs.coef_).max() <= 1e-5 * max(scale, 1.0)
    intercept = theirs.intercept_ - (theirs.intercept_.mean() if classes > 2 else 0.0)
    assert np.abs(ours.intercept - intercept).max() <= 1e-5 * max(np.abs(intercept).max(), 1.0)
    assert (ours.predict(test_x) == theirs.predict(test_x)).all()
    assert (np.abs(ours.predict_proba(test_x) - theirs.predict_proba(test_x)).max()) <= 1e-5


def test_solver_with_more_features_than_examples_reaches_the_optimum():
    """d > n (the row-space reduction): the same optimum as scikit-learn's, weights in the row space."""
    from lmcompare.probe import _standardise, fit_logistic

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 120))
    y = (x[:, 0] + 0.5 * rng.normal(size=40) > 0).astype(int)
    x, _ = _standardise(x, x[:1])
    for C in (0.01, 10.0):
        ours = fit_logistic(x, y, C)
        theirs = _sklearn_fit(x, y, C)
        assert ours.objective <= _objective(x, y, C, theirs.coef_, theirs.intercept_) * (1 + 1e-9)
        assert np.abs(ours.coef - theirs.coef_).max() <= 1e-4 * np.abs(theirs.coef_).max()


def test_probe_is_bit_identical_across_runs_and_blas_threads():
    """Same inputs -> the same result, whether BLAS runs on one thread or two (the solver's products, numpy's and
    scipy's OpenBLAS, do not depend on the thread count here); the fitted coefficients too, bit for bit."""
    from threadpoolctl import threadpool_limits

    from lmcompare.probe import _standardise, fit_logistic

    rng = np.random.default_rng(4)
    n, d = 600, 300
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.1 + 0.3 * y[:, None] * rng.normal(size=d)
    z, _ = _standardise(x, x[:1])
    results, coefs = [], []
    for threads in (1, 2, 1, 2):
        with threadpool_limits(limits=threads):
            results.append(linear_probe(x[:450], y[:450], x[450:], y[450:], seed=2))
            coefs.append(fit_logistic(z[:450], y[:450], 1.0).coef)
    assert all(r == results[0] for r in results)
    assert all(np.array_equal(c, coefs[0]) for c in coefs)


def test_edge_cases():
    """A constant feature, one-dimensional input, a class of two examples (two folds), d > n, string labels."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(60, 4))
    y = np.where(x[:, 0] + 0.3 * rng.normal(size=60) > 0, "pos", "neg")
    x[:, 2] = 5.0  # constant: standardised to 0, its weight 0
    result = linear_probe(x[:40], y[:40], x[40:], y[40:])
    assert result.accuracy >= 0.8 and result.n_features == 4
    from lmcompare.probe import _standardise, fit_logistic

    z, _ = _standardise(x[:40], x[40:])
    assert fit_logistic(z, y[:40], 1.0).coef[0, 2] == 0.0
    one = linear_probe(x[:40, 0], y[:40], x[40:, 0], y[40:])
    assert one.n_features == 1 and one.accuracy >= 0.8
    # a third class with two train examples: two folds; and with one: no search, the grid's middle C
    y3 = y.copy()
    y3[[0, 1]] = "rare"
    two = linear_probe(x[:40], y3[:40], x[40:], y3[40:])
    assert two.C in C_GRID
    y3[1] = y[1]
    single = linear_probe(x[:40], y3[:40], x[40:], y3[40:])
    assert single.C == C_GRID[len(C_GRID) // 2]
    wide = linear_probe(rng.normal(size=(30, 200)), np.arange(30) % 2, rng.normal(size=(10, 200)), np.arange(10) % 2)
    assert wide.n_features == 200 and 0.0 <= wide.accuracy <= 1.0
    with pytest.raises(ValueError, match="single class"):
        linear_probe(x[:10], np.zeros(10), x[10:20], np.zeros(10))
