"""Single dimensions: every dimension of the vector alone (a fast fixed-C probe, ranked on train), then the
best few through the full shared protocol, one by one and together; the majority-class line."""

import numpy as np
import pandas as pd

from lmcompare.compression.kstar import probe_row
from lmcompare.probe import C_GRID, _standardise, fit_logistic, linear_probe, wilson_interval


def single_dim_scan(train_x, train_y, test_x, test_y, *, C: float = 1.0, max_iter: int = 1000) -> pd.DataFrame:
    """Every dimension alone: the shared probe with a fixed C (no C search), one fit per dimension.

    Identical to `probe.linear_probe(x[:, j], ..., c_grid=(C,))` for the test accuracy (the same standardisation and
    solver, `probe.fit_logistic`, from the same start); also returns the train
    accuracy and train log-loss, on which dimensions are ranked (rank 1 = best on train; ties broken by
    log-loss, then by dimension index). Columns: dim, rank, train_accuracy, train_log_loss, accuracy, ci_low,
    ci_high, variance (train variance of the raw dimension), C.
    """
    train_x = np.asarray(train_x, dtype=np.float64)
    test_x = np.asarray(test_x, dtype=np.float64)
    train_y = np.asarray(train_y)
    test_y = np.asarray(test_y)
    labels, codes = np.unique(train_y, return_inverse=True)
    variance = train_x.var(axis=0)
    train_z, test_z = _standardise(train_x, test_x)  # the probe's own standardisation
    rows = []
    for j in range(train_x.shape[1]):
        model = fit_logistic(train_z[:, j:j + 1], train_y, C, max_iter=max_iter)  # the probe's solver
        proba = model.predict_proba(train_z[:, j:j + 1])
        train_correct = int((labels[proba.argmax(axis=1)] == train_y).sum())
        correct = int((model.predict(test_z[:, j:j + 1]) == test_y).sum())
        low, high = wilson_interval(correct, len(test_y))
        picked = np.clip(proba[np.arange(len(codes)), codes.reshape(-1)], 1e-15, 1.0)
        rows.append({
            "dim": j,
            "train_accuracy": train_correct / len(train_y),
            "train_log_loss": float(-np.mean(np.log(picked))),
            "accuracy": correct / len(test_y),
            "ci_low": low,
            "ci_high": high,
            "variance": float(variance[j]),
            "C": float(C),
        })
    frame = pd.DataFrame(rows)
    order = frame.sort_values(["train_accuracy", "train_log_loss", "dim"], ascending=[False, True, True]).index
    frame.loc[order, "rank"] = np.arange(1, len(frame) + 1)
    frame["rank"] = frame["rank"].astype(np.int64)
    columns = ["dim", "rank", "train_accuracy", "train_log_loss", "accuracy", "ci_low", "ci_high", "variance", "C"]
    return frame[columns]


def best_dims_probes(train_x, train_y, test_x, test_y, dims_frame: pd.DataFrame, n_best: int, *,
                     seed: int = 0, c_grid=C_GRID, folds: int = 3) -> pd.DataFrame:
    """The `n_best` train-ranked dimensions through the full shared protocol: each alone, then all together.

    Rows: kind ('single' or 'top_together'), dims (the dimension indices, ';'-joined), k, accuracy, ci_low,
    ci_high, n_train, n_test, C.
    """
    chosen = dims_frame.sort_values("rank")["dim"].to_numpy()[:max(1, int(n_best))]
    rows = []
    for j in chosen:
        result = linear_probe(train_x[:, j], train_y, test_x[:, j], test_y, seed=seed, c_grid=c_grid, folds=folds)
        rows.append({"kind": "single", "dims": str(int(j)), "k": 1, **probe_row(result)})
    result = linear_probe(train_x[:, chosen], train_y, test_x[:, chosen], test_y, seed=seed, c_grid=c_grid,
                          folds=folds)
    rows.append({"kind": "top_together", "dims": ";".join(str(int(j)) for j in chosen), "k": len(chosen),
                 **probe_row(result)})
    return pd.DataFrame(rows)


def majority_accuracy(train_y, test_y) -> float:
    """Test accuracy of always predicting the train split's most frequent class (the chance line)."""
    values, counts = np.unique(train_y, return_counts=True)
    return float(np.mean(np.asarray(test_y) == values[counts.argmax()]))
