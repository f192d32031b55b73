"""Is the joint basis covariance of each group fit a covariance matrix? Prints, per target model, the basis dims and
the smallest, number of negative and largest eigenvalues of the train basis covariance that the group fit solves
with, as assembled from a run's pair files (docs/decomposition.md, "The pairwise-complete estimate need not be a
covariance matrix"), and the numbers of train units the pairs aligned.

    .venv/bin/python benchmarks/decomposition_joint_eigenvalues.py --results results [--models a,b,c]
"""
import argparse
from pathlib import Path

import numpy as np

from lmcompare import decomposition as lmd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", help="a run's results folder")
    parser.add_argument("--dataset", default="reviews")
    parser.add_argument("--unit", default="word")
    parser.add_argument("--layers", default="t-1_b-1")
    parser.add_argument("--models", default=None, help="comma-separated, in the configured order (the order decides "
                        "which pair gives a model its own block); default: every model with pairs, by name")
    args = parser.parse_args()
    root = Path(args.results) / "analysis/decomposition" / args.dataset / args.unit / args.layers / "moments"
    pair_paths = {(f.parent.name, f.stem): str(f) for f in sorted(root.glob("*/*.npz"))}
    models = args.models.split(",") if args.models else sorted({m for pair in pair_paths for m in pair})
    pair_paths = {pair: path for pair, path in pair_paths.items() if set(pair) <= set(models)}
    joint = lmd.JointMoments(pair_paths, models, ("train",))
    print(f"{len(models)} models, units consistent: {joint.consistent}; train units per pair: "
          f"{sorted(set(joint.n['train'].values()))}")
    for target in models:
        stats = joint.group_stats(target, [m for m in models if m != target], "train")
        eigen = np.linalg.eigvalsh(stats.cov_zz)
        print(f"{target:20s} basis dims {len(eigen)}: smallest {eigen[0]:.3e}, negative {int((eigen < 0).sum())}, "
              f"largest {eigen[-1]:.3e}")


if __name__ == "__main__":
    main()
