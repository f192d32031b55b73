"""Plotting, one way for every figure: a headless matplotlib (`pyplot()`), atomic saving (`save_figure`), and the
colours every figure shares: the Okabe–Ito palette, told apart with the common colour-vision deficiencies
(tab10's red/green pair is not). Past eight series the colours repeat, and `marker` changes with each round so
that a ninth model is still told from the first. A model keeps its colour across the figures of a run: each is
picked by the model's index in the full configured model list (`use_model_order`, `model_style`)."""

from pathlib import Path
from typing import Sequence

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
POSITIVE = OKABE_ITO[0]  # blue: a positive correlation, a fit, a measured value
NEGATIVE = OKABE_ITO[5]  # vermillion: a negative correlation, a control
MARKERS = ("o", "s", "^", "D", "v")


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (jobs have no display); imported only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, paths: Sequence[str]) -> None:
    """Save a matplotlib figure to each path (png/svg/pdf) atomically, then close it."""
    from lmcompare.files import atomic_path

    plt = pyplot()
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix.lstrip("."), dpi=150, bbox_inches="tight")
    plt.close(fig)


def annotated_heatmap(values, labels: Sequence[str], *, title: str, colorbar_label: str, paths: Sequence[str],
                      xlabel: str | None = None, ylabel: str | None = None,
                      column_labels: Sequence[str] | None = None) -> None:
    """A labels x labels matrix (labels x column_labels when given: the layer sweep's layer x layer maps) as a
    cividis heatmap with each finite value printed in its cell (nan cells left blank), from min(0, smallest value)
    to 1, saved to paths: the pairwise figures of the decomposition and of the similarity measures."""
    plt = pyplot()
    columns = list(labels) if column_labels is None else list(column_labels)
    fig, ax = plt.subplots(figsize=heatmap_size(len(labels), len(columns)))
    heatmap_on(ax, values, labels, columns, title=title, colorbar_label=colorbar_label, xlabel=xlabel, ylabel=ylabel)
    save_figure(fig, paths)


def heatmap_size(n_rows: int, n_columns: int) -> tuple[float, float]:
    """(width, height) in inches of one annotated heatmap of n_rows x n_columns cells, its colour bar included."""
    return max(4.0, 0.7 * n_columns + 2.5) + 1.2, max(4.0, 0.7 * n_rows + 2.5)


def heatmap_on(ax, values, labels: Sequence[str], column_labels: Sequence[str], *, title: str, colorbar_label: str,
               xlabel: str | None = None, ylabel: str | None = None) -> None:
    """annotated_heatmap's drawing on one axis of a figure (for figures of several heatmaps)."""
    import numpy as np

    labels, columns = list(labels), list(column_labels)
    values = np.asarray(values, dtype=float)
    low = min(0.0, float(np.nanmin(values))) if np.isfinite(values).any() else 0.0
    image = ax.imshow(np.ma.masked_invalid(values), cmap="cividis", vmin=low, vmax=1.0)
    for i in range(len(labels)):
        for j in range(len(columns)):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=9,
                        color="black" if image.norm(values[i, j]) > 0.55 else "white")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, label=colorbar_label)


# model -> its index in the run's full configured model list (set by a figure job from its `model_index` param),
# so that a model has one colour and marker in every figure of a run, whichever subset a figure shows.
_MODEL_INDEX: dict = {}


def use_model_order(model_index) -> None:
    """Take each model's index in the configured model list (a dict model -> index, or a list of names)."""
    if not model_index:
        return
    if isinstance(model_index, dict):
        _MODEL_INDEX.update({str(k): int(v) for k, v in model_index.items()})
    else:
        _MODEL_INDEX.update({str(name): index for index, name in enumerate(model_index)})


def model_style(model: str, fallback_index: int) -> tuple[str, str]:
    """(colour, marker) of a model: from its configured index when known, else from its index in the figure."""
    index = _MODEL_INDEX.get(str(model), fallback_index)
    return colour(index), marker(index)


def colour(index: int) -> str:
    """The colour of the index-th series."""
    return OKABE_ITO[index % len(OKABE_ITO)]


def marker(index: int) -> str:
    """The marker of the index-th series: a new one each time the colours start over."""
    return MARKERS[(index // len(OKABE_ITO)) % len(MARKERS)]
