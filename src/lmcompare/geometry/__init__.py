"""Latent-space geometry and downstream performance (Marbut et al., arXiv:2406.12159).

For each (dataset, model): the final-layer token cloud (every token, special tokens included; a seeded
subsample of at most `max_points` tokens) is quantized with a product quantizer and an additive quantizer
(faiss LocalSearchQuantizer), and measured:

- per quantizer (`product`, `additive`), as the authors' code computes them (`mode: paper`):
  recon_error_mean   Σ_i ||x_i − x̂_i||² / Σ_i ||x_i||²          (relative reconstruction error)
  recon_error_iqr    IQR of e_i / max_j e_j, e_i = ||x_i − x̂_i||  (normalised error distribution)
  recon_error_skew   Fisher skewness (biased) of e_i
  centroid_nn_dist_var  variance of the squared L2 distance from each centroid to its nearest other centroid
                     of the same codebook, pooled over codebooks and divided by the largest one
  cell_count_var     per codebook: p_k = count_k / n, odds_k = p_k / (1 − p_k) · (K − 1); variance over k;
                     mean over codebooks
  cell_count_kl      per codebook: KL(p ‖ uniform 1/K); mean over codebooks
  patchiness         counts = concatenated per-codebook cell counts (M·K values); m = Σ counts / K;
                     V = var(counts); patchiness = (m + V/m − 1) / m
- spread: EEE, VRM (Vasicek entropy), IsoScore.

The downstream score of each model is its cross-validated linear-probe accuracy over every labelled example (the
shared protocol of probe.py inside each fold; `protocol: split` for the train/test split) on a labelled dataset,
or a user table. The paper's question: for each measure, the least-squares line of score on measure across models
(slope, intercept, Pearson r, R², n, p), with a bootstrap interval of r over models, a permutation p value and
its Holm correction over the measures; sorted by R².

Modules: quantizers (faiss quantizers and their measures), spread (EEE, VRM, IsoScore), measures (the token cloud
of a tokens.parquet and every measure on it), score (probe accuracy or a score table), regression (fits, bootstrap,
permutations, Holm), figures.

    >>> from lmcompare import geometry
    >>> rows = geometry.measure_cloud(points)               # (n, d) float32 cloud -> one row per measure
    >>> table = geometry.regression_table(measures, scores, dataset="reviews", score_name="accuracy")
"""

from lmcompare.exports import lazy_exports

# name -> the module of this package that defines it ("module:attribute" where the name differs), imported on
# first use (lmcompare/exports.py)
_API = {
    **dict.fromkeys(["draw_figures", "r2_figure", "scatter_figure"], "figures"),
    **dict.fromkeys(["MEASURE_COLUMNS", "measure_cloud", "measure_tokens", "read_token_cloud",
                     "subsample_indices"], "measures"),
    **dict.fromkeys(["QUANTIZER_MEASURES", "QUANTIZERS", "cell_count_kl", "cell_count_variance", "cell_counts",
                     "centroid_nn_distance_variance", "choose_nbits", "encode", "faiss_threads", "patchiness",
                     "quantizer_centroids", "quantizer_measures", "reconstruction_measures", "train_quantizer"], "quantizers"),
    **dict.fromkeys(["MIN_MODELS", "REGRESSION_COLUMNS", "bootstrap_indices", "bootstrap_r_interval", "fit_line",
                     "holm_adjust", "permutation_p_value", "regression_table", "rowwise_pearson",
                     "write_regression"], "regression"),
    **dict.fromkeys(["cv_probe_accuracy", "probe_score", "read_score_table", "score_model"], "score"),
    **dict.fromkeys(["SPREAD_MEASURES", "eee", "isoscore", "spread_measures", "vrm"], "spread"),
}

__all__ = sorted(name for name in _API if not name.startswith("_"))
__getattr__, __dir__ = lazy_exports(__name__, _API)
