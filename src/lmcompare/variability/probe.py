"""The shared linear probe (lmcompare.probe) per layer, train split -> test split: the accuracy ν's
recommendation is checked against (probe.csv of one dataset, model and pooling)."""

import logging
import time

import numpy as np

from lmcompare import files, hidden_states
from lmcompare.errors import WorkflowInputError
from lmcompare.hidden_states import HiddenStates, pooled_column
from lmcompare.probe import linear_probe
from lmcompare.variability.numbering import insert_authors_layer
from lmcompare.variability.subsets import stratified_subsample

LOG = logging.getLogger("workflow")


def gather_rows(pooled_path, column: str, rows: np.ndarray) -> np.ndarray:
    """Vectors of the given (sorted, unique) file rows of one column: `HiddenStates(pooled_path).rows(column, rows)`."""
    return HiddenStates(pooled_path).rows(column, rows)


def probe_layers(pooled_path, frame, *, dataset: str, pooling: str = "mean", layers: list[int] | None = None,
                 max_train: int | None = None, max_test: int | None = None, seed: int = 0) -> list[dict]:
    """The shared linear probe (lmcompare.probe) per layer: train split -> test split accuracy.

    frame: the file's labels (`HiddenStates.labels`); only the probed rows are read (at most max_train + max_test
    per layer, stratified subsamples).
    """
    states = HiddenStates(pooled_path)
    layers = list(range(states.n_layers)) if layers is None else [states.layer(l) for l in layers]
    states.require_columns([pooled_column(l, pooling) for l in layers])
    labelled, _ = hidden_states.labelled_examples(frame, dataset)
    positions = frame.index.get_indexer(labelled.index)
    splits = labelled["split"].to_numpy()
    codes = labelled["label_code"].to_numpy()
    train, test = positions[splits == "train"], positions[splits == "test"]
    train_codes, test_codes = codes[splits == "train"], codes[splits == "test"]
    if len(test) == 0 or len(train) == 0:
        raise WorkflowInputError(
            f"dataset {dataset!r} has {len(train)} labelled train and {len(test)} labelled test examples; the probe "
            f"needs both splits. Give the dataset a test split (splits / split_column / test_fraction in the config file)."
        )
    if len(np.unique(train_codes)) < 2:
        raise WorkflowInputError(f"dataset {dataset!r}: the train split holds a single class; the probe needs two.")
    keep_train = stratified_subsample(train_codes, max_train, seed)
    keep_test = stratified_subsample(test_codes, max_test, seed + 1)
    train, train_codes = train[keep_train], train_codes[keep_train]
    test, test_codes = test[keep_test], test_codes[keep_test]
    wanted = np.concatenate([train, test])
    order = np.argsort(wanted)
    back = np.empty_like(order)
    back[order] = np.arange(len(order))  # position of each wanted row in the sorted read
    rows = []
    for layer in layers:
        column = pooled_column(layer, pooling)
        started = time.perf_counter()
        x = states.rows(column, wanted[order])[back]
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise WorkflowInputError(
                f"{pooled_path}: non-finite hidden state in {column} at example_id "
                f"{int(frame['example_id'].iloc[wanted[np.flatnonzero(bad)[0]]])} ({int(bad.sum())} rows); "
                f"re-extract with extraction.nonfinite: drop or in float32."
            )
        result = linear_probe(x[:len(train)], train_codes, x[len(train):], test_codes, seed=seed)
        LOG.info("probe layer %d: accuracy %.4f (C=%g) in %.1f s", layer, result.accuracy, result.C,
                 time.perf_counter() - started)
        rows.append({"layer": layer, "n": result.n_train, "n_test": result.n_test, "dims": result.n_features,
                     "accuracy": result.accuracy, "ci_low": result.ci_low, "ci_high": result.ci_high, "C": result.C})
    return rows


def run_probe(pooled_path, out_path, *, dataset: str, model: str, pooling: str, max_train, max_test, seed) -> None:
    """probe.csv of one (dataset, model, pooling): the probe's test accuracy per layer."""
    import pandas as pd

    frame = HiddenStates(pooled_path).labels(pooling)
    rows = probe_layers(pooled_path, frame, dataset=dataset, pooling=pooling, max_train=max_train,
                        max_test=max_test, seed=seed)
    table = pd.DataFrame(rows)
    for position, (key, value) in enumerate((("model", model), ("dataset", dataset), ("pooling", pooling))):
        table.insert(position, key, value)
    files.write_table(insert_authors_layer(table), out_path)
