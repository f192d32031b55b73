"""The per-dataset join of one view: every model's summary in one table, the (pretrained, fine-tuned) pairs table
and the two figures."""

import logging

import pandas as pd

from lmcompare import files, plotting
from lmcompare.compression.figures import plot_curves, plot_single_dims
from lmcompare.compression.pairs import pairs_table
from lmcompare.models.loading import read_provenance

LOG = logging.getLogger("workflow")


def run_dataset(summaries, curves, dims, finetuned, *, dataset: str, view: str, pairs, summary_out, pairs_out,
                curve_figure, dims_figure, model_index=None) -> None:
    """summary.csv, pairs.csv and the figures of one (dataset, view) from the models' summary, pca_curve and
    single_dims tables; `finetuned`: the fine-tuned model folders (their provenance); `model_index` (model ->
    index in the configured list) keeps each model's colour; curve_figure, dims_figure: the paths of each figure."""
    plotting.use_model_order(model_index)
    summary = pd.concat([pd.read_csv(p) for p in summaries], ignore_index=True)
    curves = pd.concat([pd.read_csv(p) for p in curves], ignore_index=True)
    dims = pd.concat([pd.read_csv(p) for p in dims], ignore_index=True)
    pairs = [tuple(pair) for pair in pairs]
    provenance = {}
    for folder in finetuned:
        record = read_provenance(folder)
        provenance[record.get("name", folder.rstrip("/").split("/")[-1])] = record
    LOG.info("%s / %s: %d models, pairs %s", dataset, view, len(summary), pairs)
    files.write_table(summary, summary_out)
    files.write_table(pairs_table(summary, pairs, provenance), pairs_out)
    plot_curves(curves, summary, pairs, dataset=dataset, view=view, paths=curve_figure)
    plot_single_dims(dims, summary, pairs, dataset=dataset, view=view, paths=dims_figure)
