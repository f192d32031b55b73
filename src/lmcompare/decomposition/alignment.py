"""Two models' unit streams joined key by key: only the units both models have are kept (and the others counted)."""

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from lmcompare.errors import WorkflowInputError


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
