"""The fits: every model as target of a group fit (basis: all other models) and of a pairwise fit (basis: one
other model), with a fixed alpha or the alpha chosen on the validation part of the train split; their tables.

Two alpha choices (each its own output folder, see docs/decomposition.md):
- a number: the fixed ridge penalty (the paper's 1e-6);
- ``validation``: the train split is cut by a seeded hash of example_id into a fit and a valid part (both
  stored in the pair files; train = their exact merge); per fit, the alpha of a grid with the best R² on the
  valid part (fitted on the fit part) is chosen, then the fit is redone on the whole train split and scored on test.
"""

import logging
import time
from typing import Sequence

import numpy as np

from lmcompare import files
from lmcompare.decomposition.joint import JointMoments, split_stats_from_pair
from lmcompare.decomposition.moments import ALL_SPLITS
from lmcompare.decomposition.pair_file import PairMoments
from lmcompare.decomposition.solvers import SplitStats, choose_alpha, fit_ridge, is_underdetermined, r_squared
from lmcompare.decomposition.tags import DEFAULT_ALPHA_GRID, VALIDATION, canonical_pair, model_pairs, parse_alpha
from lmcompare.decomposition.units import SPLITS
from lmcompare.errors import WorkflowInputError

LOG = logging.getLogger("workflow")


def check_units(n_train: int, n_test: int, what: str, min_train: int, min_test: int) -> None:
    if n_train < min_train or n_test < min_test:
        raise WorkflowInputError(
            f"{what}: {n_train} train and {n_test} test units, fewer than the {min_train} train / {min_test} test "
            f"units needed (decomposition.min_train_units / min_test_units). Use a larger dataset (max_examples), "
            f"another unit, or lower the minimum."
        )


def fit_and_score(train: SplitStats, test: SplitStats, alpha: float, mode: str, what: str, log: bool = True):
    """Fit on the whole train split with a fixed alpha, score train and test. log: warn about an underdetermined
    fit here (False: the caller reports the `underdetermined` scores of many fits at once)."""
    fit = fit_ridge(train, alpha, mode, what=what)
    r2_train = r_squared(fit, train, mode)[0]
    r2_test, mse, sst = r_squared(fit, test, mode)
    dims = train.cov_zz.shape[0]
    underdetermined = is_underdetermined(train.n, train.groups, dims)
    if underdetermined and log:
        share = "" if not np.isfinite(train.between_share) else (
            f"; {100 * train.between_share:.0f} % of the target's train variance lies between examples")
        LOG.warning(
            "%s: %d train units from %d independent examples for %d basis dimensions%s: the fit can interpolate the "
            "train examples (train R2 %.3f) and the test R2 (%.3f) mostly measures over-fitting; use more examples "
            "(not only more units per example), fewer basis dimensions, or a larger decomposition.alpha (e.g. "
            "'validation')", what, train.n, train.groups, dims, share, r2_train, r2_test,
        )
    return fit, {"r2_train": r2_train, "r2_test": r2_test, "mse_test": mse, "sst_test": sst, "solver": fit.solver,
                 "underdetermined": underdetermined, "n_train_examples": train.groups,
                 "between_example_share": train.between_share}


def check_validation_split(fit_part: SplitStats, valid_part: SplitStats, what: str, min_train: int, min_valid: int,
                           fraction: float) -> None:
    if fit_part.n < min_train or valid_part.n < min_valid:
        raise WorkflowInputError(
            f"{what}: alpha 'validation' cuts the train split into {fit_part.n} fit and {valid_part.n} validation "
            f"units (decomposition.validation_fraction {fraction}), fewer than the {min_train} fit / {min_valid} "
            f"validation units needed (min_train_units / min_test_units). Use more examples, a validation_fraction "
            f"between 0 and 1 that leaves both parts non-empty, or a fixed alpha."
        )


def scored_fit(stats: dict, alpha, grid, mode: str, what: str, min_train: int, min_test: int, fraction: float,
               log: bool = True, basis=None):
    """Scores of one fit (group target or pair) with a fixed alpha or the validation choice. log: log the
    validation path and warn here (False: for the layer sweep's many fits, which report in aggregate). basis: the
    basis's solvers.BasisPath of the fit and valid parts, when already computed (shared by the fits of one basis)."""
    check_units(stats["train"].n, stats["test"].n, what, min_train, min_test)
    extra = {"alpha_choice": "fixed", "r2_valid": float("nan"), "n_valid": 0}
    if alpha == VALIDATION:
        check_validation_split(stats["fit"], stats["valid"], what, min_train, min_test, fraction)
        started = time.perf_counter()
        alpha, r2_valid, scores = choose_alpha(stats["fit"], stats["valid"], grid, mode, what, basis)
        if log:
            LOG.info("%s: validation R2 per alpha %s -> alpha %g (validation R2 %.4f; %d fit / %d validation units, "
                     "%.1f s)", what, ", ".join(f"{a:g}: {r:.4f}" for a, r in zip(grid, scores)), alpha, r2_valid,
                     stats["fit"].n, stats["valid"].n, time.perf_counter() - started)
        if log and alpha in (min(grid), max(grid)) and len(grid) > 1:
            LOG.warning("%s: the chosen alpha %g is at the edge of decomposition.alpha_grid; widen the grid.", what, alpha)
        extra = {"alpha_choice": VALIDATION, "r2_valid": r2_valid, "n_valid": stats["valid"].n}
    _, scores = fit_and_score(stats["train"], stats["test"], alpha, mode, what, log)
    return {"alpha": alpha, **extra, **scores}


def decompose(pair_paths: dict, models: Sequence[str], alpha, mode: str = "paper",
              min_train: int = 2, min_test: int = 2, alpha_grid: Sequence[float] = DEFAULT_ALPHA_GRID,
              hidden_files: dict | None = None):
    """Group and pairwise R² of every model as target. Returns (group rows, pairwise rows) as lists of dicts.

    alpha: a number (fixed ridge penalty, the paper's 1e-6) or 'validation' (per fit, the alpha of `alpha_grid`
    with the best R² on the validation part of the train split when fitted on the fit part; then refitted on the
    whole train split with it and scored on the test split).
    hidden_files: model -> its hidden-state file; when the pairs aligned different units, the group fits' joint
    moments are computed from them on the units every model has (JointMoments).
    """
    models = list(models)
    alpha = parse_alpha(alpha)
    grid = [float(a) for a in alpha_grid] if alpha == VALIDATION else []
    if alpha == VALIDATION and not grid:
        choose_alpha(None, None, grid, mode, "decomposition")  # raises the empty-grid message
    if len(models) < 2:
        raise WorkflowInputError(
            f"decomposition needs at least two models, got {models}; list two or more in decomposition.models "
            f"(empty = every configured model)."
        )
    splits = ALL_SPLITS if alpha == VALIDATION else SPLITS
    joint = JointMoments(pair_paths, models, splits, hidden_files)
    pair_n = {split: sorted(set(joint.pair_n[split].values())) for split in ("train", "test")}
    fraction = next(iter(joint.validation))[0]
    if joint.covariance == "common_units":
        LOG.info("model pairs aligned different numbers of units (train %s, test %s): the group fits use the %d train "
                 "/ %d test units every model has; the pairwise fits use their own pair's units",
                 pair_n["train"], pair_n["test"], min(joint.n["train"].values()),
                 min(joint.n["test"].values()))
    elif joint.covariance == "pairwise_complete":
        LOG.warning(
            "model pairs aligned different numbers of units (train %s, test %s) and no hidden-state files were given: "
            "group fits use the pairwise-complete estimate of the joint covariance, which need not be a covariance "
            "matrix (see docs/decomposition.md)", pair_n["train"], pair_n["test"],
        )
    group_rows = []
    for target in models:
        basis = [m for m in models if m != target]
        started = time.perf_counter()
        stats = {split: joint.group_stats(target, basis, split) for split in splits}
        train, test = stats["train"], stats["test"]
        scores = scored_fit(stats, alpha, grid, mode, f"target {target!r}, basis {basis}", min_train, min_test, fraction)
        group_rows.append({
            "model": target, "layer": joint.layers[target][0], "basis_models": ";".join(basis),
            "basis_layers": ";".join(str(joint.layers[m][-1]) for m in basis),
            "n_train": train.n, "n_test": test.n, "dims": joint.dims[target], "basis_dims": int(train.cov_zz.shape[0]),
            "alpha": scores["alpha"], "mode": mode, **scores, "units_consistent": joint.consistent,
            "joint_covariance": joint.covariance,
        })
        LOG.info("group    %-20s <- %d models (%d dims): alpha %g, R2 train %.4f test %.4f (n %d/%d, %s, %.1f s)",
                 target, len(basis), train.cov_zz.shape[0], scores["alpha"], scores["r2_train"], scores["r2_test"],
                 train.n, test.n, scores["solver"], time.perf_counter() - started)
    del joint
    # Pairwise fits use the exact statistics of their own pair file, read one at a time.
    pair_rows = {}
    for pair_name in model_pairs(models):
        pair = PairMoments.load(pair_paths.get(pair_name) or pair_paths[pair_name[::-1]])
        for target, other in (pair_name, pair_name[::-1]):
            stats = {split: split_stats_from_pair(pair, target, other, split) for split in splits}
            train, test = stats["train"], stats["test"]
            scores = scored_fit(stats, alpha, grid, mode, f"target {target!r}, basis {other!r}", min_train, min_test,
                                 fraction)
            pair_rows[(target, other)] = {
                "model": target, "basis_model": other, "layer": pair.layers[pair.models.index(target)][0],
                "basis_layer": pair.layers[pair.models.index(other)][-1], "n_train": train.n, "n_test": test.n,
                "dims": pair.dims[pair.models.index(target)], "basis_dims": pair.dims[pair.models.index(other)],
                "alpha": scores["alpha"], "mode": mode, **scores,
            }
            LOG.info("pairwise %-20s <- %-20s: alpha %g, R2 train %.4f test %.4f (n %d/%d, %s)", target, other,
                     scores["alpha"], scores["r2_train"], scores["r2_test"], train.n, test.n, scores["solver"])
    ordered = [pair_rows[(t, o)] for t in models for o in models if o != t]
    return group_rows, ordered


def pairwise_matrix(pair_rows: list, models: Sequence[str], column: str = "r2_test"):
    """Rows: target model; columns: basis model; diagonal empty."""
    import pandas as pd

    frame = pd.DataFrame(pair_rows)
    matrix = frame.pivot(index="model", columns="basis_model", values=column).reindex(index=list(models), columns=list(models))
    matrix.index.name = "model"
    matrix.columns.name = None
    return matrix


def write_fit_tables(pairs: Sequence, moment_files: Sequence, models: Sequence[str], alpha, mode: str, *,
                     alpha_grid: Sequence[float] | None, min_train: int, min_test: int, dataset: str, unit: str,
                     group_path, pairwise_path, matrix_path, hidden_files: Sequence | None = None) -> None:
    """The fit rule: group and pairwise fits from the pair files (pairs[i] read from moment_files[i]), written as
    the group, pairwise and pairwise-matrix tables. alpha: a number or 'validation' (then over alpha_grid).
    hidden_files[i]: the hidden-state file of models[i] (read only when the pairs aligned different units)."""
    import pandas as pd

    models = list(models)
    pair_paths = {canonical_pair(a, b): path for (a, b), path in zip(pairs, moment_files)}
    grid = alpha_grid if alpha == VALIDATION else ()
    hidden = dict(zip(models, hidden_files)) if hidden_files is not None else None
    group_rows, pair_rows = decompose(pair_paths, models, alpha, mode, min_train, min_test, grid, hidden)
    extra = {"dataset": dataset, "unit": unit}
    group = pd.DataFrame([{**extra, **row} for row in group_rows])
    pairwise = pd.DataFrame([{**extra, **row} for row in pair_rows])
    files.write_table(group, group_path)
    files.write_table(pairwise, pairwise_path)
    files.write_table(pairwise_matrix(pair_rows, models).reset_index(), matrix_path)
    LOG.info("mean group R2 (test) over %d models: %.4f", len(models), group["r2_test"].mean())
