"""The pair file: one .npz per (dataset, unit, layers, model_a, model_b) holding the stored splits' moments of the
concatenation [a's layers, b's layers] (self blocks included), written by the moments rule, read by the fit.

A group fit (target = one model, basis = all others) is assembled from the blocks of all pairs (joint.py); adding
a model only adds the pairs that involve it. Besides count, mean and co-moment, a file holds per split the number
of examples the units come from and the between-example sum of squares, for the effective sample size, and the
norm statistics of every model layer (moments.py: `blocks`, `norm_products`, `norm_weighted`), for the debiased CKA
of lmcompare.similarity.
"""

import ast
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from lmcompare import __version__, files
from lmcompare.decomposition.moments import (ALL_SPLITS, STORED_SPLITS, Moments, between_share, compute_pair_moments,
                                             merge_train)
from lmcompare.decomposition.tags import MOMENTS_FORMAT
from lmcompare.decomposition.units import ModelLayers, model_layers
from lmcompare.errors import WorkflowInputError

LOG = logging.getLogger("workflow")

def save_pair_moments(path, a: ModelLayers, b: ModelLayers, moments: dict, info: dict,
                      validation_fraction: float = 0.2, validation_seed: int = 0) -> None:
    """Write a pair's moments (moments.compute_pair_moments) atomically."""
    arrays = {
        "format": np.array(MOMENTS_FORMAT),
        "models": np.array([a.model, b.model]),
        "dims": np.array([a.hidden_size, b.hidden_size]),
        "layers_a": np.array(a.layers), "layers_b": np.array(b.layers),
        "validation": np.array([float(validation_fraction), float(validation_seed)]),
        "info": np.array(repr(info)),
        "blocks": np.array(moments[STORED_SPLITS[0]].blocks, dtype=np.int64).reshape(-1, 2),
    }
    for split in STORED_SPLITS:
        mom = moments[split]
        arrays[f"n_{split}"] = np.array(mom.n)
        arrays[f"mean_{split}"] = mom.mean
        arrays[f"comoment_{split}"] = mom.comoment
        arrays[f"groups_{split}"] = np.array(mom.groups)
        arrays[f"between_{split}"] = mom.between
        arrays[f"norm_products_{split}"] = mom.norm_products
        arrays[f"norm_weighted_{split}"] = mom.norm_weighted
    with files.atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def check_format(data, path) -> None:
    """Refuse a pair file of another format version (it is recomputed: the format is a rule parameter)."""
    if "format" not in data or int(data["format"]) != MOMENTS_FORMAT:
        raise WorkflowInputError(
            f"{path} was written by another version of this stage (moments format "
            f"{int(data['format']) if 'format' in data else '?'}, this code reads {MOMENTS_FORMAT}); delete it (or the "
            f"whole results/analysis/decomposition/.../moments folder) and re-run the workflow."
        )


def read_pair_header(path) -> dict:
    """Models, dims, layers and counts of a pair file without reading its matrices."""
    try:
        with np.load(path, allow_pickle=False) as data:
            check_format(data, path)
            n = {s: int(data[f"n_{s}"]) for s in STORED_SPLITS}
            n["train"] = n["fit"] + n["valid"]
            groups = {s: int(data[f"groups_{s}"]) for s in STORED_SPLITS}
            groups["train"] = groups["fit"] + groups["valid"]
            return {"models": tuple(str(m) for m in data["models"]), "dims": tuple(int(d) for d in data["dims"]),
                    "layers": (tuple(int(l) for l in data["layers_a"]), tuple(int(l) for l in data["layers_b"])),
                    "n": n, "groups": groups, "validation": tuple(float(v) for v in data["validation"]),
                    "info": ast.literal_eval(str(data["info"]))}
    except (OSError, ValueError, KeyError) as err:
        raise WorkflowInputError(f"{path} is not a readable moments file ({err}); delete it and re-run.") from err


@dataclass
class PairMoments:
    """A pair file as read: per split (fit, valid, train = their merge, test) the count, mean and co-moment of
    [a's layers, b's layers], the examples' count, the between-example sums of squares and the norm statistics of
    each model layer (blocks: their columns, in layer_columns order)."""

    models: tuple
    dims: tuple
    layers: tuple  # per model: tuple of resolved layers (target, then basis when it differs)
    n: dict
    mean: dict
    comoment: dict

    validation: tuple = (0.2, 0)  # (fraction, seed) of the fit / valid cut of the train split
    groups: dict = field(default_factory=dict)  # per split: number of examples the units come from
    between: dict = field(default_factory=dict)  # per split: between-example sum of squares per dimension
    blocks: tuple = ()  # (start, stop) columns of each model layer: a's layers, then b's
    norm_products: dict = field(default_factory=dict)  # per split: (G, G) sums of products of squared block norms
    norm_weighted: dict = field(default_factory=dict)  # per split: (dim, G) sums of centred rows x squared block norms

    @classmethod
    def load(cls, path) -> "PairMoments":
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise WorkflowInputError(f"{path} is not a readable moments file ({err}); delete it and re-run.") from err
        with data:
            check_format(data, path)
            dim = int(data["comoment_test"].shape[0])
            blocks = tuple(tuple(int(c) for c in row) for row in data["blocks"])
            parts = {s: Moments(dim, int(data[f"n_{s}"]), data[f"mean_{s}"], data[f"comoment_{s}"],
                                int(data[f"groups_{s}"]), data[f"between_{s}"], blocks, data[f"norm_products_{s}"],
                                data[f"norm_weighted_{s}"]) for s in STORED_SPLITS}
            fraction, seed = (float(v) for v in data["validation"])
            models, dims = tuple(str(m) for m in data["models"]), tuple(int(d) for d in data["dims"])
            layers = (tuple(int(l) for l in data["layers_a"]), tuple(int(l) for l in data["layers_b"]))
        parts["train"] = merge_train(parts)
        return cls(models, dims, layers, {s: parts[s].n for s in ALL_SPLITS}, {s: parts[s].mean for s in ALL_SPLITS},
                   {s: parts[s].comoment for s in ALL_SPLITS}, (fraction, int(seed)),
                   {s: parts[s].groups for s in ALL_SPLITS}, {s: parts[s].between for s in ALL_SPLITS}, blocks,
                   {s: parts[s].norm_products for s in ALL_SPLITS}, {s: parts[s].norm_weighted for s in ALL_SPLITS})

    def split_moments(self, split: str) -> Moments:
        """One split's statistics as a Moments (count, mean, co-moment, examples, norm statistics), a copy: merging
        into it leaves this PairMoments alone."""
        return Moments(self.comoment[split].shape[0], self.n[split], self.mean[split], self.comoment[split],
                       self.groups[split], self.between[split], self.blocks, self.norm_products[split],
                       self.norm_weighted[split]).copy()

    def all_units(self) -> Moments:
        """Every unit of the pair, train and test split merged exactly (Chan et al.; norm statistics included).
        groups and between are left at zero: the splits' between-example sums are not needed here."""
        merged = self.split_moments("train")
        merged.merge(self.split_moments("test"))
        merged.groups, merged.between = 0, np.zeros(merged.dim)
        return merged

    def block_of(self, model: str, role: str = "target") -> int:
        """Index in `blocks` of a model's target layer (role 'target') or basis layer (role 'basis')."""
        columns = self.columns_of(model, role)
        return self.blocks.index((columns.start, columns.stop))

    def layer_columns(self, model: str) -> list[slice]:
        """Column slices of a model's layers (target layer first) inside this pair's concatenation."""
        index = self.models.index(model)
        start = 0 if index == 0 else self.dims[0] * len(self.layers[0])
        d = self.dims[index]
        return [slice(start + k * d, start + (k + 1) * d) for k in range(len(self.layers[index]))]

    def columns_of(self, model: str, role: str) -> slice:
        """Column slice of a model's target layer (role 'target') or basis layer (role 'basis')."""
        layers = self.layer_columns(model)
        return layers[0] if role == "target" or len(layers) == 1 else layers[1]

    def model_columns(self, model: str) -> slice:
        """Column slice of all of a model's layers."""
        layers = self.layer_columns(model)
        return slice(layers[0].start, layers[-1].stop)

    def between_share(self, model: str, split: str, role: str = "target") -> float:
        """Share of a model layer's variance (its sum of squares about the mean) lying between examples."""
        return between_share(self.comoment[split], self.between[split], self.columns_of(model, role))


def write_pair_moments(path, model_a: str, hidden_file_a: str, model_b: str, hidden_file_b: str, *, dataset: str,
                       unit: str, target_layer: int, basis_layer: int, pooling: str | None,
                       chunk_tokens: int | None, validation_fraction: float, validation_seed: int) -> None:
    """The moments rule: read both models' units in one streamed pass, log what was aligned, write the pair file.

    Fails when the two models share no unit (files of different dataset versions).
    """
    a = model_layers(model_a, hidden_file_a, unit, target_layer, basis_layer)
    b = model_layers(model_b, hidden_file_b, unit, target_layer, basis_layer)
    LOG.info("moments of (%s layers %s, %s layers %s), unit %s, dataset %s", a.model, a.layers, b.model, b.layers,
             unit, dataset)
    started = time.perf_counter()
    moments, counts = compute_pair_moments(a, b, unit, pooling, chunk_tokens, validation_fraction=validation_fraction,
                                           validation_seed=validation_seed)
    LOG.info("units: %d aligned (train %d = fit %d + validation %d, test %d); dropped %d only in %s, %d only in %s; "
             "%.1f s", counts.matched, moments["fit"].n + moments["valid"].n, moments["fit"].n, moments["valid"].n,
             moments["test"].n, counts.only_a, a.model, counts.only_b, b.model, time.perf_counter() - started)
    train = merge_train(moments)
    width_a = a.hidden_size * len(a.layers)
    for source, start, stop in ((a, 0, a.hidden_size), (b, width_a, width_a + b.hidden_size)):
        LOG.info("%s: %d train units from %d examples; between-example share of the train variance %.3f", source.model,
                 train.n, train.groups, between_share(train.comoment, train.between, slice(start, stop)))
    if counts.matched == 0:
        raise WorkflowInputError(
            f"models {a.model!r} and {b.model!r} share no {unit!r} unit on dataset {dataset!r}: "
            f"check that both were extracted from the same dataset version."
        )
    if counts.only_a or counts.only_b:
        LOG.warning("%d + %d units are missing from one of the two models (truncation or untokenised words)",
                    counts.only_a, counts.only_b)
    info = {"dataset": dataset, "unit": unit, "pooling": pooling, "chunk_tokens": chunk_tokens,
            "only_a": counts.only_a, "only_b": counts.only_b, "code_version": __version__}
    save_pair_moments(path, a, b, moments, info, validation_fraction, validation_seed)
