"""The one linear-probe protocol shared by every analysis that reports a downstream accuracy.

Protocol (fixed, seeded, train split only for every choice):
- features standardised with the train split's mean and standard deviation;
- multinomial logistic regression (L2, lbfgs);
- the inverse regularisation C chosen from `C_GRID` by stratified k-fold cross-validation on the train split;
- refit on the whole train split with that C; accuracy on the test split with a Wilson 95% interval.
"""

import warnings
from dataclasses import asdict, dataclass

import numpy as np

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float
    ci_low: float
    ci_high: float
    n_train: int
    n_test: int
    n_features: int
    C: float

    def as_dict(self) -> dict:
        return asdict(self)


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def _standardise(train_x: np.ndarray, test_x: np.ndarray):
    mean = train_x.mean(axis=0)
    std = train_x.std(axis=0)
    std[std == 0] = 1.0
    return (train_x - mean) / std, (test_x - mean) / std


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                 seed: int = 0, c_grid=C_GRID, folds: int = 3, max_iter: int = 1000) -> ProbeResult:
    """Fit the shared probe on train, report test accuracy with a Wilson 95% interval."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    train_x = np.asarray(train_x, dtype=np.float64)
    test_x = np.asarray(test_x, dtype=np.float64)
    if train_x.ndim == 1:
        train_x, test_x = train_x[:, None], test_x[:, None]
    train_y = np.asarray(train_y)
    test_y = np.asarray(test_y)
    if len(np.unique(train_y)) < 2:
        raise ValueError("the probe's train split holds a single class; it needs at least two")
    train_x, test_x = _standardise(train_x, test_x)
    smallest_class = int(np.bincount(np.unique(train_y, return_inverse=True)[1]).min())
    n_folds = max(2, min(folds, smallest_class))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings at extreme C are expected in the search
        if len(c_grid) > 1 and smallest_class >= 2:
            splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
            scores = [
                cross_val_score(LogisticRegression(C=c, max_iter=max_iter), train_x, train_y, cv=splitter).mean()
                for c in c_grid
            ]
            best_c = float(c_grid[int(np.argmax(scores))])
        else:
            best_c = float(c_grid[len(c_grid) // 2])
        model = LogisticRegression(C=best_c, max_iter=max_iter).fit(train_x, train_y)
    correct = int((model.predict(test_x) == test_y).sum())
    low, high = wilson_interval(correct, len(test_y))
    return ProbeResult(
        accuracy=correct / len(test_y) if len(test_y) else float("nan"),
        ci_low=low, ci_high=high, n_train=len(train_y), n_test=len(test_y),
        n_features=train_x.shape[1], C=best_c,
    )
