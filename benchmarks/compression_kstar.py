"""k* of a kept run, old rule vs paired test (issue 13, item 5), from its own files.

For every compression view of a results folder this prints, per model: the test size, the full-vector accuracy,
k by the former rule (smallest k whose accuracy is within `--tolerance` of the full vector's, read from the run's
pca_curve.csv) and k* by the paired test (this code's `pca_curve` on the run's pooled.parquet: exact McNemar test
of each k against the full vector on the same test examples), and per k the discordant counts and p-values.
The run's accuracies are recomputed too: the script says whether they match (the probe is unchanged). A model
whose pooled.parquet is found (under --hidden, default the run's hidden/) but whose run table is not yet written
gets the former rule from the recomputed accuracies (`accuracies_match_the_run` empty).

    .venv/bin/python benchmarks/compression_kstar.py --results RUN/results
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmcompare import compression


def old_rule(curve: pd.DataFrame, tolerance: float):
    full = float(curve.loc[curve["kind"] == "full", "accuracy"].iloc[0])
    pca = curve[curve["kind"] == "pca"].sort_values("k")
    ok = pca[pca["accuracy"] >= full - tolerance - 1e-9]
    return int(ok["k"].iloc[0]) if len(ok) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="a run's results/ folder")
    parser.add_argument("--hidden", type=Path, nargs="*", default=None,
                        help="folders holding {dataset}/{model}/pooled.parquet (default: the run's hidden/)")
    parser.add_argument("--dataset", default="reviews")
    parser.add_argument("--view", default="first_layer-1")
    parser.add_argument("--tolerance", type=float, default=0.01, help="the former rule's tolerance")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=3)
    args = parser.parse_args()
    dataset, view = args.dataset, args.view
    pooling, layer = compression.parse_view(view)
    pooled = {}
    for root in args.hidden or [args.results / "hidden"]:
        for path in sorted(Path(root).glob(f"{dataset}/*/pooled.parquet")):
            pooled.setdefault(path.parent.name, path)
    if not pooled:
        sys.exit(f"no {dataset}/*/pooled.parquet under {args.hidden or args.results / 'hidden'}")
    summary, per_k = [], []
    for model, path in pooled.items():
        table = args.results / f"analysis/compression/{dataset}/{view}/{model}/pca_curve.csv"
        data = compression.read_view(path, layer=layer, pooling=pooling, model=model, dataset=dataset)
        train_x, train_y, test_x, test_y = compression.train_test(data, model=model, dataset=dataset)
        ks = compression.k_grid(train_x.shape[1])
        after = compression.pca_curve(train_x, train_y, test_x, test_y, ks, seed=args.seed, folds=args.folds,
                                      alpha=args.alpha)
        if table.exists():
            before = pd.read_csv(table)
            same = np.allclose(before.sort_values(["kind", "k"])["accuracy"].to_numpy(),
                               after.sort_values(["kind", "k"])["accuracy"].to_numpy(), atol=1e-12)
        else:
            before, same = after, None
        best, row = compression.k_star(after)
        full = after[after["kind"] == "full"].iloc[0]
        values, counts = np.unique(train_y, return_counts=True)
        majority = np.asarray(test_y) == values[counts.argmax()]
        _, full_correct = compression.probe_with_predictions(train_x, train_y, test_x, test_y, seed=args.seed,
                                                             folds=args.folds)
        versus_majority = compression.mcnemar_exact(majority, full_correct, args.alpha)
        summary.append({"dataset": dataset, "view": view, "model": model, "n_test": len(test_y),
                        "full_accuracy": full["accuracy"], "majority_accuracy": majority.mean(),
                        "full_vs_majority_p": versus_majority["p_value"], f"k_within_{args.tolerance:g}": old_rule(before, args.tolerance),
                        "k_star": best, "accuracy_at_k_star": None if row is None else row["accuracy"],
                        "mcnemar_p_at_k_star": None if row is None else row["mcnemar_p"],
                        "accuracies_match_the_run": same})
        for _, r in after[after["kind"] == "pca"].iterrows():
            per_k.append({"model": model, "k": int(r["k"]), "accuracy": r["accuracy"],
                          "diff": r["accuracy_diff"], "diff_ci": f"[{r['diff_ci_low']:+.3f}, {r['diff_ci_high']:+.3f}]",
                          "only_full": int(r["only_full_correct"]), "only_k": int(r["only_k_correct"]),
                          "p": r["mcnemar_p"], "worse": bool(r["worse_than_full"])})
    print(pd.DataFrame(summary).to_markdown(index=False, floatfmt=".3g"))
    print()
    print(pd.DataFrame(per_k).to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()
