"""The stage's figures: the pairwise test-R² heatmap and the group-R² bars of one (dataset, unit, layers, mode,
alpha), drawn from the fit's tables."""

from typing import Sequence

import numpy as np

from lmcompare import plotting
from lmcompare.decomposition.tags import VALIDATION


def plot_pairwise(matrix, title: str, paths: Sequence[str]) -> None:
    """Heatmap of a pairwise matrix (rows: target model, columns: basis model, values: test R²), saved to paths."""
    plotting.annotated_heatmap(matrix.to_numpy(dtype=float), list(matrix.index), title=title,
                               colorbar_label="test R² (fraction of variance explained)", paths=paths,
                               xlabel="basis model (z)", ylabel="target model (u)")


def plot_group(group_frame, title: str, paths: Sequence[str]) -> None:
    """Train and test group R² of every target model as bars, the mean test R² as a line, saved to paths."""
    plt = plotting.pyplot()
    models = list(group_frame["model"])
    x = np.arange(len(models))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(models) + 2.5), 4.5))
    for offset, column, label, colour in ((-0.2, "r2_train", "train", plotting.colour(0)),
                                           (0.2, "r2_test", "test", plotting.colour(1))):
        bars = ax.bar(x + offset, group_frame[column], width=0.4, label=label, color=colour)
        ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    mean_test = float(group_frame["r2_test"].mean())
    ax.axhline(mean_test, color="0.3", linestyle="--", linewidth=1, label=f"mean test R² = {mean_test:.3f}")
    labels = models
    if "alpha_choice" in group_frame and (group_frame["alpha_choice"] == VALIDATION).any():
        labels = [f"{m}\nα={a:g}" for m, a in zip(models, group_frame["alpha"])]  # the alpha chosen per target
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylabel("group R² (fraction of variance explained)")
    ax.set_xlabel("target model (basis: all other models)")
    low = min(0.0, float(np.nanmin(group_frame[["r2_train", "r2_test"]].to_numpy()))) if len(group_frame) else 0.0
    ax.set_ylim(low, 1.08)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    plotting.save_figure(fig, paths)


def draw_figures(group_table, matrix_table, *, dataset: str, unit: str, layers: str, mode: str, alpha,
                 heatmap_paths: Sequence[str], group_paths: Sequence[str]) -> None:
    """The figures rule: both figures from the group and pairwise-matrix tables (CSV) of one fit; alpha is the
    fit's alpha choice (a number or 'validation'), layers its layers tag; the titles name all of them."""
    import pandas as pd

    group = pd.read_csv(group_table)
    matrix = pd.read_csv(matrix_table).set_index("model")
    n_train, n_test = int(group["n_train"].min()), int(group["n_test"].min())
    if alpha == VALIDATION:
        chosen = group["alpha"]
        alpha_text = f"alpha by validation ({chosen.min():g}..{chosen.max():g})" if chosen.nunique() > 1 else f"alpha by validation ({chosen.iloc[0]:g})"
    else:
        alpha_text = f"alpha {alpha:g}"
    where = (f"{dataset}, unit {unit}, layers {layers}, mode {mode}, {alpha_text};\n"
             f"{n_train} train / {n_test} test units")
    plot_pairwise(matrix, f"Pairwise LMD: test R² of target from basis\n({where})", heatmap_paths)
    plot_group(group, f"Group LMD: each model from all the others\n({where})", group_paths)
