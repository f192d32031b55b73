"""Similarity measures between two models' representations of the same units, from the streamed moments the
decomposition caches per model pair (lmcompare.decomposition.pair_file): linear and debiased CKA, CCA (mean
canonical correlation and its mean square), SVCCA, PWCCA and orthogonal Procrustes similarity. See
docs/similarity.md. The modules:

- tags: the measures' names and default cuts (what the rule file needs; stdlib only);
- statistics: PairStatistics, the count, co-moment blocks and norm sums every measure is a function of;
- cka: linear CKA and debiased CKA (the derivation of the streamed unbiased HSIC);
- cca: canonical correlations with a rank cut, PWCCA, SVCCA;
- procrustes: the orthogonal Procrustes similarity;
- table: every measure of every pair from the pair files (similarity_table, write_similarity);
- figures: the symmetric heatmap per measure, the layer sweep's layer x layer heatmap and best-layer figure;
- sweep: the layer sweep (every layer of one model against every layer of the other) from one streamed pass, per
  split part of the decomposition;
- layer_fits: the decomposition's R² of every swept layer pair and the group R² per target layer, from sweep files;
- knn: mutual k-nearest-neighbour alignment (Huh et al. 2024) of every swept layer pair, from the vectors.

    >>> from lmcompare import similarity
    >>> stats = similarity.PairStatistics.from_rows(x, y)
    >>> similarity.linear_cka(stats.sxx, stats.syy, stats.sxy), similarity.debiased_cka(stats)
"""

from lmcompare.exports import lazy_exports

# name -> module of this package that defines it (imported on first use, lmcompare/exports.py)
_API = {
    **dict.fromkeys(["MEASURES", "RANK_CUT_MEASURES", "VARIANCE_CUT_MEASURES", "DEFAULT_SVCCA_VARIANCE",
                     "DEFAULT_CCA_RANK_TOLERANCE", "SWEEP_MEASURES", "DEFAULT_SWEEP_MEASURES", "KNN_MEASURE",
                     "SWEEP_FORMAT", "sweep_memory_bytes", "selection_tag", "selection_from_tag"], "tags"),
    "PairStatistics": "statistics",
    **dict.fromkeys(["linear_cka", "debiased_cka", "unbiased_hsic_scaled"], "cka"),
    **dict.fromkeys(["CanonicalCorrelations", "spectrum", "canonical_correlations", "retained_directions", "pwcca",
                     "principal_projection", "svcca"], "cca"),
    "procrustes_similarity": "procrustes",
    **dict.fromkeys(["check_measures", "measure_pair", "similarity_table", "write_similarity"], "table"),
    **dict.fromkeys(["similarity_matrix", "plot_similarity", "sweep_matrix", "plot_sweep", "plot_best_layers"],
                    "figures"),
    **dict.fromkeys(["SweepMoments", "SweepFile", "SweptModel", "swept_model", "compute_sweep_moments", "save_sweep",
                     "merged",
                     "sweep_table", "best_matches",
                     "check_sweep_measures", "write_sweep_moments", "write_sweep_pair", "write_sweep_join"], "sweep"),
    **dict.fromkeys(["SweepLookup", "merged_block", "matched_layer", "fit_settings", "setting_tag", "pair_layer_fits",
                     "group_layer_fits", "best_r2_layers", "write_pair_layer_fits", "write_layer_fits_join"],
                    "layer_fits"),
    **dict.fromkeys(["knn_indices", "mutual_knn_score", "sample_keys", "mutual_knn_table", "write_mutual_knn",
                     "direct_knn", "direct_mutual_knn"], "knn"),
}

__all__ = sorted(name for name in _API if not name.startswith("_"))
__getattr__, __dir__ = lazy_exports(__name__, _API)
