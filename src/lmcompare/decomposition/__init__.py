"""Language Model Decomposition (LMD; Zhang, EMNLP 2022, arXiv:2210.10289) from streamed moments.

How much of model u's representation is a linear function of other models' representations?
For every text unit n, a target vector u_n and a basis vector z_n (the concatenation of the basis models'
vectors). Ridge fit on the train split, R² on the test split:

    W = S(u, z) (S(z, z) + alpha I)^-1,   b = E[u] - W E[z]                    (mode "paper")
    R² = 1 - sum_n ||u_n - W z_n - b||² / sum_n ||u_n - mean_test(u)||²

with S the sample covariance of the train split, divided by n - 1 (``torch.cov``), exactly as the released
code computes it (haozhg/lmd, PyPI ``nlp.lmd`` 0.2.0, ``lmd/cli.py`` ``LanguageModelDecomposition``; the
published .743-.930 come from it). alpha is therefore on the scale of the (n - 1)-divided covariance:
scikit-learn's ``Ridge(alpha_sk)`` equals ``alpha_sk = (n_train - 1) * alpha``.

Every quantity is a function of per-split sufficient statistics (count, mean, co-moment matrix), so the
hidden states are read once, row group by row group, and memory grows with the hidden sizes only.

The statistics are cached per *pair* of models: one file per (dataset, unit, layers, model_a, model_b) holds the
train and test moments of the concatenation [a, b] (self blocks included). A group fit (target = one model,
basis = all others) is assembled from the blocks of all pairs; adding a model only adds the pairs that involve it.
The pair files also hold, per split, the number of examples the units come from and the between-example sum of
squares (sum over examples e of n_e (mean_e - mean)^2 per dimension), streamed, for the effective sample size.

Two fit modes (see docs/decomposition.md):
- ``paper``: the released code's computation above (centred, intercept, SST about the scored split's mean);
- ``uncentred``: the superseded development code of haozhg/lmd before commit c3810d8 ("add intercept",
  2022-10-10; i.e. at 1eae068): W = U Z^T (Z Z^T + alpha d_z I)^-1 from raw second moments (their A = Z Z^T /
  Z.shape[0] divides by the basis dims d_z, Z being d_z x n), no intercept, SST = sum ||u_n||^2 uncentred.

Two alpha choices (each its own output folder, see docs/decomposition.md):
- a number: the fixed ridge penalty (the paper's 1e-6);
- ``validation``: the train split is cut by a seeded hash of example_id into a fit and a valid part (both
  stored in the pair files; train = their exact merge); per fit, the alpha of a grid with the best R² on the
  valid part (fitted on the fit part) is chosen, then the fit is redone on the whole train split and scored on test.

Three text units:
- ``example``: the pooled per-example vector of pooled.parquet (`mean` over non-special tokens, or `first`);
- ``word``: the mean of a word's tokens from tokens.parquet, keyed by (example_id, word_id) so that models with
  different tokenizers are aligned word by word (only words present in both models of a pair are kept);
- ``chunk``: the paper's unit on a ``chunks`` dataset: sum over every token the model read (special tokens
  included) divided by the chunk length T, as the released code does (a mean over the input padded to T).
"""

import itertools
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
import scipy.linalg

from lmcompare import plotting
import lmcompare
from lmcompare import files, hidden_states
from lmcompare.errors import WorkflowInputError

LOG = logging.getLogger("workflow")

SPLITS = ("train", "test")  # the dataset's splits (codes 0, 1 in the unit streams)
STORED_SPLITS = ("fit", "valid", "test")  # what a pair file holds: train = fit + valid (merged exactly on load)
ALL_SPLITS = ("fit", "valid", "train", "test")
VALID_CODE = 2  # unit-stream code of a train unit that falls in the validation part
UNITS = ("example", "word", "chunk")
MODES = ("paper", "uncentred")
VALIDATION = "validation"  # decomposition.alpha: choose alpha on the validation part of the train split
DEFAULT_ALPHA_GRID = tuple(float(10.0 ** k) for k in range(-6, 5))  # 1e-6 .. 1e4
WORD_BITS = 24  # word keys: example_id << WORD_BITS | word_id
MOMENTS_FORMAT = 3  # 2: train split stored as fit + valid parts; 3: + example counts and between-example sums
# of squares (older files are refused: re-run)


# ============================================================================================ moments
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
    # set by compute_pair_moments (see BetweenExamples); `merge` leaves them alone, merge_train combines them
    groups: int = 0
    between: np.ndarray = field(default=None)

    def __post_init__(self):
        if self.mean is None:
            self.mean = np.zeros(self.dim)
        if self.comoment is None:
            self.comoment = np.zeros((self.dim, self.dim))
        if self.between is None:
            self.between = np.zeros(self.dim)

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
        self.merge(Moments(self.dim, m, chunk_mean, chunk_comoment))

    def merge(self, other: "Moments") -> None:
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.comoment = other.n, other.mean.copy(), other.comoment.copy()
            return
        total = self.n + other.n
        delta = other.mean - self.mean
        self.comoment += other.comoment + np.outer(delta, delta) * (self.n * other.n / total)
        self.mean = self.mean + delta * (other.n / total)
        self.n = total

    def copy(self) -> "Moments":
        return Moments(self.dim, self.n, self.mean.copy(), self.comoment.copy(), self.groups, self.between.copy())

    def covariance(self) -> np.ndarray:
        """Population covariance (divides by n, as the card's Cov)."""
        return self.comoment / self.n if self.n else np.full((self.dim, self.dim), np.nan)


def _gram(centred: np.ndarray) -> np.ndarray:
    """X^T X with a symmetric rank-k update (half the flops of a general product)."""
    if centred.shape[0] == 0:
        return np.zeros((centred.shape[1], centred.shape[1]))
    a = np.asfortranarray(centred.T)  # (d, m) column-major: a view when `centred` is C-contiguous
    upper = scipy.linalg.blas.dsyrk(1.0, a, trans=0, lower=0)
    return np.triu(upper) + np.triu(upper, 1).T


# ============================================================================================ solving
@dataclass
class SplitStats:
    """Per-split statistics of a target u and a basis z, as population covariances (divided by n) and means.

    n_groups: the number of independent examples the n units come from (n for example and chunk units; the
    number of reviews for word units); between_share: the share of u's variance that lies between examples
    (sum_e n_e ||mean_e(u) - mean(u)||^2 / sum_n ||u_n - mean(u)||^2), NaN when unknown.
    """

    n: int
    mean_u: np.ndarray
    mean_z: np.ndarray
    cov_uu_trace: float
    cov_uz: np.ndarray  # (d_u, d_z)
    cov_zz: np.ndarray  # (d_z, d_z)
    n_groups: int | None = None
    between_share: float = float("nan")

    @classmethod
    def from_rows(cls, u: np.ndarray, z: np.ndarray, groups: np.ndarray | None = None) -> "SplitStats":
        """Direct (unstreamed) statistics of materialised rows; used by tests and the benchmark."""
        u = np.asarray(u, dtype=np.float64)
        z = np.asarray(z, dtype=np.float64)
        n = u.shape[0]
        mu, mz = u.mean(axis=0), z.mean(axis=0)
        uc, zc = u - mu, z - mz
        n_groups, share = None, float("nan")
        if groups is not None:
            labels, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
            means = np.zeros((labels.size, u.shape[1]))
            np.add.at(means, inverse, u)
            means /= counts[:, None]
            n_groups = int(labels.size)
            share = float((counts[:, None] * (means - mu) ** 2).sum() / (uc * uc).sum())
        return cls(n, mu, mz, float((uc * uc).sum() / n), uc.T @ zc / n, zc.T @ zc / n, n_groups, share)

    @property
    def groups(self) -> int:
        return self.n if self.n_groups is None else self.n_groups


def is_underdetermined(n_units: int, n_groups: int, basis_dims: int) -> bool:
    """True when the train split cannot pin down a fit on basis_dims dimensions.

    Counted in units *and* in independent groups (examples): words of one review share a review-level
    component, and that component is fitted from one sample per review. With fewer groups than basis
    dimensions, the between-example part of the fit can interpolate the train examples (an alpha near zero then
    over-fits, whatever the number of words).
    """
    return int(n_units) <= int(basis_dims) or int(n_groups) <= int(basis_dims)


@dataclass
class Fit:
    W: np.ndarray
    b: np.ndarray
    solver: str
    condition: float


def solve_spd(matrix: np.ndarray, rhs: np.ndarray, what: str = "basis") -> tuple[np.ndarray, str, float]:
    """Solve matrix X = rhs for a symmetric positive semi-definite matrix (ridge normal equations).

    Cholesky first; when the matrix is not numerically positive definite or is ill-conditioned (scipy's
    LinAlgWarning), fall back to an eigendecomposition with a pseudo-inverse on the numerical null space.
    Returns the solution, the solver used and (for the fallback) the condition number of the kept part.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
            solution = scipy.linalg.solve(matrix, rhs, assume_a="pos", check_finite=False)
        if np.all(np.isfinite(solution)):
            return solution, "cholesky", float("nan")
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError, scipy.linalg.LinAlgWarning, ValueError):
        pass
    values, vectors = scipy.linalg.eigh(matrix, check_finite=False)
    top = float(values.max()) if values.size else 0.0
    tolerance = max(top, 0.0) * matrix.shape[0] * np.finfo(float).eps
    keep = values > tolerance
    inverse = np.zeros_like(values)
    inverse[keep] = 1.0 / values[keep]
    solution = vectors @ (inverse[:, None] * (vectors.T @ rhs))
    smallest = float(values[keep].min()) if keep.any() else float("nan")
    condition = top / smallest if keep.any() else float("inf")
    LOG.warning(
        "%s: the ridge system (%d x %d) is ill-conditioned (condition ~%.3g, %d of %d eigenvalues at or below "
        "%.3g treated as zero): solved by eigendecomposition (pseudo-inverse on the null space) instead of Cholesky",
        what, matrix.shape[0], matrix.shape[1], condition, int((~keep).sum()), values.size, tolerance,
    )
    return solution, "eigh_fallback", condition


def _normal_equations(train: SplitStats, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(lhs, rhs) of W (lhs + alpha I) = rhs, on the scale the mode's alpha is defined on.

    paper (nlp.lmd 0.2.0): the sample covariances of torch.cov, divided by n - 1;
    uncentred (haozhg/lmd at 1eae068): raw second moments Z Z^T / d_z and U Z^T / d_z (d_z = basis dims, the
    dev code divided by Z.shape[0] with Z of shape (d_z, n)).
    """
    n = train.n
    if mode == "paper":
        if n < 2:
            raise WorkflowInputError(f"a fit needs at least 2 train units, got {n}.")
        scale = n / (n - 1)
        return train.cov_zz * scale, train.cov_uz * scale
    if mode == "uncentred":
        scale = n / train.cov_zz.shape[0]
        return ((train.cov_zz + np.outer(train.mean_z, train.mean_z)) * scale,
                (train.cov_uz + np.outer(train.mean_u, train.mean_z)) * scale)
    raise ValueError(f"unknown mode {mode!r}; one of {MODES}")


def _intercept(train: SplitStats, W: np.ndarray, mode: str) -> np.ndarray:
    return train.mean_u - W @ train.mean_z if mode == "paper" else np.zeros(W.shape[0])


def fit_ridge(train: SplitStats, alpha: float, mode: str = "paper", what: str = "basis") -> Fit:
    """Ridge from train statistics. paper: centred, with intercept; uncentred: raw moments, no intercept."""
    lhs, rhs = _normal_equations(train, mode)
    lhs = lhs + alpha * np.eye(lhs.shape[0])
    solution, solver, condition = solve_spd(lhs, rhs.T, what)
    W = solution.T
    return Fit(W, _intercept(train, W, mode), solver, condition)


def r_squared(fit: Fit, stats: SplitStats, mode: str = "paper") -> tuple[float, float, float]:
    """R², mean squared error and mean total sum of squares on a split, from its moments.

    MSE = tr Σuu - 2 tr(W Σzu) + tr(W Σzz W^T) + ||mean_u - W mean_z - b||²  (exact for any W, b).
    SST about the split's mean (paper, as nlp.lmd's score) or about zero (uncentred).
    """
    W = fit.W
    offset = stats.mean_u - W @ stats.mean_z - fit.b
    mse = (stats.cov_uu_trace - 2.0 * float(np.sum(W * stats.cov_uz)) + float(np.sum((W @ stats.cov_zz) * W))
           + float(offset @ offset))
    sst = stats.cov_uu_trace if mode == "paper" else stats.cov_uu_trace + float(stats.mean_u @ stats.mean_u)
    mse = max(mse, 0.0)  # rounding can push an exact fit a hair below zero
    r2 = 1.0 - mse / sst if sst > 0 else float("nan")
    return r2, mse, sst


def ridge_path(train: SplitStats, alphas: Sequence[float], mode: str = "paper") -> list[Fit]:
    """Ridge fits for several alphas from one eigendecomposition of the (unpenalised) basis matrix.

    lhs = V diag(l) V^T, so W(alpha) = rhs V diag(1 / (l + alpha)) V^T: one O(d_z^3) decomposition, then a
    matrix product per alpha. Eigenvalues that rounding pushed below zero are clipped to zero (the matrix is
    positive semi-definite); every alpha in the grid is > 0, so the system is always solvable.
    """
    lhs, rhs = _normal_equations(train, mode)
    values, vectors = scipy.linalg.eigh(lhs, check_finite=False)
    values = np.clip(values, 0.0, None)
    projected = rhs @ vectors  # (d_u, d_z)
    fits = []
    for alpha in alphas:
        W = (projected / (values + alpha)) @ vectors.T
        fits.append(Fit(W, _intercept(train, W, mode), "eigh", float("nan")))
    return fits


def choose_alpha(fit_part: SplitStats, valid_part: SplitStats, grid: Sequence[float], mode: str = "paper",
                 what: str = "basis") -> tuple[float, float, list[float]]:
    """The alpha of `grid` with the best validation R² (fit on `fit_part`, R² on `valid_part`).

    Ties (R² equal to 1e-12) go to the larger alpha (the more regularised fit). Returns (alpha, its validation
    R², the validation R² of every grid alpha in grid order).
    """
    grid = [float(a) for a in grid]
    if not grid:
        raise WorkflowInputError(
            f"{what}: decomposition.alpha is 'validation' but decomposition.alpha_grid is empty; list the alphas to "
            f"try (e.g. [1.0e-6, 1.0e-5, ..., 1.0e4], the default)."
        )
    if any(not np.isfinite(a) or a <= 0 for a in grid):
        raise WorkflowInputError(f"{what}: decomposition.alpha_grid holds {grid}; every alpha must be a finite number > 0.")
    scores = [r_squared(fit, valid_part, mode)[0] for fit in ridge_path(fit_part, grid, mode)]
    best = max(scores)
    tolerance = 1e-12 * max(1.0, abs(best))
    chosen = max(a for a, r2 in zip(grid, scores) if r2 >= best - tolerance)
    return chosen, scores[grid.index(chosen)], scores


def parse_alpha(value) -> float | str:
    """A configured alpha or path tag: a number (fixed alpha) or 'validation'."""
    if isinstance(value, str) and value == VALIDATION:
        return VALIDATION
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise WorkflowInputError(
            f"decomposition.alpha {value!r} is neither a number >= 0 nor {VALIDATION!r}.") from None
    if not np.isfinite(alpha) or alpha < 0:
        raise WorkflowInputError(f"decomposition.alpha {value!r} must be a finite number >= 0 or {VALIDATION!r}.")
    return alpha


def alpha_tag(value) -> str:
    """Path component of an alpha choice: 'alpha-validation' or 'alpha-<repr of the float>' (e.g. alpha-1e-06)."""
    alpha = parse_alpha(value)
    return f"alpha-{alpha}" if alpha == VALIDATION else f"alpha-{alpha!r}"


def alpha_from_tag(tag: str) -> float | str:
    return parse_alpha(tag[len("alpha-"):] if tag.startswith("alpha-") else tag)


# ====================================================================================== reading units
@dataclass(frozen=True)
class ViewSpec:
    """What one model contributes to a pair file: its unit vectors at one or two layers."""

    model: str
    path: str
    layers: tuple  # resolved layer indices, one per view (target view, then basis view when they differ)
    hidden_size: int


def _check_finite(array: np.ndarray, keys: np.ndarray, model: str, path: str, unit: str) -> None:
    if not np.all(np.isfinite(array)):
        bad = int(np.where(~np.all(np.isfinite(array), axis=1))[0][0])
        key = int(keys[bad])
        where = f"example_id {key}" if unit != "word" else f"example_id {key >> WORD_BITS}, word {key & ((1 << WORD_BITS) - 1)}"
        raise WorkflowInputError(
            f"{path} (model {model!r}): non-finite hidden state at {where}. Re-extract the model (in float32: "
            f"extraction.store_dtype / compute_dtype) or set extraction.nonfinite: drop."
        )


def _split_codes(column) -> np.ndarray:
    """'train' -> 0, 'test' -> 1 (vectorised in Arrow: token files have many rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    codes = pc.index_in(column, value_set=pa.array(list(SPLITS)))
    if codes.null_count:
        values = column.filter(pc.is_null(codes))
        raise WorkflowInputError(
            f"split value {values[0].as_py()!r} is neither 'train' nor 'test'; re-run prepare_dataset and the extraction."
        )
    return codes.to_numpy(zero_copy_only=False).astype(np.int8)


def _ensure_sorted(keys: np.ndarray, last: int | None, path: str) -> None:
    if keys.size and ((last is not None and keys[0] <= last) or np.any(np.diff(keys) <= 0)):
        raise WorkflowInputError(
            f"{path}: units are not in increasing example order (or are duplicated); the hidden-state file does "
            f"not follow the contract. Delete it and re-run the extraction."
        )


def iter_example_units(view: ViewSpec, pooling: str = "mean") -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(keys=example_id, split codes, vectors (n, d*views)) per row group of pooled.parquet."""
    columns = [hidden_states.pooled_column(layer, pooling) for layer in view.layers]
    last = None
    for table in hidden_states.iter_row_groups(view.path, ["example_id", "split", *columns]):
        keys = table.column("example_id").to_numpy().astype(np.int64)
        _ensure_sorted(keys, last, view.path)
        last = int(keys[-1]) if keys.size else last
        vecs = np.hstack([hidden_states.vectors(table, c, np.float64) for c in columns]) if keys.size else np.zeros((0, view.hidden_size * len(columns)))
        _check_finite(vecs, keys, view.model, view.path, "example")
        yield keys, _split_codes(table.column("split")), vecs


def iter_token_units(view: ViewSpec, unit: str, chunk_tokens: int | None = None
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Units aggregated from tokens.parquet, one chunk per row group.

    word: mean of the tokens of each (example_id, word_id), word_id >= 0;
    chunk: sum over every token of the example (special tokens included) / chunk_tokens.
    An example cut across row groups is carried over to the next one.
    """
    columns = [hidden_states.token_column(layer) for layer in view.layers]
    width = view.hidden_size * len(columns)
    carry = None  # (example_id, word_id, split, vectors) of the last example of the previous row group
    last_key = None
    wanted = ["example_id", "split", "word_id", *columns]

    def aggregate(example_id, word_id, split, vecs):
        if unit == "word":
            keep = word_id >= 0
            example_id, word_id, split, vecs = example_id[keep], word_id[keep], split[keep], vecs[keep]
            if np.any(word_id >= (1 << WORD_BITS)):
                raise WorkflowInputError(f"{view.path}: a word id exceeds 2^{WORD_BITS}; examples are too long for word units.")
            keys = (example_id << WORD_BITS) | word_id
        else:
            keys = example_id
        if keys.size == 0:
            return keys, split, np.zeros((0, width))
        if not np.all(np.isfinite(vecs)):
            bad = int(np.flatnonzero(~np.all(np.isfinite(vecs), axis=1))[0])
            _check_finite(vecs[bad:bad + 1].astype(np.float64), keys[bad:bad + 1], view.model, view.path, unit)
        order = np.argsort(keys, kind="stable")
        keys, split, vecs = keys[order], split[order], vecs[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        sums = np.add.reduceat(vecs, starts, axis=0, dtype=np.float64)
        counts = np.diff(np.r_[starts, keys.size])
        denominators = counts[:, None] if unit == "word" else float(chunk_tokens)
        return keys[starts], split[starts], sums / denominators

    for table in hidden_states.iter_row_groups(view.path, wanted):
        example_id = table.column("example_id").to_numpy().astype(np.int64)
        word_id = table.column("word_id").to_numpy().astype(np.int64)
        split = _split_codes(table.column("split"))
        # float32 rows (a token row group can be large); the per-unit sums accumulate in float64
        vecs = np.hstack([hidden_states.vectors(table, c) for c in columns]) if example_id.size else np.zeros((0, width), np.float32)
        if carry is not None:
            example_id = np.r_[carry[0], example_id]
            word_id = np.r_[carry[1], word_id]
            split = np.r_[carry[2], split]
            vecs = np.vstack([carry[3], vecs])
            carry = None
        if example_id.size == 0:
            continue
        tail = example_id == example_id[-1]
        carry = (example_id[tail], word_id[tail], split[tail], vecs[tail])
        body = ~tail
        keys, codes, units = aggregate(example_id[body], word_id[body], split[body], vecs[body])
        _check_finite(units, keys, view.model, view.path, unit)
        _ensure_sorted(keys, last_key, view.path)
        last_key = int(keys[-1]) if keys.size else last_key
        yield keys, codes, units
    if carry is not None:
        keys, codes, units = aggregate(*carry)
        _check_finite(units, keys, view.model, view.path, unit)
        _ensure_sorted(keys, last_key, view.path)
        yield keys, codes, units


def iter_units(view: ViewSpec, unit: str, pooling: str = "mean", chunk_tokens: int | None = None):
    if unit == "example":
        return iter_example_units(view, pooling)
    if unit in ("word", "chunk"):
        if unit == "chunk" and not chunk_tokens:
            raise WorkflowInputError("unit 'chunk' needs the chunk length T (chunk_tokens) of a chunks dataset.")
        return iter_token_units(view, unit, chunk_tokens)
    raise WorkflowInputError(f"unknown decomposition unit {unit!r}; use one of {UNITS} in decomposition.units.")


def validation_mask(example_ids: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """True for the examples whose units go to the validation part of the train split.

    A deterministic hash (splitmix64 of example_id and the seed) mapped to [0, 1): the same example is on the same
    side in every model, pair and run, and every unit of an example (all its words) lands on the same side.
    """
    if fraction <= 0:
        return np.zeros(np.shape(example_ids), bool)
    with np.errstate(over="ignore"):
        x = np.asarray(example_ids, np.int64).astype(np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (int(seed) + 1)) % 2**64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(2 ** 53) < fraction


def unit_example_ids(keys: np.ndarray, unit: str) -> np.ndarray:
    return keys >> WORD_BITS if unit == "word" else keys


def mark_validation(stream: Iterable, unit: str, fraction: float, seed: int = 0):
    """Re-code the train units of a unit stream that fall in the validation part (code VALID_CODE)."""
    for keys, codes, vecs in stream:
        if fraction > 0 and keys.size:
            codes = codes.copy()
            codes[(codes == 0) & validation_mask(unit_example_ids(keys, unit), fraction, seed)] = VALID_CODE
        yield keys, codes, vecs


@dataclass
class AlignmentCounts:
    matched: int = 0
    only_a: int = 0
    only_b: int = 0


def align_streams(stream_a: Iterable, stream_b: Iterable, counts: AlignmentCounts | None = None,
                  names: tuple[str, str] = ("a", "b"), with_keys: bool = False) -> Iterator[tuple]:
    """Join two key-sorted unit streams in lockstep: yields (split codes, vectors of a, vectors of b) per
    matched block, preceded by the matched keys when with_keys. Keys present in only one stream are dropped
    (and counted)."""
    counts = counts if counts is not None else AlignmentCounts()
    iters = [iter(stream_a), iter(stream_b)]
    buffers = [None, None]
    done = [False, False]

    def pull(side):
        try:
            keys, codes, vecs = next(iters[side])
        except StopIteration:
            done[side] = True
            return
        if buffers[side] is None:
            buffers[side] = (keys, codes, vecs)
        else:
            old = buffers[side]
            buffers[side] = (np.r_[old[0], keys], np.r_[old[1], codes], np.vstack([old[2], vecs]))

    empty_keys = np.zeros(0, np.int64)
    everything = np.iinfo(np.int64).max
    while True:
        for side in (0, 1):
            while not done[side] and (buffers[side] is None or buffers[side][0].size == 0):
                pull(side)
        if all(done) and all(b is None or b[0].size == 0 for b in buffers):
            break
        # A finished stream holds every key it will ever have; an open one only up to its last buffered key.
        limit = min(everything if done[s] else int(buffers[s][0][-1]) for s in (0, 1))
        parts = []
        for side in (0, 1):
            if buffers[side] is None:
                parts.append((empty_keys, np.zeros(0, np.int8), None))
                continue
            keys, codes, vecs = buffers[side]
            cut = int(np.searchsorted(keys, limit, side="right"))
            parts.append((keys[:cut], codes[:cut], vecs[:cut]))
            buffers[side] = (keys[cut:], codes[cut:], vecs[cut:])
        (ka, ca, va), (kb, cb, vb) = parts
        common, ia, ib = np.intersect1d(ka, kb, assume_unique=True, return_indices=True)
        counts.matched += common.size
        counts.only_a += ka.size - common.size
        counts.only_b += kb.size - common.size
        if common.size:
            if np.any(ca[ia] != cb[ib]):
                bad = int(common[np.flatnonzero(ca[ia] != cb[ib])[0]])
                raise WorkflowInputError(
                    f"models {names[0]!r} and {names[1]!r} disagree on the split of unit key {bad}: their hidden "
                    f"states come from different versions of the dataset. Re-run their extraction."
                )
            yield (common, ca[ia], va[ia], vb[ib]) if with_keys else (ca[ia], va[ia], vb[ib])


# ================================================================================== pair moment files
def canonical_pair(model_a: str, model_b: str) -> tuple[str, str]:
    """The canonical order of an unordered model pair (by name)."""
    if model_a == model_b:
        raise ValueError("a pair needs two different models")
    return (model_a, model_b) if model_a < model_b else (model_b, model_a)


def model_pairs(models: Sequence[str]) -> list[tuple[str, str]]:
    return [canonical_pair(a, b) for a, b in itertools.combinations(sorted(set(models)), 2)]


def layers_tag(target_layer: int, basis_layer: int) -> str:
    return f"t{target_layer}_b{basis_layer}"


def view_layers(target_layer: int, basis_layer: int, n_layers: int, model: str) -> tuple:
    """Resolved layers of a model's views: (target,) when target and basis layers coincide, else (target, basis)."""
    target = hidden_states.resolve_layer(target_layer, n_layers, f"decomposition.target_layer for model {model!r}:")
    basis = hidden_states.resolve_layer(basis_layer, n_layers, f"decomposition.basis_layer for model {model!r}:")
    return (target,) if target == basis else (target, basis)


def make_view(model: str, path: str, unit: str, target_layer: int, basis_layer: int) -> ViewSpec:
    meta = hidden_states.check_hidden_metadata(path, model=model)  # a file of another model is refused
    n_layers = int(meta["n_layers"])
    layers = view_layers(target_layer, basis_layer, n_layers, model)
    if unit in ("word", "chunk"):
        stored = sorted({hidden_states.resolve_layer(int(l), n_layers) for l in meta.get("token_layers", [])})
        missing = [l for l in layers if l not in stored]
        if missing:
            raise WorkflowInputError(
                f"{path} (model {model!r}) stores per-token vectors for layers {stored} only, but the {unit!r} unit "
                f"needs layer(s) {missing}. Add them to extraction.token_layers (e.g. [{', '.join(str(l) for l in missing)}]) "
                f"or change decomposition.target_layer / basis_layer."
            )
    return ViewSpec(model, str(path), layers, int(meta["hidden_size"]))


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


def compute_pair_moments(view_a: ViewSpec, view_b: ViewSpec, unit: str, pooling: str = "mean",
                         chunk_tokens: int | None = None, block_rows: int = 8192, validation_fraction: float = 0.2,
                         validation_seed: int = 0) -> tuple[dict, AlignmentCounts]:
    """One streamed pass over both models' files: moments of the concatenation [a views, b views] for the
    `fit` and `valid` parts of the train split (a hash of example_id, see validation_mask) and the test split,
    and per split the examples' count and between-example sums of squares (moments[split].groups /
    .between, see BetweenExamples). `merge_train` gives the whole train split."""
    dim = view_a.hidden_size * len(view_a.layers) + view_b.hidden_size * len(view_b.layers)
    moments = {split: Moments(dim) for split in STORED_SPLITS}
    between = {split: BetweenExamples(dim) for split in STORED_SPLITS}
    counts = AlignmentCounts()
    streams = [mark_validation(iter_units(view, unit, pooling, chunk_tokens), unit, validation_fraction, validation_seed)
               for view in (view_a, view_b)]
    stream = align_streams(*streams, counts, (view_a.model, view_b.model), with_keys=True)
    # Small row groups are gathered into blocks of about `block_rows` before the rank-k update (BLAS is
    # faster on big blocks); memory stays bounded by the block, not by the corpus.
    pending = {split: [] for split in STORED_SPLITS}
    pending_rows = {split: 0 for split in STORED_SPLITS}
    code_of = {"fit": 0, "test": 1, "valid": VALID_CODE}

    def flush(split):
        if pending[split]:
            moments[split].update(np.vstack(pending[split]))
            pending[split], pending_rows[split] = [], 0

    for keys, codes, va, vb in stream:
        rows = np.hstack([va, vb])
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
    return moments, counts


def merge_train(moments: dict) -> Moments:
    """The whole train split: the fit and valid parts merged (exact, Chan et al.), with their examples' counts
    and between-example sums of squares (the parts hold disjoint examples)."""
    fit, valid = moments["fit"], moments["valid"]
    train = fit.copy()
    train.merge(valid)
    train.groups = fit.groups + valid.groups
    train.between = merge_between(fit.n, fit.mean, fit.between, valid.n, valid.mean, valid.between)
    return train


def save_pair_moments(path, view_a: ViewSpec, view_b: ViewSpec, moments: dict, info: dict,
                      validation_fraction: float = 0.2, validation_seed: int = 0) -> None:
    arrays = {
        "format": np.array(MOMENTS_FORMAT),
        "models": np.array([view_a.model, view_b.model]),
        "dims": np.array([view_a.hidden_size, view_b.hidden_size]),
        "layers_a": np.array(view_a.layers), "layers_b": np.array(view_b.layers),
        "validation": np.array([float(validation_fraction), float(validation_seed)]),
        "info": np.array(repr(info)),
    }
    for split in STORED_SPLITS:
        mom = moments[split]
        arrays[f"n_{split}"] = np.array(mom.n)
        arrays[f"mean_{split}"] = mom.mean
        arrays[f"comoment_{split}"] = mom.comoment
        arrays[f"groups_{split}"] = np.array(mom.groups)
        arrays[f"between_{split}"] = mom.between
    with files.atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


@dataclass
class PairMoments:
    models: tuple
    dims: tuple
    layers: tuple  # per model: tuple of resolved layers (one per view)
    n: dict
    mean: dict
    comoment: dict

    validation: tuple = (0.2, 0)  # (fraction, seed) of the fit / valid cut of the train split
    groups: dict = field(default_factory=dict)  # per split: number of examples the units come from
    between: dict = field(default_factory=dict)  # per split: between-example sum of squares per dimension

    @classmethod
    def load(cls, path) -> "PairMoments":
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise WorkflowInputError(f"{path} is not a readable moments file ({err}); delete it and re-run.") from err
        with data:
            _check_format(data, path)
            dim = int(data["comoment_test"].shape[0])
            parts = {s: Moments(dim, int(data[f"n_{s}"]), data[f"mean_{s}"], data[f"comoment_{s}"],
                                int(data[f"groups_{s}"]), data[f"between_{s}"]) for s in STORED_SPLITS}
            fraction, seed = (float(v) for v in data["validation"])
            models, dims = tuple(str(m) for m in data["models"]), tuple(int(d) for d in data["dims"])
            layers = (tuple(int(l) for l in data["layers_a"]), tuple(int(l) for l in data["layers_b"]))
        parts["train"] = merge_train(parts)
        return cls(models, dims, layers, {s: parts[s].n for s in ALL_SPLITS}, {s: parts[s].mean for s in ALL_SPLITS},
                   {s: parts[s].comoment for s in ALL_SPLITS}, (fraction, int(seed)),
                   {s: parts[s].groups for s in ALL_SPLITS}, {s: parts[s].between for s in ALL_SPLITS})

    def slices(self, model: str) -> list[slice]:
        """Column slices of a model's views (target view first) inside this pair's concatenation."""
        index = self.models.index(model)
        start = 0 if index == 0 else self.dims[0] * len(self.layers[0])
        d = self.dims[index]
        return [slice(start + k * d, start + (k + 1) * d) for k in range(len(self.layers[index]))]

    def view_slice(self, model: str, role: str) -> slice:
        views = self.slices(model)
        return views[0] if role == "target" or len(views) == 1 else views[1]

    def between_share(self, model: str, split: str, role: str = "target") -> float:
        """Share of a model view's variance (its sum of squares about the mean) lying between examples."""
        view = self.view_slice(model, role)
        total = float(np.trace(self.comoment[split][view, view]))
        return float(self.between[split][view].sum()) / total if total > 0 else float("nan")


# ======================================================================================== fitting
def split_stats_from_pair(pair: PairMoments, target: str, basis: str, split: str) -> SplitStats:
    """Exact statistics of target u (target view) and basis z (basis view) from one pair file."""
    n = pair.n[split]
    su, sz = pair.view_slice(target, "target"), pair.view_slice(basis, "basis")
    cov = pair.comoment[split] / n if n else np.full(pair.comoment[split].shape, np.nan)
    return SplitStats(n, pair.mean[split][su], pair.mean[split][sz], float(np.trace(cov[su, su])),
                      cov[su, sz], cov[sz, sz], pair.groups[split], pair.between_share(target, split))


def _check_format(data, path) -> None:
    if "format" not in data or int(data["format"]) != MOMENTS_FORMAT:
        raise WorkflowInputError(
            f"{path} was written by another version of this stage (moments format "
            f"{int(data['format']) if 'format' in data else '?'}, this code reads {MOMENTS_FORMAT}); delete it (or the "
            f"whole results/analysis/decomposition/.../moments folder) and re-run the workflow."
        )


def _read_header(path) -> dict:
    """Models, dims, layers and counts of a pair file without reading its matrices."""
    try:
        with np.load(path, allow_pickle=False) as data:
            _check_format(data, path)
            n = {s: int(data[f"n_{s}"]) for s in STORED_SPLITS}
            n["train"] = n["fit"] + n["valid"]
            groups = {s: int(data[f"groups_{s}"]) for s in STORED_SPLITS}
            groups["train"] = groups["fit"] + groups["valid"]
            return {"models": tuple(str(m) for m in data["models"]), "dims": tuple(int(d) for d in data["dims"]),
                    "layers": (tuple(int(l) for l in data["layers_a"]), tuple(int(l) for l in data["layers_b"])),
                    "n": n, "groups": groups, "validation": tuple(float(v) for v in data["validation"])}
    except (OSError, ValueError, KeyError) as err:
        raise WorkflowInputError(f"{path} is not a readable moments file ({err}); delete it and re-run.") from err


class JointMoments:
    """The joint covariance of all models' views (per split), assembled from the pair files.

    Off-diagonal blocks (m, m') come from the pair (m, m'); a model's own block and mean come from the first
    pair (in canonical order) that holds it. When every pair aligned the same units (always for `example` and
    `chunk` units; for `word` units when no word is missing from any model), this is exactly the joint
    covariance; otherwise it is the pairwise-complete estimate, and `consistent` says so.
    Pair files are read one at a time: memory is one joint matrix per split in `splits` (2: train, test for a
    fixed alpha; 4: fit, valid, train, test for alpha='validation'), each (sum of view dims)^2 x 8 bytes, plus the
    pair being read: 4 x (d_a + d_b)^2 x 8 bytes (the 3 stored co-moments, fit, valid and test, and their merged
    train).
    """

    def __init__(self, pair_paths: dict, models: Sequence[str], splits: Sequence[str] = SPLITS):
        self.models = list(models)
        self.splits = tuple(splits)
        self.paths = {canonical_pair(a, b): path for (a, b), path in pair_paths.items()}
        missing = [p for p in model_pairs(self.models) if p not in self.paths]
        if missing:
            raise WorkflowInputError(f"moments of model pairs {missing} are missing; re-run the workflow.")
        self.dims, self.layers, self.n = {}, {}, {split: {} for split in ALL_SPLITS}
        self.groups = {split: {} for split in ALL_SPLITS}
        self.validation = set()
        for pair in model_pairs(self.models):
            header = _read_header(self.paths[pair])
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
        if len(self.validation) > 1:
            raise WorkflowInputError(
                f"the pair moment files of {self.models} cut the train split with different validation settings "
                f"{sorted(self.validation)} (fraction, seed); delete results/analysis/decomposition/.../moments and re-run."
            )
        self.consistent = all(len(set(self.n[s].values())) <= 1 for s in ALL_SPLITS)
        # column offsets of each model's views in the joint matrix
        self.offset, total = {}, 0
        for model in self.models:
            self.offset[model] = total
            total += self.dims[model] * len(self.layers[model])
        self.cov = {split: np.zeros((total, total)) for split in self.splits}
        self.mean = {split: np.zeros(total) for split in self.splits}
        self.model_n = {split: {} for split in self.splits}
        self.share = {split: {} for split in self.splits}  # per model (target view): between-example share
        for pair_name in model_pairs(self.models):
            pair = PairMoments.load(self.paths[pair_name])
            a, b = pair.models
            ja, jb = self._span(a), self._span(b)
            pa_, pb_ = self._pair_span(pair, a), self._pair_span(pair, b)
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

    def _span(self, model: str) -> slice:
        start = self.offset[model]
        return slice(start, start + self.dims[model] * len(self.layers[model]))

    @staticmethod
    def _pair_span(pair: "PairMoments", model: str) -> slice:
        views = pair.slices(model)
        return slice(views[0].start, views[-1].stop)

    def view(self, model: str, role: str) -> np.ndarray:
        """Joint-matrix indices of a model's target or basis view."""
        d = self.dims[model]
        k = 0 if role == "target" or len(self.layers[model]) == 1 else 1
        start = self.offset[model] + k * d
        return np.arange(start, start + d)

    def group_stats(self, target: str, basis: Sequence[str], split: str) -> SplitStats:
        iu = self.view(target, "target")
        iz = np.concatenate([self.view(m, "basis") for m in basis])
        cov, mean = self.cov[split], self.mean[split]
        n_values = [self.n[split][p] for p in model_pairs([target, *basis])]
        group_values = [self.groups[split][p] for p in model_pairs([target, *basis])]
        return SplitStats(min(n_values), mean[iu], mean[iz], float(np.trace(cov[np.ix_(iu, iu)])),
                          cov[np.ix_(iu, iz)], cov[np.ix_(iz, iz)], min(group_values), self.share[split][target])


def check_units(n_train: int, n_test: int, what: str, min_train: int, min_test: int) -> None:
    if n_train < min_train or n_test < min_test:
        raise WorkflowInputError(
            f"{what}: {n_train} train and {n_test} test units, fewer than the {min_train} train / {min_test} test "
            f"units needed (decomposition.min_train_units / min_test_units). Use a larger dataset (max_examples), "
            f"another unit, or lower the minimum."
        )


def _fit_and_score(train: SplitStats, test: SplitStats, alpha: float, mode: str, what: str):
    """Fit on the whole train split with a fixed alpha, score train and test."""
    fit = fit_ridge(train, alpha, mode, what=what)
    r2_train = r_squared(fit, train, mode)[0]
    r2_test, mse, sst = r_squared(fit, test, mode)
    dims = train.cov_zz.shape[0]
    underdetermined = is_underdetermined(train.n, train.groups, dims)
    if underdetermined:
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


def _scored_fit(stats: dict, alpha, grid, mode: str, what: str, min_train: int, min_test: int, fraction: float):
    """Scores of one fit (group target or pair) with a fixed alpha or the validation choice."""
    check_units(stats["train"].n, stats["test"].n, what, min_train, min_test)
    extra = {"alpha_choice": "fixed", "r2_valid": float("nan"), "n_valid": 0}
    if alpha == VALIDATION:
        check_validation_split(stats["fit"], stats["valid"], what, min_train, min_test, fraction)
        started = time.perf_counter()
        alpha, r2_valid, scores = choose_alpha(stats["fit"], stats["valid"], grid, mode, what)
        LOG.info("%s: validation R2 per alpha %s -> alpha %g (validation R2 %.4f; %d fit / %d validation units, "
                 "%.1f s)", what, ", ".join(f"{a:g}: {r:.4f}" for a, r in zip(grid, scores)), alpha, r2_valid,
                 stats["fit"].n, stats["valid"].n, time.perf_counter() - started)
        if alpha in (min(grid), max(grid)) and len(grid) > 1:
            LOG.warning("%s: the chosen alpha %g is at the edge of decomposition.alpha_grid; widen the grid.", what, alpha)
        extra = {"alpha_choice": VALIDATION, "r2_valid": r2_valid, "n_valid": stats["valid"].n}
    _, scores = _fit_and_score(stats["train"], stats["test"], alpha, mode, what)
    return {"alpha": alpha, **extra, **scores}


def decompose(pair_paths: dict, models: Sequence[str], alpha, mode: str = "paper",
              min_train: int = 2, min_test: int = 2, alpha_grid: Sequence[float] = DEFAULT_ALPHA_GRID):
    """Group and pairwise R² of every model as target. Returns (group rows, pairwise rows) as lists of dicts.

    alpha: a number (fixed ridge penalty, the paper's 1e-6) or 'validation' (per fit, the alpha of `alpha_grid`
    with the best R² on the validation part of the train split when fitted on the fit part; then refitted on the
    whole train split with it and scored on the test split).
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
    joint = JointMoments(pair_paths, models, splits)
    fraction = next(iter(joint.validation))[0]
    if not joint.consistent:
        LOG.warning(
            "model pairs aligned different numbers of units (train %s, test %s): group fits use the pairwise-complete "
            "estimate of the joint covariance (see docs/decomposition.md)",
            sorted(set(joint.n["train"].values())), sorted(set(joint.n["test"].values())),
        )
    group_rows = []
    for target in models:
        basis = [m for m in models if m != target]
        started = time.perf_counter()
        stats = {split: joint.group_stats(target, basis, split) for split in splits}
        train, test = stats["train"], stats["test"]
        scores = _scored_fit(stats, alpha, grid, mode, f"target {target!r}, basis {basis}", min_train, min_test, fraction)
        group_rows.append({
            "model": target, "layer": joint.layers[target][0], "basis_models": ";".join(basis),
            "basis_layers": ";".join(str(joint.layers[m][-1]) for m in basis),
            "n_train": train.n, "n_test": test.n, "dims": joint.dims[target], "basis_dims": int(train.cov_zz.shape[0]),
            "alpha": scores["alpha"], "mode": mode, **scores, "units_consistent": joint.consistent,
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
            scores = _scored_fit(stats, alpha, grid, mode, f"target {target!r}, basis {other!r}", min_train, min_test,
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


# ========================================================================================= figures
def plot_pairwise(matrix, title: str, paths: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(matrix.index)
    values = matrix.to_numpy(dtype=float)
    size = max(4.0, 0.7 * len(models) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="cividis", vmin=min(0.0, np.nanmin(values)) if np.isfinite(values).any() else 0.0, vmax=1.0)
    for i in range(len(models)):
        for j in range(len(models)):
            if np.isfinite(values[i, j]):
                shade = image.norm(values[i, j])
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=9,
                        color="black" if shade > 0.55 else "white")
    ax.set_xticks(range(len(models)), models, rotation=45, ha="right")
    ax.set_yticks(range(len(models)), models)
    ax.set_xlabel("basis model (z)")
    ax.set_ylabel("target model (u)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="test R² (fraction of variance explained)")
    plotting.save_figure(fig, paths)


def plot_group(group_frame, title: str, paths: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(group_frame["model"])
    x = np.arange(len(models))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(models) + 2.5), 4.5))
    for offset, column, label, colour in ((-0.2, "r2_train", "train", plotting.colour(0)),
                                           (0.2, "r2_test", "test", plotting.colour(1))):
        bars = ax.bar(x + offset, group_frame[column], width=0.4, label=label, color=colour)
        ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    mean_test = float(group_frame["r2_test"].mean())
    ax.axhline(mean_test, color="0.3", linestyle="--", linewidth=1, label=f"mean test R² = {mean_test:.3f}")
    labels = models
    if "alpha_choice" in group_frame and (group_frame["alpha_choice"] == VALIDATION).any():
        labels = [f"{m}\nα={a:g}" for m, a in zip(models, group_frame["alpha"])]  # the alpha chosen per target
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylabel("group R² (fraction of variance explained)")
    ax.set_xlabel("target model (basis: all other models)")
    low = min(0.0, float(np.nanmin(group_frame[["r2_train", "r2_test"]].to_numpy()))) if len(group_frame) else 0.0
    ax.set_ylim(low, 1.08)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    plotting.save_figure(fig, paths)


# ====================================================================================== entry points
def run_moments(smk) -> None:
    p = smk.params
    wc = smk.wildcards
    view_a = make_view(wc.model_a, smk.input.a, wc.unit, p.target_layer, p.basis_layer)
    view_b = make_view(wc.model_b, smk.input.b, wc.unit, p.target_layer, p.basis_layer)
    LOG.info("moments of (%s layers %s, %s layers %s), unit %s, dataset %s", view_a.model, view_a.layers,
             view_b.model, view_b.layers, wc.unit, wc.dataset)
    started = time.perf_counter()
    moments, counts = compute_pair_moments(view_a, view_b, wc.unit, p.pooling, p.chunk_tokens,
                                           validation_fraction=p.validation_fraction, validation_seed=p.validation_seed)
    LOG.info("units: %d aligned (train %d = fit %d + validation %d, test %d); dropped %d only in %s, %d only in %s; "
             "%.1f s", counts.matched, moments["fit"].n + moments["valid"].n, moments["fit"].n, moments["valid"].n,
             moments["test"].n, counts.only_a, view_a.model, counts.only_b, view_b.model, time.perf_counter() - started)
    train = merge_train(moments)
    total = train.comoment.diagonal()
    for view, start, stop in ((view_a, 0, view_a.hidden_size), (view_b, view_a.hidden_size * len(view_a.layers),
                                                               view_a.hidden_size * len(view_a.layers) + view_b.hidden_size)):
        ss = float(total[start:stop].sum())
        LOG.info("%s: %d train units from %d examples; between-example share of the train variance %.3f", view.model,
                 train.n, train.groups, float(train.between[start:stop].sum()) / ss if ss > 0 else float("nan"))
    if counts.matched == 0:
        raise WorkflowInputError(
            f"models {view_a.model!r} and {view_b.model!r} share no {wc.unit!r} unit on dataset {wc.dataset!r}: "
            f"check that both were extracted from the same dataset version."
        )
    if counts.only_a or counts.only_b:
        LOG.warning("%d + %d units are missing from one of the two models (truncation or untokenised words)",
                    counts.only_a, counts.only_b)
    info = {"dataset": wc.dataset, "unit": wc.unit, "pooling": p.pooling, "chunk_tokens": p.chunk_tokens,
            "only_a": counts.only_a, "only_b": counts.only_b, "code_version": lmcompare.__version__}
    save_pair_moments(smk.output.moments, view_a, view_b, moments, info, p.validation_fraction, p.validation_seed)


def run_fit(smk) -> None:
    import pandas as pd

    p = smk.params
    models = list(p.models)
    pair_paths = {canonical_pair(a, b): path for (a, b), path in zip(p.pairs, smk.input.moments)}
    alpha = alpha_from_tag(smk.wildcards.alpha)
    grid = p.alpha_grid if alpha == VALIDATION else ()
    group_rows, pair_rows = decompose(pair_paths, models, alpha, smk.wildcards.mode, p.min_train_units,
                                      p.min_test_units, grid)
    extra = {"dataset": smk.wildcards.dataset, "unit": smk.wildcards.unit}
    group = pd.DataFrame([{**extra, **row} for row in group_rows])
    pairs = pd.DataFrame([{**extra, **row} for row in pair_rows])
    files.write_table(group, smk.output.group)
    files.write_table(pairs, smk.output.pairwise)
    files.write_table(pairwise_matrix(pair_rows, models).reset_index(), smk.output.matrix)
    LOG.info("mean group R2 (test) over %d models: %.4f", len(models), group["r2_test"].mean())


def run_figures(smk) -> None:
    import pandas as pd

    wc = smk.wildcards
    group = pd.read_csv(smk.input.group)
    matrix = pd.read_csv(smk.input.matrix).set_index("model")
    n_train, n_test = int(group["n_train"].min()), int(group["n_test"].min())
    alpha = alpha_from_tag(wc.alpha)
    if alpha == VALIDATION:
        chosen = group["alpha"]
        alpha_text = f"alpha by validation ({chosen.min():g}..{chosen.max():g})" if chosen.nunique() > 1 else f"alpha by validation ({chosen.iloc[0]:g})"
    else:
        alpha_text = f"alpha {alpha:g}"
    where = (f"{wc.dataset}, unit {wc.unit}, layers {wc.layers}, mode {wc.mode}, {alpha_text};\n"
             f"{n_train} train / {n_test} test units")
    plot_pairwise(matrix, f"Pairwise LMD: test R² of target from basis\n({where})", [smk.output.heatmap_png, smk.output.heatmap_svg])
    plot_group(group, f"Group LMD: each model from all the others\n({where})", [smk.output.group_png, smk.output.group_svg])


def main(smk) -> None:
    from threadpoolctl import threadpool_limits

    # BLAS may use only the threads the scheduler granted (on a shared node it would take every core)
    with threadpool_limits(limits=max(1, int(smk.threads))):
        step = smk.params.step
        if step == "moments":
            run_moments(smk)
        elif step == "fit":
            run_fit(smk)
        elif step == "figures":
            run_figures(smk)
        else:
            raise ValueError(f"unknown step {step!r}")

