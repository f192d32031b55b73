"""The stage's names: the measures and the defaults of their cuts (what rules/similarity.smk needs; the standard
library only, so that parsing the workflow imports no numpy)."""

from typing import Sequence

# In the order of the table and of docs/similarity.md.
MEASURES = ("cka", "cka_debiased", "cca_mean", "cca_mean_squared", "svcca", "pwcca", "procrustes")
# Measures that use the CCA rank cut (eigen-directions of a side's covariance below cca_rank_tolerance x its largest
# eigenvalue are dropped) and the one that keeps the top principal directions explaining svcca_variance.
RANK_CUT_MEASURES = ("cca_mean", "cca_mean_squared", "pwcca")
VARIANCE_CUT_MEASURES = ("svcca",)
DEFAULT_SVCCA_VARIANCE = 0.99
DEFAULT_CCA_RANK_TOLERANCE = 1e-10
# The layer sweep's file format (similarity/sweep.py), a parameter of its moments rule: other formats are recomputed.
SWEEP_FORMAT = 2
# Mutual k-nearest-neighbour alignment (similarity/knn.py): a measure of the layer sweep, from the vectors.
KNN_MEASURE = "mutual_knn"
# What a layer sweep can compute: the moment-based measures and the mutual kNN (default: the measures that mean
# something at any number of units; the CCA family saturates at 1 when units are fewer than d_x + d_y).
SWEEP_MEASURES = (*MEASURES, KNN_MEASURE)
# What the single-layer table can compute: the moment-based measures (the default) and, from the vectors of the
# target layers (the kNN rule of the layer selection [target_layer]), the mutual kNN.
TABLE_MEASURES = (*MEASURES, KNN_MEASURE)
DEFAULT_SWEEP_MEASURES = ("cka", "cka_debiased", "procrustes", KNN_MEASURE)


def sweep_memory_bytes(dims: Sequence[int], counts: Sequence[int]) -> int:
    """Bytes of a SweepMoments of d_x, d_y dimensions and L_x, L_y swept layers (float64)."""
    (dx, dy), (lx, ly) = dims, counts
    return 8 * (lx * dx * dx + ly * dy * dy + lx * ly * dx * dy + 2 * (lx * dx + ly * dy) + lx + ly + lx * ly
                + lx * dx * ly + ly * dy * lx)


def selection_tag(layers) -> str:
    """Path component of a layer selection: 'all' (None) or e.g. 'l0_2_-1'."""
    return "all" if layers is None else "l" + "_".join(str(int(layer)) for layer in layers)


def selection_from_tag(tag: str):
    if tag == "all":
        return None
    if not tag.startswith("l"):
        raise ValueError(f"not a layer selection tag: {tag!r}")
    return [int(part) for part in tag[1:].split("_")]
