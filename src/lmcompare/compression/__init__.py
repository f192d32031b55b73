"""[CLS] redundancy and compression (Matton & de Oliveira, arXiv:1910.10832).

Per (dataset, model, view) - a view is one pooled vector: the first token ([CLS]) or the mean over content tokens,
of one layer - this package measures how much of the vector a linear probe needs:

- PCA curve (pca): PCA fitted on the train split; the probe (lmcompare.probe, the shared protocol) on the top
  k principal components for k = 1, 2, 4, ... and d, and on the full vector. Each k is compared with the full
  vector on the same test examples by an exact McNemar test (kstar; two-sided, level `alpha`); k* is the smallest
  k that is not significantly worse than the full vector, reported with the test size it was decided on.
- Single dimensions (dims): every dimension alone, through a fast fixed-C variant of the shared protocol
  (standardise on train, logistic regression with C = `single_dim_c`, no C search); dimensions ranked on the train
  split (train accuracy, then train log-loss), never on test. The `n_best` best dimensions are then probed with
  the full shared protocol, one by one and together.

per_model runs them all on one view (`analyse`, on arrays; `run_model`, on pooled.parquet). The per-dataset join
(per_dataset, pairs, figures) puts pretrained and fine-tuned models side by side (pairs from config, or derived
from the fine-tuning entries) and draws the accuracy-vs-k curves and the single-dimension accuracy distributions.

    from lmcompare import compression
    view = compression.read_view("results/hidden/reviews/minilm/pooled.parquet", layer=-1, pooling="first")
    curve, dims, best, summary = compression.analyse(view, model="minilm", dataset="reviews", pooling="first")

See docs/compression.md.
"""

from lmcompare.exports import lazy_exports

# name -> the module that defines it (and its name there); imported on first use, so that the rule file's import
# of view_name and resolve_pairs stays light (no numpy, pandas or scipy while the workflow is parsed)
_API = {
    "POOLINGS": "views", "view_name": "views", "parse_view": "views",
    "k_grid": "pca", "fit_pca": "pca", "pca_curve": "pca",
    "probe_with_predictions": "kstar", "mcnemar_exact": "kstar", "k_star": "kstar", "probe_row": "kstar",
    "paired_row": "kstar", "_paired_row": "kstar:paired_row",
    "single_dim_scan": "dims", "best_dims_probes": "dims", "majority_accuracy": "dims",
    "read_view": "per_model", "as_labelled_layer": "per_model", "train_test": "per_model", "analyse": "per_model",
    "run_model": "per_model",
    "resolve_pairs": "pairs", "pairs_table": "pairs",
    "plot_curves": "figures", "plot_single_dims": "figures", "_colours": "figures",
    "run_dataset": "per_dataset",
}

__all__ = sorted(name for name in _API if not name.startswith("_"))
__getattr__, __dir__ = lazy_exports(__name__, _API)
