"""Checks of the values an extraction writes: float16 storage overflow (the non-finite check of the model's states
runs inside extract.extract_window, on the device)."""

import logging

import numpy as np

from lmcompare.errors import WorkflowInputError

LOG = logging.getLogger("workflow")
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65,504


def check_float16_range(first, mean, token_vectors, finite, window, settings, counts, model_name):
    """Hidden states that were finite in float32 but overflow float16 storage (|value| > 65,504 becomes inf in the
    cast): checked after the cast, on the arrays that are written, and handled as non-finite states are
    (`extraction.nonfinite`): `fail` stops naming the model, the layer and the first example; `drop` drops the
    examples, counts them among the non-finite ones and logs them. `finite` is updated in place."""
    overflow = ~(np.isfinite(first).all(axis=2) & np.isfinite(mean).all(axis=2))  # (n_layers, m)
    for (layer, row), vectors in token_vectors.items():
        if not np.isfinite(vectors).all():
            overflow[layer, row] = True
    overflow &= finite[None, :]  # non-finite already in float32: reported as such
    rows = overflow.any(axis=0)
    if not rows.any():
        return
    bad_ids = window["example_id"].to_numpy()[rows]
    first_row = int(np.flatnonzero(rows)[0])
    layers = np.flatnonzero(overflow[:, first_row]).tolist()
    message = (f"model {model_name!r}: hidden states of layer {layers[0]} exceed float16's range (|value| > "
               f"{FLOAT16_MAX:,.0f}) for {len(bad_ids)} example(s) in this window, the first is example_id "
               f"{int(bad_ids[0])} (layers {layers}); stored as float16 they would be inf")
    if settings.nonfinite == "fail":
        raise WorkflowInputError(f"{message}. Use float32 storage (extraction.store_dtype: float32), or set "
                                 f"extraction.nonfinite: drop to drop and count them.")
    LOG.warning("%s: dropping them (extraction.nonfinite: drop): example_ids %s", message, bad_ids[:20].tolist())
    counts.nonfinite_ids.extend(bad_ids.tolist())
    counts.nonfinite_dropped += len(bad_ids)
    finite &= ~rows
