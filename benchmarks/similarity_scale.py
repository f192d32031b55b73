"""What the similarity stage costs at scale (docs/similarity.md, "Measured at scale"): time and peak memory of one
model pair's streamed pass and measures, and of the same measures from materialised arrays, on synthetic pooled
files written in the project's exact Parquet format (hidden_states.pooled_schema, fixed_size_list, row groups of
512 examples as the extraction's sort_window writes them, uncompressed float32).

Each case runs in its own process (peak memory = that process's ru_maxrss, which includes the interpreter and
imports, about 150-250 MB; cpu_s = its user + system CPU time, all threads, imports included: on a shared machine
the wall times depend on the load, the CPU times less), one after the other:

- pass:          the pair pass the similarity stage reads (decomposition.compute_pair_moments, one layer per model,
                 with the norm statistics), then every one of the seven measures from the saved pair file;
- sweep:         the layer sweep's pass (similarity.compute_sweep_moments, every layer of both models, per split
                 part), then the default sweep measures (cka, cka_debiased, procrustes) of every layer pair and the
                 decomposition's R² of every layer pair in both directions (a fixed alpha; the validation choice
                 over a 6-alpha grid);
- knn:           mutual kNN of every layer pair (faiss, the units capped at --knn-cap);
- materialised:  both models' vectors read into numpy (float64), then the measures directly: linear CKA in feature
                 space (Kornblith et al.'s feature_space_linear_cka), CCA / SVCCA / PWCCA from QR and SVD of the
                 centred data (as google/svcca), scipy's orthogonal_procrustes, and debiased CKA from the n x n
                 kernels (Kornblith et al.'s gram_linear + debiased HSIC) when n <= --kernel-max;
- materialised_knn: platonic-rep's mutual_knn by brute force (n x n similarity and masks, numpy) on the capped units.

    .venv/bin/python benchmarks/similarity_scale.py --units 42000 --dims 768 --cases pass materialised
    .venv/bin/python benchmarks/similarity_scale.py --units 4000 --layers 13 --cases sweep
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CASES = ("pass", "sweep", "knn", "materialised", "materialised_knn")


def write_pooled(path, rng, n, d, n_layers, model, shared=None, row_group=512):
    """A pooled.parquet of n examples x n_layers layers x d dims (mean and first poolings), in row groups, with
    the extraction's schema and metadata: noisy linear views of a shared latent, a large mean."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmcompare import __version__, hidden_states

    meta = {"model": model, "dataset": "synthetic", "n_layers": n_layers, "hidden_size": d, "store_dtype": "float32",
            "max_length": 128, "token_layers": [], "code_version": __version__, "n_examples": n}
    schema = hidden_states.pooled_schema(n_layers, d, pa.float32(), meta)
    mixes = [rng.normal(size=(shared.shape[1], d)).astype(np.float32) for _ in range(n_layers)]
    with pq.ParquetWriter(path, schema, compression="none") as writer:
        for start in range(0, n, row_group):
            stop = min(start + row_group, n)
            m = stop - start
            columns = {"example_id": pa.array(np.arange(start, stop), pa.int64()),
                       "split": pa.array(np.where(np.arange(start, stop) % 5 == 0, "test", "train"), pa.string()),
                       "label": pa.array([None] * m, pa.string()), "n_tokens": pa.array(np.full(m, 20), pa.int32()),
                       "n_content_tokens": pa.array(np.full(m, 18), pa.int32()), "truncated": pa.array(np.zeros(m, bool)),
                       "summary_position": pa.array(np.zeros(m, np.int32))}
            for layer in range(n_layers):
                values = shared[start:stop] @ mixes[layer] + rng.normal(size=(m, d)).astype(np.float32) + 3.0
                for kind in hidden_states.POOLINGS:
                    columns[hidden_states.pooled_column(layer, kind)] = hidden_states.fixed_size_list(values)
            writer.write_table(pa.Table.from_pydict(columns, schema=schema))


def run_case(case, args, folder):
    """One case, in this process: returns its timings (seconds) and facts."""
    from lmcompare import decomposition as lmd
    from lmcompare import similarity as sim

    files = [str(Path(folder) / f"m{k}.parquet") for k in range(2)]
    out = {}
    if case == "pass":
        a, b = (lmd.model_layers(f"m{k}", files[k], "example", -1, -1) for k in range(2))
        started = time.perf_counter()
        moments, counts = lmd.compute_pair_moments(a, b, "example")
        out["pass_s"] = time.perf_counter() - started
        lmd.save_pair_moments(Path(folder) / "pair.npz", a, b, moments, {})
        out["pair_file_mb"] = (Path(folder) / "pair.npz").stat().st_size / 1e6
        started = time.perf_counter()
        table = sim.similarity_table({("m0", "m1"): Path(folder) / "pair.npz"}, ["m0", "m1"])
        out["measures_s"] = time.perf_counter() - started
        out["values"] = dict(zip(table["measure"], table["value"].round(6)))
        out["units"] = counts.matched
    elif case == "sweep":
        x, y = (sim.swept_model(f"m{k}", files[k], "example") for k in range(2))
        started = time.perf_counter()
        parts, counts = sim.compute_sweep_moments(x, y, "example", block_rows=args.block_rows)
        out["pass_s"] = time.perf_counter() - started
        out["statistics_mb"] = sum(part.nbytes for part in parts.values()) / 1e6
        sim.save_sweep(Path(folder) / "sweep.npz", x, y, parts, {})
        del parts
        out["units"] = counts.matched
        if args.skip_sweep_measures:
            return finish(out)
        started = time.perf_counter()
        table = sim.sweep_table(sim.SweepFile.load(Path(folder) / "sweep.npz", lazy=True),
                                ["cka", "cka_debiased", "procrustes"], 0.99, 1e-10)
        out["measures_s"] = time.perf_counter() - started
        out["layer_pairs"] = len(table) // 3
        # the decomposition's R² of every layer pair, both directions (similarity_sweep_fits), per alpha choice
        for alpha in (1e-6, "validation"):
            started = time.perf_counter()
            fits = sim.pair_layer_fits(sim.SweepFile.load(Path(folder) / "sweep.npz", lazy=True),
                                       sim.fit_settings(["paper"], [alpha]), (1e-6, 1e-4, 1e-2, 1.0, 100.0, 1e4), 2, 2)
            out[f"fits_{'validation' if alpha == 'validation' else 'fixed'}_s"] = time.perf_counter() - started
            out["fits_per_setting"] = len(fits)
    elif case == "knn":
        x, y = (sim.swept_model(f"m{k}", files[k], "example") for k in range(2))
        started = time.perf_counter()
        table = sim.mutual_knn_table(x, y, "example", k=10, max_units=args.knn_cap, seed=0, threads=args.threads)
        out["knn_s"] = time.perf_counter() - started
        out["layer_pairs"] = len(table)
        out["units"] = int(table["n_units"].iloc[0])
        out["value_last_last"] = float(table["value"].iloc[-1])
    elif case in ("materialised", "materialised_knn"):
        from lmcompare import hidden_states

        started = time.perf_counter()
        states = [hidden_states.load_hidden_states(path) for path in files]
        if case == "materialised_knn":
            keys = sim.sample_keys(np.arange(args.units), args.knn_cap, 0)
            x, y = (s["mean", -1][keys].astype(np.float64) for s in states)
            out["read_s"] = time.perf_counter() - started
            started = time.perf_counter()
            out["mutual_knn"] = sim.direct_mutual_knn(x, y, 10)
            out["knn_s"] = time.perf_counter() - started
            out["units"] = len(x)
            return finish(out)
        x, y = (s["mean", -1].astype(np.float64) for s in states)
        out["read_s"] = time.perf_counter() - started
        out["units"] = len(x)
        import scipy.linalg

        started = time.perf_counter()
        xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
        del x, y
        cross = xc.T @ yc
        values = {"cka": float(np.sum(cross ** 2) / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))}
        qx, qy = np.linalg.qr(xc)[0], np.linalg.qr(yc)[0]
        u, rho, vt = np.linalg.svd(qx.T @ qy, full_matrices=False)
        values["cca_mean"], values["cca_mean_squared"] = float(rho.mean()), float(np.mean(rho ** 2))
        weights = np.abs((qx @ u).T @ xc).sum(axis=1)
        values["pwcca"] = float(weights @ rho / weights.sum())
        del qx, qy

        def top(data):
            _, s, vh = np.linalg.svd(data, full_matrices=False)
            kept = int(np.searchsorted(np.cumsum(s ** 2) / np.sum(s ** 2), 0.99 * (1 - 1e-12))) + 1
            return np.linalg.qr(data @ vh[:kept].T)[0]

        values["svcca"] = float(np.linalg.svd(top(xc).T @ top(yc), compute_uv=False).mean())
        xn, yn = xc / np.linalg.norm(xc), yc / np.linalg.norm(yc)
        rotation, _ = scipy.linalg.orthogonal_procrustes(xn, yn)
        values["procrustes"] = float(1 - np.sum((xn @ rotation - yn) ** 2) / 2)
        del xn, yn
        out["feature_space_s"] = time.perf_counter() - started
        if len(xc) <= args.kernel_max:
            started = time.perf_counter()
            n = len(xc)
            k, l_ = xc @ xc.T, yc @ yc.T  # gram_linear of the centred rows (debiased HSIC is shift-free)

            def hsic(k, l_):
                k, l_ = k.copy(), l_.copy()
                np.fill_diagonal(k, 0)
                np.fill_diagonal(l_, 0)
                return (np.sum(k * l_) + k.sum() * l_.sum() / ((n - 1) * (n - 2))
                        - 2 / (n - 2) * k.sum(0) @ l_.sum(0)) / (n * (n - 3))

            values["cka_debiased"] = float(hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_)))
            out["kernel_s"] = time.perf_counter() - started
        out["values"] = {m: round(v, 6) for m, v in values.items()}
    return finish(out)


def finish(out):
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["peak_rss_mb"] = usage.ru_maxrss / 1024
    out["cpu_s"] = usage.ru_utime + usage.ru_stime  # the whole process, imports and file reading included
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=42000, help="examples (units) of each synthetic model")
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--layers", type=int, default=1, help="hidden-state layers of each file (the sweep: all)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=["pass", "materialised"])
    parser.add_argument("--block-rows", type=int, default=2048)
    parser.add_argument("--knn-cap", type=int, default=10000)
    parser.add_argument("--kernel-max", type=int, default=20000, help="largest n for the n x n kernel debiased CKA")
    parser.add_argument("--folder", help="where the synthetic files are (written when missing)")
    parser.add_argument("--threads", type=int, default=2, help="BLAS and faiss threads")
    parser.add_argument("--skip-sweep-measures", action="store_true", help="sweep: the pass only")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args()
    if args.case:
        from lmcompare.runtime import blas_threads

        with blas_threads(args.threads):  # as the rules run (threads: resources.threads)
            print("RESULT=" + json.dumps(run_case(args.case, args, args.folder)))
        return
    with tempfile.TemporaryDirectory(dir=args.folder) as scratch:
        folder = args.folder or scratch
        files = [Path(folder) / f"m{k}.parquet" for k in range(2)]
        if not all(f.exists() for f in files):
            rng = np.random.default_rng(0)
            shared = rng.normal(size=(args.units, 16)).astype(np.float32)
            started = time.perf_counter()
            for k, path in enumerate(files):
                write_pooled(path, rng, args.units, args.dims, args.layers, f"m{k}", shared)
            print(f"wrote 2 files of {args.units} x {args.layers} layers x {args.dims} "
                  f"({sum(f.stat().st_size for f in files) / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s")
        for case in args.cases:
            command = [sys.executable, __file__, "--case", case, "--folder", folder, "--units", str(args.units),
                       "--block-rows", str(args.block_rows), "--knn-cap", str(args.knn_cap),
                       "--kernel-max", str(args.kernel_max), "--threads", str(args.threads)]
            command += ["--skip-sweep-measures"] if args.skip_sweep_measures else []
            started = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode:
                print(f"{case}: failed\n{result.stderr[-3000:]}")
                continue
            (line,) = [line for line in result.stdout.splitlines() if line.startswith("RESULT=")]
            print(f"{case} ({args.units} units, {args.layers} layers x {args.dims}; wall {time.perf_counter() - started:.1f} s): "
                  f"{line[len('RESULT='):]}", flush=True)


if __name__ == "__main__":
    main()
