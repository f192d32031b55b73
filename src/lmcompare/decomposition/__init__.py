"""Language Model Decomposition (LMD; Zhang, EMNLP 2022, arXiv:2210.10289) from streamed moments.

How much of model u's representation is a linear function of other models' representations? For every text unit
n, a target vector u_n and a basis vector z_n (the concatenation of the basis models' vectors); a ridge fit on the
train split, R² on the test split, computed from per-split moments cached per model pair (see
docs/decomposition.md). The modules, in the order the data flows:

- tags: units, modes, alpha choices and their path tags, model pairs (what the rule file needs; stdlib only);
- units: one model's text units (example, word, chunk) streamed from its hidden-state file (ModelLayers);
- validation_split: the seeded splitmix64 cut of the train split into fit and validation parts;
- alignment: two models' unit streams joined key by key;
- moments: the streamed co-moments of a pair (compute_pair_moments);
- pair_file: the pair file's format, written (write_pair_moments) and read (PairMoments);
- solvers: ridge and R² from per-split statistics, per mode (paper = nlp.lmd 0.2.0, uncentred);
- joint: the statistics of a fit from the pair files (the joint covariance of all models for group fits);
- fit: group and pairwise fits, the validation choice of alpha, the tables (decompose, write_fit_tables);
- figures: the pairwise heatmap and the group bars.

    >>> from lmcompare import decomposition as lmd
    >>> train, test = lmd.SplitStats.from_rows(u[:800], z[:800]), lmd.SplitStats.from_rows(u[800:], z[800:])
    >>> r2_test = lmd.r_squared(lmd.fit_ridge(train, 1e-6), test)[0]

Names are imported on first use, so that the rule file's `from lmcompare.decomposition import alpha_tag, ...`
imports the standard library only.
"""

from lmcompare.exports import lazy_exports

# name -> module of this package that defines it (imported on first use, lmcompare/exports.py)
_API = {
    **dict.fromkeys(["UNITS", "MODES", "VALIDATION", "DEFAULT_ALPHA_GRID", "parse_alpha", "alpha_tag",
                     "alpha_from_tag", "canonical_pair", "model_pairs", "layers_tag", "MOMENTS_FORMAT"], "tags"),
    **dict.fromkeys(["SPLITS", "WORD_BITS", "ModelLayers", "model_layers", "resolve_layers", "iter_units",
                     "unit_example_ids"], "units"),
    **dict.fromkeys(["VALID_CODE", "splitmix64", "validation_mask", "mark_validation"], "validation_split"),
    **dict.fromkeys(["AlignmentCounts", "align_streams"], "alignment"),
    **dict.fromkeys(["STORED_SPLITS", "ALL_SPLITS", "Moments", "BetweenExamples", "compute_pair_moments", "layer_blocks",
                     "merge_train"], "moments"),
    **dict.fromkeys(["PairMoments", "save_pair_moments", "write_pair_moments"], "pair_file"),
    **dict.fromkeys(["SplitStats", "Fit", "fit_ridge", "r_squared", "BasisPath", "basis_path", "validation_path",
                     "choose_alpha", "solve_spd",
                     "is_underdetermined"], "solvers"),
    **dict.fromkeys(["JointMoments", "split_stats_from_pair"], "joint"),
    **dict.fromkeys(["decompose", "pairwise_matrix", "fit_and_score", "scored_fit", "write_fit_tables"], "fit"),
    **dict.fromkeys(["plot_pairwise", "plot_group", "draw_figures"], "figures"),
}

__all__ = sorted(name for name in _API if not name.startswith("_"))
__getattr__, __dir__ = lazy_exports(__name__, _API)
