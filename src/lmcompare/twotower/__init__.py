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

from lmcompare.twotower.corpus import (UNSEEN, Corpus, build_corpus, compact_vocabulary, eval_windows,
                                       load_corpus, random_windows, save_corpus)
from lmcompare.twotower.measure import (HEAD_INPUTS, HeadConfig, TowerHead, head_inputs, heldout_logprobs,
                                        train_tower_heads)
from lmcompare.twotower.model import TowerConfig, TwoTowerLM, build_model, make_towers_identical, swap_towers
from lmcompare.twotower.preference import (across_checkpoints, across_seeds, analyse_measurement, read_logprobs,
                                           shuffled_control, split_half, swap_invariant_comparison, top_tokens,
                                           type_means)
from lmcompare.twotower.training import (TrainConfig, load_snapshot, make_optimizer, snapshot_name,
                                         train_two_tower)

__all__ = ["UNSEEN", "Corpus", "build_corpus", "compact_vocabulary", "eval_windows", "load_corpus",
           "random_windows", "save_corpus", "HEAD_INPUTS", "HeadConfig", "TowerHead", "head_inputs",
           "heldout_logprobs", "train_tower_heads", "TowerConfig", "TwoTowerLM", "build_model",
           "make_towers_identical", "swap_towers", "across_checkpoints", "across_seeds", "analyse_measurement",
           "read_logprobs", "shuffled_control", "split_half", "swap_invariant_comparison", "top_tokens",
           "type_means", "TrainConfig", "load_snapshot", "make_optimizer", "snapshot_name", "train_two_tower"]
