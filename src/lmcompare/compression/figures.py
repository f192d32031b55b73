"""The compression figures of one (dataset, view): accuracy vs PCA k with k*, and the single-dimension
accuracies; pretrained and fine-tuned models of a pair share a panel."""

import numpy as np
import pandas as pd

from lmcompare import plotting


def _pair_panels(models: list[str], pairs):
    """Panels for the figures: one per pair; the models in no pair share one last panel."""
    panels = [(f"{a} vs {b}", [a, b]) for a, b in pairs]
    paired = {m for pair in pairs for m in pair}
    rest = [m for m in models if m not in paired]
    if rest:
        panels.append(("all models" if not pairs else "other models", rest))
    return panels


def _colours(models):
    """model -> its colour (plotting.model_style)."""
    return {model: plotting.model_style(model, i)[0] for i, model in enumerate(models)}


def plot_curves(curves: pd.DataFrame, summary: pd.DataFrame, pairs, *, dataset: str, view: str, paths) -> None:
    """Top row: accuracy vs k (log2 axis), one panel per pretrained/fine-tuned pair, with each k's Wilson 95%
    interval (band), the full-vector accuracy (dashed), k* (star, labelled with the test size it was decided on)
    and the majority-class line. Bottom row: the paired difference accuracy(k) - accuracy(full) on the same test
    examples with its exact (1 - alpha) interval per k (error bars; hollow marker: significantly worse)."""
    plt = plotting.pyplot()
    models = list(summary["model"])
    colours = _colours(models)
    panels = _pair_panels(models, pairs)
    fig, axes = plt.subplots(2, len(panels), figsize=(5.2 * len(panels), 7.4), squeeze=False, sharex="col",
                             sharey="row", gridspec_kw={"height_ratios": [3, 2]})
    by_model = summary.set_index("model")
    alpha = float(summary["alpha"].iloc[0])
    for column, (title, members) in enumerate(panels):
        ax, diff_ax = axes[0][column], axes[1][column]
        for index, model in enumerate(members):
            colour = colours[model]
            rows = curves[(curves["model"] == model) & (curves["kind"] == "pca")].sort_values("k")
            info = by_model.loc[model]
            n_test = int(info["k_star_n_test"])
            best_k = info["k_star"]
            star = f"k*={int(best_k)}" if pd.notna(best_k) else "no k*"
            if not bool(info["full_beats_majority"]):
                star += f"; full not above majority, p={info['full_vs_majority_mcnemar_p']:.2g}"
            ax.fill_between(rows["k"], rows["ci_low"], rows["ci_high"], color=colour, alpha=0.12, linewidth=0)
            ax.plot(rows["k"], rows["accuracy"], marker="o", markersize=4, color=colour,
                    label=f"{model}: full {info['full_accuracy']:.3f}, {star} (n_test={n_test})")
            ax.axhline(info["full_accuracy"], color=colour, linestyle="--", linewidth=1)
            if pd.notna(best_k):
                ax.plot([best_k], [info["k_star_accuracy"]], marker="*", markersize=13, color=colour,
                        markeredgecolor="black", linestyle="none")
                ax.annotate(f"k*={int(best_k)} (n={n_test})", (best_k, info["k_star_accuracy"]),
                            textcoords="offset points", xytext=(6, -12), fontsize=8, color=colour)
            # the paired differences, the models of a panel side by side around each k
            shift = 2.0 ** (0.12 * (index - (len(members) - 1) / 2))
            x = rows["k"].to_numpy(dtype=float) * shift
            diff = rows["accuracy_diff"].to_numpy(dtype=float)
            errors = np.vstack([diff - rows["diff_ci_low"].to_numpy(dtype=float),
                                rows["diff_ci_high"].to_numpy(dtype=float) - diff])
            diff_ax.errorbar(x, diff, yerr=errors, fmt="none", ecolor=colour, elinewidth=1.2, capsize=2)
            worse = rows["worse_than_full"].astype(bool).to_numpy()
            diff_ax.plot(x[~worse], diff[~worse], "o", markersize=5, color=colour, linestyle="none", label=model)
            diff_ax.plot(x[worse], diff[worse], "o", markersize=5, markerfacecolor="white", markeredgecolor=colour,
                         linestyle="none")
        chance = by_model.loc[members[0], "majority_accuracy"]
        ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label=f"majority class ({chance:.3f})")
        ax.set_xscale("log", base=2)
        ax.margins(x=0.1)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        diff_ax.axhline(0.0, color="black", linewidth=0.8)
        diff_ax.set_xlabel("PCA dimensions k (log2 scale)")
        diff_ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (95% Wilson band)")
    axes[1][0].set_ylabel(f"accuracy(k) - accuracy(full),\nsame test examples ({(1 - alpha) * 100:g}% exact)")
    fig.suptitle(f"Probe accuracy vs PCA dimensions - {dataset}, {view}\ndashed: full vector; star: k*, the smallest "
                 f"k not worse than the full vector\n(exact McNemar test on the same test examples, alpha={alpha:g}; "
                 f"hollow: significantly worse)", fontsize=9)
    fig.tight_layout()
    plotting.save_figure(fig, paths)


def plot_single_dims(dims: pd.DataFrame, summary: pd.DataFrame, pairs, *, dataset: str, view: str, paths) -> None:
    """Distribution of single-dimension test accuracies per model (violin + box), pairs side by side, with each
    model's full-vector accuracy (dashed) and the majority-class line (dotted); the train-selected best
    dimension is marked with a star and labelled."""
    plt = plotting.pyplot()
    models = list(summary["model"])
    colours = _colours(models)
    panels = _pair_panels(models, pairs)
    widths = [max(3.2, 1.6 * len(members) + 1.2) for _, members in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths), 4.4), squeeze=False, sharey=True,
                             gridspec_kw={"width_ratios": widths})
    by_model = summary.set_index("model")
    for ax, (title, members) in zip(axes[0], panels):
        data = [dims.loc[dims["model"] == m, "accuracy"].to_numpy() for m in members]
        positions = np.arange(1, len(members) + 1)
        parts = ax.violinplot(data, positions=positions, showextrema=False, widths=0.8)
        for body, model in zip(parts["bodies"], members):
            body.set_facecolor(colours[model])
            body.set_alpha(0.35)
        ax.boxplot(data, positions=positions, widths=0.15, showfliers=False)
        for pos, model in zip(positions, members):
            info = by_model.loc[model]
            ax.hlines(info["full_accuracy"], pos - 0.45, pos + 0.45, colors=[colours[model]], linestyles="--")
            ax.plot([pos], [info["best_dim_accuracy"]], marker="*", markersize=12, color=colours[model],
                    markeredgecolor="black")
            ax.annotate(f"dim {int(info['best_dim'])}: {info['best_dim_accuracy']:.3f}\nfull: "
                        f"{info['full_accuracy']:.3f}", (pos, info["best_dim_accuracy"]), textcoords="offset points",
                        xytext=(8, 4), fontsize=7)
        chance = by_model.loc[members[0], "majority_accuracy"]
        ax.axhline(chance, color="grey", linestyle=":", linewidth=1)
        ax.set_xticks(positions, [f"{m}\n(d={int(by_model.loc[m, 'dims'])})" for m in members], fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy of one dimension alone")
    fig.suptitle(f"Single-dimension probe accuracy - {dataset}, {view}\n(dashed: full vector; star: best dimension "
                 f"chosen on train; dotted: majority class)", fontsize=10)
    fig.tight_layout()
    plotting.save_figure(fig, paths)
