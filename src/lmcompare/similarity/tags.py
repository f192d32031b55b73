"""The stage's names: the measures and the defaults of their cuts (what rules/similarity.smk needs; the standard
library only, so that parsing the workflow imports no numpy)."""

# In the order of the table and of docs/similarity.md.
MEASURES = ("cka", "cka_debiased", "cca_mean", "cca_mean_squared", "svcca", "pwcca", "procrustes")
# Measures that use the CCA rank cut (eigen-directions of a side's covariance below cca_rank_tolerance x its largest
# eigenvalue are dropped) and the one that keeps the top principal directions explaining svcca_variance.
RANK_CUT_MEASURES = ("cca_mean", "cca_mean_squared", "pwcca")
VARIANCE_CUT_MEASURES = ("svcca",)
DEFAULT_SVCCA_VARIANCE = 0.99
DEFAULT_CCA_RANK_TOLERANCE = 1e-10
# The layer sweep's file format (similarity/sweep.py), a parameter of its moments rule: other formats are recomputed.
SWEEP_FORMAT = 1
# Mutual k-nearest-neighbour alignment (similarity/knn.py): a measure of the layer sweep, from the vectors.
KNN_MEASURE = "mutual_knn"
# What a layer sweep can compute: the moment-based measures and the mutual kNN (default: the measures that mean
# something at any number of units; the CCA family saturates at 1 when units are fewer than d_x + d_y).
SWEEP_MEASURES = (*MEASURES, KNN_MEASURE)
DEFAULT_SWEEP_MEASURES = ("cka", "cka_debiased", "procrustes", KNN_MEASURE)
