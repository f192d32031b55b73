"""The stage's table: every measure of every unordered model pair, from the decomposition's pair files only.

One row per (model pair, measure): model_a, model_b (canonical order, by name), measure, value, n_units (every unit
of the pair: its fit, validation and test parts merged), dims_a, dims_b (hidden sizes), kept_a, kept_b (the
directions of each side the measure uses: the rank cut's for cca_*/pwcca, the top principal directions for svcca,
all dimensions otherwise), cut (cca_rank_tolerance for the rank-cut measures, svcca_variance for svcca, empty
otherwise), with dataset, unit, layer_a and layer_b (the target layer of each model). mutual_knn (when asked for)
comes from the kNN table of the pair's target layers (knn.py; n_units: the units it used, kept_a = kept_b = k, cut:
the units cap).
"""

import logging
import time
from typing import Sequence

import numpy as np

from lmcompare import files
from lmcompare.decomposition.pair_file import PairMoments
from lmcompare.decomposition.tags import canonical_pair, model_pairs
from lmcompare.errors import WorkflowInputError
from lmcompare.similarity.cca import canonical_correlations, pwcca, spectrum, svcca
from lmcompare.similarity.cka import debiased_cka, linear_cka
from lmcompare.similarity.procrustes import procrustes_similarity
from lmcompare.similarity.statistics import PairStatistics
from lmcompare.similarity.tags import (DEFAULT_CCA_RANK_TOLERANCE, DEFAULT_SVCCA_VARIANCE, KNN_MEASURE, MEASURES,
                                       RANK_CUT_MEASURES, TABLE_MEASURES)

LOG = logging.getLogger("workflow")


def check_measures(measures: Sequence[str], known: Sequence[str] = MEASURES,
                   key: str = "similarity.measures") -> list[str]:
    """The configured measures, each once, in their order; an unknown one or none is an error naming `key`."""
    unknown = [m for m in measures if m not in known]
    if unknown or not measures:
        raise WorkflowInputError(f"{key} {list(measures)}: each must be one of {list(known)} "
                                 f"(and at least one); fix {key} in the config.")
    return list(dict.fromkeys(measures))


def measure_pair(stats: PairStatistics, measures: Sequence[str] = MEASURES,
                 svcca_variance: float = DEFAULT_SVCCA_VARIANCE,
                 rank_tolerance: float = DEFAULT_CCA_RANK_TOLERANCE, spectra=None) -> list[dict]:
    """The measures of one pair: a dict per measure with measure, value, kept_a, kept_b and cut. spectra:
    (spectrum(sxx), spectrum(syy)) when already computed (a layer sweep computes each layer's once)."""
    measures = check_measures(measures)
    dx, dy = stats.dims
    # each side's eigendecomposition, once for the CCA measures and SVCCA
    if spectra is None and set(measures) & {*RANK_CUT_MEASURES, "svcca"}:
        spectra = (spectrum(stats.sxx), spectrum(stats.syy))
    cca = canonical_correlations(stats.sxx, stats.syy, stats.sxy, rank_tolerance, spectra) \
        if set(measures) & set(RANK_CUT_MEASURES) else None
    rows = []
    for measure in measures:
        kept, cut = (dx, dy), float("nan")
        if measure == "cka":
            value = linear_cka(stats.sxx, stats.syy, stats.sxy)
        elif measure == "cka_debiased":
            value = debiased_cka(stats)
        elif measure == "procrustes":
            value = procrustes_similarity(stats.sxx, stats.syy, stats.sxy)
        elif measure == "svcca":
            value, *kept = svcca(stats.sxx, stats.syy, stats.sxy, svcca_variance, rank_tolerance, spectra)
            cut = svcca_variance
        else:  # the rank-cut measures, from one CCA
            if measure == "cca_mean":
                value = float(cca.rho.mean())
            elif measure == "cca_mean_squared":
                value = float(np.mean(cca.rho ** 2))
            else:
                value = pwcca(cca)
            kept, cut = (cca.kept_x, cca.kept_y), rank_tolerance
        rows.append({"measure": measure, "value": value, "kept_a": int(kept[0]), "kept_b": int(kept[1]), "cut": cut})
    return rows


def similarity_table(pair_paths: dict, models: Sequence[str], measures: Sequence[str] = MEASURES,
                     svcca_variance: float = DEFAULT_SVCCA_VARIANCE,
                     rank_tolerance: float = DEFAULT_CCA_RANK_TOLERANCE, knn_paths: dict | None = None):
    """Every measure of every unordered pair of `models` (pair_paths: canonical pair -> its pair file), as a
    DataFrame with the module docstring's columns (but dataset and unit). knn_paths: canonical pair -> the kNN table
    of its target layers (needed when measures hold mutual_knn)."""
    import pandas as pd

    measures = check_measures(measures, TABLE_MEASURES)
    with_knn = KNN_MEASURE in measures
    moment_measures = [m for m in measures if m != KNN_MEASURE]
    models = list(models)
    if len(models) < 2:
        raise WorkflowInputError(f"similarity needs at least two models, got {models}; list two or more in "
                                 f"decomposition.models (null = every configured model).")
    rows = []
    for a, b in model_pairs(models):
        path = pair_paths.get((a, b))
        if path is None:
            raise WorkflowInputError(f"no pair file for models {a!r} and {b!r}; the similarity job needs the "
                                     f"decomposition's pair file of every pair (re-run the workflow).")
        started = time.perf_counter()
        pair = PairMoments.load(path)
        stats = PairStatistics.from_pair(pair, a, b)
        layers = (pair.layers[pair.models.index(a)][0], pair.layers[pair.models.index(b)][0])
        measured = measure_pair(stats, moment_measures, svcca_variance, rank_tolerance) if moment_measures else []
        for row in measured:
            row["n_units"] = stats.n
        if with_knn:
            measured.append(_knn_row((knn_paths or {}).get((a, b)), a, b, layers))
        order = {m: k for k, m in enumerate(measures)}
        measured.sort(key=lambda row: order[row["measure"]])
        rows += [{"model_a": a, "model_b": b, "measure": row["measure"], "value": row["value"], "n_units": row["n_units"],
                  "dims_a": stats.dims[0], "dims_b": stats.dims[1], "layer_a": layers[0], "layer_b": layers[1],
                  "kept_a": row["kept_a"], "kept_b": row["kept_b"], "cut": row["cut"]} for row in measured]
        LOG.info("%s (layer %d, %d dims) ~ %s (layer %d, %d dims) on %d units: %s (%.2f s)", a, layers[0],
                 stats.dims[0], b, layers[1], stats.dims[1], stats.n,
                 ", ".join(f"{row['measure']} {row['value']:.4f}" for row in rows[-len(measured):]),
                 time.perf_counter() - started)
    return pd.DataFrame(rows)


def _knn_row(path, a: str, b: str, layers) -> dict:
    """The mutual kNN of models a, b at their target layers, from the pair's kNN table (one layer pair)."""
    import pandas as pd

    if path is None:
        raise WorkflowInputError(f"similarity.measures lists mutual_knn but no kNN table of {a!r} ~ {b!r} was given "
                                 f"(re-run the workflow).")
    table = pd.read_csv(path)
    match = table[(table["model_a"] == a) & (table["model_b"] == b) & (table["layer_a"] == layers[0])
                  & (table["layer_b"] == layers[1])]
    if len(match) != 1:
        raise WorkflowInputError(f"{path} holds no mutual kNN of {a!r} layer {layers[0]} ~ {b!r} layer {layers[1]}; "
                                 f"delete it and re-run.")
    row = match.iloc[0]
    return {"measure": KNN_MEASURE, "value": float(row["value"]), "n_units": int(row["n_units"]),
            "kept_a": int(row["kept_a"]), "kept_b": int(row["kept_b"]), "cut": float(row["cut"])}


def write_similarity(pairs: Sequence, moment_files: Sequence, models: Sequence[str], measures: Sequence[str], *,
                     svcca_variance: float, rank_tolerance: float, dataset: str, unit: str, layers: str,
                     table_path, figure_paths: dict, knn_files: Sequence = ()) -> None:
    """The similarity rule: the table from the pair files (pairs[i] read from moment_files[i]; with mutual_knn, its
    kNN table from knn_files[i]) and, per measure, its heatmap (figure_paths: measure -> [png, svg])."""
    from lmcompare.similarity.figures import plot_similarity

    started = time.perf_counter()
    pair_paths = {canonical_pair(a, b): path for (a, b), path in zip(pairs, moment_files)}
    knn_paths = {canonical_pair(a, b): path for (a, b), path in zip(pairs, knn_files)}
    table = similarity_table(pair_paths, models, measures, svcca_variance, rank_tolerance, knn_paths)
    table.insert(0, "unit", unit)
    table.insert(0, "dataset", dataset)
    files.write_table(table, table_path)
    LOG.info("%d pair files in, %d rows out (%d pairs x %d measures), %.1f s", len(moment_files), len(table),
             len(moment_files), len(check_measures(measures, TABLE_MEASURES)), time.perf_counter() - started)
    for measure, paths in figure_paths.items():
        plot_similarity(table, measure, models, paths, where=f"{dataset}, unit {unit}, layers {layers}")
