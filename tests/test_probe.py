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
