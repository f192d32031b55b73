r"""Layer sweeps: every swept layer of model X against every swept layer of model Y, from one streamed pass per
model pair (docs/similarity.md, "Layer sweeps").

The pass accumulates, per stored split of the decomposition (the train split's fit and valid parts and the test
split, cut as the pair files cut them: decomposition.validation_split), the statistics every moment-based measure
of a layer pair (l, m) is a function of (statistics.PairStatistics) and every ridge fit of one layer from the other
(layer_fits): the similarity measures use the parts merged (every aligned unit, as the similarity table), the R²
fits train (fit + valid) and test apart. Per part:

- n and the mean of every swept layer of both models;
- per layer, its own co-moment Sxx_l (L_x blocks of d_x x d_x; L_y blocks of d_y x d_y for Y);
- per layer pair, the cross co-moment Sxy_lm: one (L_x d_x) x (L_y d_y) matrix;
- the norm sums of the debiased CKA, sum a_l², sum b_m², sum a_l b_m with a_l(i) = ||x_il - mean||², and the
  third-order sums that moving the centre needs: sum a_l r_xl, sum b_m r_xl (and Y's).

No co-moment between two layers of the same model is kept (no measure and no fit needs it): memory per part is
8 (L_x d_x² + L_y d_y² + L_x L_y d_x d_y) bytes plus small terms, e.g. 13 x 13 layers of 768 dims: 797 MB of cross
co-moments and 2 x 61 MB of own co-moments, three parts 2.8 GB; it never grows with the number of units. (A Moments
of the concatenation of all layers would hold (L_x d_x + L_y d_y)² numbers: 3.2 GB per part there.)

Update per block of rows (exact, the batch form of Welford's update, equal to Chan et al.'s pairwise merge that
decomposition.moments uses): with the running mean m, the block's rows X (and Y), the new mean m' and
C the co-moment, C' = C + (X - m)^T (Y - m'): one GEMM straight into the accumulator, no block-sized copy of the
cross co-moment. The norm sums are moved from m to m' with the expansions of Moments._shifted_norms restricted to
the block pairs kept here (a layer with itself, a layer of X with a layer of Y), then the block's own sums about
m' are added. Parts merge exactly (SweepMoments.merge: Chan et al.'s update of the co-moments, the norm sums moved
to the merged mean first).
"""

import logging
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import scipy.linalg

from lmcompare import __version__, files, hidden_states
from lmcompare.decomposition.alignment import AlignmentCounts, align_streams
from lmcompare.decomposition.moments import STORED_SPLITS
from lmcompare.decomposition.units import ModelLayers, iter_units, unit_example_ids
from lmcompare.decomposition.validation_split import VALID_CODE, mark_validation
from lmcompare.errors import WorkflowInputError
from lmcompare.similarity.statistics import PairStatistics
from lmcompare.similarity.tags import SWEEP_FORMAT, sweep_memory_bytes

LOG = logging.getLogger("workflow")


@dataclass
class SweepMoments:
    """Streamed statistics of every (layer of X, layer of Y) pair (module docstring)."""

    dims: tuple  # (d_x, d_y)
    counts: tuple  # (L_x, L_y): swept layers of each side
    n: int = 0
    groups: int = 0  # the examples the n units come from (n for example units; reviews for word units)
    mean: np.ndarray = field(default=None)  # (L_x d_x + L_y d_y,): X's layers, then Y's
    own_x: np.ndarray = field(default=None)  # (L_x, d_x, d_x)
    own_y: np.ndarray = field(default=None)  # (L_y, d_y, d_y)
    cross: np.ndarray = field(default=None)  # (L_x d_x, L_y d_y): block (l, m) is Sxy of layer l with layer m
    norm_x: np.ndarray = field(default=None)  # (L_x,): sum a_l²
    norm_y: np.ndarray = field(default=None)  # (L_y,)
    norm_xy: np.ndarray = field(default=None)  # (L_x, L_y): sum a_l b_m
    weighted_x: np.ndarray = field(default=None)  # (L_x, d_x): sum a_l r_xl
    weighted_y: np.ndarray = field(default=None)  # (L_y, d_y)
    weighted_xy: np.ndarray = field(default=None)  # (L_x, d_x, L_y): sum b_m r_xl
    weighted_yx: np.ndarray = field(default=None)  # (L_y, d_y, L_x): sum a_l r_ym

    def __post_init__(self):
        (dx, dy), (lx, ly) = self.dims, self.counts
        shapes = {"mean": (lx * dx + ly * dy,), "own_x": (lx, dx, dx), "own_y": (ly, dy, dy),
                  "cross": (lx * dx, ly * dy), "norm_x": (lx,), "norm_y": (ly,), "norm_xy": (lx, ly),
                  "weighted_x": (lx, dx), "weighted_y": (ly, dy), "weighted_xy": (lx, dx, ly),
                  "weighted_yx": (ly, dy, lx)}
        for name, shape in shapes.items():
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(shape))

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in ARRAYS)

    def update(self, rows_x: np.ndarray, rows_y: np.ndarray) -> None:
        """Add a block of aligned rows: rows_x (m, L_x d_x), X's layers side by side; rows_y likewise."""
        rows_x, rows_y = np.asarray(rows_x, np.float64), np.asarray(rows_y, np.float64)
        m = rows_x.shape[0]
        if m == 0:
            return
        (dx, dy), (lx, ly) = self.dims, self.counts
        if rows_x.shape != (m, lx * dx) or rows_y.shape != (m, ly * dy):
            raise ValueError(f"rows of shapes {rows_x.shape}, {rows_y.shape}; the sweep holds {lx} x {dx} and "
                             f"{ly} x {dy} columns")
        rows = np.hstack([rows_x, rows_y])
        old = rows.mean(axis=0) if self.n == 0 else self.mean  # any old centre is exact when n = 0
        total = self.n + m
        new = old + (rows.mean(axis=0) - old) * (m / total)
        if self.n:
            self._shift_norms(old - new)
        # the block's own norm sums about the new mean
        width = lx * dx
        rx, ry = (rows_x - new[:width]).reshape(m, lx, dx), (rows_y - new[width:]).reshape(m, ly, dy)
        a, b = np.einsum("nld,nld->nl", rx, rx), np.einsum("nld,nld->nl", ry, ry)
        self.norm_x += np.einsum("nl,nl->l", a, a)
        self.norm_y += np.einsum("nl,nl->l", b, b)
        self.norm_xy += a.T @ b
        self.weighted_x += np.einsum("nl,nld->ld", a, rx)
        self.weighted_y += np.einsum("nl,nld->ld", b, ry)
        self.weighted_xy += (rx.reshape(m, width).T @ b).reshape(lx, dx, ly)
        self.weighted_yx += (ry.reshape(m, ly * dy).T @ a).reshape(ly, dy, lx)
        # co-moments: C' = C + (rows - old)^T (rows - new), into the accumulators
        dx_old = (rows_x - old[:width]).reshape(m, lx, dx)
        dy_old = (rows_y - old[width:]).reshape(m, ly, dy)
        for layer in range(lx):
            self.own_x[layer] += dx_old[:, layer].T @ rx[:, layer]
        for layer in range(ly):
            self.own_y[layer] += dy_old[:, layer].T @ ry[:, layer]
        # cross (C order) is the Fortran-order view of its transpose: cross^T += (Y - new)^T (X - old) in place
        transposed = self.cross.T
        # (both factors passed as Fortran-order transposes of C-order arrays: no copy)
        out = scipy.linalg.blas.dgemm(1.0, ry.reshape(m, ly * dy).T, dx_old.reshape(m, width).T, beta=1.0,
                                      c=transposed, trans_b=1, overwrite_c=1)
        if not np.shares_memory(out, self.cross):  # BLAS wrappers copy when layouts do not match
            self.cross = np.ascontiguousarray(out.T)
        self.mean, self.n = new, total

    def merge(self, other: "SweepMoments") -> None:
        """Add another part's statistics (disjoint units), exactly: both parts' norm sums moved to the merged mean
        with their own co-moments (_shift_norms), then the co-moments merged by Chan et al.'s update,
        C = C_self + C_other + (n_self n_other / n) (mean_other - mean_self)(...)^T per kept block."""
        if other.n == 0:
            return
        if (other.dims, other.counts) != (self.dims, self.counts):
            raise ValueError(f"a sweep part of {other.dims} dims x {other.counts} layers cannot be merged into one of "
                             f"{self.dims} x {self.counts}")
        if self.n == 0:
            for name in ARRAYS:
                setattr(self, name, np.array(getattr(other, name), dtype=np.float64))
            self.n, self.groups = other.n, other.groups
            return
        (dx, dy), (lx, ly) = self.dims, self.counts
        total = self.n + other.n
        delta = np.asarray(other.mean) - self.mean
        mean = self.mean + delta * (other.n / total)
        moved = SweepMoments(self.dims, self.counts, other.n, other.groups,
                             **{name: getattr(other, name) for name in ARRAYS})  # a view: _shift_norms reassigns
        moved._shift_norms(moved.mean - mean)
        self._shift_norms(self.mean - mean)
        for name in NORM_ARRAYS:
            setattr(self, name, getattr(self, name) + getattr(moved, name))
        weight = self.n * other.n / total
        width = lx * dx
        delta_x, delta_y = delta[:width].reshape(lx, dx), delta[width:].reshape(ly, dy)
        self.own_x += np.asarray(other.own_x) + weight * np.einsum("li,lj->lij", delta_x, delta_x)
        self.own_y += np.asarray(other.own_y) + weight * np.einsum("li,lj->lij", delta_y, delta_y)
        self.cross += np.asarray(other.cross)
        for layer in range(lx):  # the rank-one correction one X layer's rows at a time: no cross-sized temporary
            self.cross[layer * dx:(layer + 1) * dx] += weight * np.outer(delta_x[layer], delta[width:])
        self.mean, self.n, self.groups = mean, total, self.groups + other.groups

    def _shift_norms(self, shift: np.ndarray) -> None:
        """The norm sums about (mean - shift) instead of the mean (Moments._shifted_norms, restricted to the block
        pairs kept): with s the shift and r the rows about the mean, a' = a + 2 s.r + ||s||² per layer."""
        (dx, dy), (lx, ly), n = self.dims, self.counts, self.n
        sx, sy = shift[:lx * dx].reshape(lx, dx), shift[lx * dx:].reshape(ly, dy)
        qx, qy = np.einsum("ld,ld->l", sx, sx), np.einsum("ld,ld->l", sy, sy)
        px, py = np.einsum("lii->l", self.own_x), np.einsum("lii->l", self.own_y)
        own_sx, own_sy = np.einsum("lij,lj->li", self.own_x, sx), np.einsum("lij,lj->li", self.own_y, sy)
        cross = self.cross.reshape(lx, dx, ly, dy)
        cross_sy = np.einsum("ldme,me->ldm", cross, sy)  # C_{x_l, y_m} s_{y_m}
        cross_sx = np.einsum("ldme,ld->mel", cross, sx)  # C_{y_m, x_l} s_{x_l}
        self.norm_x = (self.norm_x + 4 * np.einsum("ld,ld->l", sx, self.weighted_x)
                       + 4 * np.einsum("ld,ld->l", sx, own_sx) + 2 * qx * px + n * qx ** 2)
        self.norm_y = (self.norm_y + 4 * np.einsum("ld,ld->l", sy, self.weighted_y)
                       + 4 * np.einsum("ld,ld->l", sy, own_sy) + 2 * qy * py + n * qy ** 2)
        self.norm_xy = (self.norm_xy + 2 * np.einsum("me,mel->lm", sy, self.weighted_yx)
                        + 2 * np.einsum("ld,ldm->lm", sx, self.weighted_xy) + 4 * np.einsum("ld,ldm->lm", sx, cross_sy)
                        + np.outer(px, qy) + np.outer(qx, py) + n * np.outer(qx, qy))
        self.weighted_x = self.weighted_x + sx * (px + n * qx)[:, None] + 2 * own_sx
        self.weighted_y = self.weighted_y + sy * (py + n * qy)[:, None] + 2 * own_sy
        self.weighted_xy = self.weighted_xy + sx[:, :, None] * (py + n * qy)[None, None, :] + 2 * cross_sy
        self.weighted_yx = self.weighted_yx + sy[:, :, None] * (px + n * qx)[None, None, :] + 2 * cross_sx

    def statistics(self, layer_x: int, layer_y: int) -> PairStatistics:
        """The PairStatistics of X's layer_x-th and Y's layer_y-th swept layer (indices into the sweep)."""
        (dx, dy) = self.dims
        sxy = self.cross[layer_x * dx:(layer_x + 1) * dx, layer_y * dy:(layer_y + 1) * dy]
        return PairStatistics(self.n, self.own_x[layer_x], self.own_y[layer_y], sxy, float(self.norm_x[layer_x]),
                              float(self.norm_y[layer_y]), float(self.norm_xy[layer_x, layer_y]))


NORM_ARRAYS = ("norm_x", "norm_y", "norm_xy", "weighted_x", "weighted_y", "weighted_xy", "weighted_yx")
ARRAYS = ("mean", "own_x", "own_y", "cross", *NORM_ARRAYS)
# The arrays a sweep file's parts are memory-mapped for (SweepFile.load(lazy=True)): the ones that grow with d².
LARGE_ARRAYS = ("own_x", "own_y", "cross")


def merged(parts) -> SweepMoments:
    """The parts (disjoint units) merged into one in-memory SweepMoments (every unit)."""
    parts = list(parts)
    total = SweepMoments(parts[0].dims, parts[0].counts)
    for part in parts:
        total.merge(part)
    return total


# ----------------------------------------------------------------------------------- the swept layers
@dataclass(frozen=True)
class SweptModel:
    """One model of a sweep: its file and the layers read (resolved, increasing), with its depth."""

    source: ModelLayers
    n_layers: int  # hidden-state layers of the model (0 = embeddings ... n_layers - 1 = last)

    def depths(self) -> np.ndarray:
        """Relative depth l / (n_layers - 1) of each swept layer."""
        return np.array(self.source.layers, dtype=np.float64) / max(self.n_layers - 1, 1)


def swept_model(model: str, hidden_file: str, unit: str, layers=None) -> SweptModel:
    """The layers of a model a sweep reads: every layer (layers None; for word and chunk units, every layer stored
    per token: extraction.token_layers) or the listed ones (negative from the end), checked against the file."""
    meta = hidden_states.check_hidden_metadata(hidden_file, model=model)
    n_layers = int(meta["n_layers"])
    stored = list(range(n_layers)) if unit == "example" else sorted(
        {hidden_states.resolve_layer(int(layer), n_layers) for layer in meta.get("token_layers", [])})
    if layers is None:
        chosen = stored
    else:
        chosen = sorted({hidden_states.resolve_layer(int(layer), n_layers,
                                                     f"similarity.layer_sweep.layers for model {model!r}:")
                         for layer in layers})
        missing = [layer for layer in chosen if layer not in stored]
        if missing:
            raise WorkflowInputError(
                f"{hidden_file} (model {model!r}) stores per-token vectors for layers {stored} only, but the layer "
                f"sweep of {unit!r} units asks for {missing}. Add them to extraction.token_layers (each costs "
                f"hidden_size x 4 bytes per token) or change similarity.layer_sweep.layers.")
    if not chosen:
        raise WorkflowInputError(f"{hidden_file} (model {model!r}) stores no per-token layer for the {unit!r} "
                                 f"units of the layer sweep; set extraction.token_layers or sweep 'example' units.")
    return SweptModel(ModelLayers(model, str(hidden_file), tuple(chosen), int(meta["hidden_size"])), n_layers)


def compute_sweep_moments(x: SweptModel, y: SweptModel, unit: str, pooling: str = "mean",
                          chunk_tokens: int | None = None, block_rows: int = 2048, validation_fraction: float = 0.2,
                          validation_seed: int = 0) -> tuple[dict, AlignmentCounts]:
    """One streamed pass over both models' files, joined on the units both have: per stored split (STORED_SPLITS:
    the train split's fit and valid parts, cut by the decomposition's seeded hash of example_id, and test) the
    SweepMoments of every swept layer pair. Rows are gathered into blocks of about block_rows per part (memory:
    block_rows x all swept columns per part)."""
    parts = {split: SweepMoments((x.source.hidden_size, y.source.hidden_size),
                                 (len(x.source.layers), len(y.source.layers))) for split in STORED_SPLITS}
    counts = AlignmentCounts()
    stream = align_streams(
        mark_validation(iter_units(x.source, unit, pooling, chunk_tokens), unit, validation_fraction, validation_seed),
        mark_validation(iter_units(y.source, unit, pooling, chunk_tokens), unit, validation_fraction, validation_seed),
        counts, (x.source.model, y.source.model), with_keys=True)
    code_of = {"fit": 0, "valid": VALID_CODE, "test": 1}
    pending = {split: [] for split in STORED_SPLITS}
    pending_rows = dict.fromkeys(STORED_SPLITS, 0)
    last_example = dict.fromkeys(STORED_SPLITS)  # units arrive in key order: an example's units are contiguous

    def flush(split):
        if pending[split]:
            parts[split].update(np.vstack([p[0] for p in pending[split]]), np.vstack([p[1] for p in pending[split]]))
            pending[split], pending_rows[split] = [], 0

    for keys, codes, rows_x, rows_y in stream:
        examples = unit_example_ids(keys, unit)
        for split, code in code_of.items():
            mask = codes == code
            if not mask.any():
                continue
            pending[split].append((rows_x[mask], rows_y[mask]))
            pending_rows[split] += int(mask.sum())
            ids = np.unique(examples[mask])
            parts[split].groups += int(ids.size) - int(ids[0] == last_example[split])
            last_example[split] = ids[-1]
            if pending_rows[split] >= block_rows:
                flush(split)
    for split in STORED_SPLITS:
        flush(split)
    return parts, counts


# ------------------------------------------------------------------------------------- the sweep file
def save_sweep(path, x: SweptModel, y: SweptModel, parts: dict, info: dict, validation=(0.2, 0)) -> None:
    """The sweep file: an uncompressed .npz with every part's arrays under '{split}.{array}' (so that the large ones
    can be memory-mapped, SweepFile.load(lazy=True)), the models, their swept layers and depths, and the
    validation cut (fraction, seed) the parts were made with."""
    arrays = {f"{split}.{name}": getattr(part, name) for split, part in parts.items() for name in ARRAYS}
    arrays.update({f"{split}.{name}": np.array(getattr(part, name)) for split, part in parts.items()
                   for name in ("n", "groups")})
    first = next(iter(parts.values()))
    arrays.update({"format": np.array(SWEEP_FORMAT), "models": np.array([x.source.model, y.source.model]),
                   "dims": np.array(first.dims), "splits": np.array(list(parts)),
                   "layers_x": np.array(x.source.layers), "layers_y": np.array(y.source.layers),
                   "n_layers": np.array([x.n_layers, y.n_layers]), "validation": np.array(validation, dtype=np.float64),
                   "info": np.array(repr(info))})
    with files.atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def _memory_mapped(path, names) -> dict:
    """Read-only memory-mapped arrays of the named members of an uncompressed .npz (np.savez): each member is a .npy
    file stored as is in the zip, so its data start at a fixed offset after the member's local header and .npy
    header. One map of the whole file (one file descriptor per sweep file, however many arrays), the arrays views
    of it."""
    import struct
    import zipfile

    arrays = {}
    whole = np.memmap(path, dtype=np.uint8, mode="r")
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        for name in names:
            info = archive.getinfo(name + ".npy")
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"member {name} is compressed")
            handle.seek(info.header_offset)
            local = handle.read(30)
            name_length, extra_length = struct.unpack("<HH", local[26:30])
            handle.seek(info.header_offset + 30 + name_length + extra_length)
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(handle)
            arrays[name] = np.ndarray(shape, dtype, buffer=whole, offset=handle.tell(), order="F" if fortran else "C")
    return arrays


@dataclass
class SweepFile:
    """A sweep file as read: the models, their swept layers and depths, the validation cut and the SweepMoments of
    each stored split (parts)."""

    models: tuple
    layers: tuple  # per model: the swept (resolved) layers
    n_layers: tuple  # per model: its hidden-state layers
    parts: dict  # STORED_SPLITS -> SweepMoments
    validation: tuple  # (fraction, seed) of the fit / valid cut

    @classmethod
    def load(cls, path, lazy: bool = False) -> "SweepFile":
        """Read a sweep file; lazy: the co-moment arrays memory-mapped (read block by block when used) instead of
        read whole."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if "format" not in data or int(data["format"]) != SWEEP_FORMAT:
                    raise WorkflowInputError(
                        f"{path} was written by another version of the layer sweep (format "
                        f"{int(data['format']) if 'format' in data else '?'}, this code reads {SWEEP_FORMAT}); delete "
                        f"it and re-run the workflow.")
                layers = (tuple(int(v) for v in data["layers_x"]), tuple(int(v) for v in data["layers_y"]))
                dims = tuple(int(d) for d in data["dims"])
                splits = [str(split) for split in data["splits"]]
                mapped = _memory_mapped(path, [f"{split}.{name}" for split in splits for name in LARGE_ARRAYS]) \
                    if lazy else {}
                parts = {split: SweepMoments(dims, (len(layers[0]), len(layers[1])), int(data[f"{split}.n"]),
                                             int(data[f"{split}.groups"]),
                                             **{name: mapped.get(f"{split}.{name}", None) if lazy and name in LARGE_ARRAYS
                                                else data[f"{split}.{name}"] for name in ARRAYS})
                         for split in splits}
                fraction, seed = (float(v) for v in data["validation"])
                return cls(tuple(str(m) for m in data["models"]), layers, tuple(int(v) for v in data["n_layers"]),
                           parts, (fraction, int(seed)))
        except (OSError, ValueError, KeyError) as err:
            raise WorkflowInputError(f"{path} is not a readable sweep file ({err}); delete it and re-run.") from err

    @property
    def n(self) -> int:
        """Every unit of the pair (all parts)."""
        return sum(part.n for part in self.parts.values())

    def all_units(self) -> SweepMoments:
        """Every part merged (in memory): the statistics of every aligned unit, train and test."""
        return merged(self.parts.values())

    def depth(self, side: int, layer: int) -> float:
        return layer / max(self.n_layers[side] - 1, 1)


def write_sweep_moments(path, model_a: str, hidden_file_a: str, model_b: str, hidden_file_b: str, *, dataset: str,
                        unit: str, layers, pooling: str | None, chunk_tokens: int | None, block_rows: int = 2048,
                        validation_fraction: float = 0.2, validation_seed: int = 0) -> None:
    """The sweep-moments rule: one streamed pass over both models' files, the sweep file written atomically."""
    x, y = swept_model(model_a, hidden_file_a, unit, layers), swept_model(model_b, hidden_file_b, unit, layers)
    need = len(STORED_SPLITS) * sweep_memory_bytes((x.source.hidden_size, y.source.hidden_size),
                                                   (len(x.source.layers), len(y.source.layers)))
    LOG.info("layer sweep of (%s layers %s of %d, %s layers %s of %d), unit %s, dataset %s: %.1f MB of statistics "
             "(%d parts: %s)", x.source.model, list(x.source.layers), x.n_layers, y.source.model, list(y.source.layers),
             y.n_layers, unit, dataset, need / 1e6, len(STORED_SPLITS), ", ".join(STORED_SPLITS))
    started = time.perf_counter()
    parts, counts = compute_sweep_moments(x, y, unit, pooling or "mean", chunk_tokens, block_rows, validation_fraction,
                                          validation_seed)
    LOG.info("units: %d aligned (%s); dropped %d only in %s, %d only in %s; %.1f s", counts.matched,
             ", ".join(f"{split} {part.n}" for split, part in parts.items()), counts.only_a, model_a, counts.only_b,
             model_b, time.perf_counter() - started)
    if counts.matched < 4:
        raise WorkflowInputError(
            f"models {model_a!r} and {model_b!r} share {counts.matched} {unit!r} units on dataset {dataset!r}; the "
            f"layer sweep needs at least 4 (check that both were extracted from the same dataset version).")
    save_sweep(path, x, y, parts, {"dataset": dataset, "unit": unit, "pooling": pooling, "chunk_tokens": chunk_tokens,
                                   "only_a": counts.only_a, "only_b": counts.only_b, "code_version": __version__},
               (validation_fraction, validation_seed))


# ------------------------------------------------------------------------------------------- the tables
SWEEP_COLUMNS = ("model_a", "model_b", "layer_a", "layer_b", "depth_a", "depth_b", "n_layers_a", "n_layers_b",
                 "measure", "value", "n_units", "dims_a", "dims_b", "kept_a", "kept_b", "cut")


def check_sweep_measures(measures: Sequence[str]) -> list[str]:
    from lmcompare.similarity.table import check_measures
    from lmcompare.similarity.tags import SWEEP_MEASURES

    return check_measures(measures, SWEEP_MEASURES, "similarity.layer_sweep.measures")


def sweep_table(sweep: SweepFile, measures: Sequence[str], svcca_variance: float, rank_tolerance: float):
    """Every moment-based measure of every (layer of model_a, layer of model_b) of a sweep file on every unit (its
    parts merged), as a DataFrame with SWEEP_COLUMNS; measure_pair on each layer pair's statistics, each layer's
    spectrum computed once."""
    import pandas as pd

    from lmcompare.similarity.cca import spectrum
    from lmcompare.similarity.table import measure_pair
    from lmcompare.similarity.tags import RANK_CUT_MEASURES

    measures = [m for m in measures if m != "mutual_knn"]
    if not measures:
        return pd.DataFrame(columns=SWEEP_COLUMNS)
    moments = sweep.all_units()
    spectra_needed = bool(set(measures) & {*RANK_CUT_MEASURES, "svcca"})
    spectra_x = [spectrum(moments.own_x[k]) if spectra_needed else None for k in range(moments.counts[0])]
    spectra_y = [spectrum(moments.own_y[k]) if spectra_needed else None for k in range(moments.counts[1])]
    rows = []
    for i, layer_a in enumerate(sweep.layers[0]):
        for j, layer_b in enumerate(sweep.layers[1]):
            stats = moments.statistics(i, j)
            spectra = (spectra_x[i], spectra_y[j]) if spectra_needed else None
            for row in measure_pair(stats, measures, svcca_variance, rank_tolerance, spectra):
                rows.append({"model_a": sweep.models[0], "model_b": sweep.models[1], "layer_a": layer_a,
                             "layer_b": layer_b, "depth_a": sweep.depth(0, layer_a), "depth_b": sweep.depth(1, layer_b),
                             "n_layers_a": sweep.n_layers[0], "n_layers_b": sweep.n_layers[1], **row, "n_units": stats.n,
                             "dims_a": moments.dims[0], "dims_b": moments.dims[1]})
    return pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))


def best_matches(table):
    """Per measure and ordered model pair (target, basis; both directions of each pair), per target layer: the
    basis layer with the largest value (nan values skipped), its relative depths and their difference."""
    import pandas as pd

    rows = []
    valid = table[np.isfinite(table["value"].astype(float))]
    for (measure, a, b), group in valid.groupby(["measure", "model_a", "model_b"], sort=True):
        for target, basis, side, other in ((a, b, "a", "b"), (b, a, "b", "a")):
            for layer, per_layer in group.groupby(f"layer_{side}", sort=True):
                best = per_layer.loc[per_layer["value"].idxmax()]
                rows.append({"measure": measure, "target": target, "basis": basis, "target_layer": int(layer),
                             "target_depth": float(best[f"depth_{side}"]), "best_basis_layer": int(best[f"layer_{other}"]),
                             "best_basis_depth": float(best[f"depth_{other}"]), "value": float(best["value"]),
                             "depth_difference": float(best[f"depth_{other}"] - best[f"depth_{side}"]),
                             "n_units": int(best["n_units"])})
    return pd.DataFrame(rows, columns=["measure", "target", "basis", "target_layer", "target_depth", "best_basis_layer",
                                       "best_basis_depth", "value", "depth_difference", "n_units"])


def write_sweep_pair(path_table, sweep_path, knn_path, *, measures: Sequence[str], svcca_variance: float,
                     rank_tolerance: float, dataset: str, unit: str, figure_paths: dict) -> None:
    """The sweep-pair rule: the moment-based measures of every layer pair from the sweep file (no pass over the
    hidden states), the mutual kNN rows (knn_path, when the measure is asked for), a layer x layer heatmap per
    measure (figure_paths: measure -> [png, svg])."""
    import pandas as pd

    from lmcompare.similarity.figures import plot_sweep

    measures = check_sweep_measures(measures)
    started = time.perf_counter()
    sweep = SweepFile.load(sweep_path, lazy=True)
    table = sweep_table(sweep, measures, svcca_variance, rank_tolerance)
    if "mutual_knn" in measures:
        if knn_path is None:
            raise WorkflowInputError("the layer sweep lists mutual_knn but no kNN table was given (re-run the workflow)")
        knn = pd.read_csv(knn_path)
        table = pd.concat([table, knn[list(SWEEP_COLUMNS)]], ignore_index=True) if len(table) else knn[list(SWEEP_COLUMNS)]
    order = {m: k for k, m in enumerate(measures)}
    table = table.sort_values(["measure", "layer_a", "layer_b"], key=lambda c: c.map(order) if c.name == "measure" else c,
                              kind="stable").reset_index(drop=True)
    table.insert(0, "unit", unit)
    table.insert(0, "dataset", dataset)
    files.write_table(table, path_table)
    LOG.info("%s ~ %s: %d x %d layers on %d units, %d measures: %d rows out (%.1f s)", *sweep.models,
             len(sweep.layers[0]), len(sweep.layers[1]), sweep.n, len(measures), len(table),
             time.perf_counter() - started)
    for measure, paths in figure_paths.items():
        plot_sweep(table, measure, paths, where=f"{dataset}, unit {unit}")


def write_sweep_join(table_path, best_path, pair_tables: Sequence, *, measures: Sequence[str],
                     figure_paths: dict, model_index=None) -> None:
    """The sweep join: every pair's table in one, the best-matching basis layer per target layer, and per measure
    the figure of the best matches (figure_paths: measure -> [png, svg]; model_index: model -> its index in the
    configured list, so that a model keeps its colour)."""
    import pandas as pd

    from lmcompare import plotting
    from lmcompare.similarity.figures import plot_best_layers

    plotting.use_model_order(model_index)

    frames = [pd.read_csv(path) for path in pair_tables]
    table = pd.concat(frames, ignore_index=True)
    files.write_table(table, table_path)
    best = best_matches(table)
    files.write_table(best, best_path)
    LOG.info("%d pair tables in, %d rows out; %d best-match rows", len(frames), len(table), len(best))
    for measure, paths in figure_paths.items():
        plot_best_layers(best, measure, paths)
