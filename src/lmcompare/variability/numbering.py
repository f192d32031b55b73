"""The two layer numberings of the variability tables: ours counts hidden states with 0 = the embedding output;
Xie et al.'s released code (`--last_layer`) counts transformer blocks from 0, so our layer k is their k - 1."""

import numpy as np


def authors_last_layer(layers):
    """The authors' `--last_layer` value of our layer index (Xie et al.'s released code).

    Ours counts hidden states with 0 = the embedding output, so layer k is the output of transformer block k;
    theirs counts the blocks from 0: our layer k is their `--last_layer k - 1`. Layer 0 (the embeddings) and the
    selection's -1 ("no eligible layer") have no authors' value: <NA>. A scalar gives an int or pandas.NA, a
    sequence a pandas nullable-integer array."""
    import pandas as pd

    if np.ndim(layers) == 0:
        return int(layers) - 1 if int(layers) >= 1 else pd.NA
    values = pd.array(np.asarray(layers, dtype=np.int64) - 1, dtype="Int64")
    values[np.asarray(layers, dtype=np.int64) < 1] = pd.NA
    return values


def insert_authors_layer(table, after: str = "layer", name: str = "authors_last_layer"):
    """Put the authors' numbering of column `after` right beside it (recomputed, so CSV round trips keep ints)."""
    if name in table:
        table = table.drop(columns=[name])
    table.insert(table.columns.get_loc(after) + 1, name, authors_last_layer(table[after].to_numpy()))
    return table

