"""The one-page summary: the headline of every analysis for the configured models; and, for the report, the
provenance table and the effective configuration.

The page is drawn from the aggregated tables and the provenance table (report/provenance.py) only, so that a
config edit that changes no table redraws nothing. Each panel reads the first of the
aggregated tables the rule gives it and returns what it drew (the table's path and the values); a panel given no
table (its analysis is disabled) shows a note, a panel given a table that is missing or lacks a column it draws is
an error naming the table and the column.
"""
import logging
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from lmcompare import plotting
from lmcompare.plotting import NEGATIVE, POSITIVE, colour, model_style, use_model_order
from lmcompare.report.provenance import read_provenance_table
from lmcompare.errors import WorkflowInputError

LOG = logging.getLogger("workflow")


def panel_table(paths, panel: str, columns):
    """(table, path) of the first table the rule gave this panel, or (None, None) when it gave none (the analysis
    is disabled). A table that was given but is missing, or lacks one of `columns`, is an error: the summary never
    draws a placeholder over an enabled analysis."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not paths:
        return None, None
    path = paths[0]
    if not path.exists():
        raise WorkflowInputError(f"summary panel {panel!r}: its table {path} is missing although its analysis is "
                                 f"enabled; run the analysis first (snakemake {path}).")
    table = pd.read_csv(path)
    missing = [column for column in columns if column not in table]
    if missing:
        raise WorkflowInputError(f"summary panel {panel!r}: table {path} has no column(s) {', '.join(missing)} "
                                 f"(it has {', '.join(map(str, table.columns))}); the table was written by another "
                                 f"version of the analysis: rerun it (snakemake --forcerun on its rule).")
    return table, path


def _note(ax, title, message):
    ax.set_title(title, fontsize=10, loc="left", fontweight="bold")
    ax.text(0.5, 0.5, textwrap.fill(message, 40), ha="center", va="center", fontsize=9, color="0.35",
            transform=ax.transAxes)
    ax.set_axis_off()
    return {"table": None, "note": message}


def _source(path) -> str:
    """The table's path as a panel names it: below results/analysis/."""
    parts = Path(path).parts
    start = parts.index("analysis") + 1 if "analysis" in parts else 0
    return "/".join(parts[start:])


def panel_decomposition(ax, paths):
    title = "Decomposition: group R² (test)"
    table, path = panel_table(paths, "decomposition", ["model", "r2_test"])
    if table is None:
        return _note(ax, title, "Language Model Decomposition is not enabled in the config file.")
    table = table.sort_values("r2_test")
    ax.barh(table["model"], table["r2_test"], color=POSITIVE)
    for y, value in enumerate(table["r2_test"]):
        ax.text(max(value, 0) + 0.01, y, f"{value:.3f}", va="center", fontsize=8)
    mean = table["r2_test"].mean()
    ax.axvline(mean, color="0.3", linestyle="--", linewidth=1)
    ax.set_xlim(min(0, table["r2_test"].min()), 1.12)
    ax.set_xlabel("R² of the model from all others (held-out units)")
    ax.set_title(f"{title}\nmean {mean:.3f}  (from {_source(path)})", fontsize=10, loc="left",
                 fontweight="bold")
    return {"table": str(path), "model": table["model"].tolist(), "r2_test": table["r2_test"].tolist(),
            "mean": float(mean)}


def panel_variability(ax, layer_paths, selection_paths):
    title = "Variability: ν by relative depth"
    layers, path = panel_table(layer_paths, "variability", ["model", "layer", "nu"])
    if layers is None:
        return _note(ax, title, "Hidden-state variability is not enabled in the config file (needs a labelled dataset).")
    selection, selection_path = panel_table(selection_paths, "variability", ["model", "recommended_layer"])
    drawn = {"table": str(path), "selection_table": None if selection_path is None else str(selection_path),
             "curves": {}, "recommended": {}}
    for index, (model, group) in enumerate(layers.groupby("model", sort=True)):
        group = group.sort_values("layer")
        depth = group["layer"] / max(group["layer"].max(), 1)
        model_colour, model_marker = model_style(model, index)
        ax.plot(depth, group["nu"], marker=model_marker, markersize=3, color=model_colour, label=model)
        drawn["curves"][model] = {"depth": depth.tolist(), "nu": group["nu"].tolist()}
        if selection is not None:
            chosen = selection.loc[selection["model"] == model, "recommended_layer"]
            if len(chosen) and pd.notna(chosen.iloc[0]):
                row = group[group["layer"] == int(chosen.iloc[0])]
                drawn["recommended"][model] = int(chosen.iloc[0])
                ax.plot(row["layer"] / max(group["layer"].max(), 1), row["nu"], marker="*", markersize=12,
                        color=model_colour, markeredgecolor="black")
    ax.set_yscale("log")
    ax.set_xlabel("layer / number of layers (0 = embeddings)")
    ax.set_ylabel("ν (log scale; lower = more specialised)")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(f"{title}  (★ recommended)\nfrom {_source(path)}", fontsize=10, loc="left",
                 fontweight="bold")
    return drawn


def panel_compression(ax, paths):
    title = "[CLS] compression: probe accuracy"
    table, path = panel_table(paths, "compression", ["model", "full_accuracy"])
    if table is None:
        return _note(ax, title, "[CLS] compression is not enabled in the config file (needs a labelled dataset).")
    columns = [(c, label) for c, label in (("full_accuracy", "all dims"), ("pca_k1_accuracy", "PCA k=1"),
                                           ("best_dim_accuracy", "best single dim")) if c in table]
    x = np.arange(len(table))
    width = 0.8 / len(columns)
    for index, (column, label) in enumerate(columns):
        ax.bar(x + (index - (len(columns) - 1) / 2) * width, table[column], width, label=label,
               color=colour(index))
    drawn = {"table": str(path), "model": table["model"].tolist(),
             "bars": {column: table[column].tolist() for column, _ in columns}, "k_star": None}
    if "k_star" in table:
        drawn["k_star"] = table["k_star"].tolist()
        drawn["k_star_n_test"] = table["k_star_n_test"].tolist()
        for xi, (k, n, full) in enumerate(zip(table["k_star"], table["k_star_n_test"], table["full_accuracy"])):
            ax.text(xi, min(full + 0.03, 1.02), f"k*={int(k)}\nn={int(n)}" if pd.notna(k) else f"k*=–\nn={int(n)}",
                    ha="center", fontsize=7)
    ax.set_xticks(x, table["model"], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    ax.set_title(f"{title}\nfrom {_source(path)} (k* = fewest PCA dims not worse than all dims, "
                 f"paired test on n test examples)", fontsize=10, loc="left", fontweight="bold")
    return drawn


def panel_geometry(ax, paths):
    title = "Geometry: which measure predicts the score"
    table, path = panel_table(paths, "geometry", ["measure", "r2", "pearson_r", "n"])
    if table is None:
        return _note(ax, title, "Latent-space geometry is not enabled in the config file.")
    shown = table.dropna(subset=["r2"]).sort_values("r2", ascending=False).head(8).iloc[::-1]
    if shown.empty:
        note = table["note"].dropna().iloc[0] if "note" in table and table["note"].notna().any() else "no fit"
        return {**_note(ax, title, f"No regression could be fitted: {note} (from {_source(path)})"),
                "table": str(path)}
    colours = [POSITIVE if r >= 0 else NEGATIVE for r in shown["pearson_r"]]
    ax.barh(shown["measure"], shown["r2"], color=colours)
    for y, (r2, r) in enumerate(zip(shown["r2"], shown["pearson_r"])):
        ax.text(r2 + 0.01, y, f"r={r:+.2f}", va="center", fontsize=7)
    ax.set_xlim(0, 1.15)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel(f"R² of score on measure across n={int(shown['n'].max())} models")
    ax.set_title(f"{title}\nfrom {_source(path)} (blue r>0, orange r<0)", fontsize=10, loc="left",
                 fontweight="bold")
    return {"table": str(path), "measure": shown["measure"].tolist()[::-1], "r2": shown["r2"].tolist()[::-1],
            "pearson_r": shown["pearson_r"].tolist()[::-1]}


def twotower_consistency_bars(table: pd.DataFrame) -> pd.DataFrame:
    """The Pearson rows of the two-tower consistency table, one labelled bar each (label unique per row), with
    the shuffled-assignment control's 95% quantile where the row has one (split halves)."""
    rows = table[table["measure"] == "pearson"] if "measure" in table else table
    bars = []
    for _, row in rows.iterrows():
        seed = f" seed {int(row['seed'])}" if pd.notna(row.get("seed")) else ""
        step = f" step {int(row['step'])}" if pd.notna(row.get("step")) else ""
        versus = f" vs {int(row['other_step'])}" if pd.notna(row.get("other_step")) else ""
        bars.append({"label": f"{row['comparison']}{seed}{step}{versus}", "value": row["value"],
                     "control_q95": row.get("null_q95", np.nan)})
    return pd.DataFrame(bars, columns=["label", "value", "control_q95"])


def panel_twotower(ax, paths):
    title = "Two-tower LM: is the token preference consistent?"
    table, path = panel_table(paths, "twotower", ["comparison", "value"])
    if table is None:
        return _note(ax, title, "The two-tower language model is not enabled in the config file.")
    bars = twotower_consistency_bars(table)
    if bars.empty:
        return {**_note(ax, title, f"No consistency rows were written (in {_source(path)})."), "table": str(path)}
    y = np.arange(len(bars))
    ax.barh(y, bars["value"], color=colour(2))
    control = bars["control_q95"].notna().to_numpy()
    if control.any():
        ax.scatter(bars["control_q95"][control], y[control], marker="|", s=300, linewidths=2.5, color=NEGATIVE,
                   zorder=3, label="shuffled-assignment control, 95% quantile")
        ax.legend(fontsize=7, loc="lower left")
    ax.set_yticks(y, bars["label"])
    ax.axvline(0, color="0.3", linewidth=0.8)
    ax.set_xlim(-1, 1)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("Pearson r of per-token preferences")
    ax.set_title(f"{title}\nfrom {_source(path)}", fontsize=10, loc="left", fontweight="bold")
    return {"table": str(path), "bars": bars}


def panel_models(ax, provenance: pd.DataFrame, datasets: list):
    ax.set_axis_off()
    ax.set_title("Models and data", fontsize=10, loc="left", fontweight="bold")
    lines = [f"{row.model:<16} {row.source:<8} {Path(str(row.origin or '')).name[:34]}" for row in provenance.itertuples()]
    lines += ["", "datasets: " + ", ".join(datasets)]
    ax.text(0, 1, "\n".join(lines), va="top", ha="left", fontsize=7.5, family="monospace", transform=ax.transAxes)


def draw_summary(inputs: dict, provenance: pd.DataFrame, datasets: list, paths: list) -> dict:
    """Draw the page; returns, per panel, what it drew (the table's path and the values, or the note)."""
    plt = plotting.pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(17, 10.5))
    drawn = {
        "decomposition": panel_decomposition(axes[0, 0], inputs.get("decomposition", [])),
        "variability": panel_variability(axes[0, 1], inputs.get("variability_layers", []),
                                         inputs.get("variability_selection", [])),
        "compression": panel_compression(axes[0, 2], inputs.get("compression", [])),
        "geometry": panel_geometry(axes[1, 0], inputs.get("geometry", [])),
        "twotower": panel_twotower(axes[1, 1], inputs.get("twotower", [])),
    }
    panel_models(axes[1, 2], provenance, datasets)
    fig.suptitle("How the configured language models relate inside: the headline of each analysis", fontsize=13)
    fig.tight_layout()
    plotting.save_figure(fig, paths)
    return drawn


def draw_summary_from_tables(tables: dict, provenance_path, models: list, datasets: list, paths: list) -> dict:
    """The summary_figure job: the page drawn from the aggregated tables (panel -> list of paths; an empty list for a
    disabled analysis) and the provenance table; colours follow the configured model order. Logs what each panel
    drew and returns it (draw_summary)."""
    use_model_order(list(models))  # the configured order: the colours of the per-analysis figures
    provenance = read_provenance_table(provenance_path)
    drawn = draw_summary(tables, provenance, datasets, paths)
    for panel, what in drawn.items():
        LOG.info("panel %s: %s", panel, f"drawn from {what['table']}" if what["table"] else what["note"])
    return drawn
