"""Both layer numberings in the variability tables (issue 13, item 6): ours counts hidden states with 0 = the
embedding output; the authors' `--last_layer` counts transformer blocks from 0, so our layer k is their k - 1."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from lmcompare import variability as var

pytestmark = pytest.mark.unit


def test_authors_numbering_is_ours_minus_one():
    assert var.authors_last_layer(1) == 0 and var.authors_last_layer(12) == 11
    assert var.authors_last_layer(0) is pd.NA  # the embedding output is no transformer block
    assert var.authors_last_layer(-1) is pd.NA  # the selection's "no eligible layer"
    values = var.authors_last_layer(np.array([0, 1, 2, 6]))
    assert str(values.dtype) == "Int64"
    assert values.isna().tolist() == [True, False, False, False] and list(values[1:]) == [0, 1, 5]


def test_selection_and_layer_tables_carry_both_numberings():
    nu = pd.DataFrame({"model": "m", "subset": "full", "layer": range(5), "n": 100, "dims": 8, "min_class_n": 40,
                       "max_class_n": 60, "nu": [5.0, 3.0, 1.0, 1.02, 2.0],
                       "between_noise_fraction": [0.9, 0.5, 0.1, 0.2, 0.3]})
    probe = pd.DataFrame({"model": "m", "layer": range(5), "accuracy": [0.5, 0.6, 0.8, 0.85, 0.7]})
    row = var.selection_table(nu, probe, tolerance=0.05).iloc[0]
    for ours in ("argmin", "recommended", "best_probe"):
        assert row[f"{ours}_authors_last_layer"] == row[f"{ours}_layer"] - 1
    robustness = var.robustness_table(nu, tolerance=0.05).iloc[0]
    assert robustness["recommended_authors_last_layer"] == robustness["recommended_layer"] - 1
    # a per-layer table: the authors' column sits beside ours and survives a CSV round trip as integers
    table = var._insert_authors_layer(nu.copy())
    assert list(table.columns[:4]) == ["model", "subset", "layer", "authors_last_layer"]
    text = table.to_csv(index=False)
    again = var._insert_authors_layer(pd.read_csv(io.StringIO(text)))
    assert again["authors_last_layer"].tolist()[1:] == [0, 1, 2, 3] and pd.isna(again["authors_last_layer"].iloc[0])
    assert text.splitlines()[1].startswith("m,full,0,,")  # layer 0: empty, not -1 (which would mean the last layer)
