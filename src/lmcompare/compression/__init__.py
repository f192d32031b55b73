"""[CLS] redundancy and compression (Matton & de Oliveira, arXiv:1910.10832).

Per (dataset, model, view) - a view is one pooled vector: the first token ([CLS]) or the mean over content tokens,
of one layer - this module measures how much of the vector a linear probe needs:

- PCA curve: PCA fitted on the train split; the probe (workflow_scripts/probe.py, the shared protocol) on the top
  k principal components for k = 1, 2, 4, ... and d, and on the full vector. Each k is compared with the full
  vector on the same test examples by an exact McNemar test (two-sided, level `alpha`); k* is the smallest k
  that is not significantly worse than the full vector, reported with the test size it was decided on.
- Single dimensions: every dimension alone, through a fast fixed-C variant of the shared protocol (standardise
  on train, logistic regression with C = `single_dim_c`, no C search); dimensions ranked on the train split
  (train accuracy, then train log-loss), never on test. The `n_best` best dimensions are then probed with the
  full shared protocol, one by one and together.

The per-dataset join puts pretrained and fine-tuned models side by side (pairs from config, or derived from the
fine-tuning entries) and draws the accuracy-vs-k curves and the single-dimension accuracy distributions.
See docs/compression.md.
"""

import contextlib
import logging
import time
import warnings

import numpy as np
import pandas as pd

from lmcompare import plotting
from lmcompare import files, hidden_states
from lmcompare.probe import C_GRID, linear_probe, wilson_interval
from lmcompare.config import where
from lmcompare.errors import WorkflowInputError

LOG = logging.getLogger("workflow")

POOLINGS = ("first", "mean")


# ------------------------------------------------------------------------------------------- views
def view_name(pooling: str, layer: int) -> str:
    """The path segment naming one pooled vector, e.g. 'first_layer-1' or 'mean_layer6'."""
    if pooling not in POOLINGS:
        raise WorkflowInputError(f"compression: pooling {pooling!r} is not one of {POOLINGS}; fix the config file.")
    return f"{pooling}_layer{int(layer)}"


def parse_view(view: str) -> tuple[str, int]:
    pooling, _, layer = view.partition("_layer")
    if pooling not in POOLINGS or not layer.lstrip("-").isdigit():
        raise WorkflowInputError(f"compression: {view!r} is not a view name like 'first_layer-1'.")
    return pooling, int(layer)


# ------------------------------------------------------------------------------------------ inputs
def read_view(pooled_path, *, layer: int, pooling: str, model: str = "model", dataset: str = "dataset") -> dict:
    """Read one layer's pooled vectors, split and labels from pooled.parquet, one row group at a time.

    Only the needed columns are read. Returns x (n, d) float32, y (n,) int codes, split (n,), classes,
    the resolved layer and the file's metadata. Unlabelled rows are dropped (and counted in the log).
    """
    meta = hidden_states.read_hidden_metadata(pooled_path)
    resolved = hidden_states.resolve_layer(int(layer), int(meta["n_layers"]), what=f"compression layer of model {model!r}")
    column = hidden_states.pooled_column(resolved, pooling)
    blocks, labels, splits = [], [], []
    for group in hidden_states.iter_row_groups(pooled_path, ["split", "label", column]):
        blocks.append(hidden_states.vectors(group, column))
        labels.append(group.column("label").to_pandas())
        splits.append(group.column("split").to_numpy(zero_copy_only=False))
    if not blocks:
        raise WorkflowInputError(f"{pooled_path} holds no rows: dataset {dataset!r} is empty for model {model!r}.")
    frame = pd.DataFrame({"label": pd.concat(labels, ignore_index=True), "split": np.concatenate(splits)})
    labelled, classes = hidden_states.labelled_examples(frame, dataset)
    x = np.concatenate(blocks)
    keep = labelled.index.to_numpy()
    dropped = len(frame) - len(keep)
    if dropped:
        LOG.info("%s: %d of %d rows carry no label and are left out", pooled_path, dropped, len(frame))
    x = x[keep]
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x).all(axis=1)).sum())
        raise WorkflowInputError(
            f"{pooled_path} ({column}) holds {bad} non-finite vectors; re-extract model {model!r} on {dataset!r} "
            f"(extraction.nonfinite: drop leaves them out)."
        )
    return {
        "x": x,
        "y": labelled["label_code"].to_numpy(),
        "split": labelled["split"].to_numpy().astype(str),
        "classes": classes,
        "layer": resolved,
        "column": column,
        "meta": meta,
    }


def train_test(view: dict, *, model: str = "model", dataset: str = "dataset"):
    """Split a view into (train_x, train_y, test_x, test_y); both splits must be usable by a probe."""
    train = view["split"] == "train"
    test = view["split"] == "test"
    train_x, train_y, test_x, test_y = view["x"][train], view["y"][train], view["x"][test], view["y"][test]
    if len(test_y) == 0:
        raise WorkflowInputError(
            f"dataset {dataset!r} (model {model!r}) has no labelled test examples; the probe needs a test split "
            f"(set test_fraction or splits for the dataset in the config file)."
        )
    present = np.unique(train_y)
    if len(present) < 2:
        names = [view["classes"][i] for i in present]
        raise WorkflowInputError(
            f"dataset {dataset!r} (model {model!r}): the train split holds a single class {names}; a probe needs "
            f"at least two classes in train (check label_column and max_examples of the dataset)."
        )
    return train_x, train_y, test_x, test_y


# --------------------------------------------------------------------------------------------- PCA
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
    the largest-magnitude loading of each component is positive (deterministic output).
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


def probe_with_predictions(train_x, train_y, test_x, test_y, *, seed: int = 0, c_grid=C_GRID, folds: int = 3):
    """The shared probe (`probe.linear_probe`) and, per test example, whether it was classified correctly.

    linear_probe returns counts only; the paired test needs the per-example outcome, so the probe is refitted
    with the C it chose on the same standardised train split (lbfgs is deterministic) and its test predictions
    are checked against linear_probe's accuracy. Returns (ProbeResult, correct: bool array of n_test).
    """
    from sklearn.linear_model import LogisticRegression

    from lmcompare.probe import _standardise

    result = linear_probe(train_x, train_y, test_x, test_y, seed=seed, c_grid=c_grid, folds=folds)
    train_x = np.asarray(train_x, dtype=np.float64)
    test_x = np.asarray(test_x, dtype=np.float64)
    if train_x.ndim == 1:
        train_x, test_x = train_x[:, None], test_x[:, None]
    train_z, test_z = _standardise(train_x, test_x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LogisticRegression(C=result.C, max_iter=1000).fit(train_z, np.asarray(train_y))
    correct = model.predict(test_z) == np.asarray(test_y)
    if int(correct.sum()) != int(round(result.accuracy * result.n_test)):
        raise RuntimeError(
            f"compression: the refitted probe gets {int(correct.sum())} of {result.n_test} test examples right, "
            f"linear_probe {result.accuracy * result.n_test:.0f}; probe.linear_probe and probe_with_predictions "
            f"no longer fit the same model (keep their solver settings in step)."
        )
    return result, correct


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
        rows.append({"kind": "pca", "k": int(k), "explained_variance": float(cumulative[k - 1]), **_probe_row(result),
                     **_paired_row(paired)})
        LOG.info("PCA k=%d: accuracy %.4f (C=%g); vs full: %d/%d discordant test examples, exact McNemar p=%.3g%s",
                 k, result.accuracy, result.C, paired["only_reference_correct"], paired["only_candidate_correct"],
                 paired["p_value"], " (significantly worse)" if paired["worse"] else "")
    rows.append({"kind": "full", "k": int(np.shape(train_x)[1]), "explained_variance": 1.0,
                 **_probe_row(full_result), **_paired_row(mcnemar_exact(full_correct, full_correct, alpha))})
    LOG.info("full vector (%d dims): accuracy %.4f (C=%g)", np.shape(train_x)[1], full_result.accuracy,
             full_result.C)
    curve = pd.DataFrame(rows)
    return (curve, full_correct) if return_full_correct else curve


def _probe_row(result) -> dict:
    return {"accuracy": result.accuracy, "ci_low": result.ci_low, "ci_high": result.ci_high,
            "n_train": result.n_train, "n_test": result.n_test, "C": result.C}


def _paired_row(paired: dict) -> dict:
    return {"only_full_correct": paired["only_reference_correct"], "only_k_correct": paired["only_candidate_correct"],
            "mcnemar_p": paired["p_value"], "accuracy_diff": paired["accuracy_diff"],
            "diff_ci_low": paired["diff_ci_low"], "diff_ci_high": paired["diff_ci_high"],
            "worse_than_full": paired["worse"]}


def k_star(curve: pd.DataFrame):
    """k*: the smallest k of the PCA rows not significantly worse than the full vector (paired exact McNemar test
    of `pca_curve`); None if every probed k is. Returns (k*, its row or None)."""
    pca = curve[curve["kind"] == "pca"].sort_values("k")
    ok = pca[~pca["worse_than_full"].astype(bool)]
    if not len(ok):
        return None, None
    return int(ok["k"].iloc[0]), ok.iloc[0]


# ------------------------------------------------------------------------------------- single dims
def single_dim_scan(train_x, train_y, test_x, test_y, *, C: float = 1.0, max_iter: int = 1000) -> pd.DataFrame:
    """Every dimension alone: the shared probe with a fixed C (no C search), one fit per dimension.

    Identical to `probe.linear_probe(x[:, j], ..., c_grid=(C,))` for the test accuracy; also returns the train
    accuracy and train log-loss, on which dimensions are ranked (rank 1 = best on train; ties broken by
    log-loss, then by dimension index). Columns: dim, rank, train_accuracy, train_log_loss, accuracy, ci_low,
    ci_high, variance (train variance of the raw dimension), C.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    train_x = np.asarray(train_x, dtype=np.float64)
    test_x = np.asarray(test_x, dtype=np.float64)
    train_y = np.asarray(train_y)
    test_y = np.asarray(test_y)
    labels = np.unique(train_y)
    mean = train_x.mean(axis=0)
    std = train_x.std(axis=0)
    variance = std ** 2
    std[std == 0] = 1.0
    train_z = (train_x - mean) / std
    test_z = (test_x - mean) / std
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for j in range(train_x.shape[1]):
            model = LogisticRegression(C=C, max_iter=max_iter).fit(train_z[:, j:j + 1], train_y)
            proba = model.predict_proba(train_z[:, j:j + 1])
            train_correct = int((model.classes_[proba.argmax(axis=1)] == train_y).sum())
            correct = int((model.predict(test_z[:, j:j + 1]) == test_y).sum())
            low, high = wilson_interval(correct, len(test_y))
            rows.append({
                "dim": j,
                "train_accuracy": train_correct / len(train_y),
                "train_log_loss": float(log_loss(train_y, proba, labels=labels)),
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
        rows.append({"kind": "single", "dims": str(int(j)), "k": 1, **_probe_row(result)})
    result = linear_probe(train_x[:, chosen], train_y, test_x[:, chosen], test_y, seed=seed, c_grid=c_grid,
                          folds=folds)
    rows.append({"kind": "top_together", "dims": ";".join(str(int(j)) for j in chosen), "k": len(chosen),
                 **_probe_row(result)})
    return pd.DataFrame(rows)


def majority_accuracy(train_y, test_y) -> float:
    """Test accuracy of always predicting the train split's most frequent class (the chance line)."""
    values, counts = np.unique(train_y, return_counts=True)
    return float(np.mean(np.asarray(test_y) == values[counts.argmax()]))


# ----------------------------------------------------------------------------------- one model run
def analyse(view: dict, *, model: str, dataset: str, pooling: str, k_values=None, alpha: float = 0.05,
            single_dim_c: float = 1.0, n_best: int = 5, seed: int = 0, folds: int = 3, c_grid=C_GRID):
    """All measurements for one (dataset, model, view). Returns (curve, dims, best, summary) DataFrames."""
    train_x, train_y, test_x, test_y = train_test(view, model=model, dataset=dataset)
    d = train_x.shape[1]
    ids = {"model": model, "dataset": dataset, "layer": view["layer"], "pooling": pooling}
    n = len(train_y) + len(test_y)
    ks = k_grid(d, k_values)
    started = time.perf_counter()
    curve, full_correct = pca_curve(train_x, train_y, test_x, test_y, ks, seed=seed, c_grid=c_grid, folds=folds,
                                    alpha=alpha, return_full_correct=True)
    pca_seconds = time.perf_counter() - started
    best_k, at_best_k = k_star(curve)
    # k* is only informative when the full vector itself beats always predicting the train majority class
    values, counts = np.unique(train_y, return_counts=True)
    majority_correct = np.asarray(test_y) == values[counts.argmax()]
    versus_majority = mcnemar_exact(majority_correct, full_correct, alpha)
    beats_majority = bool(versus_majority["p_value"] < alpha and versus_majority["accuracy_diff"] > 0)
    started = time.perf_counter()
    dims = single_dim_scan(train_x, train_y, test_x, test_y, C=single_dim_c)
    scan_seconds = time.perf_counter() - started
    best = best_dims_probes(train_x, train_y, test_x, test_y, dims, min(n_best, d), seed=seed, c_grid=c_grid,
                            folds=folds)
    LOG.info("%s / %s / %s layer %d: %d train, %d test, d=%d; PCA curve %.1f s, single-dimension scan %.1f s",
             dataset, model, pooling, view["layer"], len(train_y), len(test_y), d, pca_seconds, scan_seconds)
    top = dims.sort_values("rank").iloc[0]
    top_probe = best[best["kind"] == "single"].iloc[0]
    together = best[best["kind"] == "top_together"].iloc[0]
    full_row = curve[curve["kind"] == "full"].iloc[0]
    full = float(full_row["accuracy"])
    LOG.info("k* = %s: the smallest PCA k not significantly worse than the full vector (exact McNemar, alpha %g, "
             "%d test examples)", best_k, alpha, len(test_y))
    if not beats_majority:
        LOG.warning("%s / %s: the full vector (%.4f) is not significantly better than the majority class (%.4f; "
                    "exact McNemar p=%.3g on %d test examples): k* = %s says nothing about compression here",
                    dataset, model, full, majority_accuracy(train_y, test_y), versus_majority["p_value"],
                    len(test_y), best_k)
    summary = pd.DataFrame([{
        **ids,
        "n": n,
        "n_train": len(train_y),
        "n_test": len(test_y),
        "n_classes": len(view["classes"]),
        "dims": d,
        "majority_accuracy": majority_accuracy(train_y, test_y),
        "full_accuracy": full,
        "full_ci_low": float(full_row["ci_low"]),
        "full_ci_high": float(full_row["ci_high"]),
        "full_vs_majority_mcnemar_p": versus_majority["p_value"],
        "full_beats_majority": beats_majority,
        "alpha": alpha,
        "k_star": best_k if best_k is not None else pd.NA,
        "k_star_n_test": len(test_y),
        "k_star_accuracy": float(at_best_k["accuracy"]) if best_k is not None else np.nan,
        "k_star_accuracy_diff": float(at_best_k["accuracy_diff"]) if best_k is not None else np.nan,
        "k_star_mcnemar_p": float(at_best_k["mcnemar_p"]) if best_k is not None else np.nan,
        "pca_k1_accuracy": float(curve.loc[(curve["kind"] == "pca") & (curve["k"] == ks[0]), "accuracy"].iloc[0]),
        "best_dim": int(top["dim"]),
        "best_dim_accuracy": float(top_probe["accuracy"]),
        "best_dim_ci_low": float(top_probe["ci_low"]),
        "best_dim_ci_high": float(top_probe["ci_high"]),
        "best_dims": together["dims"],
        "best_dims_together_accuracy": float(together["accuracy"]),
        "single_dim_median_accuracy": float(dims["accuracy"].median()),
        "single_dim_max_test_accuracy": float(dims["accuracy"].max()),
        "single_dim_argmax_test": int(dims.loc[dims["accuracy"].idxmax(), "dim"]),
    }])
    for frame in (curve, dims, best):
        for key, value in reversed(list(ids.items())):
            frame.insert(0, key, value)
    curve.insert(4, "dims", curve["k"])
    curve.insert(5, "n", n)
    return curve, dims, best, summary


# ------------------------------------------------------------------------------------------ pairs
def resolve_pairs(config_pairs, models_config, models: list[str], derive: bool = True) -> list[tuple[str, str]]:
    """(pretrained, fine-tuned) pairs: those declared in config, plus (base, name) of every `source: finetune`
    model when `derive` is on; only pairs whose two models are both analysed; no duplicates, config order."""
    known = {entry["name"]: entry for entry in models_config}
    pairs = []
    for index, pair in enumerate(config_pairs or []):
        for role in ("pretrained", "finetuned"):
            if pair[role] not in known:
                raise WorkflowInputError(
                    f"config: compression.pairs[{index}]: {role} model {pair[role]!r} is not a configured model name; "
                    f"fix {where(f'compression.pairs[{index}].{role}')}: use a name from 'models' ({list(known)}).")
        pairs.append((pair["pretrained"], pair["finetuned"]))
    if derive:
        pairs += [(entry["base"], entry["name"]) for entry in models_config if entry["source"] == "finetune"]
    unique = []
    for pair in pairs:
        if pair not in unique and pair[0] in models and pair[1] in models:
            unique.append(pair)
    return unique


def pairs_table(summary: pd.DataFrame, pairs, provenance: dict | None = None) -> pd.DataFrame:
    """One row per (pretrained, fine-tuned) pair: both models' headline numbers and the fine-tuned minus
    pretrained differences; the fine-tuning provenance (epochs, lr, final accuracies) when known."""
    provenance = provenance or {}
    by_model = summary.set_index("model")
    measures = ["full_accuracy", "k_star", "k_star_n_test", "pca_k1_accuracy", "best_dim_accuracy",
                "best_dims_together_accuracy", "single_dim_median_accuracy", "single_dim_max_test_accuracy"]
    rows = []
    for pretrained, finetuned in pairs:
        if pretrained not in by_model.index or finetuned not in by_model.index:
            continue
        a, b = by_model.loc[pretrained], by_model.loc[finetuned]
        row = {"dataset": a["dataset"], "layer_pretrained": int(a["layer"]), "layer_finetuned": int(b["layer"]),
               "pooling": a["pooling"], "pretrained": pretrained, "finetuned": finetuned, "dims": int(a["dims"]),
               "n": int(a["n"])}
        for measure in measures:
            row[f"{measure}_pretrained"] = a[measure]
            row[f"{measure}_finetuned"] = b[measure]
            if measure not in ("k_star", "k_star_n_test"):
                row[f"{measure}_gain"] = float(b[measure]) - float(a[measure])
        record = provenance.get(finetuned, {})
        for key in ("dataset", "epochs", "learning_rate", "seed", "train_accuracy", "test_accuracy"):
            row[f"finetune_{key}"] = record.get(key)
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------- figures
def _pair_panels(models: list[str], pairs):
    """Panels for the figures: one per pair; the models in no pair share one last panel."""
    panels = [(f"{a} vs {b}", [a, b]) for a, b in pairs]
    paired = {m for pair in pairs for m in pair}
    rest = [m for m in models if m not in paired]
    if rest:
        panels.append(("all models" if not pairs else "other models", rest))
    return panels


def _colours(models):
    return {model: plotting.model_style(model, i)[0] for i, model in enumerate(models)}


def plot_curves(curves: pd.DataFrame, summary: pd.DataFrame, pairs, *, dataset: str, view: str, paths) -> None:
    """Top row: accuracy vs k (log2 axis), one panel per pretrained/fine-tuned pair, with each k's Wilson 95%
    interval (band), the full-vector accuracy (dashed), k* (star, labelled with the test size it was decided on)
    and the majority-class line. Bottom row: the paired difference accuracy(k) - accuracy(full) on the same test
    examples with its exact (1 - alpha) interval per k (error bars; hollow marker: significantly worse)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(summary["model"])
    colours = _colours(models)
    panels = _pair_panels(models, pairs)
    fig, axes = plt.subplots(2, len(panels), figsize=(5.2 * len(panels), 7.4), squeeze=False, sharex="col",
                             sharey="row", gridspec_kw={"height_ratios": [3, 2]})
    by_model = summary.set_index("model")
    alpha = float(summary["alpha"].iloc[0])
    for column, (title, members) in enumerate(panels):
        ax, diff_ax = axes[0][column], axes[1][column]
        for index, model in enumerate(members):
            colour = colours[model]
            rows = curves[(curves["model"] == model) & (curves["kind"] == "pca")].sort_values("k")
            info = by_model.loc[model]
            n_test = int(info["k_star_n_test"])
            best_k = info["k_star"]
            star = f"k*={int(best_k)}" if pd.notna(best_k) else "no k*"
            if not bool(info["full_beats_majority"]):
                star += f"; full not above majority, p={info['full_vs_majority_mcnemar_p']:.2g}"
            ax.fill_between(rows["k"], rows["ci_low"], rows["ci_high"], color=colour, alpha=0.12, linewidth=0)
            ax.plot(rows["k"], rows["accuracy"], marker="o", markersize=4, color=colour,
                    label=f"{model}: full {info['full_accuracy']:.3f}, {star} (n_test={n_test})")
            ax.axhline(info["full_accuracy"], color=colour, linestyle="--", linewidth=1)
            if pd.notna(best_k):
                ax.plot([best_k], [info["k_star_accuracy"]], marker="*", markersize=13, color=colour,
                        markeredgecolor="black", linestyle="none")
                ax.annotate(f"k*={int(best_k)} (n={n_test})", (best_k, info["k_star_accuracy"]),
                            textcoords="offset points", xytext=(6, -12), fontsize=8, color=colour)
            # the paired differences, the models of a panel side by side around each k
            shift = 2.0 ** (0.12 * (index - (len(members) - 1) / 2))
            x = rows["k"].to_numpy(dtype=float) * shift
            diff = rows["accuracy_diff"].to_numpy(dtype=float)
            errors = np.vstack([diff - rows["diff_ci_low"].to_numpy(dtype=float),
                                rows["diff_ci_high"].to_numpy(dtype=float) - diff])
            diff_ax.errorbar(x, diff, yerr=errors, fmt="none", ecolor=colour, elinewidth=1.2, capsize=2)
            worse = rows["worse_than_full"].astype(bool).to_numpy()
            diff_ax.plot(x[~worse], diff[~worse], "o", markersize=5, color=colour, linestyle="none", label=model)
            diff_ax.plot(x[worse], diff[worse], "o", markersize=5, markerfacecolor="white", markeredgecolor=colour,
                         linestyle="none")
        chance = by_model.loc[members[0], "majority_accuracy"]
        ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label=f"majority class ({chance:.3f})")
        ax.set_xscale("log", base=2)
        ax.margins(x=0.1)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        diff_ax.axhline(0.0, color="black", linewidth=0.8)
        diff_ax.set_xlabel("PCA dimensions k (log2 scale)")
        diff_ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (95% Wilson band)")
    axes[1][0].set_ylabel(f"accuracy(k) - accuracy(full),\nsame test examples ({(1 - alpha) * 100:g}% exact)")
    fig.suptitle(f"Probe accuracy vs PCA dimensions - {dataset}, {view}\ndashed: full vector; star: k*, the smallest "
                 f"k not worse than the full vector\n(exact McNemar test on the same test examples, alpha={alpha:g}; "
                 f"hollow: significantly worse)", fontsize=9)
    fig.tight_layout()
    plotting.save_figure(fig, paths)


def plot_single_dims(dims: pd.DataFrame, summary: pd.DataFrame, pairs, *, dataset: str, view: str, paths) -> None:
    """Distribution of single-dimension test accuracies per model (violin + box), pairs side by side, with each
    model's full-vector accuracy (dashed) and the majority-class line (dotted); the train-selected best
    dimension is marked with a star and labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(summary["model"])
    colours = _colours(models)
    panels = _pair_panels(models, pairs)
    widths = [max(3.2, 1.6 * len(members) + 1.2) for _, members in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths), 4.4), squeeze=False, sharey=True,
                             gridspec_kw={"width_ratios": widths})
    by_model = summary.set_index("model")
    for ax, (title, members) in zip(axes[0], panels):
        data = [dims.loc[dims["model"] == m, "accuracy"].to_numpy() for m in members]
        positions = np.arange(1, len(members) + 1)
        parts = ax.violinplot(data, positions=positions, showextrema=False, widths=0.8)
        for body, model in zip(parts["bodies"], members):
            body.set_facecolor(colours[model])
            body.set_alpha(0.35)
        ax.boxplot(data, positions=positions, widths=0.15, showfliers=False)
        for pos, model in zip(positions, members):
            info = by_model.loc[model]
            ax.hlines(info["full_accuracy"], pos - 0.45, pos + 0.45, colors=[colours[model]], linestyles="--")
            ax.plot([pos], [info["best_dim_accuracy"]], marker="*", markersize=12, color=colours[model],
                    markeredgecolor="black")
            ax.annotate(f"dim {int(info['best_dim'])}: {info['best_dim_accuracy']:.3f}\nfull: "
                        f"{info['full_accuracy']:.3f}", (pos, info["best_dim_accuracy"]), textcoords="offset points",
                        xytext=(8, 4), fontsize=7)
        chance = by_model.loc[members[0], "majority_accuracy"]
        ax.axhline(chance, color="grey", linestyle=":", linewidth=1)
        ax.set_xticks(positions, [f"{m}\n(d={int(by_model.loc[m, 'dims'])})" for m in members], fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy of one dimension alone")
    fig.suptitle(f"Single-dimension probe accuracy - {dataset}, {view}\n(dashed: full vector; star: best dimension "
                 f"chosen on train; dotted: majority class)", fontsize=10)
    fig.tight_layout()
    plotting.save_figure(fig, paths)


# ----------------------------------------------------------------------------------- rule entries
def run_model(snakemake) -> None:
    params = snakemake.params
    pooling, layer = parse_view(snakemake.wildcards.view)
    model, dataset = snakemake.wildcards.model, snakemake.wildcards.dataset
    LOG.info("compression of %s on %s: %s vector of layer %d", model, dataset, pooling, layer)
    view = read_view(snakemake.input.pooled, layer=layer, pooling=pooling, model=model, dataset=dataset)
    LOG.info("read %d labelled rows x %d dims (%s), classes %s", len(view["y"]), view["x"].shape[1],
             view["column"], view["classes"])
    curve, dims, best, summary = analyse(
        view, model=model, dataset=dataset, pooling=pooling, k_values=params.k_values, alpha=params.alpha,
        single_dim_c=params.single_dim_c, n_best=params.n_best, seed=params.seed, folds=params.folds,
    )
    files.write_table(curve, snakemake.output.curve)
    files.write_table(dims, snakemake.output.dims)
    files.write_table(best, snakemake.output.best)
    files.write_table(summary, snakemake.output.summary)


def run_dataset(snakemake) -> None:
    from lmcompare.models.loading import read_provenance

    dataset, view = snakemake.wildcards.dataset, snakemake.wildcards.view
    summary = pd.concat([pd.read_csv(p) for p in snakemake.input.summaries], ignore_index=True)
    curves = pd.concat([pd.read_csv(p) for p in snakemake.input.curves], ignore_index=True)
    dims = pd.concat([pd.read_csv(p) for p in snakemake.input.dims], ignore_index=True)
    pairs = [tuple(pair) for pair in snakemake.params.pairs]
    provenance = {}
    for folder in snakemake.input.finetuned:
        record = read_provenance(folder)
        provenance[record.get("name", folder.rstrip("/").split("/")[-1])] = record
    LOG.info("%s / %s: %d models, pairs %s", dataset, view, len(summary), pairs)
    files.write_table(summary, snakemake.output.summary)
    files.write_table(pairs_table(summary, pairs, provenance), snakemake.output.pairs)
    plot_curves(curves, summary, pairs, dataset=dataset, view=view,
                paths=[snakemake.output.curve_png, snakemake.output.curve_svg])
    plot_single_dims(dims, summary, pairs, dataset=dataset, view=view,
                     paths=[snakemake.output.dims_png, snakemake.output.dims_svg])


def main(snakemake) -> None:
    with contextlib.nullcontext():  # TRANSITIONAL: the rule script opens the job log
        plotting.use_model_order(getattr(snakemake.params, "model_index", None))
        if snakemake.rule == "compression_dataset":
            run_dataset(snakemake)
        else:
            run_model(snakemake)

