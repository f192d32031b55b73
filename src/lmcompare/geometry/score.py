"""Each model's downstream score for the geometry regression: the linear-probe accuracy of one pooled layer
(probe.py's probe, cross-validated over every labelled example or fitted on train and scored on test), or a
user's score table (model, score)."""

import logging
import time

import numpy as np
import pandas as pd

from lmcompare import files
from lmcompare.errors import WorkflowInputError
from lmcompare.hidden_states import HiddenStates
from lmcompare.runtime import blas_threads

LOG = logging.getLogger("workflow")


def cv_probe_accuracy(x: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0, threads: int = 1) -> dict:
    """Cross-validated accuracy of the shared probe over all examples: stratified `folds`-fold (shuffled, seeded;
    fewer folds when the smallest class has fewer examples), on each fold the probe of probe.py fitted on the
    other folds (its C chosen by its own inner CV on them) predicts the fold; every example is predicted once.
    Returns accuracy, its Wilson 95% interval over the n predictions, the folds' accuracies' standard deviation,
    n, the number of folds and the C chosen per fold. BLAS is held to `threads` threads: the fits are small, and
    two BLAS threads on them cost several times the CPU of one (measured: docs/geometry.md)."""
    from sklearn.model_selection import StratifiedKFold

    from lmcompare.probe import linear_probe, wilson_interval

    x = np.asarray(x)
    y = np.asarray(y)
    smallest = int(np.bincount(np.unique(y, return_inverse=True)[1]).min())
    k = max(2, min(int(folds), smallest))
    if smallest < 2:
        raise ValueError("cross-validation needs at least two examples of every class")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    correct, fold_accuracy, chosen = 0, [], []
    with blas_threads(threads):
        for train, test in splitter.split(x, y):
            result = linear_probe(x[train], y[train], x[test], y[test], seed=seed)
            hits = int(round(result.accuracy * result.n_test))
            correct += hits
            fold_accuracy.append(hits / result.n_test)
            chosen.append(result.C)
    low, high = wilson_interval(correct, len(y))
    return dict(score=correct / len(y), ci_low=low, ci_high=high, fold_sd=float(np.std(fold_accuracy, ddof=1)),
                n=int(len(y)), folds=k, C=";".join(f"{c:g}" for c in chosen))


def probe_score(pooled_path, *, layer: int = -1, pooling: str = "mean", seed: int = 0, dataset: str = "dataset",
                protocol: str = "cv", folds: int = 5, threads: int = 1, cv_splits: list[str] | None = None) -> dict:
    """Linear-probe accuracy from one pooled layer of pooled.parquet: cross-validated over every labelled example
    (`protocol: cv`, cv_probe_accuracy; `cv_splits` restricts it to those splits, e.g. ["test"] for a model
    fine-tuned on the train split's labels) or fitted on train and scored on test (`split`, probe.py's protocol)."""
    from lmcompare.probe import linear_probe

    if protocol not in ("cv", "split"):
        raise WorkflowInputError(f"geometry.score.protocol must be 'cv' or 'split', got {protocol!r}.")
    states = HiddenStates(pooled_path)
    data = states.labelled_layer(layer, pooling, what="geometry.score.layer")
    head = dict(model=states.model, dataset=dataset, layer=data.layer, pooling=pooling, protocol=protocol)
    if protocol == "split":
        result = linear_probe(*data.train_test(model=str(states.model), dataset=dataset), seed=seed)
        return dict(head, score=result.accuracy, ci_low=result.ci_low, ci_high=result.ci_high,
                    n_train=result.n_train, n_test=result.n_test, dims=result.n_features, C=result.C)
    used = np.ones(len(data.y), dtype=bool)
    if cv_splits:
        used = np.isin(data.split, list(cv_splits))
    counts = np.bincount(data.y[used], minlength=len(data.classes))
    if counts.min() < 2:
        raise WorkflowInputError(
            f"{pooled_path}: dataset {dataset!r} needs at least two labelled examples of each of at least two "
            f"classes for the cross-validated probe (class counts {dict(zip(data.classes, counts.tolist()))})."
        )
    result = cv_probe_accuracy(data.x[used], data.y[used], folds=folds, seed=seed, threads=threads)
    return dict(head, score=result["score"], ci_low=result["ci_low"], ci_high=result["ci_high"],
                fold_sd=result["fold_sd"], folds=result["folds"], splits="+".join(cv_splits) if cv_splits else "all",
                n_train=int(used.sum()), n_test=result["n"], dims=int(data.x.shape[1]), C=result["C"])


def score_model(pooled_path, out_path, *, model: str, dataset: str, layer: int = -1, pooling: str = "mean",
                protocol: str = "cv", folds: int = 5, seed: int = 0, threads: int = 1,
                cv_splits: list[str] | None = None) -> dict:
    """probe_score of one model on one dataset, logged and written to out_path as a one-row table."""
    started = time.perf_counter()
    if cv_splits:
        LOG.info("%s was fine-tuned on the labels of %s's train split: its cross-validated score uses only the "
                 "split(s) %s (examples it never saw)", model, dataset, cv_splits)
    row = probe_score(pooled_path, layer=layer, pooling=pooling, seed=seed, dataset=dataset, protocol=protocol,
                      folds=folds, threads=threads, cv_splits=cv_splits)
    row["model"] = model
    if row["protocol"] == "cv":
        LOG.info("probe accuracy of %s on %s, %d-fold cross-validated over %d labelled examples (splits: %s): "
                 "%.4f [%.4f, %.4f] (Wilson 95%%; sd over folds %.4f; C per fold %s) in %.1f s", row["model"],
                 row["dataset"], row["folds"], row["n_test"], row["splits"], row["score"], row["ci_low"],
                 row["ci_high"], row["fold_sd"], row["C"], time.perf_counter() - started)
    else:
        LOG.info("probe accuracy of %s on %s: %.4f [%.4f, %.4f] (train %d, test %d)", row["model"], row["dataset"],
                 row["score"], row["ci_low"], row["ci_high"], row["n_train"], row["n_test"])
    files.write_table(pd.DataFrame([row]), out_path)
    return row


def read_score_table(path, models: list[str]) -> pd.DataFrame:
    """A user score table: CSV with columns model, score (extra columns ignored). Returns model, score."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise WorkflowInputError(f"geometry.score.table {path!r} cannot be read as CSV ({err}); fix the path.") from err
    missing = [c for c in ("model", "score") if c not in frame.columns]
    if missing:
        raise WorkflowInputError(
            f"geometry.score.table {path!r} lacks the column(s) {missing}; it needs 'model' (configured model "
            f"names) and 'score' (e.g. GLUE average), one row per model."
        )
    frame = frame[["model", "score"]].assign(model=lambda f: f["model"].astype(str))
    duplicated = frame["model"][frame["model"].duplicated()].unique().tolist()
    if duplicated:
        raise WorkflowInputError(f"geometry.score.table {path!r} lists the model(s) {duplicated} more than once.")
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce")
    unknown = sorted(set(frame["model"]) - set(models))
    if unknown:
        LOG.warning("score table %s: rows for models not in this run ignored: %s", path, unknown)
    absent = [m for m in models if m not in set(frame["model"][frame["score"].notna()])]
    if absent:
        LOG.warning("score table %s has no numeric score for %s: they are left out of the regression", path, absent)
    return frame[frame["model"].isin(models) & frame["score"].notna()].reset_index(drop=True)
