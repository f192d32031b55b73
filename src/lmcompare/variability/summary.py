"""The per-dataset summary of the variability stage: every model's layers (ν beside the probe), the selection,
the robustness table and the figure."""

import logging

from lmcompare import files, plotting
from lmcompare.variability.figures import plot_variability
from lmcompare.variability.numbering import insert_authors_layer
from lmcompare.variability.selection import robustness_table, selection_table

LOG = logging.getLogger("workflow")

# A recommended layer whose between-class scatter is more than this fraction sampling noise is logged as unreliable.
NOISY_FRACTION = 0.5


def run_summary(nu_paths, probe_paths, *, dataset: str, pooling: str, tolerance: float, layers_out, selection_out,
                robustness_out, figure_paths, max_noise_fraction: float | None = None, model_index=None) -> None:
    """layers.csv, selection.csv, robustness.csv and the figure of one (dataset, pooling) from every model's
    nu.csv and probe.csv; `model_index` (model -> index in the configured list) keeps each model's colour."""
    import pandas as pd

    plotting.use_model_order(model_index)
    nu_frame = pd.concat([pd.read_csv(p) for p in nu_paths], ignore_index=True)
    probe_frame = pd.concat([pd.read_csv(p) for p in probe_paths], ignore_index=True)
    selection = selection_table(nu_frame, probe_frame, tolerance, max_noise_fraction)
    robustness = robustness_table(nu_frame, tolerance, max_noise_fraction)
    full = nu_frame[nu_frame["subset"] == "full"].drop(columns=["subset"])
    layers = full.merge(probe_frame[["model", "layer", "n_test", "accuracy", "ci_low", "ci_high", "C"]],
                        on=["model", "layer"], how="left")
    rec = selection.set_index("model")
    layers["is_argmin"] = layers["layer"] == layers["model"].map(rec["argmin_layer"])
    layers["is_recommended"] = layers["layer"] == layers["model"].map(rec["recommended_layer"])
    layers = insert_authors_layer(layers)
    noisy = selection[selection["between_noise_fraction_recommended"] > NOISY_FRACTION]["model"].tolist()
    if noisy:
        LOG.warning("%s: at the recommended layer more than half of the between-class scatter is expected from "
                    "sampling noise alone; ν is biased low there (docs/variability.md): use more examples", noisy)
    for _, row in selection.iterrows():
        LOG.info("%s: argmin layer %d, recommended %d = the authors' --last_layer %s (acc %.4f; best probe layer %d "
                 "acc %.4f); Spearman %.3f", row["model"], row["argmin_layer"], row["recommended_layer"],
                 row["recommended_authors_last_layer"], row["accuracy_recommended"], row["best_probe_layer"],
                 row["accuracy_best"], row["spearman_rho"])
    files.write_table(layers, layers_out)
    files.write_table(selection, selection_out)
    files.write_table(robustness, robustness_out)
    plot_variability(nu_frame, probe_frame, selection, dataset=dataset, pooling=pooling, paths=figure_paths)
