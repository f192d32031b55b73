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
