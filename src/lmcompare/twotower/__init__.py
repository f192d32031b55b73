"""Two-tower language model (He & Toyoizumi, arXiv:2210.07041): do token types split between two identical towers
trained side by side as one causal LM? docs/twotower.md.

Modules, in the order the rules use them:
    corpus      the train/test token streams, the model vocabulary, the batches        (rule twotower_corpus)
    model       the two-tower LM; swapping the towers, forcing them identical
    training    resumable training, snapshots                                          (rule twotower_train)
    measure     per-tower heads on the frozen towers, held-out log-probabilities       (rule twotower_measure)
    preference  per-type preference, its consistency, the shuffled control, the tables (rule twotower_preference)
    figures     loss, preference distribution, split halves                            (rule twotower_figures)
"""

from lmcompare.exports import lazy_exports

# name -> the module of this package that defines it ("module:attribute" where the name differs), imported on
# first use (lmcompare/exports.py)
_API = {
    **dict.fromkeys(["UNSEEN", "Corpus", "build_corpus", "compact_vocabulary", "eval_windows", "load_corpus",
                     "random_windows", "save_corpus"], "corpus"),
    **dict.fromkeys(["HEAD_INPUTS", "HeadConfig", "TowerHead", "head_inputs", "heldout_logprobs",
                     "train_tower_heads"], "measure"),
    **dict.fromkeys(["TowerConfig", "TwoTowerLM", "build_model", "make_towers_identical", "swap_towers"], "model"),
    **dict.fromkeys(["across_checkpoints", "across_seeds", "analyse_measurement", "read_logprobs",
                     "shuffled_control", "split_half", "swap_invariant_comparison", "top_tokens", "type_means"], "preference"),
    **dict.fromkeys(["TrainConfig", "load_snapshot", "make_optimizer", "snapshot_name", "train_two_tower"], "training"),
}

__all__ = sorted(name for name in _API if not name.startswith("_"))
__getattr__, __dir__ = lazy_exports(__name__, _API)
