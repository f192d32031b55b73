"""Group fits on the units every model has, computed directly from the hidden-state files (materialised), beside
the group fits from the pair files alone (the joint covariance assembled pair by pair: the pairwise-complete
estimate when the pairs aligned different units) and the workflow's (the pair files, plus one streamed pass on the
common units when the pairs differ). On a run whose `units_consistent` is false this shows how far the assembled
estimate is from the exact fit, and that the workflow's equals it (docs/decomposition.md).

    .venv/bin/python benchmarks/decomposition_common_units.py --results results --models a,b,c [--alpha 1e-6]

Memory: all models' basis vectors of every common unit, in float64 (the default's 8 models: about 1.3 GB).
"""
import argparse
from pathlib import Path

import numpy as np

from lmcompare import decomposition as lmd
from lmcompare.decomposition.fit import decompose
from lmcompare.decomposition.units import iter_units, model_layers, unit_example_ids


def materialised_units(model: str, hidden_file: Path, unit: str, layer: int):
    source = model_layers(model, str(hidden_file), unit, layer, layer)
    blocks = list(iter_units(source, unit))
    return (np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks]),
            np.vstack([b[2] for b in blocks]).astype(np.float64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--dataset", default="reviews")
    parser.add_argument("--unit", default="word")
    parser.add_argument("--layer", type=int, default=-1, help="target and basis layer")
    parser.add_argument("--models", required=True, help="comma-separated, in the configured order")
    parser.add_argument("--alpha", type=float, default=1e-6)
    args = parser.parse_args()
    models = args.models.split(",")
    results = Path(args.results)
    units = {m: materialised_units(m, results / "hidden" / args.dataset / m / "tokens.parquet", args.unit, args.layer)
             for m in models}
    common = units[models[0]][0]
    for model in models[1:]:
        common = np.intersect1d(common, units[model][0], assume_unique=True)
    print(f"units per model: {', '.join(f'{m} {units[m][0].size}' for m in models)}; common to all: {common.size}")
    rows = {}
    for model in models:
        keys, codes, vectors = units[model]
        index = np.searchsorted(keys, common)
        rows[model] = (codes[index], vectors[index])
    codes = rows[models[0]][0]
    moments = results / "analysis/decomposition" / args.dataset / args.unit / f"t{args.layer}_b{args.layer}" / "moments"
    pair_paths = {(f.parent.name, f.stem): str(f) for f in sorted(moments.glob("*/*.npz"))}
    hidden = {m: results / "hidden" / args.dataset / m / "tokens.parquet" for m in models}
    assembled = {row["model"]: row for row in decompose(pair_paths, models, args.alpha, "paper")[0]}
    workflow = {row["model"]: row for row in decompose(pair_paths, models, args.alpha, "paper", hidden_files=hidden)[0]}
    print(f"alpha {args.alpha:g}, mode paper; group R² (test)")
    print(f"{'target':20s} {'common units':>13s} {'pairs only':>11s} {'workflow':>9s}  joint covariance")
    for target in models:
        basis = [m for m in models if m != target]
        stats = {}
        for split, code in (("train", 0), ("test", 1)):
            keep = codes == code
            z = np.hstack([rows[m][1][keep] for m in basis])
            stats[split] = lmd.SplitStats.from_rows(rows[target][1][keep], z,
                                                     unit_example_ids(common[keep], args.unit))
        fit = lmd.fit_ridge(stats["train"], args.alpha, "paper")
        exact = lmd.r_squared(fit, stats["test"], "paper")[0]
        print(f"{target:20s} {exact:13.4f} {assembled[target]['r2_test']:11.4f} {workflow[target]['r2_test']:9.4f}  "
              f"{workflow[target]['joint_covariance']}")


if __name__ == "__main__":
    main()
