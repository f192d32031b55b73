"""Measurements behind docs/variability.md: streaming speed, probe cost, and the finite-sample behaviour of ν.

    .venv/bin/python benchmarks/variability_bench.py [--rows 5000] [--dim 768] [--layers 13] [--probe-rows 2000]

Three parts:
1. streaming: ν of every layer (full data + the two robustness subsets, one pass) from a synthetic pooled.parquet
   of rows x layers x dim float32 vectors; prints seconds and MB/s.
2. probe: the shared linear probe (5 C values x 3 folds + refit) on one layer of probe-rows train examples.
3. finite samples: two Gaussian classes, Σ_w = I, means ±a·e1, so the population ν = 1 / (2 a²); the estimate
   from n examples per class vs that value, for a hidden size of dim (the noise in the class means inflates
   tr Σ_b and turns the between-class direction away from e1, so ν is biased at small n / large d).
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmcompare import hidden_states
from lmcompare import variability as var
from lmcompare.probe import linear_probe  # noqa: E402


def synthetic_pooled(path, rows, dim, layers, seed=0, row_group=1024):
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random(rows) < 0.6, "pos", "neg")
    writer = None
    for start in range(0, rows, row_group):
        n = min(row_group, rows - start)
        columns = {"example_id": pa.array(np.arange(start, start + n), pa.int64()),
                   "split": pa.array(["train"] * n), "label": pa.array(labels[start:start + n]),
                   "n_content_tokens": pa.array(np.full(n, 10), pa.int32())}
        for layer in range(layers):
            x = rng.standard_normal((n, dim), dtype=np.float32)
            x[:, 0] += np.where(labels[start:start + n] == "pos", 0.1 * layer, -0.1 * layer)
            columns[hidden_states.pooled_column(layer, "mean")] = hidden_states.fixed_size_list(x)
        table = pa.table(columns)
        if writer is None:
            meta = {"n_layers": layers, "hidden_size": dim, "model": "synthetic", "dataset": "synthetic"}
            writer = pq.ParquetWriter(path, table.schema.with_metadata({"hidden_states": json.dumps(meta)}),
                                      compression="none")
        writer.write_table(table)
    writer.close()


def bench_streaming(rows, dim, layers, memory_mb):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pooled.parquet"
        synthetic_pooled(path, rows, dim, layers)
        size_mb = path.stat().st_size / 1e6
        frame = var.read_labels(path)
        codes, _, _ = var.class_codes(frame, dataset="synthetic", split="train")
        masks = var.subset_masks(codes, imbalanced_keep=0.2, subsample_fraction=0.1, seed=0)
        started = time.perf_counter()
        result = var.stream_variability(path, codes=codes, masks=masks, memory_mb=memory_mb)
        seconds = time.perf_counter() - started
        per_pass = var.layers_per_pass(dim, len(masks), memory_mb)
    print(f"streaming: {rows} rows x {layers} layers x d={dim} ({size_mb:.0f} MB, {per_pass} layers per pass): "
          f"{seconds:.1f} s, {size_mb / seconds:.0f} MB/s; ν layer 0 {result[0]['nu']:.3g}, "
          f"last {result[3 * (layers - 1)]['nu']:.3g}")


def bench_probe(rows, dim):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, rows + 500)
    x = rng.standard_normal((rows + 500, dim)).astype(np.float32)
    x[:, :5] += y[:, None] * 0.3
    started = time.perf_counter()
    result = linear_probe(x[:rows], y[:rows], x[rows:], y[rows:], seed=0)
    print(f"probe: {rows} train x d={dim}, one layer: {time.perf_counter() - started:.1f} s "
          f"(accuracy {result.accuracy:.3f}, C={result.C:g})")


def bench_finite_samples(dim, separation=0.5, repeats=5):
    truth = 1 / (2 * separation**2)
    print(f"finite samples: d={dim}, 2 classes, Σ_w = I, means ±{separation}·e1, population ν = {truth:.3f}")
    rng = np.random.default_rng(2)
    for n in (50, 200, 1000, 5000, 20000):
        values = []
        for _ in range(repeats):
            acc = var.MomentAccumulator(np.array([[n, n]]), dim)
            y = np.repeat([0, 1], n)
            x = rng.standard_normal((2 * n, dim))
            x[:, 0] += np.where(y == 1, separation, -separation)
            acc.update(x, y, np.ones((1, 2 * n), bool))
            values.append(acc.result().nu)
        print(f"  n per class {n:>6}: ν = {np.mean(values):.3f} ± {np.std(values):.3f} "
              f"(ratio to population {np.mean(values) / truth:.3f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--layers", type=int, default=13)
    parser.add_argument("--memory-mb", type=float, default=4000)
    parser.add_argument("--probe-rows", type=int, default=2000)
    parser.add_argument("--bias-dim", type=int, default=384)
    args = parser.parse_args()
    bench_streaming(args.rows, args.dim, args.layers, args.memory_mb)
    bench_probe(args.probe_rows, args.dim)
    bench_finite_samples(args.bias_dim)


if __name__ == "__main__":
    main()
