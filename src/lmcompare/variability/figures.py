"""The variability figure: ν and probe accuracy by layer, the recommended layer starred."""

import numpy as np

from lmcompare import plotting


def plot_variability(nu_frame, probe_frame, selection, *, dataset: str, pooling: str, paths) -> None:
    """ν (log scale, top) and probe accuracy (bottom) by layer for every model; the recommended layer starred."""
    plt = plotting.pyplot()
    import matplotlib.ticker

    full = nu_frame[nu_frame["subset"] == "full"]
    models = list(dict.fromkeys(full["model"]))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for index, model in enumerate(models):
        colour, marker = plotting.model_style(model, index)
        curve = full[full["model"] == model].sort_values("layer")
        probes = probe_frame[probe_frame["model"] == model].sort_values("layer")
        pick = selection[selection["model"] == model].iloc[0]
        label = f"{model} (Spearman ρ(ν, accuracy) = {pick['spearman_rho']:.2f})"
        bottom.plot(probes["layer"], probes["accuracy"], marker=marker, ms=3, color=colour, label=model)
        bottom.fill_between(probes["layer"], probes["ci_low"], probes["ci_high"], color=colour, alpha=0.15, lw=0)
        undefined = curve[~np.isfinite(curve["nu"].to_numpy(dtype=np.float64))]["layer"].tolist()
        if undefined:
            label += f"; ν undefined at layer {', '.join(map(str, undefined))}"
        top.plot(curve["layer"], curve["nu"], marker=marker, ms=3, color=colour, label=label)
        rec = int(pick["recommended_layer"])
        if rec >= 0:
            top.plot([rec], [pick["nu_recommended"]], marker="*", ms=14, color=colour, mec="black", ls="none")
            acc = probes.set_index("layer")["accuracy"].get(rec, np.nan)
            bottom.plot([rec], [acc], marker="*", ms=14, color=colour, mec="black", ls="none")
    top.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    top.yaxis.set_major_formatter(plain)
    low, high = top.get_ylim()
    # label the minor ticks only when the curves span less than a decade (otherwise they crowd)
    top.yaxis.set_minor_formatter(plain if high / low < 10 else matplotlib.ticker.NullFormatter())
    top.tick_params(axis="y", which="minor", labelsize=7)
    # two-line labels aligned on one x: the long single-line ones ran into each other across the two panels
    top.set_ylabel("variability ν\n(log scale, lower = more specialised)")
    rule = f"tolerance {float(selection['tolerance'].iloc[0]):g}"
    guard = float(selection["max_noise_fraction"].iloc[0])
    if np.isfinite(guard):
        rule += f", noise guard {guard:g}"
    top.set_title(f"Hidden-state variability and probe accuracy by layer\n{dataset}, {pooling} pooling; "
                  f"★ = recommended layer ({rule})")
    # legends beside the panels (outside the axes): long model names neither cover curves nor labels
    top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    top.grid(alpha=0.3)
    bottom.set_ylabel("linear-probe test\naccuracy (95% CI)")
    bottom.set_xlabel("layer (ours: 0 = embedding output; the authors' --last_layer = layer − 1)")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    bottom.xaxis.get_major_locator().set_params(integer=True)
    fig.align_ylabels([top, bottom])
    plotting.save_figure(fig, paths)
