"""The one-page summary: the headline of every analysis for the configured models; and, for the report, the
provenance table and the effective configuration.

Three rules run this script (`snakemake.rule` picks the job): `model_provenance` writes the provenance table,
`effective_config` the config, `summary_figure` draws the page from the aggregated tables and the provenance
table only, so that a config edit that changes no table redraws nothing. Each panel reads the aggregated table
its analysis writes; a disabled analysis leaves its panel with a note.
"""
import logging
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from workflow_scripts import storage
from workflow_scripts.figure_style import NEGATIVE, POSITIVE, colour, model_style, use_model_order
from workflow_scripts.model_loading import read_provenance

LOG = logging.getLogger("workflow")


def provenance_table(model_dirs: dict) -> pd.DataFrame:
    """One row per model: name, source, where from, revision, weights sha256, derivation."""
    rows = []
    for name, folder in model_dirs.items():
        record = read_provenance(folder)
        origin = (record.get("repo_id") or record.get("package") or record.get("path")
                  or ", ".join(Path(p).name for p in record.get("archive_parts", [])) or record.get("base"))
        derivation = {k: record[k] for k in ("base", "alpha", "seed", "dataset", "epochs", "learning_rate",
                                            "train_accuracy", "test_accuracy") if k in record}
        rows.append({"model": name, "source": record.get("source"), "origin": origin,
                     "revision": record.get("revision") or record.get("package_version"),
                     "architecture": record.get("architecture"), "weights_sha256": record.get("weights_sha256"),
                     "derivation": "; ".join(f"{k}={v}" for k, v in derivation.items())})
    return pd.DataFrame(rows)


def _first_table(paths):
    for path in paths:
        if Path(path).exists():
            return pd.read_csv(path), Path(path)
    return None, None


def _note(ax, title, message):
    ax.set_title(title, fontsize=10, loc="left", fontweight="bold")
    ax.text(0.5, 0.5, textwrap.fill(message, 40), ha="center", va="center", fontsize=9, color="0.35",
            transform=ax.transAxes)
    ax.set_axis_off()


def _where(path: Path, analysis: str) -> str:
    """The part of a table's path between results/analysis/<analysis>/ and the file name (dataset, variant)."""
    parts = Path(path).parts
    start = parts.index(analysis) + 1 if analysis in parts else 0
    return "/".join(parts[start:-1])


def panel_decomposition(ax, paths):
    title = "Decomposition: group R² (test)"
    table, path = _first_table(paths)
    if table is None or "r2_test" not in table:
        return _note(ax, title, "Language Model Decomposition is not enabled in the config file.")
    table = table.sort_values("r2_test")
    ax.barh(table["model"], table["r2_test"], color=POSITIVE)
    for y, value in enumerate(table["r2_test"]):
        ax.text(max(value, 0) + 0.01, y, f"{value:.3f}", va="center", fontsize=8)
    mean = table["r2_test"].mean()
    ax.axvline(mean, color="0.3", linestyle="--", linewidth=1)
    ax.set_xlim(min(0, table["r2_test"].min()), 1.12)
    ax.set_xlabel("R² of the model from all others (held-out units)")
    ax.set_title(f"{title}\nmean {mean:.3f}  ({_where(path, 'decomposition')})", fontsize=10, loc="left",
                 fontweight="bold")


def panel_variability(ax, layer_paths, selection_paths):
    title = "Variability: ν by relative depth"
    layers, path = _first_table(layer_paths)
    selection, _ = _first_table(selection_paths)
    if layers is None or "nu" not in layers:
        return _note(ax, title, "Hidden-state variability is not enabled in the config file (needs a labelled dataset).")
    for index, (model, group) in enumerate(layers.groupby("model", sort=True)):
        group = group.sort_values("layer")
        depth = group["layer"] / max(group["layer"].max(), 1)
        model_colour, model_marker = model_style(model, index)
        ax.plot(depth, group["nu"], marker=model_marker, markersize=3, color=model_colour, label=model)
        if selection is not None and "recommended_layer" in selection:
            chosen = selection.loc[selection["model"] == model, "recommended_layer"]
            if len(chosen) and pd.notna(chosen.iloc[0]):
                row = group[group["layer"] == int(chosen.iloc[0])]
                ax.plot(row["layer"] / max(group["layer"].max(), 1), row["nu"], marker="*", markersize=12,
                        color=model_colour, markeredgecolor="black")
    ax.set_yscale("log")
    ax.set_xlabel("layer / number of layers (0 = embeddings)")
    ax.set_ylabel("ν (log scale; lower = more specialised)")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(f"{title}  (★ recommended)\n{_where(path, 'variability')}", fontsize=10, loc="left",
                 fontweight="bold")


def panel_compression(ax, paths):
    title = "[CLS] compression: probe accuracy"
    table, path = _first_table(paths)
    if table is None or "full_accuracy" not in table:
        return _note(ax, title, "[CLS] compression is not enabled in the config file (needs a labelled dataset).")
    columns = [(c, label) for c, label in (("full_accuracy", "all dims"), ("pca_k1_accuracy", "PCA k=1"),
                                           ("best_dim_accuracy", "best single dim")) if c in table]
    x = np.arange(len(table))
    width = 0.8 / len(columns)
    for index, (column, label) in enumerate(columns):
        ax.bar(x + (index - (len(columns) - 1) / 2) * width, table[column], width, label=label,
               color=colour(index))
    if "k_star" in table:
        for xi, (k, n, full) in enumerate(zip(table["k_star"], table["k_star_n_test"], table["full_accuracy"])):
            ax.text(xi, min(full + 0.03, 1.02), f"k*={int(k)}\nn={int(n)}" if pd.notna(k) else f"k*=–\nn={int(n)}",
                    ha="center", fontsize=7)
    ax.set_xticks(x, table["model"], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    ax.set_title(f"{title}\n{_where(path, 'compression')} (k* = fewest PCA dims not worse than all dims, "
                 f"paired test on n test examples)", fontsize=10, loc="left", fontweight="bold")


def panel_geometry(ax, paths):
    title = "Geometry: which measure predicts the score"
    table, path = _first_table(paths)
    if table is None or "r2" not in table:
        return _note(ax, title, "Latent-space geometry is not enabled in the config file.")
    shown = table.dropna(subset=["r2"]).sort_values("r2", ascending=False).head(8).iloc[::-1]
    if shown.empty:
        note = table["note"].dropna().iloc[0] if "note" in table and table["note"].notna().any() else "no fit"
        return _note(ax, title, f"No regression could be fitted: {note}")
    colours = [POSITIVE if r >= 0 else NEGATIVE for r in shown["pearson_r"]]
    ax.barh(shown["measure"], shown["r2"], color=colours)
    for y, (r2, r) in enumerate(zip(shown["r2"], shown["pearson_r"])):
        ax.text(r2 + 0.01, y, f"r={r:+.2f}", va="center", fontsize=7)
    ax.set_xlim(0, 1.15)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel(f"R² of score on measure across n={int(shown['n'].max())} models")
    ax.set_title(f"{title}\n{_where(path, 'geometry')} (blue r>0, orange r<0)", fontsize=10, loc="left",
                 fontweight="bold")


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
    table, path = _first_table(paths)
    if table is None or "comparison" not in table:
        return _note(ax, title, "The two-tower language model is not enabled in the config file.")
    bars = twotower_consistency_bars(table)
    if bars.empty:
        return _note(ax, title, "No consistency rows were written.")
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
    ax.set_title(f"{title}\n{_where(path, 'twotower')}", fontsize=10, loc="left", fontweight="bold")


def panel_models(ax, provenance: pd.DataFrame, datasets: list):
    ax.set_axis_off()
    ax.set_title("Models and data", fontsize=10, loc="left", fontweight="bold")
    lines = [f"{row.model:<16} {row.source:<8} {Path(str(row.origin or '')).name[:34]}" for row in provenance.itertuples()]
    lines += ["", "datasets: " + ", ".join(datasets)]
    ax.text(0, 1, "\n".join(lines), va="top", ha="left", fontsize=7.5, family="monospace", transform=ax.transAxes)


def draw_summary(inputs: dict, provenance: pd.DataFrame, datasets: list, paths: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(17, 10.5))
    panel_decomposition(axes[0, 0], inputs.get("decomposition", []))
    panel_variability(axes[0, 1], inputs.get("variability_layers", []), inputs.get("variability_selection", []))
    panel_compression(axes[0, 2], inputs.get("compression", []))
    panel_geometry(axes[1, 0], inputs.get("geometry", []))
    panel_twotower(axes[1, 1], inputs.get("twotower", []))
    panel_models(axes[1, 2], provenance, datasets)
    fig.suptitle("How the configured language models relate inside: the headline of each analysis", fontsize=13)
    fig.tight_layout()
    storage.save_figure(fig, paths)


def read_provenance_table(path) -> pd.DataFrame:
    """The provenance table as text (empty cells as empty strings), as the models panel prints it."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def write_provenance(snakemake) -> None:
    model_dirs = dict(zip(snakemake.params.models, snakemake.input.models))
    provenance = provenance_table(model_dirs)
    storage.write_table(provenance, snakemake.output.provenance)


def write_config(snakemake) -> None:
    with storage.atomic_path(snakemake.output.config) as tmp:
        tmp.write_text(yaml.safe_dump(snakemake.params.config, sort_keys=False))
    LOG.info("wrote %s", snakemake.output.config)


def draw(snakemake) -> None:
    use_model_order(list(snakemake.params.models))  # the configured order: the colours of the per-analysis figures
    provenance = read_provenance_table(snakemake.input.provenance)
    inputs = {key: list(getattr(snakemake.input, key)) for key in snakemake.params.panels}
    draw_summary(inputs, provenance, snakemake.params.datasets, [snakemake.output.png, snakemake.output.svg])
    LOG.info("summary of %d models drawn from %d tables", len(provenance), sum(map(len, inputs.values())))


JOBS = {"model_provenance": write_provenance, "effective_config": write_config, "summary_figure": draw}


def main(snakemake) -> None:
    with storage.job_logging(snakemake):
        JOBS[snakemake.rule](snakemake)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
