"""The geometry figures of one dataset: Pearson r (with its bootstrap interval) of score on every measure, and the
scatter of score against each of the top-k measures by R² with its fitted line."""

import numpy as np
import pandas as pd

from lmcompare import plotting


def scatter_figure(merged: pd.DataFrame, fit: dict, *, measure: str, score_name: str, dataset: str, rank: int):
    """Score against one measure, one labelled point per model, with the fitted line."""
    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    # models at the same point (e.g. a base and its alpha = 0 copy) share one marker and one label
    frame = merged.reset_index()
    ylabel = score_name
    groups = frame.groupby([measure, "score"], sort=False)["model"].apply(list)
    if {"ci_low", "ci_high"} <= set(frame.columns):  # probe scores: Wilson 95% interval as error bars
        ok = frame[["ci_low", "ci_high"]].notna().all(axis=1)
        low = frame.loc[ok, "score"] - frame.loc[ok, "ci_low"]
        high = frame.loc[ok, "ci_high"] - frame.loc[ok, "score"]
        ax.errorbar(frame.loc[ok, measure], frame.loc[ok, "score"], yerr=[low, high], fmt="none", ecolor="0.6",
                    elinewidth=1, capsize=3, zorder=1)
        ylabel = f"{score_name}\n(bars: Wilson 95% interval)"
    for index, ((x, y), models) in enumerate(groups.items()):
        point_colour, point_marker = plotting.model_style(models[0], index)
        ax.scatter(x, y, color=point_colour, marker=point_marker, s=45, zorder=3)
        ax.annotate(", ".join(map(str, models)), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if np.isfinite(fit.get("slope", np.nan)):
        xs = np.linspace(merged[measure].min(), merged[measure].max(), 50)
        interval = ""
        if np.isfinite(fit.get("r_ci_low", np.nan)) and np.isfinite(fit.get("r_ci_high", np.nan)):
            interval = f" [{fit['r_ci_low']:.2f}, {fit['r_ci_high']:.2f}]"
        holm = f", Holm p = {fit['p_holm']:.2g}" if np.isfinite(fit.get("p_holm", np.nan)) else ""
        ax.plot(xs, fit["slope"] * xs + fit["intercept"], color="black", lw=1.2, zorder=2,
                label=f"fit: r = {fit['pearson_r']:.3f}{interval}, R² = {fit['r2']:.3f}{holm}, n = {fit['n']}")
        ax.legend(loc="best", fontsize=9)
    else:
        ax.text(0.5, 0.5, fit.get("note", "no fit"), transform=ax.transAxes, ha="center", va="center", fontsize=9,
                wrap=True)
    ax.set_xlabel(f"{measure} ({measure_unit(measure)})")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{score_name} vs {measure}\n(dataset {dataset}; #{rank} of the measures by R²)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def r2_figure(table: pd.DataFrame, *, dataset: str, score_name: str):
    """One row per measure (the table's order, best R² on top): Pearson r of score on measure across models as a
    dot with its bootstrap interval as a bar, coloured by the sign of r; labelled with R², the Holm-adjusted
    permutation p value and n."""
    plt = plotting.pyplot()
    shown = table.iloc[::-1].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8.0, 0.34 * len(shown) + 1.8))
    confidence = None
    for y, row in shown.iterrows():
        r = row["pearson_r"]
        if not np.isfinite(r):
            ax.text(-0.98, y, f"no fit (n={row['n']})", va="center", fontsize=7, color="0.4")
            continue
        colour = plotting.POSITIVE if r >= 0 else plotting.NEGATIVE
        low, high = row.get("r_ci_low", np.nan), row.get("r_ci_high", np.nan)
        if np.isfinite(low) and np.isfinite(high):
            ax.plot([low, high], [y, y], color=colour, lw=2.2, alpha=0.55, solid_capstyle="butt")
            confidence = row.get("confidence", confidence)
        ax.plot([r], [y], "o", color=colour, ms=5)
        p_holm = row.get("p_holm", np.nan)
        holm = f", Holm p={p_holm:.2g}" if np.isfinite(p_holm) else ""
        ax.text(1.04, y, f"R²={row['r2']:.2f}{holm}, n={row['n']}", va="center", fontsize=7)
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels(shown["measure"], fontsize=8)
    ax.set_ylim(-0.7, len(shown) - 0.3)
    ax.axvline(0.0, color="0.5", lw=0.8)
    ax.set_xlim(-1.0, 1.75)
    ax.set_xticks([-1.0, -0.5, 0.0, 0.5, 1.0])
    level = f"{100 * float(confidence):.0f}% " if confidence is not None and np.isfinite(confidence) else ""
    ax.set_xlabel(f"Pearson r of score on measure across models (unitless); bar: {level}bootstrap interval over "
                  f"models;\nblue: r > 0, orange: r < 0; Holm p: permutation p value adjusted over the measures",
                  fontsize=8)
    ax.set_title(f"Which geometry measure predicts {score_name}?\n(dataset {dataset}, one point per model; "
                 f"sorted by R²)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def measure_unit(measure: str) -> str:
    """The unit of a measure's values, for an axis label."""
    if measure.endswith(("recon_error_mean", "recon_error_iqr")):
        return "fraction"
    if measure.endswith("cell_count_kl"):
        return "nats"
    return "unitless"



def draw_figures(measures_path, scores_path, regression_path, *, dataset: str, score_name: str, top_k: int,
                 r2_paths, scatter_paths, model_index=None) -> None:
    """The r2_by_measure figure (saved to each of r2_paths) and the scatter of score against each of the top_k
    measures by R² (scatter_paths[rank - 1]: the paths of rank's figure, e.g. [png, svg]); a table with fewer
    measures repeats its last one. model_index: each model's index in the configured model list (its colour)."""
    plotting.use_model_order(model_index)
    measures = pd.read_csv(measures_path)
    scores = pd.read_csv(scores_path)
    table = pd.read_csv(regression_path, keep_default_na=False, na_values=[""])
    wide = measures.pivot_table(index="model", columns="measure", values="value", aggfunc="first")
    score_columns = [c for c in ("score", "ci_low", "ci_high") if c in scores.columns]
    merged = wide.join(scores.set_index("model")[score_columns], how="inner")
    plotting.save_figure(r2_figure(table, dataset=dataset, score_name=score_name), r2_paths)
    for rank in range(1, top_k + 1):
        row = table.iloc[min(rank, len(table)) - 1].to_dict()
        fig = scatter_figure(merged[[row["measure"]] + score_columns].dropna(subset=[row["measure"], "score"]),
                             row, measure=row["measure"], score_name=score_name, dataset=dataset, rank=rank)
        plotting.save_figure(fig, scatter_paths[rank - 1])
