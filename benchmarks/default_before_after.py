"""The headline tables of two runs of the embedded default, side by side (Markdown): e.g. the run before a change
and the run after it. Each table is matched by its path below results/analysis; a column renamed between the runs
is looked up under either name.

    .venv/bin/python benchmarks/default_before_after.py --before OLD/results --after NEW/results > table.md
"""
import argparse
from pathlib import Path

import pandas as pd

# (title, table path below results/analysis, key columns, [(label, column names to try), ...])
HEADLINES = [
    ("Decomposition, word units, the paper's alpha: group R² (test)",
     "decomposition/reviews/word/t-1_b-1/paper/alpha-1e-06/group.csv", ["model"],
     [("R² test", ["r2_test"]), ("underdetermined", ["underdetermined"]),
      ("between-example share", ["between_example_share"])]),
    ("Decomposition, word units, validated alpha: group R² (test)",
     "decomposition/reviews/word/t-1_b-1/paper/alpha-validation/group.csv", ["model"],
     [("R² test", ["r2_test"]), ("alpha", ["alpha"])]),
    ("Variability (mean pooling): recommended layer and rank correlation with the probe",
     "variability/reviews/mean/selection.csv", ["model"],
     [("recommended layer", ["recommended_layer"]), ("authors' --last_layer", ["recommended_authors_last_layer"]),
      ("accuracy there", ["accuracy_recommended"]), ("Spearman ρ", ["spearman_rho"])]),
    ("Compression, last-layer [CLS]: full-vector accuracy and k*",
     "compression/reviews/first_layer-1/summary.csv", ["model"],
     [("full accuracy", ["full_accuracy"]), ("k*", ["k_star", "smallest_k_within_tolerance"]),
      ("n test", ["k_star_n_test", "n_test"]), ("best single dim", ["best_dim_accuracy"])]),
    ("Geometry: the score of each model",
     "geometry/reviews/scores.csv", ["model"], [("score", ["score", "accuracy"]), ("n", ["n", "n_test"])]),
    ("Geometry: regression of the score on each measure across models",
     "geometry/reviews/regression.csv", ["measure"],
     [("n models", ["n"]), ("r", ["pearson_r"]), ("R²", ["r2"]), ("r 95% interval", ["r_ci_low", "r_ci_high"]),
      ("Holm p", ["p_holm"])]),
    ("Two-tower: consistency of the token preference",
     "twotower/reviews/minilm/consistency.csv", ["comparison", "seed", "step"],
     [("value", ["value"]), ("control q95", ["control_q95"])]),
]


def _column(table: pd.DataFrame, names: list[str]) -> pd.Series | None:
    found = [name for name in names if name in table]
    if not found:
        return None
    if len(found) == 2 and names == found and names[0].endswith("_low"):  # an interval
        return table[found[0]].map("{:.3f}".format) + " … " + table[found[1]].map("{:.3f}".format)
    return table[found[0]]


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def side_by_side(before: Path, after: Path, relative: str, keys: list[str], columns) -> str:
    tables = {}
    for label, root in (("before", before), ("after", after)):
        path = root / "analysis" / relative
        tables[label] = pd.read_csv(path) if path.exists() else None
    if all(t is None for t in tables.values()):
        return f"(neither run has {relative})\n"
    present_keys = [k for k in keys if all(t is None or k in t for t in tables.values())]
    rows = {}
    for label, table in tables.items():
        if table is None:
            continue
        for index, record in table.iterrows():
            key = tuple(_cell(record[k]) for k in present_keys)
            for column_label, names in columns:
                series = _column(table, names)
                rows.setdefault(key, {})[(column_label, label)] = None if series is None else series.loc[index]
    header = [*present_keys] + [f"{c} ({w})" for c, _ in columns for w in ("before", "after")]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for key, values in rows.items():
        cells = list(key) + [_cell(values.get((c, w))) for c, _ in columns for w in ("before", "after")]
        lines.append("| " + " | ".join(cells) + " |")
    missing = [label for label, t in tables.items() if t is None]
    note = f"\n(no table in the {' and '.join(missing)} run)\n" if missing else "\n"
    return "\n".join(lines) + note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="results folder of the earlier run")
    parser.add_argument("--after", type=Path, required=True, help="results folder of the later run")
    args = parser.parse_args()
    for title, relative, keys, columns in HEADLINES:
        print(f"### {title}\n\n`{relative}`\n")
        print(side_by_side(args.before, args.after, relative, keys, columns))


if __name__ == "__main__":
    main()
