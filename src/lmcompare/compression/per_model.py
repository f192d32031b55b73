"""All measurements of one (dataset, model, view): the PCA curve with k*, the single-dimension scan, the best
dimensions and the one-row summary; `run_model` reads the view from pooled.parquet and writes the four tables."""

import logging
import time

import numpy as np
import pandas as pd

from lmcompare import files
from lmcompare.compression.dims import best_dims_probes, majority_accuracy, single_dim_scan
from lmcompare.compression.kstar import k_star, mcnemar_exact
from lmcompare.compression.pca import k_grid, pca_curve
from lmcompare.compression.views import parse_view
from lmcompare.hidden_states import HiddenStates, LabelledLayer
from lmcompare.probe import C_GRID

LOG = logging.getLogger("workflow")


def read_view(pooled_path, *, layer: int, pooling: str, model: str = "model", dataset: str = "dataset") -> dict:
    """One layer's pooled vectors of the labelled rows, their class codes and splits (HiddenStates.labelled_layer),
    as the mapping `analyse` takes: x (n, d) float32, y, split, classes, the resolved layer, column, and meta (the
    file's metadata). `model` names the setting in an out-of-range layer's message; the other messages name the
    model and dataset of the file's metadata (`dataset` is accepted for the callers that pass it)."""
    states = HiddenStates(pooled_path)
    view = states.labelled_layer(layer, pooling, what=f"compression layer of model {model!r}")
    return {**vars(view), "meta": states.metadata}


def as_labelled_layer(view) -> LabelledLayer:
    """A LabelledLayer from a LabelledLayer or a mapping with x, y, split, classes, layer (your own arrays)."""
    if isinstance(view, LabelledLayer):
        return view
    return LabelledLayer(x=view["x"], y=view["y"], split=view["split"], classes=view["classes"], layer=view["layer"],
                         column=view.get("column"))


def train_test(view, *, model: str = "model", dataset: str = "dataset"):
    """Split a view into (train_x, train_y, test_x, test_y); both splits must be usable by a probe."""
    return as_labelled_layer(view).train_test(model=model, dataset=dataset)


def analyse(view, *, model: str, dataset: str, pooling: str, k_values=None, alpha: float = 0.05,
            single_dim_c: float = 1.0, n_best: int = 5, seed: int = 0, folds: int = 3, c_grid=C_GRID):
    """All measurements for one (dataset, model, view). Returns (curve, dims, best, summary) DataFrames.

    view: a LabelledLayer (read_view, HiddenStates.labelled_layer) or a mapping with x, y, split, classes, layer."""
    view = as_labelled_layer(view)
    train_x, train_y, test_x, test_y = view.train_test(model=model, dataset=dataset)
    d = train_x.shape[1]
    ids = {"model": model, "dataset": dataset, "layer": view.layer, "pooling": pooling}
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
             dataset, model, pooling, view.layer, len(train_y), len(test_y), d, pca_seconds, scan_seconds)
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
        "n_classes": len(view.classes),
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


def run_model(pooled_path, *, model: str, dataset: str, view: str, curve_out, dims_out, best_out, summary_out,
              k_values=None, alpha: float = 0.05, single_dim_c: float = 1.0, n_best: int = 5, seed: int = 0,
              folds: int = 3) -> None:
    """pca_curve.csv, single_dims.csv, best_dims.csv and summary.csv of one (dataset, model, view)."""
    pooling, layer = parse_view(view)
    LOG.info("compression of %s on %s: %s vector of layer %d", model, dataset, pooling, layer)
    states = HiddenStates(pooled_path)
    vectors = states.labelled_layer(layer, pooling, what=f"compression layer of model {model!r}")
    LOG.info("read %d labelled rows x %d dims (%s), classes %s", len(vectors.y), vectors.x.shape[1],
             vectors.column, vectors.classes)
    curve, dims, best, summary = analyse(
        vectors, model=model, dataset=dataset, pooling=pooling, k_values=k_values, alpha=alpha,
        single_dim_c=single_dim_c, n_best=n_best, seed=seed, folds=folds,
    )
    files.write_table(curve, curve_out)
    files.write_table(dims, dims_out)
    files.write_table(best, best_out)
    files.write_table(summary, summary_out)
