"""Streamed moments of a model pair's units: count, mean and co-moment matrix of the concatenation [a, b] per
split, and per split the number of examples and the between-example sum of squares.

Every quantity of a fit is a function of these per-split sufficient statistics, so the hidden states are read once,
row group by row group, and memory grows with the hidden sizes only. The train split is stored as its fit and
valid parts (validation_split); `merge_train` gives the whole train split exactly.

Norm statistics (for the debiased CKA of lmcompare.similarity): with `blocks` (column ranges, one per model layer),
a Moments also streams, about its mean, the fourth-order sums norm_products[g, h] = sum_n a_g(n) a_h(n) with
a_g(n) = ||x_n,g - mean_g||² the squared norm of block g of the centred row, and the third-order sums
norm_weighted[:, h] = sum_n a_h(n) (x_n - mean); the latter are what moving the centre needs (`_shifted_norms`), so
that chunks and splits merge exactly, as the co-moments do.
"""

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
import scipy.linalg

from lmcompare.decomposition.alignment import AlignmentCounts, align_streams
from lmcompare.decomposition.units import ModelLayers, iter_units, unit_example_ids
from lmcompare.decomposition.validation_split import VALID_CODE, mark_validation

STORED_SPLITS = ("fit", "valid", "test")  # what a pair file holds: train = fit + valid (merged exactly on load)
ALL_SPLITS = ("fit", "valid", "train", "test")


@dataclass
class Moments:
    """Streaming count, mean and co-moment matrix sum_n (x_n - mean)(x_n - mean)^T of d-dimensional rows.

    Chunks are merged with the pairwise update of Chan, Golub & LeVeque, which is exact and avoids the
    cancellation of E[xx^T] - mean mean^T when the means are large compared with the spread.
    """

    dim: int
    n: int = 0
    mean: np.ndarray = field(default=None)
    comoment: np.ndarray = field(default=None)
    # set by compute_joint_moments (see BetweenExamples); `merge` leaves them alone, merge_train combines them
    groups: int = 0
    between: np.ndarray = field(default=None)
    # norm statistics (module docstring): streamed only when blocks (a tuple of (start, stop) column ranges) is set
    blocks: tuple = ()
    norm_products: np.ndarray = field(default=None)  # (G, G): sum_n a_g(n) a_h(n)
    norm_weighted: np.ndarray = field(default=None)  # (dim, G): sum_n a_h(n) (x_n - mean)

    def __post_init__(self):
        if self.mean is None:
            self.mean = np.zeros(self.dim)
        if self.comoment is None:
            self.comoment = np.zeros((self.dim, self.dim))
        if self.between is None:
            self.between = np.zeros(self.dim)
        self.blocks = tuple((int(start), int(stop)) for start, stop in self.blocks)
        if self.norm_products is None:
            self.norm_products = np.zeros((len(self.blocks), len(self.blocks)))
        if self.norm_weighted is None:
            self.norm_weighted = np.zeros((self.dim, len(self.blocks)))

    def update(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float64)
        m = rows.shape[0]
        if m == 0:
            return
        if rows.shape[1] != self.dim:
            raise ValueError(f"rows have {rows.shape[1]} columns, the moments {self.dim}")
        chunk_mean = rows.mean(axis=0)
        centred = rows - chunk_mean
        chunk_comoment = _gram(centred)
        chunk = Moments(self.dim, m, chunk_mean, chunk_comoment, blocks=self.blocks)
        if self.blocks:
            norms = np.column_stack([np.einsum("ij,ij->i", centred[:, start:stop], centred[:, start:stop])
                                     for start, stop in self.blocks])
            chunk.norm_products = norms.T @ norms
            chunk.norm_weighted = centred.T @ norms
        self.merge(chunk)

    def merge(self, other: "Moments") -> None:
        if other.n == 0:
            return
        if other.blocks != self.blocks:
            raise ValueError(f"moments of blocks {other.blocks} cannot be merged into moments of blocks {self.blocks}")
        if self.n == 0:
            self.n, self.mean, self.comoment = other.n, other.mean.copy(), other.comoment.copy()
            self.norm_products, self.norm_weighted = other.norm_products.copy(), other.norm_weighted.copy()
            return
        total = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / total)
        if self.blocks:  # both parts' norm sums moved to the merged mean (with their own co-moments), then added
            products, weighted = self._shifted_norms(self.mean - mean)
            other_products, other_weighted = other._shifted_norms(other.mean - mean)
            self.norm_products, self.norm_weighted = products + other_products, weighted + other_weighted
        self.comoment += other.comoment + np.outer(delta, delta) * (self.n * other.n / total)
        self.mean = mean
        self.n = total

    def _shifted_norms(self, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The norm sums about (mean - shift) instead of the mean: with r_n = x_n - mean (sum_n r_n = 0), C the
        co-moment, P_g = tr C_gg and s_g the block g of `shift`, a_g' = a_g + 2 s_g.r_g + ||s_g||², so

            sum a_g' a_h' = sum a_g a_h + 2 s_h.W[h, g] + 2 s_g.W[g, h] + 4 s_g^T C_gh s_h
                            + ||s_h||² P_g + ||s_g||² P_h + n ||s_g||² ||s_h||²
            sum a_h' (r + s) = W[:, h] + P_h s + 2 C[:, h] s_h + n ||s_h||² s

        where W[g, h] is the block g rows of norm_weighted's column h (sum a_h r_g)."""
        blocks = self.blocks
        parts = [shift[start:stop] for start, stop in blocks]
        square = np.array([part @ part for part in parts])
        trace = np.array([np.trace(self.comoment[start:stop, start:stop]) for start, stop in blocks])
        # cross[g, h] = s_g . W[g, h] and bilinear[g, h] = s_g^T C_gh s_h
        cross = np.array([[parts[g] @ self.norm_weighted[blocks[g][0]:blocks[g][1], h] for h in range(len(blocks))]
                          for g in range(len(blocks))])
        bilinear = np.array([[parts[g] @ self.comoment[blocks[g][0]:blocks[g][1], blocks[h][0]:blocks[h][1]] @ parts[h]
                              for h in range(len(blocks))] for g in range(len(blocks))])
        products = (self.norm_products + 2 * cross.T + 2 * cross + 4 * bilinear + np.outer(trace, square)
                    + np.outer(square, trace) + self.n * np.outer(square, square))
        weighted = (self.norm_weighted + np.outer(shift, trace) + self.n * np.outer(shift, square)
                    + 2 * np.column_stack([self.comoment[:, start:stop] @ part for (start, stop), part in zip(blocks, parts)]))
        return products, weighted

    def copy(self) -> "Moments":
        return Moments(self.dim, self.n, self.mean.copy(), self.comoment.copy(), self.groups, self.between.copy(),
                       self.blocks, self.norm_products.copy(), self.norm_weighted.copy())

    def covariance(self) -> np.ndarray:
        """Population covariance (divides by n, as the card's Cov)."""
        return self.comoment / self.n if self.n else np.full((self.dim, self.dim), np.nan)


def _gram(centred: np.ndarray) -> np.ndarray:
    """X^T X with a symmetric rank-k update (half the flops of a general product)."""
    if centred.shape[0] == 0:
        return np.zeros((centred.shape[1], centred.shape[1]))
    a = np.asfortranarray(centred.T)  # (d, m) column-major: no copy when `centred` is C-contiguous
    upper = scipy.linalg.blas.dsyrk(1.0, a, trans=0, lower=0)
    return np.triu(upper) + np.triu(upper, 1).T


class BetweenExamples:
    """Streamed number of examples and between-example sum of squares, per dimension, of one split's units.

    between = sum_e n_e (mean_e - mean)^2 (a vector over dimensions), mean_e the mean of example e's units.
    Units arrive in key order, so the units of one example are contiguous; the last example of a block is
    carried over to the next block. Example means are merged into the running weighted mean with the exact
    pairwise update (Chan et al.), as Moments does for units.
    """

    def __init__(self, dim: int):
        self.dim = dim
        self.groups = 0
        self.weight = 0
        self.mean = np.zeros(dim)
        self.between = np.zeros(dim)
        self._open = None  # (example_id, count, sum) of the example still receiving units

    def update(self, example_ids: np.ndarray, rows: np.ndarray) -> None:
        if example_ids.size == 0:
            return
        rows = np.asarray(rows, dtype=np.float64)
        starts = np.flatnonzero(np.r_[True, example_ids[1:] != example_ids[:-1]])
        sums = np.add.reduceat(rows, starts, axis=0)
        counts = np.diff(np.r_[starts, example_ids.size])
        ids = example_ids[starts]
        if self._open is not None:
            if ids[0] == self._open[0]:
                counts[0] += self._open[1]
                sums[0] += self._open[2]
            else:
                self._add(np.array([self._open[1]]), self._open[2][None, :])
        self._open = (ids[-1], int(counts[-1]), sums[-1].copy())
        self._add(counts[:-1], sums[:-1])

    def finish(self) -> None:
        if self._open is not None:
            self._add(np.array([self._open[1]]), self._open[2][None, :])
            self._open = None

    def _add(self, counts: np.ndarray, sums: np.ndarray) -> None:
        if counts.size == 0:
            return
        weights = counts.astype(np.float64)
        means = sums / weights[:, None]
        total = float(weights.sum())
        block_mean = weights @ means / total
        block_between = weights @ (means - block_mean) ** 2
        self.groups += int(counts.size)
        self._merge(total, block_mean, block_between)

    def _merge(self, weight: float, mean: np.ndarray, between: np.ndarray) -> None:
        if self.weight == 0:
            self.weight, self.mean, self.between = weight, mean.copy(), between.copy()
            return
        total = self.weight + weight
        delta = mean - self.mean
        self.between = self.between + between + delta ** 2 * (self.weight * weight / total)
        self.mean = self.mean + delta * (weight / total)
        self.weight = total


def merge_between(n_a: int, mean_a: np.ndarray, between_a: np.ndarray, n_b: int, mean_b: np.ndarray,
                  between_b: np.ndarray) -> np.ndarray:
    """Between-example sums of squares of two splits with disjoint examples, merged exactly."""
    if n_a == 0 or n_b == 0:
        return between_a + between_b
    return between_a + between_b + (mean_a - mean_b) ** 2 * (n_a * n_b / (n_a + n_b))


def compute_pair_moments(a: ModelLayers, b: ModelLayers, unit: str, pooling: str = "mean",
                         chunk_tokens: int | None = None, block_rows: int = 8192, validation_fraction: float = 0.2,
                         validation_seed: int = 0) -> tuple[dict, AlignmentCounts]:
    """One streamed pass over both models' files: moments of the concatenation [a's layers, b's layers] for the
    `fit` and `valid` parts of the train split (a hash of example_id, see validation_mask) and the test split,
    and per split the examples' count and between-example sums of squares (moments[split].groups /
    .between, see BetweenExamples), and the norm statistics of each model layer (Moments.blocks, for the debiased
    CKA). `merge_train` gives the whole train split."""
    moments, counts = compute_joint_moments([a, b], unit, pooling, chunk_tokens, block_rows, validation_fraction,
                                            validation_seed, norm_stats=True)
    return moments, counts[0]


def layer_blocks(sources: Sequence[ModelLayers]) -> tuple:
    """(start, stop) columns of every model layer in the concatenation of `sources`' layers, in that order."""
    blocks, start = [], 0
    for source in sources:
        for _ in source.layers:
            blocks.append((start, start + source.hidden_size))
            start += source.hidden_size
    return tuple(blocks)


def _joined(stream: Iterable) -> Iterator:
    """An aligned stream of (keys, codes, rows of a, rows of b) as a unit stream of (keys, codes, [a, b])."""
    for keys, codes, rows_a, rows_b in stream:
        yield keys, codes, np.hstack([rows_a, rows_b])


def compute_joint_moments(sources: Sequence[ModelLayers], unit: str, pooling: str = "mean",
                          chunk_tokens: int | None = None, block_rows: int = 8192, validation_fraction: float = 0.2,
                          validation_seed: int = 0, norm_stats: bool = False) -> tuple[dict, list]:
    """compute_pair_moments for any number of models: one streamed pass over every model's file, joined on the
    units all of them have, moments of the concatenation of their layers (in `sources` order). Returns the
    moments per stored split and, per join step k (model k+1 joined to models 0..k), its AlignmentCounts.
    norm_stats: also stream the norm statistics of every model layer (layer_blocks)."""
    dim = sum(source.hidden_size * len(source.layers) for source in sources)
    blocks = layer_blocks(sources) if norm_stats else ()
    moments = {split: Moments(dim, blocks=blocks) for split in STORED_SPLITS}
    between = {split: BetweenExamples(dim) for split in STORED_SPLITS}
    streams = [mark_validation(iter_units(source, unit, pooling, chunk_tokens), unit, validation_fraction, validation_seed)
               for source in sources]
    stream, all_counts = streams[0], []
    for k, (source, following) in enumerate(zip(sources[1:], streams[1:]), start=1):
        all_counts.append(AlignmentCounts())
        names = (" + ".join(s.model for s in sources[:k]), source.model)
        stream = _joined(align_streams(stream, following, all_counts[-1], names, with_keys=True))
    # Small row groups are gathered into blocks of about `block_rows` before the rank-k update (BLAS is
    # faster on big blocks); memory stays bounded by the block, not by the corpus.
    pending = {split: [] for split in STORED_SPLITS}
    pending_rows = {split: 0 for split in STORED_SPLITS}
    code_of = {"fit": 0, "test": 1, "valid": VALID_CODE}

    def flush(split):
        if pending[split]:
            moments[split].update(np.vstack(pending[split]))
            pending[split], pending_rows[split] = [], 0

    for keys, codes, rows in stream:
        examples = unit_example_ids(keys, unit)
        for split, code in code_of.items():
            mask = codes == code
            if mask.any():
                pending[split].append(rows[mask])
                pending_rows[split] += int(mask.sum())
                between[split].update(examples[mask], rows[mask])
                if pending_rows[split] >= block_rows:
                    flush(split)
    for split in STORED_SPLITS:
        flush(split)
        between[split].finish()
        moments[split].groups = between[split].groups
        moments[split].between = between[split].between
    return moments, all_counts


def between_share(comoment: np.ndarray, between: np.ndarray, columns) -> float:
    """Share of the variance of `columns` (a slice or indices; their sum of squares about the mean, from the
    co-moment's diagonal) that lies between examples (the between-example sums of squares, BetweenExamples)."""
    total = float(comoment.diagonal()[columns].sum())
    return float(between[columns].sum()) / total if total > 0 else float("nan")


def merge_train(moments: dict) -> Moments:
    """The whole train split: the fit and valid parts merged (exact, Chan et al.), with their examples' counts
    and between-example sums of squares (the parts hold disjoint examples)."""
    fit, valid = moments["fit"], moments["valid"]
    train = fit.copy()
    train.merge(valid)
    train.groups = fit.groups + valid.groups
    train.between = merge_between(fit.n, fit.mean, fit.between, valid.n, valid.mean, valid.between)
    return train


