"""The layer ν recommends, checked against the probe, and how far it moves on the robustness subsets."""

import math

import numpy as np

from lmcompare.variability.numbering import authors_last_layer


def select_layers(layers, nu, tolerance: float) -> tuple[int, int]:
    """(argmin layer, recommended layer): the recommended layer is the smallest layer whose ν is within
    `tolerance` (relative) of the minimum. Layers with undefined ν are skipped; (-1, -1) when none is defined."""
    layers = np.asarray(layers)
    nu = np.asarray(nu, dtype=np.float64)
    defined = np.isfinite(nu)
    if not defined.any():
        return -1, -1
    best = float(nu[defined].min())
    argmin = int(layers[defined][np.argmin(nu[defined])])
    within = defined & (nu <= best * (1.0 + tolerance))
    return argmin, int(layers[within].min())


def spearman(x, y) -> tuple[float, float, int]:
    """Spearman rank correlation over the pairs where both are finite: (rho, p-value, n)."""
    from scipy.stats import spearmanr

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan"), float("nan"), n
    result = spearmanr(x[ok], y[ok])
    rho, p_value = float(result.statistic), float(result.pvalue)
    if p_value == 0.0 and len(np.unique(x[ok])) == n and len(np.unique(y[ok])) == n:
        # |rho| = 1: the t approximation gives exactly 0; without ties only the identity and the reversed ordering
        # of n ranks reach |rho| = 1, so the exact two-sided permutation p-value is 2 / n!
        p_value = 2.0 / math.factorial(n)
    return rho, p_value, n


def eligible_nu(frame, max_noise_fraction: float | None):
    """ν per row, NaN where the layer is not eligible for selection: `paper` selection (max_noise_fraction None)
    keeps every defined layer; the `noise_guard` option drops layers whose between-class scatter is more than
    max_noise_fraction expected sampling noise (their ν is biased low, see docs/variability.md)."""
    nu = frame["nu"].to_numpy(dtype=np.float64).copy()
    if max_noise_fraction is not None:
        nu[~(frame["between_noise_fraction"].to_numpy(dtype=np.float64) <= max_noise_fraction)] = np.nan
    return nu


def selection_table(nu_frame, probe_frame, tolerance: float, max_noise_fraction: float | None = None):
    """One row per model: the layers ν recommends, their probe accuracies, and the claim check.

    The Spearman correlation uses every layer with a defined ν, whatever the selection rule."""
    import pandas as pd

    rows = []
    for model, group in nu_frame[nu_frame["subset"] == "full"].groupby("model", sort=False):
        group = group.sort_values("layer")
        argmin, recommended = select_layers(group["layer"], eligible_nu(group, max_noise_fraction), tolerance)
        probes = probe_frame[probe_frame["model"] == model].set_index("layer")["accuracy"]
        acc = group["layer"].map(probes).to_numpy(dtype=np.float64)
        rho, p_value, n_used = spearman(group["nu"], acc)
        nu_by_layer = group.set_index("layer")["nu"]
        best_probe = int(probes.idxmax()) if len(probes) else -1
        last = int(group["layer"].max())
        rows.append({
            "model": model, "n_layers": int(len(group)), "n": int(group["n"].iloc[0]), "dims": int(group["dims"].iloc[0]),
            "argmin_layer": argmin, "argmin_authors_last_layer": authors_last_layer(argmin),
            "nu_min": float(nu_by_layer.get(argmin, np.nan)),
            "recommended_layer": recommended, "recommended_authors_last_layer": authors_last_layer(recommended),
            "nu_recommended": float(nu_by_layer.get(recommended, np.nan)),
            "between_noise_fraction_recommended": float(
                group.set_index("layer")["between_noise_fraction"].get(recommended, np.nan)),
            "tolerance": tolerance,
            "max_noise_fraction": np.nan if max_noise_fraction is None else max_noise_fraction,
            "eligible_layers": int(np.isfinite(eligible_nu(group, max_noise_fraction)).sum()),
            "accuracy_recommended": float(probes.get(recommended, np.nan)),
            "accuracy_argmin": float(probes.get(argmin, np.nan)),
            "best_probe_layer": best_probe, "best_probe_authors_last_layer": authors_last_layer(best_probe),
            "accuracy_best": float(probes.get(best_probe, np.nan)),
            "accuracy_last": float(probes.get(last, np.nan)),
            "spearman_rho": rho, "spearman_p": p_value, "spearman_n_layers": n_used,
            "undefined_layers": int((~np.isfinite(group["nu"].to_numpy(dtype=np.float64))).sum()),
        })
    table = pd.DataFrame(rows)
    for column in ("argmin_authors_last_layer", "recommended_authors_last_layer", "best_probe_authors_last_layer"):
        if column in table:
            table[column] = table[column].astype("Int64")
    return table


def robustness_table(nu_frame, tolerance: float, max_noise_fraction: float | None = None):
    """Per model and subset: ν on the subset vs on the full data, and how far the selected layers move."""
    import pandas as pd

    rows = []
    for model, group in nu_frame.groupby("model", sort=False):
        full = group[group["subset"] == "full"].set_index("layer").sort_index()
        full_argmin, full_rec = select_layers(full.index, eligible_nu(full, max_noise_fraction), tolerance)
        for subset, part in group.groupby("subset", sort=False):
            part = part.set_index("layer").sort_index()
            argmin, rec = select_layers(part.index, eligible_nu(part, max_noise_fraction), tolerance)
            ratio = (part["nu"] / full["nu"].reindex(part.index)).to_numpy(dtype=np.float64)
            log_ratio = np.abs(np.log(ratio[np.isfinite(ratio) & (ratio > 0)]))
            rho, _, _ = spearman(full["nu"].reindex(part.index), part["nu"])
            rows.append({
                "model": model, "subset": subset, "n": int(part["n"].iloc[0]),
                "min_class_n": int(part["min_class_n"].iloc[0]), "max_class_n": int(part["max_class_n"].iloc[0]),
                "argmin_layer": argmin, "recommended_layer": rec,
                "recommended_authors_last_layer": authors_last_layer(rec),
                "argmin_shift": argmin - full_argmin if argmin >= 0 and full_argmin >= 0 else np.nan,
                "recommended_shift": rec - full_rec if rec >= 0 and full_rec >= 0 else np.nan,
                "spearman_vs_full": rho,
                "median_abs_log_ratio": float(np.median(log_ratio)) if log_ratio.size else np.nan,
                "max_abs_log_ratio": float(log_ratio.max()) if log_ratio.size else np.nan,
            })
    table = pd.DataFrame(rows)
    if "recommended_authors_last_layer" in table:
        table["recommended_authors_last_layer"] = table["recommended_authors_last_layer"].astype("Int64")
    return table
