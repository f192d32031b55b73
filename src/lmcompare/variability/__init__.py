"""Hidden-state variability per layer (Xie et al., Findings of EMNLP 2022, arXiv:2210.10041): the variability ν
of every layer, the layer it recommends, a linear probe per layer to check that claim, and ν on subsamples.

    from lmcompare import variability
    frame = variability.read_labels("results/hidden/reviews/minilm/pooled.parquet")
    codes, classes, _ = variability.class_codes(frame, dataset="reviews", split="train")
    rows = variability.stream_variability("results/hidden/reviews/minilm/pooled.parquet",
                                          codes=codes, masks={"full": codes >= 0})   # ν per layer

On arrays: `variability_of(x, y)`, or from statistics `variability_from_statistics(within, class_means)` and
`MomentAccumulator`. Modules: nu (the metric and its streaming), subsets (which rows), probe (the probe per layer),
selection (the recommended layer, robustness), numbering (ours and the authors' layer numbers), summary (the
per-dataset tables), figures.
See docs/variability.md.
"""

from lmcompare.exports import lazy_exports

# name -> the module of this package that defines it ("module:attribute" where the name differs), imported on
# first use (lmcompare/exports.py)
_API = {
    **dict.fromkeys(["plot_variability"], "figures"),
    **dict.fromkeys(["authors_last_layer", "insert_authors_layer"], "numbering"),
    "_insert_authors_layer": "numbering:insert_authors_layer",
    **dict.fromkeys(["DEGENERATE_RELATIVE", "POOLINGS", "MomentAccumulator", "Variability",
                     "between_class_eigen", "expected_noise_between", "layers_per_pass", "run_nu",
                     "stream_variability", "variability_from_statistics",
                     "variability_of"], "nu"),
    **dict.fromkeys(["gather_rows", "probe_layers", "run_probe"], "probe"),
    **dict.fromkeys(["eligible_nu", "robustness_table", "select_layers", "selection_table", "spearman"], "selection"),
    **dict.fromkeys(["SPLITS", "SUBSETS", "class_codes", "read_labels", "stratified_subsample", "subset_masks"], "subsets"),
    **dict.fromkeys(["NOISY_FRACTION", "run_summary"], "summary"),
}

__all__ = sorted(name for name in _API if not name.startswith("_"))
__getattr__, __dir__ = lazy_exports(__name__, _API)
