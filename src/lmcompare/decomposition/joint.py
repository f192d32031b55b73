"""The statistics a fit needs, from pair files: a pair's own (exact) statistics, and the joint covariance of all
models assembled block by block from every pair (for the group fits)."""

import logging
import time
from typing import Sequence

import numpy as np

from lmcompare.decomposition.moments import ALL_SPLITS, between_share, compute_joint_moments, merge_train
from lmcompare.decomposition.pair_file import PairMoments, read_pair_header
from lmcompare.decomposition.solvers import SplitStats
from lmcompare.decomposition.tags import canonical_pair, model_pairs
from lmcompare.decomposition.units import SPLITS, ModelLayers
from lmcompare.errors import WorkflowInputError

LOG = logging.getLogger("workflow")


def split_stats_from_pair(pair: PairMoments, target: str, basis: str, split: str) -> SplitStats:
    """Exact statistics of target u (the target's target layer) and basis z (the basis model's basis layer) from
    one pair file."""
    n = pair.n[split]
    su, sz = pair.columns_of(target, "target"), pair.columns_of(basis, "basis")
    cov = pair.comoment[split] / n if n else np.full(pair.comoment[split].shape, np.nan)
    return SplitStats(n, pair.mean[split][su], pair.mean[split][sz], float(np.trace(cov[su, su])),
                      cov[su, sz], cov[sz, sz], pair.groups[split], pair.between_share(target, split))


class JointMoments:
    """The joint covariance of all models' layers (per split), assembled from the pair files.

    Off-diagonal blocks (m, m') come from the pair (m, m'); a model's own block and mean come from the first
    pair (in canonical order) that holds it. When every pair aligned the same units (always for `example` and
    `chunk` units; for `word` units when no word is missing from any model), this is exactly the joint
    covariance; otherwise it is the pairwise-complete estimate, and `consistent` says so.
    Pair files are read one at a time: memory is one joint matrix per split in `splits` (2: train, test for a
    fixed alpha; 4: fit, valid, train, test for alpha='validation'), each (sum of the models' layer dims)^2 x 8
    bytes, plus the pair being read: 4 x (d_a + d_b)^2 x 8 bytes (the 3 stored co-moments, fit, valid and test,
    and their merged train).
    """

    def __init__(self, pair_paths: dict, models: Sequence[str], splits: Sequence[str] = SPLITS,
                 hidden_files: dict | None = None):
        self.models = list(models)
        self.splits = tuple(splits)
        self.paths = {canonical_pair(a, b): path for (a, b), path in pair_paths.items()}
        missing = [p for p in model_pairs(self.models) if p not in self.paths]
        if missing:
            raise WorkflowInputError(f"moments of model pairs {missing} are missing; re-run the workflow.")
        self.dims, self.layers, self.n = {}, {}, {split: {} for split in ALL_SPLITS}
        self.groups = {split: {} for split in ALL_SPLITS}
        self.validation, self.info = set(), {}
        for pair in model_pairs(self.models):
            header = read_pair_header(self.paths[pair])
            if set(header["models"]) != set(pair):
                raise WorkflowInputError(f"{self.paths[pair]} holds the pair {header['models']}, not {pair}; delete it and re-run.")
            for model, dim, layers in zip(header["models"], header["dims"], header["layers"]):
                if self.dims.setdefault(model, dim) != dim or self.layers.setdefault(model, layers) != layers:
                    raise WorkflowInputError(
                        f"model {model!r} has different hidden sizes or layers in different pair moment files "
                        f"({self.paths[pair]}); delete results/analysis/decomposition/.../moments and re-run."
                    )
            for split in ALL_SPLITS:
                self.n[split][pair] = header["n"][split]
                self.groups[split][pair] = header["groups"][split]
            self.validation.add(header["validation"])
            self.info = header["info"]
        if len(self.validation) > 1:
            raise WorkflowInputError(
                f"the pair moment files of {self.models} cut the train split with different validation settings "
                f"{sorted(self.validation)} (fraction, seed); delete results/analysis/decomposition/.../moments and re-run."
            )
        self.consistent = all(len(set(self.n[s].values())) <= 1 for s in ALL_SPLITS)
        self.pair_n = {split: dict(self.n[split]) for split in ALL_SPLITS}  # units each pair aligned
        self.covariance = "from_pairs" if self.consistent else "pairwise_complete"
        # column offsets of each model's layers in the joint matrix
        self.offset, total = {}, 0
        for model in self.models:
            self.offset[model] = total
            total += self.dims[model] * len(self.layers[model])
        self.cov = {split: np.zeros((total, total)) for split in self.splits}
        self.mean = {split: np.zeros(total) for split in self.splits}
        self.model_n = {split: {} for split in self.splits}
        self.share = {split: {} for split in self.splits}  # per model (target layer): between-example share
        if not self.consistent and hidden_files is not None:
            self._from_common_units(hidden_files)
        else:
            self._from_pairs()

    def _from_pairs(self) -> None:
        """Assemble the joint matrices block by block from the pair files, read one at a time."""
        for pair_name in model_pairs(self.models):
            pair = PairMoments.load(self.paths[pair_name])
            a, b = pair.models
            ja, jb = self._block(a), self._block(b)
            pa_, pb_ = pair.model_columns(a), pair.model_columns(b)
            for split in self.splits:
                cov = pair.comoment[split] / pair.n[split] if pair.n[split] else np.full(pair.comoment[split].shape, np.nan)
                self.cov[split][ja, jb] = cov[pa_, pb_]
                self.cov[split][jb, ja] = cov[pb_, pa_]
                for model, j, p in ((a, ja, pa_), (b, jb, pb_)):
                    if model not in self.model_n[split]:
                        self.cov[split][j, j] = cov[p, p]
                        self.mean[split][j] = pair.mean[split][p]
                        self.model_n[split][model] = pair.n[split]
                        self.share[split][model] = pair.between_share(model, split)
            del pair

    def _from_common_units(self, hidden_files: dict) -> None:
        """The exact joint moments of the units every model has: one streamed pass over all models' files."""
        missing = [m for m in self.models if m not in hidden_files]
        if missing:
            raise WorkflowInputError(f"the joint moments on the common units need the hidden-state files of {missing}.")
        sources = [ModelLayers(m, str(hidden_files[m]), self.layers[m], self.dims[m]) for m in self.models]
        fraction, seed = next(iter(self.validation))
        started = time.perf_counter()
        parts, counts = compute_joint_moments(sources, self.info["unit"], self.info.get("pooling") or "mean",
                                              self.info.get("chunk_tokens"), validation_fraction=fraction,
                                              validation_seed=int(seed))
        parts["train"] = merge_train(parts)
        for split in ALL_SPLITS:
            self.n[split] = dict.fromkeys(self.n[split], parts[split].n)
            self.groups[split] = dict.fromkeys(self.groups[split], parts[split].groups)
        for split in self.splits:
            part = parts[split]
            self.cov[split], self.mean[split] = part.covariance(), part.mean
            for model in self.models:
                self.model_n[split][model] = part.n
                self.share[split][model] = between_share(part.comoment, part.between, self.columns_of(model, "target"))
        self.covariance = "common_units"
        LOG.info("joint moments of %d models on the units all of them have: %d train and %d test units (%s dropped "
                 "per join step); %.1f s", len(self.models), parts["train"].n, parts["test"].n,
                 ", ".join(str(c.only_a + c.only_b) for c in counts), time.perf_counter() - started)

    def _block(self, model: str) -> slice:
        """Joint-matrix slice of all of a model's layers."""
        start = self.offset[model]
        return slice(start, start + self.dims[model] * len(self.layers[model]))

    def columns_of(self, model: str, role: str) -> np.ndarray:
        """Joint-matrix indices of a model's target layer (role 'target') or basis layer (role 'basis')."""
        d = self.dims[model]
        k = 0 if role == "target" or len(self.layers[model]) == 1 else 1
        start = self.offset[model] + k * d
        return np.arange(start, start + d)

    def group_stats(self, target: str, basis: Sequence[str], split: str) -> SplitStats:
        """Statistics of a group fit: the target's target layer from the basis models' basis layers."""
        iu = self.columns_of(target, "target")
        iz = np.concatenate([self.columns_of(m, "basis") for m in basis])
        cov, mean = self.cov[split], self.mean[split]
        n_values = [self.n[split][p] for p in model_pairs([target, *basis])]
        group_values = [self.groups[split][p] for p in model_pairs([target, *basis])]
        return SplitStats(min(n_values), mean[iu], mean[iz], float(np.trace(cov[np.ix_(iu, iu)])),
                          cov[np.ix_(iu, iz)], cov[np.ix_(iz, iz)], min(group_values), self.share[split][target])
