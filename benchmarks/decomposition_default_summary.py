"""Print the summary numbers of docs/decomposition.md's "paper's α and validated α" section from a run's tables.

    .venv/bin/python benchmarks/decomposition_default_summary.py [--results results] [--compare OTHER_RESULTS]

Reads results/analysis/decomposition/{dataset}/{unit}/{layers}/{mode}/alpha-*/{group,pairwise}.csv of every
(dataset, unit, layers, mode) that has both a fixed-α and an `alpha-validation` folder (the default config
writes both) and prints: the group table (fixed-α train/test R², chosen α, validation R², validated train/test R²),
the pairwise test-R² range, mean and negative count at the fixed α, the chosen-α counts, the validated pairwise
range and mean, and the largest |validation R² − test R²| of the group fits. With --compare, also the largest
absolute difference of every numeric column of the fixed-α tables between the two runs.
"""
import argparse
import math
from collections import Counter
from pathlib import Path

import pandas as pd


def fmt_alpha(value: float) -> str:
    exponent = math.log10(value) if value > 0 else float("nan")
    return f"1e{int(round(exponent))}" if value > 0 and abs(exponent - round(exponent)) < 1e-9 else repr(value)


def summarise(stem: Path, fixed: Path, validated: Path) -> None:
    group_fixed = pd.read_csv(fixed / "group.csv")
    group_valid = pd.read_csv(validated / "group.csv")
    pair_fixed = pd.read_csv(fixed / "pairwise.csv")
    pair_valid = pd.read_csv(validated / "pairwise.csv")
    print(f"== {stem}  ({fixed.name} vs {validated.name})")
    row = group_valid.iloc[0]
    print(f"units: {int(row.n_train):,} train ({int(row.n_train) - int(row.n_valid):,} fit + {int(row.n_valid):,} "
          f"valid), {int(row.n_test):,} test; {len(group_fixed)} models")
    merged = group_fixed.merge(group_valid, on="model", suffixes=("_fixed", "_valid"))
    print("| target | fixed: R² train / test | validation: chosen α | R² valid | R² train / test |")
    for r in merged.itertuples():
        print(f"| {r.model} | {r.r2_train_fixed:.3f} / {r.r2_test_fixed:.3f} | {fmt_alpha(r.alpha_valid)} | "
              f"{r.r2_valid_valid:.3f} | {r.r2_train_valid:.3f} / {r.r2_test_valid:.3f} |")
    print(f"mean group R² (test): fixed {group_fixed.r2_test.mean():.3f}, validated {group_valid.r2_test.mean():.3f}")
    gap = (group_valid.r2_valid - group_valid.r2_test).abs()
    print(f"group fits, largest |R² valid − R² test|: {gap.max():.3f} ({group_valid.model[gap.idxmax()]})")

    test = pair_fixed.r2_test
    print(f"pairwise ({len(pair_fixed)} ordered pairs), fixed α = {fmt_alpha(pair_fixed.alpha.iloc[0])}: test R² "
          f"{test.min():.2f} .. {test.max():.2f}, mean {test.mean():.2f}, {int((test < 0).sum())} negative; "
          f"train units per fit {int(pair_fixed.n_train.min()):,}..{int(pair_fixed.n_train.max()):,}, "
          f"basis dims {int(pair_fixed.basis_dims.min())}..{int(pair_fixed.basis_dims.max())}")
    counts = Counter(pair_valid.alpha)
    print("pairwise, validated: chosen α " + ", ".join(f"{fmt_alpha(a)} ×{n}" for a, n in sorted(counts.items()))
          + f"; test R² {pair_valid.r2_test.min():.2f} .. {pair_valid.r2_test.max():.2f}, "
          f"mean {pair_valid.r2_test.mean():.2f}, {int((pair_valid.r2_test < 0).sum())} negative")
    both = pair_fixed.merge(pair_valid, on=["model", "basis_model"], suffixes=("_fixed", "_valid"))
    models = list(group_fixed.model)
    if len(models) >= 2:
        a, b = models[0], models[1]
        cells = both[((both.model == a) & (both.basis_model == b)) | ((both.model == b) & (both.basis_model == a))]
        for r in cells.itertuples():
            print(f"  {r.model} from {r.basis_model}: test R² fixed {r.r2_test_fixed:.2f}, validated {r.r2_test_valid:.2f}")
    print()


def compare(results: Path, other: Path) -> None:
    """Largest absolute difference of the numeric columns of every fixed-α table present in both runs."""
    root = results / "analysis/decomposition"
    for table in sorted(root.glob("*/*/*/*/alpha-*/*.csv")):
        if "validation" in table.parent.name:
            continue
        twin = other / table.relative_to(results)
        if not twin.exists():
            print(f"{table.relative_to(root)}: not in {other}")
            continue
        mine, theirs = pd.read_csv(table), pd.read_csv(twin)
        numeric = [c for c in mine.columns if pd.api.types.is_float_dtype(mine[c]) and c in theirs.columns]
        if mine.shape != theirs.shape:
            print(f"{table.relative_to(root)}: shapes differ {mine.shape} vs {theirs.shape}")
            continue
        diff = max(float((mine[c] - theirs[c]).abs().max()) for c in numeric) if numeric else 0.0
        print(f"{table.relative_to(root)}: largest absolute difference {diff:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--compare", type=Path, default=None, help="another run's results folder")
    args = parser.parse_args()
    root = args.results / "analysis/decomposition"
    stems = sorted({p.parent.parent for p in root.glob("*/*/*/*/alpha-*/group.csv")})
    if not stems:
        raise SystemExit(f"no decomposition tables under {root}: run the default workflow first")
    for stem in stems:
        fixed = sorted(p for p in stem.glob("alpha-*") if p.name != "alpha-validation" and (p / "group.csv").exists())
        validated = stem / "alpha-validation"
        if not fixed or not (validated / "group.csv").exists():
            print(f"== {stem}: needs both a fixed-α and an alpha-validation folder; skipped\n")
            continue
        for folder in fixed:
            summarise(stem.relative_to(root), folder, validated)
    if args.compare:
        compare(args.results, args.compare)


if __name__ == "__main__":
    main()
