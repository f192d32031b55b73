"""The two-tower figures: loss curves, the preference distribution against the shuffled control, split halves.

`draw_figures` is what rule twotower_figures does, from the tables of twotower_preference and the last step's
measurements.
"""

import numpy as np
import pandas as pd

from lmcompare import plotting
from lmcompare.twotower.preference import final_step_controls


def plot_loss(history: pd.DataFrame, title: str):
    """Test-split loss (and the mean train loss since the last evaluation) against the step, per seed."""
    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (seed, part) in enumerate(history.groupby("seed")):
        part = part.sort_values("step")
        ax.plot(part["step"], part["test_loss"], "-o", ms=3, color=plotting.colour(i),
                label=f"seed {seed} test split")
        train = part[part["step"] > 0]
        ax.plot(train["step"], train["train_loss"], "--", color=plotting.colour(i), alpha=0.7,
                label=f"seed {seed} train (mean since last eval)")
    ax.set_xlabel("training step")
    ax.set_ylabel("next-token cross-entropy (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_distribution(types: pd.DataFrame, controls: dict, title: str):
    """Histogram of the per-type preference per seed, over the pooled shuffled-assignment controls
    (`controls`: seed -> one shuffled preference vector)."""
    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    values = [types["preference"].to_numpy()] + [c for c in controls.values() if len(c)]
    edges = np.histogram_bin_edges(np.concatenate(values) if values else [0, 1], bins=40)
    for i, (seed, part) in enumerate(types.groupby("seed")):
        ax.hist(part["preference"], bins=edges, histtype="step", lw=1.8, color=plotting.colour(i),
                label=f"seed {seed} (n={len(part)} types)")
    pooled = [c for c in controls.values() if len(c)]
    if pooled:  # one shuffled assignment per seed, pooled and scaled to one seed's number of types
        values = np.concatenate(pooled)
        ax.hist(values, bins=edges, weights=np.full(len(values), 1.0 / len(pooled)), histtype="stepfilled",
                alpha=0.3, color="0.4", label="shuffled-assignment control (mean over seeds)")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("preference = mean log p(tower a head) − mean log p(tower b head)  (nats)")
    ax.set_ylabel("number of token types")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def plot_split_half(types: pd.DataFrame, consistency: pd.DataFrame, title: str):
    """Per seed: the preference in held-out half 1 against half 2, titled with the split-half Pearson row of
    `consistency`."""
    plt = plotting.pyplot()
    seeds = sorted(types["seed"].unique())
    fig, axes = plt.subplots(1, len(seeds), figsize=(4.4 * len(seeds), 4.6), squeeze=False, constrained_layout=True)
    for i, (ax, seed) in enumerate(zip(axes[0], seeds)):
        part = types[(types["seed"] == seed) & types["in_split_half"].astype(bool)]
        ax.scatter(part["preference_half1"], part["preference_half2"], s=8, alpha=0.6, color=plotting.colour(i))
        lim = np.nanmax(np.abs(part[["preference_half1", "preference_half2"]].to_numpy())) if len(part) else 1.0
        lim = float(lim) * 1.05 if np.isfinite(lim) and lim > 0 else 1.0
        ax.plot([-lim, lim], [-lim, lim], color="0.5", lw=0.8, ls="--")
        ax.axhline(0, color="0.7", lw=0.6)
        ax.axvline(0, color="0.7", lw=0.6)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        row = consistency[(consistency["comparison"] == "split_half") & (consistency["seed"] == seed)
                          & (consistency["measure"] == "pearson")]
        if len(row):
            row = row.iloc[0]
            ax.set_title(f"seed {seed}: Pearson r = {row['value']:.2f}, {int(row['n_types'])} types\n"
                         f"control 95% quantile {row['null_q95']:.2f}, p = {row['p_value']:.3g}", fontsize=9)
        ax.set_xlabel("preference, held-out half 1 (nats)")
        ax.set_ylabel("preference, held-out half 2 (nats)")
    fig.suptitle(title)
    return fig


def draw_figures(history_path, preference_path, consistency_path, logprob_paths, *, model: str, dataset: str,
                 min_count: int, control_seed: int, loss_paths, distribution_paths, split_half_paths) -> None:
    """Rule twotower_figures: the three figures of the last measured step of each seed, each saved to its paths
    (png, svg)."""
    history = pd.read_csv(history_path)
    types = pd.read_csv(preference_path)
    consistency = pd.read_csv(consistency_path)
    final = types[types["step"] == types.groupby("seed")["step"].transform("max")]
    controls = final_step_controls(logprob_paths, final, min_count=min_count, control_seed=control_seed)
    label = f"two-tower LM on {dataset} ({model} tokenizer)"
    plotting.save_figure(plot_loss(history, f"{label}: loss"), loss_paths)
    plotting.save_figure(plot_distribution(final, controls, f"{label}: per-type preference"), distribution_paths)
    plotting.save_figure(plot_split_half(final, consistency[consistency["step"].isin(final["step"].unique())],
                                         f"{label}: split-half agreement of the preference"), split_half_paths)
