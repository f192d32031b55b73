"""The stage's names: text units, fit modes, alpha choices and their path tags, model pairs, the layers tag and
the pair-file format version.

What rules/decomposition.smk needs to name its outputs; the standard library only, so that parsing the workflow
imports no numpy or scipy.
"""

import itertools
import math
from typing import Sequence

from lmcompare.errors import WorkflowInputError

UNITS = ("example", "word", "chunk")
MODES = ("paper", "uncentred")
VALIDATION = "validation"  # decomposition.alpha: choose alpha on the validation part of the train split
DEFAULT_ALPHA_GRID = tuple(float(10.0 ** k) for k in range(-6, 5))  # 1e-6 .. 1e4
# The pair file's format version (pair_file.py), a parameter of the moments rule: files of another format are
# recomputed. 2: train split stored as fit + valid parts; 3: + example counts and between-example sums of squares;
# 4: + the norm statistics of every model layer (blocks, norm_products, norm_weighted: the debiased CKA's sums).
MOMENTS_FORMAT = 4


def parse_alpha(value) -> float | str:
    """A configured alpha or path tag: a number (fixed alpha) or 'validation'."""
    if isinstance(value, str) and value == VALIDATION:
        return VALIDATION
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise WorkflowInputError(
            f"decomposition.alpha {value!r} is neither a number >= 0 nor {VALIDATION!r}.") from None
    if not math.isfinite(alpha) or alpha < 0:
        raise WorkflowInputError(f"decomposition.alpha {value!r} must be a finite number >= 0 or {VALIDATION!r}.")
    return alpha


def alpha_tag(value) -> str:
    """Path component of an alpha choice: 'alpha-validation' or 'alpha-<repr of the float>' (e.g. alpha-1e-06)."""
    alpha = parse_alpha(value)
    return f"alpha-{alpha}" if alpha == VALIDATION else f"alpha-{alpha!r}"


def alpha_from_tag(tag: str) -> float | str:
    """The alpha choice a path tag names (the inverse of alpha_tag)."""
    return parse_alpha(tag[len("alpha-"):] if tag.startswith("alpha-") else tag)


def canonical_pair(model_a: str, model_b: str) -> tuple[str, str]:
    """The canonical order of an unordered model pair (by name)."""
    if model_a == model_b:
        raise ValueError("a pair needs two different models")
    return (model_a, model_b) if model_a < model_b else (model_b, model_a)


def model_pairs(models: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of the models, each in canonical order, sorted."""
    return [canonical_pair(a, b) for a, b in itertools.combinations(sorted(set(models)), 2)]


def layers_tag(target_layer: int, basis_layer: int) -> str:
    """Path component of the (target layer, basis layer) setting, e.g. t-1_b-1."""
    return f"t{target_layer}_b{basis_layer}"
