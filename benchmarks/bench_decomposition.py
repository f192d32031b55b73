"""LMD from streamed pair moments against scikit-learn Ridge on materialised arrays.

Three synthetic models (default 384/384/768 dims, noisy linear views of a shared latent with large means, as
hidden states have) written as pooled.parquet files in the hidden-state contract (float32, row groups of 512
examples, as the extraction writes them). Then, each in a fresh process (so peak memory is that of the method):

- ours: the three pair moment files (one streamed pass each) + every group and pairwise fit from them;
- sklearn: read the arrays into memory, fit Ridge(alpha * n_train) for the same 3 group + 6 pairwise fits
  (float64, as our fits), R² on the test split.

Reports wall time and peak resident memory (ru_maxrss) of both, our memory at two unit counts (it must not grow
with the number of units), and the largest difference between the two methods' test R².

Usage: .venv/bin/python benchmarks/bench_decomposition.py [--units 200000] [--dims 384 384 768] [--small 50000]
Prints a Markdown table and writes benchmarks/out/decomposition.json.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

ALPHA = 1e-6
TEST_EVERY = 5  # every 5th unit is a test unit (20 %)


def write_models(folder: Path, units: int, dims, seed: int = 0) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmcompare import hidden_states

    rng = np.random.default_rng(seed)
    latent = 64
    mixes = [rng.normal(size=(latent, d)) / np.sqrt(latent) for d in dims]
    offsets = [3.0 * rng.normal(size=d) for d in dims]
    paths = {}
    writers = {}
    ids = np.arange(units)
    split = np.where(ids % TEST_EVERY == 0, "test", "train")
    for start in range(0, units, 512):
        stop = min(units, start + 512)
        shared = rng.normal(size=(stop - start, latent))
        for index, d in enumerate(dims):
            name = f"m{index}"
            values = shared @ mixes[index] + 0.5 * rng.normal(size=(stop - start, d)) + offsets[index]
            table = pa.table({"example_id": pa.array(ids[start:stop]), "split": pa.array(split[start:stop]),
                              hidden_states.pooled_column(1, "mean"): hidden_states.fixed_size_list(values.astype(np.float32))})
            if name not in writers:
                meta = {"model": name, "dataset": "bench", "n_layers": 2, "hidden_size": d, "token_layers": []}
                schema = table.schema.with_metadata({"hidden_states": json.dumps(meta)})
                paths[name] = folder / name / "pooled.parquet"
                paths[name].parent.mkdir(parents=True, exist_ok=True)
                writers[name] = pq.ParquetWriter(paths[name], schema, compression="none")
            writers[name].write_table(table.replace_schema_metadata(writers[name].schema.metadata))
    for writer in writers.values():
        writer.close()
    return {name: str(path) for name, path in paths.items()}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_ours(paths: dict, workdir: Path) -> dict:
    from lmcompare import decomposition as lmd

    models = sorted(paths)
    started = time.perf_counter()
    pair_paths = {}
    for a, b in lmd.model_pairs(models):
        va = lmd.model_layers(a, paths[a], "example", -1, -1)
        vb = lmd.model_layers(b, paths[b], "example", -1, -1)
        moments, _ = lmd.compute_pair_moments(va, vb, "example")
        pair_paths[(a, b)] = workdir / "moments" / a / f"{b}.npz"
        lmd.save_pair_moments(pair_paths[(a, b)], va, vb, moments, {})
    moments_s = time.perf_counter() - started
    started = time.perf_counter()
    group, pairs = lmd.decompose(pair_paths, models, ALPHA)
    fit_s = time.perf_counter() - started
    return {"moments_s": moments_s, "fit_s": fit_s, "total_s": moments_s + fit_s, "peak_mb": peak_mb(),
            "r2": {f"group:{r['model']}": r["r2_test"] for r in group}
            | {f"pair:{r['model']}<-{r['basis_model']}": r["r2_test"] for r in pairs}}


def run_sklearn(paths: dict) -> dict:
    import pyarrow.parquet as pq
    from sklearn.linear_model import Ridge

    from lmcompare import hidden_states

    models = sorted(paths)
    started = time.perf_counter()
    arrays = {}
    for name in models:
        table = pq.read_table(paths[name])
        arrays[name] = hidden_states.vectors(table, hidden_states.pooled_column(1, "mean"), np.float64)
    test = np.arange(len(arrays[models[0]])) % TEST_EVERY == 0
    load_s = time.perf_counter() - started
    n_train = int((~test).sum())
    r2 = {}
    started = time.perf_counter()

    def fit(target, basis):
        u = arrays[target]
        z = np.hstack([arrays[m] for m in basis]) if len(basis) > 1 else arrays[basis[0]]
        model = Ridge(alpha=ALPHA * n_train, solver="cholesky").fit(z[~test], u[~test])
        residual = u[test] - model.predict(z[test])
        centred = u[test] - u[test].mean(0)
        return 1 - float((residual ** 2).sum() / (centred ** 2).sum())

    for target in models:
        basis = [m for m in models if m != target]
        r2[f"group:{target}"] = fit(target, basis)
        for other in basis:
            r2[f"pair:{target}<-{other}"] = fit(target, [other])
    fit_s = time.perf_counter() - started
    return {"load_s": load_s, "fit_s": fit_s, "total_s": load_s + fit_s, "peak_mb": peak_mb(), "r2": r2}


def child(method: str, paths_json: str, workdir: str) -> None:
    paths = json.loads(paths_json)
    result = run_ours(paths, Path(workdir)) if method == "ours" else run_sklearn(paths)
    print("RESULT " + json.dumps(result))


def in_fresh_process(method: str, paths: dict, workdir: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", method, json.dumps(paths), str(workdir)],
                         capture_output=True, text=True, check=True, env=dict(os.environ, PYTHONPATH=str(PROJECT)))
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--units", type=int, default=200_000)
    parser.add_argument("--small", type=int, default=50_000, help="a smaller unit count for the memory check")
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 384, 768])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    results = {"units": args.units, "dims": args.dims, "cpus": os.cpu_count(), "load_avg": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench_lmd_") as tmp:
        tmp = Path(tmp)
        for units in (args.small, args.units):
            paths = write_models(tmp / f"data{units}", units, args.dims)
            results[f"ours_{units}"] = in_fresh_process("ours", paths, tmp / f"ours{units}")
        results["sklearn"] = in_fresh_process("sklearn", paths, tmp)
    ours, sk = results[f"ours_{args.units}"], results["sklearn"]
    results["max_abs_r2_difference"] = max(abs(ours["r2"][k] - sk["r2"][k]) for k in sk["r2"])
    out = PROJECT / "benchmarks" / "out" / "decomposition.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"{args.units} units, models of {args.dims} dims, 3 group + 6 pairwise fits, {os.cpu_count()} CPUs, "
          f"load average {results['load_avg'][0]:.1f}")
    print("| method | units | wall time (s) | peak memory (MB) |")
    print("| --- | ---: | ---: | ---: |")
    for units in (args.small, args.units):
        r = results[f"ours_{units}"]
        print(f"| streamed moments (moments {r['moments_s']:.1f} s + fits {r['fit_s']:.1f} s) | {units} | "
              f"{r['total_s']:.1f} | {r['peak_mb']:.0f} |")
    print(f"| sklearn Ridge, materialised (load {sk['load_s']:.1f} s + fits {sk['fit_s']:.1f} s) | {args.units} | "
          f"{sk['total_s']:.1f} | {sk['peak_mb']:.0f} |")
    print(f"largest |R² ours - R² sklearn| over the 9 fits: {results['max_abs_r2_difference']:.2e}")
    print("mean group R² (test):", np.mean([v for k, v in ours["r2"].items() if k.startswith("group:")]).round(4))


if __name__ == "__main__":
    main()
