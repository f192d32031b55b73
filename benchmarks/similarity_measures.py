"""What the similarity stage costs per model pair (docs/similarity.md, "Measured"): the pair pass's extra work for
the norm statistics (one block of rows through Moments.update with and without blocks) and the similarity job's
work for one pair file (load, merge the splits, every measure), on synthetic rows of the given hidden size.

    .venv/bin/python benchmarks/similarity_measures.py [--dims 768] [--rows 8192] [--repeats 3]
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from lmcompare import decomposition as lmd
from lmcompare import similarity as sim


def best_of(repeats, call):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, default=768, help="hidden size of each of the two models")
    parser.add_argument("--rows", type=int, default=8192, help="rows per block (the pair pass's block_rows)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    d = args.dims
    rows = rng.normal(size=(args.rows, 2 * d)) + 3.0
    blocks = ((0, d), (d, 2 * d))
    for label, chosen in (("co-moments only", ()), ("with norm statistics", blocks)):
        moments = lmd.Moments(2 * d, blocks=chosen)
        moments.update(rows)
        seconds = best_of(args.repeats, lambda: moments.update(rows))
        print(f"pair pass, one block of {args.rows} rows x {2 * d} columns, {label}: {seconds:.3f} s")
    # a pair file of these statistics in every stored split, then what the similarity job does with it
    moments = lmd.Moments(2 * d, blocks=blocks)
    moments.update(rows)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pair.npz"
        arrays = {"format": np.array(lmd.MOMENTS_FORMAT), "models": np.array(["a", "b"]), "dims": np.array([d, d]),
                  "layers_a": np.array([1]), "layers_b": np.array([1]), "validation": np.array([0.2, 0.0]),
                  "info": np.array("{}"), "blocks": np.array(blocks)}
        for split in lmd.STORED_SPLITS:
            arrays |= {f"n_{split}": np.array(moments.n), f"mean_{split}": moments.mean,
                       f"comoment_{split}": moments.comoment, f"groups_{split}": np.array(1),
                       f"between_{split}": moments.between, f"norm_products_{split}": moments.norm_products,
                       f"norm_weighted_{split}": moments.norm_weighted}
        np.savez(path, **arrays)
        print(f"pair file: {path.stat().st_size / 1e6:.1f} MB")
        seconds = best_of(args.repeats, lambda: sim.similarity_table({("a", "b"): path}, ["a", "b"]))
        print(f"similarity of one pair (load, merge the splits, {len(sim.MEASURES)} measures): {seconds:.3f} s")


if __name__ == "__main__":
    main()
