"""The stage's figures: per measure, a symmetric models x models heatmap of the similarity table; the layer sweep's
layer x layer heatmaps, best-matching layers, R² of every layer pair and group R² per target layer."""

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
    rows = table[table["measure"] == measure]
    n_units = int(rows["n_units"].min()) if len(rows) else 0  # mutual kNN: the units its neighbour lists used
    plotting.annotated_heatmap(similarity_matrix(table, measure, models), models, colorbar_label=measure, paths=paths,
                               title=f"{TITLES[measure]}\n({where}; {n_units} units; diagonal: each model with itself, 1)")


def layer_matrix(rows, row_layer: str, column_layer: str, value: str):
    """(values, row layers, column layers) of a layer x layer table: rows[value] at (rows[row_layer],
    rows[column_layer]), both layer lists increasing, nan where the table has no row."""
    row_layers, column_layers = sorted(rows[row_layer].unique()), sorted(rows[column_layer].unique())
    index_r, index_c = {v: k for k, v in enumerate(row_layers)}, {v: k for k, v in enumerate(column_layers)}
    matrix = np.full((len(row_layers), len(column_layers)), np.nan)
    for layer_r, layer_c, number in zip(rows[row_layer], rows[column_layer], rows[value]):
        matrix[index_r[layer_r], index_c[layer_c]] = number
    return matrix, row_layers, column_layers


def sweep_matrix(table, measure: str):
    """(values, layers of model_a, layers of model_b) of one measure of a pair's sweep table: rows model_a's layers,
    columns model_b's, both increasing."""
    return layer_matrix(table[table["measure"] == measure], "layer_a", "layer_b", "value")


def _depth_labels(rows, layer: str, depth: str, layers) -> list[str]:
    """'layer (relative depth)' for each of `layers`, the depths read from rows[depth] beside rows[layer]."""
    depths = dict(zip(rows[layer], rows[depth]))
    return [f"{k} ({depths[k]:.2f})" for k in layers]


def plot_sweep(table, measure: str, paths: Sequence[str], where: str) -> None:
    """The layer x layer heatmap of one measure of one model pair (labels: layer and relative depth)."""
    rows = table[table["measure"] == measure]
    matrix, layers_a, layers_b = sweep_matrix(table, measure)
    a, b = rows["model_a"].iloc[0], rows["model_b"].iloc[0]
    extra = f"; k = {int(rows['kept_a'].iloc[0])}" if measure == "mutual_knn" else ""
    plotting.annotated_heatmap(matrix, _depth_labels(rows, "layer_a", "depth_a", layers_a),
                               column_labels=_depth_labels(rows, "layer_b", "depth_b", layers_b),
                               colorbar_label=measure, paths=paths, xlabel=f"{b} layer (relative depth)",
                               ylabel=f"{a} layer (relative depth)",
                               title=f"{TITLES[measure]}\n(every layer pair; {where}; {int(rows['n_units'].min())} "
                                     f"units{extra})")


def plot_best_layers(best, measure: str, paths: Sequence[str], title: str | None = None) -> None:
    """Per target model (a panel), per basis model (a line): the relative depth of the best-matching basis layer
    against the target layer's relative depth; the diagonal is depth-for-depth correspondence. best: rows of one
    measure (best_layers.csv's, or the R² fits' best layers with `title` naming the setting)."""
    plt = plotting.pyplot()
    rows = best[best["measure"] == measure] if "measure" in best else best
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
    fig.suptitle(title or f"best-matching basis layer per target layer by {TITLES[measure]}")
    fig.tight_layout()
    plotting.save_figure(fig, paths)


def plot_r2_sweep(fits, setting: str, paths: Sequence[str], where: str) -> None:
    """The R² of every layer pair of one model pair by one fit setting: two heatmaps side by side, each model as the
    target (rows: its layers; columns: the other model's layers, the basis), test R²."""
    plt = plotting.pyplot()
    rows = fits[fits["alpha_setting"] == setting]
    panels = {target: (part, *layer_matrix(part, "target_layer", "basis_layer", "r2_test"))
              for target, part in rows.groupby("target", sort=True)}
    sizes = [plotting.heatmap_size(len(layers), len(basis_layers)) for _, _, layers, basis_layers in panels.values()]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(w for w, _ in sizes), max(h for _, h in sizes)),
                             squeeze=False)
    for ax, (target, (part, matrix, layers, basis_layers)) in zip(axes.flat, panels.items()):
        basis = part["basis"].iloc[0]
        plotting.heatmap_on(ax, matrix, _depth_labels(part, "target_layer", "target_depth", layers),
                            _depth_labels(part, "basis_layer", "basis_depth", basis_layers), colorbar_label="test R²",
                            title=f"target {target} <- basis {basis}", xlabel=f"{basis} layer (relative depth)",
                            ylabel=f"{target} layer (relative depth)")
    first = rows.iloc[0]
    fig.suptitle(f"decomposition R² of every layer pair ({setting}; {where}; {int(first['n_train'])} train / "
                 f"{int(first['n_test'])} test units)")
    fig.tight_layout()
    plotting.save_figure(fig, paths)


def plot_group_r2(group, setting: str, paths: Sequence[str]) -> None:
    """Group R² per target layer: a line per target model, its test R² from all other models (each at its layer of
    the nearest relative depth) against the target layer's relative depth."""
    plt = plotting.pyplot()
    rows = group[group["alpha_setting"] == setting]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for index, (target, part) in enumerate(rows.groupby("target", sort=True)):
        colour, marker = plotting.model_style(target, index)
        part = part.sort_values("target_depth")
        ax.plot(part["target_depth"], part["r2_test"], marker=marker, color=colour, label=target)
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set(xlim=(-0.05, 1.05), xlabel="target layer, relative depth", ylabel="group R² (test)",
           title=f"group R² per target layer, basis: every other model at the nearest relative depth\n({setting}; "
                 f"{int(rows['n_train'].min()) if len(rows) else 0} train / "
                 f"{int(rows['n_test'].min()) if len(rows) else 0} test units)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    plotting.save_figure(fig, paths)
