"""The PCA curve: PCA fitted on the train split (ddof=0), the probe on the top k principal components for
k = 1, 2, 4, ... and d and on the full vector, each k compared with the full vector (kstar.mcnemar_exact)."""

import logging

import numpy as np
import pandas as pd

from lmcompare.compression.kstar import mcnemar_exact, paired_row, probe_row, probe_with_predictions
from lmcompare.errors import WorkflowInputError
from lmcompare.probe import C_GRID

LOG = logging.getLogger("workflow")


def k_grid(d: int, requested=None, log: logging.Logger = LOG) -> list[int]:
    """k = 1, 2, 4, ... below d, then d (the default), or the requested list capped at d (with a log line)."""
    if d < 1:
        raise ValueError("the vector has no dimension")
    if not requested:
        ks, k = [], 1
        while k < d:
            ks.append(k)
            k *= 2
        return ks + [d]
    ks = set()
    for k in requested:
        k = int(k)
        if k < 1:
            raise WorkflowInputError(f"compression.k_values holds {k}; every k must be at least 1.")
        if k > d:
            log.info("compression: k=%d is larger than the vector's %d dimensions; capped at %d", k, d, d)
            k = d
        ks.add(k)
    return sorted(ks)


def fit_pca(train_x: np.ndarray):
    """PCA of the train split: mean, components (rows, by decreasing variance), variances (ddof=0).

    Computed from the d x d covariance (memory and time grow with d, not with n). Component signs are fixed so that
    the largest-magnitude loading of each component is positive (deterministic output). Not shared with
    geometry.pca_variances (ddof=1, eigenvalues only, SVD when n < d): either way of computing changes the other's
    results in the last bits, so each keeps its own.
    """
    x = np.asarray(train_x, dtype=np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    cov = centred.T @ centred / len(x)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    values = np.clip(values[order], 0.0, None)
    components = vectors[:, order].T
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    signs[signs == 0] = 1.0
    return mean, components * signs[:, None], values


def pca_curve(train_x, train_y, test_x, test_y, ks, *, seed: int = 0, c_grid=C_GRID, folds: int = 3,
              alpha: float = 0.05, return_full_correct: bool = False):
    """Probe accuracy on the top-k principal components (PCA fitted on train) for each k, and on the full vector,
    each k tested against the full vector on the same test examples (`mcnemar_exact`, level `alpha`).

    Rows: kind ('pca' or 'full'), k (dims), explained_variance (cumulative ratio of the train variance kept),
    accuracy, ci_low, ci_high (Wilson 95%), n_train, n_test, C, and the paired comparison with the full vector:
    only_full_correct, only_k_correct (the discordant test examples), mcnemar_p, accuracy_diff (k minus full),
    diff_ci_low, diff_ci_high (its exact 1 - alpha interval), worse_than_full (the full row compares with itself).
    With `return_full_correct`, returns (curve, the full-vector probe's per-test-example outcome).
    """
    mean, components, variances = fit_pca(train_x)
    total = variances.sum()
    cumulative = np.cumsum(variances) / total if total > 0 else np.ones_like(variances)
    train_centred = np.asarray(train_x, dtype=np.float64) - mean
    test_centred = np.asarray(test_x, dtype=np.float64) - mean
    full_result, full_correct = probe_with_predictions(train_x, train_y, test_x, test_y, seed=seed, c_grid=c_grid,
                                                       folds=folds)
    rows = []
    for k in ks:
        basis = components[:k].T
        result, correct = probe_with_predictions(train_centred @ basis, train_y, test_centred @ basis, test_y,
                                                 seed=seed, c_grid=c_grid, folds=folds)
        paired = mcnemar_exact(full_correct, correct, alpha)
        rows.append({"kind": "pca", "k": int(k), "explained_variance": float(cumulative[k - 1]), **probe_row(result),
                     **paired_row(paired)})
        LOG.info("PCA k=%d: accuracy %.4f (C=%g); vs full: %d/%d discordant test examples, exact McNemar p=%.3g%s",
                 k, result.accuracy, result.C, paired["only_reference_correct"], paired["only_candidate_correct"],
                 paired["p_value"], " (significantly worse)" if paired["worse"] else "")
    rows.append({"kind": "full", "k": int(np.shape(train_x)[1]), "explained_variance": 1.0,
                 **probe_row(full_result), **paired_row(mcnemar_exact(full_correct, full_correct, alpha))})
    LOG.info("full vector (%d dims): accuracy %.4f (C=%g)", np.shape(train_x)[1], full_result.accuracy,
             full_result.C)
    curve = pd.DataFrame(rows)
    return (curve, full_correct) if return_full_correct else curve
