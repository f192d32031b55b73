"""The stage's figure: per measure, a symmetric models x models heatmap of the similarity table."""

from typing import Sequence

import numpy as np

from lmcompare import plotting

TITLES = {
    "cka": "linear CKA",
    "cka_debiased": "debiased linear CKA",
    "cca_mean": "mean canonical correlation",
    "cca_mean_squared": "mean squared canonical correlation (Yanai's R²)",
    "svcca": "SVCCA (mean canonical correlation of the top principal directions)",
    "pwcca": "PWCCA (projection-weighted canonical correlation)",
    "procrustes": "orthogonal Procrustes similarity",
    "mutual_knn": "mutual k-nearest-neighbour alignment",
}


def similarity_matrix(table, measure: str, models: Sequence[str]) -> np.ndarray:
    """The symmetric matrix of one measure (rows and columns in `models` order); 1 on the diagonal (each measure of
    a representation with itself), nan for a pair the table lacks."""
    index = {model: k for k, model in enumerate(models)}
    matrix = np.full((len(models), len(models)), np.nan)
    np.fill_diagonal(matrix, 1.0)
    for row in table[table["measure"] == measure].itertuples():
        i, j = index[row.model_a], index[row.model_b]
        matrix[i, j] = matrix[j, i] = row.value
    return matrix


def plot_similarity(table, measure: str, models: Sequence[str], paths: Sequence[str], where: str) -> None:
    """The heatmap of one measure (similarity_matrix), saved to paths."""
    models = list(models)
    n_units = int(table["n_units"].min()) if len(table) else 0
    plotting.annotated_heatmap(similarity_matrix(table, measure, models), models, colorbar_label=measure, paths=paths,
                               title=f"{TITLES[measure]}\n({where}; {n_units} units; diagonal: each model with itself, 1)")


def sweep_matrix(table, measure: str):
    """(values, layers of model_a, layers of model_b) of one measure of a pair's sweep table: rows model_a's layers,
    columns model_b's, both increasing."""
    rows = table[table["measure"] == measure]
    layers_a, layers_b = sorted(rows["layer_a"].unique()), sorted(rows["layer_b"].unique())
    index_a, index_b = {v: k for k, v in enumerate(layers_a)}, {v: k for k, v in enumerate(layers_b)}
    matrix = np.full((len(layers_a), len(layers_b)), np.nan)
    for row in rows.itertuples():
        matrix[index_a[row.layer_a], index_b[row.layer_b]] = row.value
    return matrix, layers_a, layers_b


def _layer_labels(rows, side: str, layers) -> list[str]:
    depth = dict(zip(rows[f"layer_{side}"], rows[f"depth_{side}"]))
    return [f"{layer} ({depth[layer]:.2f})" for layer in layers]


def plot_sweep(table, measure: str, paths: Sequence[str], where: str) -> None:
    """The layer x layer heatmap of one measure of one model pair (labels: layer and relative depth)."""
    rows = table[table["measure"] == measure]
    matrix, layers_a, layers_b = sweep_matrix(table, measure)
    a, b = rows["model_a"].iloc[0], rows["model_b"].iloc[0]
    extra = f"; k = {int(rows['kept_a'].iloc[0])}" if measure == "mutual_knn" else ""
    plotting.annotated_heatmap(matrix, _layer_labels(rows, "a", layers_a), column_labels=_layer_labels(rows, "b", layers_b),
                               colorbar_label=measure, paths=paths, xlabel=f"{b} layer (relative depth)",
                               ylabel=f"{a} layer (relative depth)",
                               title=f"{TITLES[measure]}\n(every layer pair; {where}; {int(rows['n_units'].min())} "
                                     f"units{extra})")


def plot_best_layers(best, measure: str, paths: Sequence[str]) -> None:
    """Per target model (a panel), per basis model (a line): the relative depth of the best-matching basis layer
    against the target layer's relative depth; the diagonal is depth-for-depth correspondence."""
    plt = plotting.pyplot()
    rows = best[best["measure"] == measure]
    targets = sorted(rows["target"].unique())
    columns = min(3, max(len(targets), 1))
    lines = -(-max(len(targets), 1) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.8 * lines), squeeze=False)
    models = sorted(set(rows["target"]) | set(rows["basis"]))
    for ax, target in zip(axes.flat, targets):
        for basis, group in rows[rows["target"] == target].groupby("basis", sort=True):
            colour, marker = plotting.model_style(basis, models.index(basis))
            group = group.sort_values("target_depth")
            ax.plot(group["target_depth"], group["best_basis_depth"], marker=marker, color=colour, label=basis)
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set(xlim=(-0.05, 1.05), ylim=(-0.05, 1.05), title=f"target {target}", xlabel="target layer, relative depth",
               ylabel="best basis layer, relative depth")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(targets):]:
        ax.set_visible(False)
    fig.suptitle(f"best-matching basis layer per target layer by {TITLES[measure]}")
    fig.tight_layout()
    plotting.save_figure(fig, paths)
