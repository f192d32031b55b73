"""The geometry stage's scores and regression of a run, as Markdown tables (docs/geometry.md's "Measured").

    .venv/bin/python benchmarks/geometry_regression_summary.py [--results results] [--dataset reviews] [--top 17]

Prints each model's score (with its interval and the examples it rests on) and, per measure, Pearson r with its
bootstrap interval, R², the t-test p, the permutation p and the Holm-adjusted p, from
results/analysis/geometry/{dataset}/scores.csv and regression.csv.
"""
import argparse
from pathlib import Path

import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--dataset", default="reviews")
    parser.add_argument("--top", type=int, default=17, help="measures shown, best R² first")
    args = parser.parse_args()
    folder = args.results / "analysis" / "geometry" / args.dataset
    if not (folder / "regression.csv").exists():
        raise SystemExit(f"no {folder / 'regression.csv'}: run the geometry stage first")
    scores = pd.read_csv(folder / "scores.csv").sort_values("score", ascending=False)
    print(f"scores ({len(scores)} models)\n")
    print("| model | score | 95% interval | examples | protocol |")
    print("| --- | ---: | --- | ---: | --- |")
    for row in scores.itertuples():
        interval = f"[{row.ci_low:.3f}, {row.ci_high:.3f}]" if hasattr(row, "ci_low") else ""
        examples = getattr(row, "n_test", "")
        protocol = getattr(row, "protocol", "")
        splits = getattr(row, "splits", "")
        protocol = f"{protocol} ({splits})" if isinstance(splits, str) and splits else protocol
        print(f"| {row.model} | {row.score:.3f} | {interval} | {examples} | {protocol} |")
    table = pd.read_csv(folder / "regression.csv", keep_default_na=False, na_values=[""]).head(args.top)
    print(f"\nregression of the score on each measure across n = {int(table['n'].max())} models\n")
    print("| measure | r | r interval | R² | t-test p | permutation p | Holm p |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for row in table.itertuples():
        if pd.isna(row.r2):
            print(f"| {row.measure} | | | | | | | {row.note}")
            continue
        level = f"{100 * row.confidence:.0f}%"
        print(f"| {row.measure} | {row.pearson_r:+.3f} | [{row.r_ci_low:+.2f}, {row.r_ci_high:+.2f}] ({level}) | "
              f"{row.r2:.3f} | {row.p_value:.3g} | {row.p_permutation:.3g} ({row.permutations}) | {row.p_holm:.3g} |")
    significant = table[table["p_holm"] < 0.05]["measure"].tolist()
    print(f"\nmeasures with Holm p < 0.05: {significant or 'none'}")


if __name__ == "__main__":
    main()
