"""Per-tower head input, the authors' (joint_layernorm) vs our former one (fresh_layernorm), on a kept run.

Reads a results folder's two-tower snapshots (`analysis/twotower/{dataset}/{model}/seed*/step*.pt`) and corpus,
trains both kinds of per-tower heads on the same frozen towers (the default config's head settings unless given)
and prints, per (seed, step) and head input: the split-half Pearson r of the preference with the shuffled
control's 95% quantile and permutation p, the preference's std (control's), the share of types with p < 0.05,
and the heads' mean held-out log-probabilities. Training is untouched (the same snapshots), so the differences
are the head input's alone.

    .venv/bin/python benchmarks/twotower_head_input.py --results RUN/results --threads 1
"""
import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmcompare import twotower as tt
from lmcompare.twotower import preference as tp


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--head-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--min-count", type=int, default=20)
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    snapshots = sorted((args.results / "analysis/twotower").glob("*/*/seed*/step*.pt"))
    if not snapshots:
        sys.exit(f"no two-tower snapshots under {args.results}/analysis/twotower")
    rows = []
    for path in snapshots:
        corpus = tt.load_corpus(path.parent.parent / "corpus.npz")
        model, state = tt.load_snapshot(path)
        for head_input in ("fresh_layernorm", "joint_layernorm"):
            tic = time.perf_counter()
            head = tt.HeadConfig(kind="mlp", input=head_input, steps=args.head_steps, batch_size=args.batch_size,
                                 learning_rate=args.learning_rate)
            heads = tt.train_tower_heads(model, corpus, head)
            result = tt.heldout_logprobs(model, heads, corpus)
            frame = pd.DataFrame({k: result[k] for k in ("example_id", "token_id", "logp_a", "logp_b",
                                                         "logp_joint")})
            _, consistency, summary, _ = tp.analyse_measurement(frame, min_count=args.min_count,
                                                                permutations=args.permutations)
            pearson = next(r for r in consistency if r["measure"] == "pearson")
            rows.append({"seed": int(state["seed"]), "step": int(state["step"]), "head_input": head_input,
                         "split_half_r": pearson["value"], "control_q95": pearson["null_q95"],
                         "p": pearson["p_value"], "n_types_half": pearson["n_types"], "std": summary["std"],
                         "control_std": summary["control_std"], "frac_types_p05": summary["frac_types_p05"],
                         "mean_logp_a": summary["mean_logp_a"], "mean_logp_b": summary["mean_logp_b"],
                         "seconds": time.perf_counter() - tic})
            print(rows[-1], file=sys.stderr, flush=True)
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
