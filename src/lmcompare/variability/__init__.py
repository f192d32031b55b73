"""Hidden-state variability per layer (Xie et al., Findings of EMNLP 2022, arXiv:2210.10041): the variability ν
of every layer, the layer it recommends, a linear probe per layer to check that claim, and ν on subsamples.

    from lmcompare import variability
    frame = variability.read_labels("results/hidden/reviews/minilm/pooled.parquet")
    codes, classes, _ = variability.class_codes(frame, dataset="reviews", split="train")
    rows = variability.stream_variability("results/hidden/reviews/minilm/pooled.parquet",
                                          codes=codes, masks={"full": codes >= 0})   # ν per layer

On arrays: `variability_from_statistics(within, class_means)` or `MomentAccumulator`. Modules: nu (the metric and
its streaming), subsets (which rows), probe (the probe per layer), selection (the recommended layer,
robustness), numbering (ours and the authors' layer numbers), summary (the per-dataset tables), figures.
See docs/variability.md.
"""

from lmcompare.variability.figures import plot_variability
from lmcompare.variability.numbering import authors_last_layer, insert_authors_layer
from lmcompare.variability.numbering import insert_authors_layer as _insert_authors_layer  # noqa: F401 (tests' name)
from lmcompare.variability.nu import (DEGENERATE_RELATIVE, POOLINGS, MomentAccumulator, Variability,
                                      between_class_eigen, expected_noise_between, layers_per_pass, run_nu,
                                      stream_variability, variability_from_statistics)
from lmcompare.variability.probe import gather_rows, probe_layers, run_probe
from lmcompare.variability.selection import (eligible_nu, robustness_table, select_layers, selection_table,
                                             spearman)
from lmcompare.variability.subsets import (SPLITS, SUBSETS, class_codes, read_labels, stratified_subsample,
                                           subset_masks)
from lmcompare.variability.summary import NOISY_FRACTION, run_summary

__all__ = ["DEGENERATE_RELATIVE", "MomentAccumulator", "NOISY_FRACTION", "POOLINGS", "SPLITS", "SUBSETS",
           "Variability", "authors_last_layer", "between_class_eigen", "class_codes", "eligible_nu",
           "expected_noise_between", "gather_rows", "insert_authors_layer", "layers_per_pass", "plot_variability",
           "probe_layers", "read_labels", "robustness_table", "run_nu", "run_probe", "run_summary", "select_layers",
           "selection_table", "spearman", "stratified_subsample", "stream_variability", "subset_masks",
           "variability_from_statistics"]
