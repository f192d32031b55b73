"""The deterministic cut of the train split into a fit and a validation part (alpha 'validation').

An example goes to the validation part when a splitmix64 hash of its example_id and the seed, mapped to [0, 1),
is below the validation fraction: the same example is on the same side in every model, pair and run, and every
unit of an example (all its words) lands on the same side.
"""

from typing import Iterable, Iterator

import numpy as np

from lmcompare.decomposition.units import UnitBlock, unit_example_ids

VALID_CODE = 2  # unit-stream code of a train unit that falls in the validation part


def splitmix64(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """The splitmix64 finaliser of each value plus (seed + 1) golden-ratio increments, in wrapping uint64."""
    with np.errstate(over="ignore"):
        x = np.asarray(values, np.int64).astype(np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (int(seed) + 1)) % 2**64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def validation_mask(example_ids: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """True for the examples whose units go to the validation part of the train split (the top 53 bits of
    splitmix64 as a number in [0, 1), below `fraction`)."""
    if fraction <= 0:
        return np.zeros(np.shape(example_ids), bool)
    return (splitmix64(example_ids, seed) >> np.uint64(11)).astype(np.float64) / float(2 ** 53) < fraction


def mark_validation(stream: Iterable[UnitBlock], unit: str, fraction: float, seed: int = 0) -> Iterator[UnitBlock]:
    """Re-code the train units of a unit stream that fall in the validation part (code VALID_CODE)."""
    for keys, codes, vecs in stream:
        if fraction > 0 and keys.size:
            codes = codes.copy()
            codes[(codes == 0) & validation_mask(unit_example_ids(keys, unit), fraction, seed)] = VALID_CODE
        yield keys, codes, vecs
