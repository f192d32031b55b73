r"""The decomposition's R² across depth, from the layer sweep's files (docs/similarity.md, "R² of every layer pair"):

- **pairwise, every layer pair**: for each swept layer l of one model (the target) and each swept layer m of the
  other (the basis), the decomposition's ridge fit of layer l from layer m, in both directions, fitted on the train
  split and scored on the test split exactly as decomposition.fit.scored_fit does (same modes, alpha choices,
  validation cut and minimum units);
- **group, every target layer**: each swept layer l of each model from every other model together, each basis model
  at its swept layer of the nearest relative depth (matched_layer), the joint basis covariance assembled block by
  block from the pair files as decomposition.joint.JointMoments assembles it (a model's own block and mean from the
  first pair, in canonical order, that holds it).

The sweep files hold, per stored split part (fit, valid, test), the co-moments of every layer of one model with its
own layer and with every layer of the other model; a split's statistics of any block are the parts merged exactly
(merged_block: n = sum n_k, mean = sum n_k mean_k / n, C = sum C_k + sum n_k (mean_k,p - mean_p)(mean_k,q - mean_q)^T;
train = fit + valid). Nothing here reads the hidden states; the files are memory-mapped and read block by block.
"""

import logging
import time
from typing import Sequence

import numpy as np

from lmcompare.decomposition.fit import scored_fit
from lmcompare.decomposition.solvers import SplitStats, basis_path
from lmcompare.decomposition.tags import VALIDATION, alpha_tag, canonical_pair, parse_alpha
from lmcompare.errors import WorkflowInputError
from lmcompare.similarity.sweep import SweepFile

LOG = logging.getLogger("workflow")

SPLIT_PARTS = {"fit": ("fit",), "valid": ("valid",), "train": ("fit", "valid"), "test": ("test",)}
FIXED_SPLITS, VALIDATION_SPLITS = ("train", "test"), ("fit", "valid", "train", "test")

PAIR_COLUMNS = ("target", "basis", "target_layer", "basis_layer", "target_depth", "basis_depth", "n_layers_target",
                "n_layers_basis", "mode", "alpha_setting", "alpha", "alpha_choice", "r2_train", "r2_valid", "r2_test",
                "n_train", "n_valid", "n_test", "dims", "basis_dims", "solver", "underdetermined")
GROUP_COLUMNS = ("target", "target_layer", "target_depth", "n_layers_target", "basis_models", "basis_layers",
                 "basis_depths", "mode", "alpha_setting", "alpha", "alpha_choice", "r2_train", "r2_valid", "r2_test",
                 "n_train", "n_valid", "n_test", "dims", "basis_dims", "solver", "underdetermined", "joint_covariance")


def _part_block(part, p, q) -> np.ndarray:
    """Co-moment block of pieces p, q ((side, swept-layer index); side 0: the file's first model) of one part."""
    (side_p, k_p), (side_q, k_q) = p, q
    dx, dy = part.dims
    if side_p == side_q:
        if k_p != k_q:
            raise ValueError("a sweep file keeps no co-moment between two layers of the same model")
        return np.asarray(part.own_x[k_p] if side_p == 0 else part.own_y[k_p])
    if side_p == 0:
        return np.asarray(part.cross[k_p * dx:(k_p + 1) * dx, k_q * dy:(k_q + 1) * dy])
    return np.asarray(part.cross[k_q * dx:(k_q + 1) * dx, k_p * dy:(k_p + 1) * dy]).T


def _part_mean(part, piece) -> np.ndarray:
    side, k = piece
    (dx, dy), (lx, _) = part.dims, part.counts
    start = k * dx if side == 0 else lx * dx + k * dy
    return np.asarray(part.mean[start:start + (dx if side == 0 else dy)], dtype=np.float64)


def _split_parts(sweep: SweepFile, split: str) -> list:
    """The non-empty parts a split (fit, valid, train, test) is made of."""
    return [sweep.parts[name] for name in SPLIT_PARTS[split] if sweep.parts[name].n]


def merged_mean(sweep: SweepFile, split: str, piece) -> np.ndarray:
    """The mean of one piece ((side, swept-layer index)) on a split of one sweep file: its parts' means weighted by
    their units."""
    parts = _split_parts(sweep, split)
    if not parts:
        return np.zeros(sweep.parts["fit"].dims[piece[0]])
    return sum(part.n * _part_mean(part, piece) for part in parts) / sum(part.n for part in parts)


def merged_block(sweep: SweepFile, split: str, p, q) -> tuple[int, int, np.ndarray]:
    """(n, examples, co-moment block C_pq) of a split (fit, valid, train, test) of one sweep file: its parts merged
    exactly (module docstring)."""
    parts = _split_parts(sweep, split)
    if not parts:
        dp, dq = (sweep.parts["fit"].dims[side] for side in (p[0], q[0]))
        return 0, 0, np.zeros((dp, dq))
    block = sum(_part_block(part, p, q) for part in parts)
    if len(parts) > 1:
        mean_p, mean_q = merged_mean(sweep, split, p), merged_mean(sweep, split, q)
        for part in parts:
            block = block + part.n * np.outer(_part_mean(part, p) - mean_p, _part_mean(part, q) - mean_q)
    return sum(part.n for part in parts), sum(part.groups for part in parts), block


class SweepLookup:
    """Blocks of any (model, layer) with any other, from a set of sweep files (one per model pair): a model's own
    block and mean from its home file (the first pair in canonical order that holds it), a block of two models from
    their pair's file; each divided by its own file's units (the population covariance of that pair's units)."""

    def __init__(self, sweeps: dict):
        self.sweeps = {canonical_pair(*pair): sweep for pair, sweep in sweeps.items()}
        self.home = {}
        for pair in sorted(self.sweeps):
            for model in pair:
                self.home.setdefault(model, pair)
        self.layers = {}
        self.n_layers = {}
        for pair, sweep in sorted(self.sweeps.items()):
            for side, model in enumerate(sweep.models):
                if self.layers.setdefault(model, sweep.layers[side]) != sweep.layers[side]:
                    raise WorkflowInputError(f"model {model!r} was swept over different layers in different sweep files "
                                             f"({self.layers[model]} and {sweep.layers[side]}); delete the sweep files "
                                             f"and re-run.")
                self.n_layers[model] = sweep.n_layers[side]

    def _piece(self, pair, model, layer):
        sweep = self.sweeps[pair]
        side = sweep.models.index(model)
        return sweep, (side, sweep.layers[side].index(layer))

    def block(self, split: str, p, q) -> tuple[int, int, np.ndarray]:
        """(n, examples, covariance block) of (model, layer) pieces p and q on a split."""
        (model_p, layer_p), (model_q, layer_q) = p, q
        pair = self.home[model_p] if model_p == model_q else canonical_pair(model_p, model_q)
        if model_p == model_q and layer_p != layer_q:
            raise ValueError("a sweep file keeps no co-moment between two layers of the same model")
        sweep, piece_p = self._piece(pair, model_p, layer_p)
        _, piece_q = self._piece(pair, model_q, layer_q)
        n, groups, block = merged_block(sweep, split, piece_p, piece_q)
        return n, groups, block / n if n else np.full(block.shape, np.nan)

    def mean(self, split: str, piece) -> np.ndarray:
        model, layer = piece
        sweep, side_piece = self._piece(self.home[model], model, layer)
        return merged_mean(sweep, split, side_piece)

    def split_stats(self, split: str, target, basis: Sequence) -> tuple[SplitStats, bool]:
        """SplitStats of the target piece from the basis pieces on a split, and whether every block came from the
        same units (False: the pairwise-complete estimate, as decomposition.joint's)."""
        n_uu, g_uu, cov_uu = self.block(split, target, target)
        cross = [self.block(split, target, z) for z in basis]
        rows = [[self.block(split, z, w) if j >= i else None for j, w in enumerate(basis)] for i, z in enumerate(basis)]
        counts = {n_uu, *(c[0] for c in cross), *(cell[0] for row in rows for cell in row if cell is not None)}
        groups = min([g_uu, *(c[1] for c in cross)])
        cov_zz = np.block([[rows[i][j][2] if j >= i else rows[j][i][2].T for j in range(len(basis))]
                           for i in range(len(basis))])
        stats = SplitStats(min(counts), self.mean(split, target), np.concatenate([self.mean(split, z) for z in basis]),
                           float(np.trace(cov_uu)), np.hstack([c[2] for c in cross]), cov_zz, groups)
        return stats, len(counts) == 1


def matched_layer(layers: Sequence[int], n_layers: int, depth: float) -> int:
    """The layer of `layers` (of a model with n_layers hidden-state layers) whose relative depth l / (n_layers - 1)
    is nearest to `depth`; on a tie the deeper one."""
    scale = max(n_layers - 1, 1)
    return min(layers, key=lambda layer: (abs(layer / scale - depth), -layer))


def fit_settings(modes: Sequence[str], alphas: Sequence) -> list[tuple[str, object]]:
    """(mode, alpha) of every fit: each decomposition mode with each alpha choice (a number or 'validation')."""
    return [(mode, parse_alpha(alpha)) for mode in modes for alpha in alphas]


def setting_tag(mode: str, alpha) -> str:
    """Name of a (mode, alpha) setting in file names and the tables' alpha_setting column: e.g. paper_alpha-1e-06."""
    return f"{mode}_{alpha_tag(alpha)}"


def _score(lookup: SweepLookup, target, basis, mode, alpha, grid, limits, fraction, what, paths=None):
    """Statistics and scores of one fit; paths: a dict caching the BasisPath of each basis (one eigendecomposition
    per basis layer, shared by the target layers fitted from it)."""
    splits = VALIDATION_SPLITS if alpha == VALIDATION else FIXED_SPLITS
    stats, consistent = {}, True
    for split in splits:
        stats[split], same = lookup.split_stats(split, target, basis)
        consistent &= same
    path = None
    if alpha == VALIDATION and paths is not None and stats["fit"].n >= 2:
        key = (mode, tuple(basis))
        if key not in paths:
            paths[key] = basis_path(stats["fit"], stats["valid"], mode)
        path = paths[key]
    scores = scored_fit(stats, alpha, grid, mode, what, *limits, fraction, log=False, basis=path)
    return stats, scores, consistent


def _row_scores(stats, scores, mode, alpha) -> dict:
    return {"mode": mode, "alpha_setting": setting_tag(mode, alpha), "alpha": scores["alpha"],
            "alpha_choice": scores["alpha_choice"], "r2_train": scores["r2_train"], "r2_valid": scores["r2_valid"],
            "r2_test": scores["r2_test"], "n_train": stats["train"].n, "n_valid": scores["n_valid"],
            "n_test": stats["test"].n, "dims": int(stats["train"].cov_uz.shape[0]),
            "basis_dims": int(stats["train"].cov_zz.shape[0]), "solver": scores["solver"],
            "underdetermined": bool(scores["underdetermined"])}


def _report_underdetermined(frame, what: str) -> None:
    bad = int(frame["underdetermined"].sum()) if len(frame) else 0
    if bad:
        LOG.warning("%s: %d of %d fits have no more train units or examples than basis dimensions (underdetermined): "
                    "their test R² mostly measures over-fitting; use more examples, fewer swept dimensions, or "
                    "decomposition.alpha 'validation'", what, bad, len(frame))


def pair_layer_fits(sweep: SweepFile, settings: Sequence, alpha_grid: Sequence[float], min_train: int, min_test: int):
    """The R² of every swept layer of each model of a sweep file from every swept layer of the other, for every
    (mode, alpha) setting: a DataFrame with PAIR_COLUMNS (both directions; rows ordered by setting, target, layers)."""
    import pandas as pd

    lookup = SweepLookup({tuple(sorted(sweep.models)): sweep})
    grid = [float(a) for a in alpha_grid]
    rows = []
    for mode, alpha in settings:
        for side in (0, 1):
            target, basis = sweep.models[side], sweep.models[1 - side]
            for basis_layer in sweep.layers[1 - side]:
                paths = {}  # the basis layer's eigendecomposition, shared by every target layer
                for layer in sweep.layers[side]:
                    what = f"target {target!r} layer {layer}, basis {basis!r} layer {basis_layer}"
                    stats, scores, _ = _score(lookup, (target, layer), [(basis, basis_layer)], mode, alpha, grid,
                                              (min_train, min_test), sweep.validation[0], what, paths)
                    rows.append({"target": target, "basis": basis, "target_layer": layer, "basis_layer": basis_layer,
                                 "target_depth": sweep.depth(side, layer),
                                 "basis_depth": sweep.depth(1 - side, basis_layer),
                                 "n_layers_target": sweep.n_layers[side], "n_layers_basis": sweep.n_layers[1 - side],
                                 **_row_scores(stats, scores, mode, alpha)})
    order = {setting_tag(mode, alpha): k for k, (mode, alpha) in enumerate(settings)}
    frame = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    frame = frame.sort_values(["alpha_setting", "target", "target_layer", "basis_layer"], kind="stable",
                              key=lambda c: c.map(order) if c.name == "alpha_setting" else c).reset_index(drop=True)
    _report_underdetermined(frame, f"{sweep.models[0]} ~ {sweep.models[1]}")
    return frame


def group_layer_fits(sweeps: dict, models: Sequence[str], settings: Sequence, alpha_grid: Sequence[float],
                     min_train: int, min_test: int):
    """The group R² of every swept layer of every model from all the other models, each at its swept layer of the
    nearest relative depth (matched_layer), for every (mode, alpha) setting: a DataFrame with GROUP_COLUMNS.
    sweeps: (model_a, model_b) -> SweepFile (lazy) of every pair of `models`."""
    import pandas as pd

    lookup = SweepLookup(sweeps)
    missing = [m for m in models if m not in lookup.layers]
    if missing or len(models) < 2:
        raise WorkflowInputError(f"the group R² per layer needs the sweep files of every pair of {list(models)}; "
                                 f"{missing or 'fewer than two models'} missing; re-run the workflow.")
    grid = [float(a) for a in alpha_grid]
    rows = []
    for mode, alpha in settings:
        for target in models:
            others = [m for m in models if m != target]
            n_layers = lookup.n_layers
            for layer in lookup.layers[target]:
                depth = layer / max(n_layers[target] - 1, 1)
                basis = [(m, matched_layer(lookup.layers[m], n_layers[m], depth)) for m in others]
                what = f"target {target!r} layer {layer}, basis {basis}"
                started = time.perf_counter()
                stats, scores, consistent = _score(lookup, (target, layer), basis, mode, alpha, grid,
                                                   (min_train, min_test), next(iter(sweeps.values())).validation[0],
                                                   what)
                rows.append({"target": target, "target_layer": layer, "target_depth": depth,
                             "n_layers_target": n_layers[target], "basis_models": ";".join(m for m, _ in basis),
                             "basis_layers": ";".join(str(k) for _, k in basis),
                             "basis_depths": ";".join(f"{k / max(n_layers[m] - 1, 1):.4f}" for m, k in basis),
                             **_row_scores(stats, scores, mode, alpha),
                             "joint_covariance": "from_pairs" if consistent else "pairwise_complete"})
                LOG.info("group %s (%s): %s layer %d (depth %.2f) <- %s: alpha %g, R2 train %.4f test %.4f (n %d/%d, "
                         "%.1f s)", mode, alpha_tag(alpha), target, layer, depth,
                         ", ".join(f"{m} {k}" for m, k in basis), scores["alpha"], scores["r2_train"],
                         scores["r2_test"], stats["train"].n, stats["test"].n, time.perf_counter() - started)
    frame = pd.DataFrame(rows, columns=list(GROUP_COLUMNS))
    if len(frame) and (frame["joint_covariance"] == "pairwise_complete").any():
        LOG.warning("model pairs aligned different units: the group fits use the pairwise-complete estimate of the "
                    "joint covariance (each block from its own pair's units), which need not be a covariance matrix")
    _report_underdetermined(frame, "group fits per layer")
    return frame


def best_r2_layers(pair_fits):
    """Per setting, ordered model pair (target, basis) and target layer: the basis layer with the largest test R²,
    in best_layers.csv's columns (measure 'r2', with the setting)."""
    import pandas as pd

    rows = []
    valid = pair_fits[np.isfinite(pair_fits["r2_test"].astype(float))]
    for (setting, target, basis, layer), group in valid.groupby(["alpha_setting", "target", "basis", "target_layer"],
                                                                 sort=True):
        best = group.loc[group["r2_test"].idxmax()]
        rows.append({"alpha_setting": setting, "target": target, "basis": basis, "target_layer": int(layer),
                     "target_depth": float(best["target_depth"]), "best_basis_layer": int(best["basis_layer"]),
                     "best_basis_depth": float(best["basis_depth"]), "r2_test": float(best["r2_test"]),
                     "depth_difference": float(best["basis_depth"] - best["target_depth"]),
                     "n_test": int(best["n_test"])})
    return pd.DataFrame(rows, columns=["alpha_setting", "target", "basis", "target_layer", "target_depth",
                                       "best_basis_layer", "best_basis_depth", "r2_test", "depth_difference", "n_test"])


# ------------------------------------------------------------------------------------------------- the jobs
def _settings(modes: Sequence[str], alphas: Sequence) -> list:
    settings = fit_settings(modes, alphas)
    if not settings:
        raise WorkflowInputError("the layer sweep's R² needs at least one decomposition mode and alpha.")
    return settings


def write_pair_layer_fits(path, sweep_path, *, modes: Sequence[str], alphas: Sequence, alpha_grid: Sequence[float],
                          min_train: int, min_test: int, dataset: str, unit: str, figure_paths: dict) -> None:
    """The sweep-pair rule's R² part: every layer pair's fits in both directions from the sweep file (memory-mapped,
    read block by block), the table and, per setting (figure_paths: setting tag -> [png, svg]), its heatmaps."""
    from lmcompare import files
    from lmcompare.similarity.figures import plot_r2_sweep

    started = time.perf_counter()
    sweep = SweepFile.load(sweep_path, lazy=True)
    fits = pair_layer_fits(sweep, _settings(modes, alphas), alpha_grid, min_train, min_test)
    fits.insert(0, "unit", unit)
    fits.insert(0, "dataset", dataset)
    files.write_table(fits, path)
    LOG.info("R² of %s ~ %s: %d x %d layers, both directions, %d settings (%s): %d fits; %d train / %d test units "
             "(%.1f s)", *sweep.models, len(sweep.layers[0]), len(sweep.layers[1]), len(figure_paths),
             ", ".join(figure_paths), len(fits), fits["n_train"].max(), fits["n_test"].max(),
             time.perf_counter() - started)
    for setting, paths in figure_paths.items():
        plot_r2_sweep(fits, setting, paths, where=f"{dataset}, unit {unit}")


def write_layer_fits_join(fits_path, best_path, group_path, pair_fits: Sequence, sweep_files: Sequence, pairs: Sequence,
                          models: Sequence[str], *, modes: Sequence[str], alphas: Sequence,
                          alpha_grid: Sequence[float], min_train: int, min_test: int, dataset: str, unit: str,
                          best_figures: dict, group_figures: dict, model_index=None) -> None:
    """The sweep join's R² part: every pair's layer-pair fits in one table, the best basis layer per target layer,
    the group R² per target layer from the sweep files (sweep_files[i] of pairs[i], memory-mapped), and per setting
    (setting tag -> [png, svg]) the best-layer and group figures."""
    import pandas as pd

    from lmcompare import files, plotting
    from lmcompare.similarity.figures import plot_best_layers, plot_group_r2

    plotting.use_model_order(model_index)
    started = time.perf_counter()
    fits = pd.concat([pd.read_csv(path) for path in pair_fits], ignore_index=True)
    files.write_table(fits, fits_path)
    best = best_r2_layers(fits)
    files.write_table(best, best_path)
    sweeps = {tuple(pair): SweepFile.load(path, lazy=True) for pair, path in zip(pairs, sweep_files)}
    group = group_layer_fits(sweeps, list(models), _settings(modes, alphas), alpha_grid, min_train, min_test)
    group.insert(0, "unit", unit)
    group.insert(0, "dataset", dataset)
    files.write_table(group, group_path)
    LOG.info("%d pair fit tables in, %d rows out; %d best-layer rows; group R² of %d target layers x %d settings from "
             "%d sweep files (%.1f s)", len(pair_fits), len(fits), len(best), len(group) // max(len(group_figures), 1),
             len(group_figures), len(sweep_files), time.perf_counter() - started)
    for setting, paths in best_figures.items():
        plot_best_layers(best[best["alpha_setting"] == setting], "r2", paths,
                         title=f"best-matching basis layer per target layer by test R² ({setting})")
    for setting, paths in group_figures.items():
        plot_group_r2(group, setting, paths)
