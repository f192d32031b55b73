"""The analysis side at the users' size: synthetic hidden-state Parquet in the extraction's exact format, every
analysis stage run through the workflow on it, and per stage wall time, CPU time, peak resident memory and bytes
read and written (Snakemake's benchmark files of the rules), with the fitted exponent of time in the number of
tokens N and in the number of models M.

    .venv/bin/python benchmarks/scale.py --workdir /tmp/scale --models 3 --tokens 30000 100000 300000
    .venv/bin/python benchmarks/scale.py --workdir /tmp/scale --models 3 6 12 --tokens 30000
    .venv/bin/python benchmarks/scale.py --workdir /tmp/scale --report      # the tables of every case run so far

Each case (M models, about N tokens: the table prints the exact count) is a work directory `WORKDIR/m{M}-n{N}` holding what the extraction would have
written: `results/data/synthetic.parquet` (the dataset contract; examples of about 100 tokens, so N / 100
examples, 80 % train; two classes), and per model `results/hidden/synthetic/{model}/pooled.parquet` (every layer's
summary-token and mean vectors) and `tokens.parquet` (the last layer per token, word ids), in row groups of 256
examples, plus a placeholder model folder. Nothing is extracted: the workflow runs with `--rerun-triggers mtime`
and `--until` the analysis rules, after a dry run has shown that no extraction, dataset or model job is planned.

The vectors are synthetic with a realistic structure: every model is a linear view of one shared latent (128
dimensions with a power-law spectrum, variance k^-1) through its own random 128 x d map, plus its own noise; the
latent of a token is its word's latent plus the example's (words are clustered within examples, as in reviews),
and the class shifts the example latent. Layer l of a model uses a map that drifts from layer to layer. What the
stages cost depends on the shapes (N, d, layers, M), not on the values, except the probes' and quantizers'
iteration counts, which this structure keeps in the range of real hidden states (docs/performance.md, "At the
users' size").

The configuration is the default's analyses on the synthetic dataset: decomposition on word units with the paper's
alpha, the similarity measures from its pair files, variability on mean-pooled layers with the probe per layer,
compression of the last layer's first-token vector, geometry on 10,000-token subsamples of the last layer with the
probe score. The two-tower LM reads no hidden states (its cost is in docs/twotower.md) and the figures are off.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "src"))

from lmcompare import hidden_states  # noqa: E402
from lmcompare.data.prepare import write_dataset  # noqa: E402

DATASET = "synthetic"
LATENT = 128
TOKENS_PER_EXAMPLE = 100
EXAMPLES_PER_GROUP = 256
# the analysis rules (their jobs' benchmark files are what is measured); the rules that must not run here
STAGES = {"decomposition_moments": "decomposition", "decomposition_fit": "decomposition", "similarity": "similarity",
          "variability_nu": "variability", "variability_probe": "variability", "compression_model": "compression",
          "geometry_measures": "geometry", "geometry_score": "geometry"}
UNTIL = ["decomposition_fit", "similarity", "variability_summary", "compression_dataset", "geometry_regression"]
FORBIDDEN = ["materialise_model", "prepare_dataset", "extract_hidden_states", "finetune_model", "perturb_model"]


def case_config(models: list[str], workdir: Path) -> dict:
    return {
        "models": [{"name": m, "source": "local", "path": str(workdir / "placeholder-model")} for m in models],
        "datasets": [{"name": DATASET, "source": "file", "path": str(workdir / "synthetic.csv"),
                      "text_column": "text", "label_column": "label", "split_column": "split"}],
        "extraction": {"max_length": 512, "token_layers": [-1]},
        "decomposition": {"enabled": True, "units": ["word"], "modes": ["paper"], "alpha": [1e-6]},
        "similarity": {"enabled": True},
        "variability": {"enabled": True, "poolings": ["mean"]},
        "compression": {"enabled": True},
        "geometry": {"enabled": True, "datasets": [DATASET], "max_points": 10000,
                     "score": {"source": "probe", "dataset": DATASET}},
        "twotower": {"enabled": False},
        "figures": {"enabled": False},
    }


def example_layout(n_examples: int, seed: int):
    """Words per example and tokens per word (1 or 2), the same for every model (one tokenizer's split)."""
    rng = np.random.default_rng(seed)
    mean_words = (TOKENS_PER_EXAMPLE - 2) / 1.4  # 1.4 tokens per word on average, two special tokens
    words = rng.integers(int(mean_words) - 10, int(mean_words) + 11, n_examples)
    pieces = [1 + (rng.random(n) < 0.4).astype(int) for n in words]
    return words, pieces


def write_dataset_files(workdir: Path, n_examples: int, seed: int):
    words, _ = example_layout(n_examples, seed)
    labels = np.where(np.arange(n_examples) % 2 == 0, "pos", "neg")
    splits = np.where(np.random.default_rng(seed + 1).random(n_examples) < 0.8, "train", "test")
    texts = [" ".join(f"w{j % 997}" for j in range(n)) for n in words]
    word_starts, word_ends = [], []
    for text in texts:
        position, s, e = 0, [], []
        for token in text.split(" "):
            s.append(position)
            e.append(position + len(token))
            position += len(token) + 1
        word_starts.append(s)
        word_ends.append(e)
    frame = pd.DataFrame({"example_id": np.arange(n_examples, dtype=np.int64), "text": texts, "label": labels,
                          "split": splits, "word_starts": word_starts, "word_ends": word_ends})
    frame[["text", "label", "split"]].to_csv(workdir / "synthetic.csv", index=False)
    data = workdir / "results" / "data" / f"{DATASET}.parquet"
    data.parent.mkdir(parents=True, exist_ok=True)
    write_dataset(frame, data, {"name": DATASET, "source": "file", "counts": {"train": int((splits == "train").sum()),
                                                                              "test": int((splits == "test").sum())}})
    return frame


def model_maps(model_index: int, d: int, n_layers: int, seed: int):
    rng = np.random.default_rng([seed, model_index])
    scale = (np.arange(1, LATENT + 1) ** -0.5)[:, None]
    base = rng.standard_normal((LATENT, d)) * scale / np.sqrt(LATENT) * 4
    maps = [base]
    for _ in range(n_layers - 1):
        maps.append(maps[-1] + 0.3 * rng.standard_normal((LATENT, d)) * scale / np.sqrt(LATENT) * 4)
    offset = rng.standard_normal(d)
    return maps, offset


def example_latents(first: int, count: int, frame: pd.DataFrame, seed: int):
    """The latents of examples first..first+count-1 and of their words (shared by all models)."""
    rng = np.random.default_rng([seed, 7, first])
    spectrum = np.arange(1, LATENT + 1) ** -0.5
    example = rng.standard_normal((count, LATENT)) * spectrum
    example[:, 0] += np.where(frame["label"].to_numpy()[first:first + count] == "pos", 1.0, -1.0)
    return example, rng


def write_model_files(workdir: Path, model: str, model_index: int, frame: pd.DataFrame, d: int, n_layers: int,
                      seed: int) -> int:
    """pooled.parquet and tokens.parquet of one model, row group by row group; returns the number of tokens."""
    words, pieces = example_layout(len(frame), seed)
    maps, offset = model_maps(model_index, d, n_layers, seed)
    out = workdir / "results" / "hidden" / DATASET / model
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": model, "dataset": DATASET, "n_layers": n_layers, "hidden_size": d, "token_layers": [n_layers - 1],
            "store_dtype": "float32", "n_examples": len(frame), "max_length": 512, "model_type": "bert",
            "summary_token": {"rule": "cls", "token": "[CLS]", "token_id": 2}, "padding_side": "right"}
    pooled_schema = hidden_states.pooled_schema(n_layers, d, pa.float32(), meta)
    tokens_schema = hidden_states.tokens_schema([n_layers - 1], d, pa.float32(), meta)
    noise_rng = np.random.default_rng([seed, 99, model_index])
    n_tokens = 0
    with pq.ParquetWriter(out / "pooled.parquet", pooled_schema) as pooled_writer, \
            pq.ParquetWriter(out / "tokens.parquet", tokens_schema) as tokens_writer:
        for first in range(0, len(frame), EXAMPLES_PER_GROUP):
            count = min(EXAMPLES_PER_GROUP, len(frame) - first)
            example, word_rng = example_latents(first, count, frame, seed)
            rows, latents = [], []
            for k in range(count):
                ex = first + k
                n_words = int(words[ex])
                word_latent = word_rng.standard_normal((n_words, LATENT)) * (np.arange(1, LATENT + 1) ** -0.5)
                token_word = np.repeat(np.arange(n_words), pieces[ex])
                token_latent = word_latent[token_word] + example[k]
                special = np.zeros((1, LATENT))
                latents.append(np.vstack([special + example[k], token_latent, special + example[k]]))
                ids = np.concatenate([[-1], token_word, [-1]])
                rows.append(pd.DataFrame({"example_id": ex, "split": frame["split"].iat[ex],
                                          "position": np.arange(len(ids)), "word_id": ids,
                                          "is_special": ids < 0}))
            table_rows = pd.concat(rows, ignore_index=True)
            latent = np.vstack(latents)
            n = len(latent)
            n_tokens += n
            last = (latent @ maps[-1] + offset + 0.5 * noise_rng.standard_normal((n, d))).astype(np.float32)
            columns = {"example_id": pa.array(table_rows["example_id"], pa.int64()),
                       "split": pa.array(table_rows["split"], pa.string()),
                       "position": pa.array(table_rows["position"], pa.int32()),
                       "token_id": pa.array(np.zeros(n, np.int32)), "word_id": pa.array(table_rows["word_id"], pa.int32()),
                       "is_special": pa.array(table_rows["is_special"]),
                       "char_start": pa.array(np.zeros(n, np.int32)), "char_end": pa.array(np.zeros(n, np.int32)),
                       hidden_states.token_column(n_layers - 1): hidden_states.fixed_size_list(last)}
            tokens_writer.write_table(pa.Table.from_pydict(columns, schema=tokens_schema))
            # pooled: per example, each layer's first token and mean over the content tokens
            bounds = np.cumsum([0] + [len(x) for x in latents])
            content_mean = np.vstack([latent[bounds[k] + 1:bounds[k + 1] - 1].mean(axis=0) for k in range(count)])
            first_latent = latent[bounds[:-1]]
            pooled = {"example_id": pa.array(np.arange(first, first + count), pa.int64()),
                      "split": pa.array(frame["split"].iloc[first:first + count], pa.string()),
                      "label": pa.array(frame["label"].iloc[first:first + count], pa.string()),
                      "n_tokens": pa.array(np.diff(bounds).astype(np.int32)),
                      "n_content_tokens": pa.array((np.diff(bounds) - 2).astype(np.int32)),
                      "truncated": pa.array(np.zeros(count, bool)),
                      "summary_position": pa.array(np.zeros(count, np.int32))}
            for layer in range(n_layers):
                noise = 0.5 / np.sqrt(TOKENS_PER_EXAMPLE) * noise_rng.standard_normal((count, d))
                pooled[hidden_states.pooled_column(layer, "first")] = hidden_states.fixed_size_list(
                    (first_latent @ maps[layer] + offset + 0.5 * noise_rng.standard_normal((count, d))).astype(np.float32))
                pooled[hidden_states.pooled_column(layer, "mean")] = hidden_states.fixed_size_list(
                    (content_mean @ maps[layer] + offset + noise).astype(np.float32))
            pooled_writer.write_table(pa.Table.from_pydict(pooled, schema=pooled_schema))
    return n_tokens


def build_case(workdir: Path, n_models: int, n_tokens: int, d: int, n_layers: int, seed: int) -> list[str]:
    models = [f"m{i:02d}" for i in range(1, n_models + 1)]
    placeholder = workdir / "placeholder-model"
    placeholder.mkdir(parents=True, exist_ok=True)
    (placeholder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": d}))
    (workdir / "config.yaml").write_text(yaml.safe_dump(case_config(models, workdir), sort_keys=False))
    frame = write_dataset_files(workdir, max(n_tokens // TOKENS_PER_EXAMPLE, 10), seed)
    for index, model in enumerate(models):
        folder = workdir / "results" / "models" / model
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": d}))
        (folder / "provenance.json").write_text(json.dumps({"name": model, "source": "local", "synthetic": True}))
    time.sleep(1.0)  # the hidden files newer than the models and the dataset by more than the mtime resolution
    counts = []
    for index, model in enumerate(models):
        hidden = workdir / "results" / "hidden" / DATASET / model / "tokens.parquet"
        if not hidden.exists():
            tic = time.perf_counter()
            count = write_model_files(workdir, model, index, frame, d, n_layers, seed)
            print(f"  wrote {model}: {count} tokens in {time.perf_counter() - tic:.0f} s", flush=True)
        counts.append(pq.ParquetFile(hidden).metadata.num_rows)
    (workdir / "case.json").write_text(json.dumps({"models": n_models, "tokens": counts[0], "examples": len(frame),
                                                   "dims": d, "layers": n_layers,
                                                   "tokens_file_mb": hidden.stat().st_size / 1e6}))
    return models


def snakemake(workdir: Path, cores: int, *extra) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(PROJECT / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(workdir / "config.yaml"), "--cores", str(cores), "--rerun-triggers", "mtime",
               "--until", *UNTIL, *extra]
    return subprocess.run(command, capture_output=True, text=True, cwd=workdir)


def run_case(workdir: Path, cores: int) -> None:
    dry = snakemake(workdir, cores, "-n", "--quiet", "rules")
    planned = set(re.findall(r"^(\w+)\s+\d+\s*$", dry.stdout, flags=re.M))
    again = [rule for rule in FORBIDDEN if rule in planned]
    if dry.returncode or again:
        raise SystemExit(f"{workdir}: the run would also run {again or dry.stderr[-3000:]}")
    tic = time.perf_counter()
    result = snakemake(workdir, cores)
    (workdir / "snakemake.log").write_text(result.stdout + result.stderr)
    if result.returncode:
        raise SystemExit(f"{workdir}: snakemake failed, see {workdir / 'snakemake.log'}:\n{result.stderr[-3000:]}")
    print(f"  analyses done in {time.perf_counter() - tic:.0f} s", flush=True)


def stage_table(workdir: Path) -> pd.DataFrame:
    """Per stage: jobs, wall s (summed over jobs), CPU s, peak RSS (largest job), MB read and written."""
    rows = []
    for path in sorted((workdir / "results" / "benchmarks").rglob("*.tsv")):
        frame = pd.read_csv(path, sep="\t")
        rows.append({"file": str(path.relative_to(workdir)), **frame.iloc[-1].to_dict()})
    if not rows:
        return pd.DataFrame()
    jobs = pd.DataFrame(rows)
    jobs["rule"] = jobs["file"].map(benchmark_rule)
    jobs = jobs[jobs["rule"].isin(STAGES)]
    grouped = jobs.groupby("rule").agg(jobs=("s", "size"), wall_s=("s", "sum"), cpu_s=("cpu_time", "sum"),
                                       peak_rss_mb=("max_rss", "max"), read_mb=("io_in", "sum"),
                                       written_mb=("io_out", "sum"))
    grouped.insert(0, "stage", grouped.index.map(STAGES))
    return grouped.reset_index()


# (pattern of a benchmark file's path, rule): the rules with a `benchmark:` (the joins, variability_summary,
# compression_dataset and geometry_regression, have none: each reads small tables)
BENCHMARK_RULES = [
    (r"benchmarks/decomposition/moments/", "decomposition_moments"),
    (r"benchmarks/decomposition/fit/", "decomposition_fit"),
    (r"benchmarks/similarity/(?!sweep/)", "similarity"),
    (r"benchmarks/variability/nu/", "variability_nu"), (r"benchmarks/variability/probe/", "variability_probe"),
    (r"benchmarks/compression_model/", "compression_model"),
    (r"benchmarks/geometry/measures/", "geometry_measures"), (r"benchmarks/geometry/scores/", "geometry_score"),
]


def benchmark_rule(path: str) -> str | None:
    for pattern, rule in BENCHMARK_RULES:
        if re.search(pattern, path):
            return rule
    return None


def exponent(x, y) -> float:
    x, y = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    return float(np.polyfit(x, y, 1)[0]) if len(x) >= 2 and np.ptp(x) > 0 else float("nan")


def report(root: Path) -> None:
    cases = []
    for workdir in sorted(root.glob("m*-n*")):
        match = re.fullmatch(r"m(\d+)-n(\d+)", workdir.name)
        table = stage_table(workdir)
        if match and not table.empty:
            case = json.loads((workdir / "case.json").read_text())
            cases.append(table.assign(M=int(match[1]), N=case["tokens"], tokens_file_mb=case["tokens_file_mb"]))
    if not cases:
        raise SystemExit(f"no finished case under {root}")
    jobs = pd.concat(cases)
    per_stage = jobs.groupby(["M", "N", "tokens_file_mb", "stage"]).agg(jobs=("jobs", "sum"), wall_s=("wall_s", "sum"),
                                                      cpu_s=("cpu_s", "sum"), peak_rss_mb=("peak_rss_mb", "max"),
                                                      read_mb=("read_mb", "sum"), written_mb=("written_mb", "sum"))
    per_stage = per_stage.reset_index()
    per_stage.to_csv(root / "stages.csv", index=False)
    print(per_stage.to_markdown(index=False, floatfmt=".1f"))
    rows = []
    for stage, part in per_stage.groupby("stage"):
        for m, by_n in part.groupby("M"):
            if by_n["N"].nunique() >= 2:
                rows.append({"stage": stage, "in": "N", "at": f"M = {m}", "points": by_n["N"].nunique(),
                             "time_exponent": exponent(by_n["N"], by_n["wall_s"]),
                             "peak_rss_change": by_n["peak_rss_mb"].max() / by_n["peak_rss_mb"].min() - 1})
        for n, by_m in part.groupby("N"):
            if by_m["M"].nunique() >= 2:
                rows.append({"stage": stage, "in": "M", "at": f"N = {n}", "points": by_m["M"].nunique(),
                             "time_exponent": exponent(by_m["M"], by_m["wall_s"]),
                             "peak_rss_change": by_m["peak_rss_mb"].max() / by_m["peak_rss_mb"].min() - 1})
    exponents = pd.DataFrame(rows)
    exponents.to_csv(root / "exponents.csv", index=False)
    print()
    print(exponents.to_markdown(index=False, floatfmt=".2f"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--models", type=int, nargs="*", default=[3])
    parser.add_argument("--tokens", type=int, nargs="*", default=[30000])
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--layers", type=int, default=13, help="hidden-state layers incl. the embeddings")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", action="store_true", help="only print the tables of the cases run so far")
    args = parser.parse_args()
    root = args.workdir.resolve()
    if not args.report:
        for m in args.models:
            for n in args.tokens:
                workdir = root / f"m{m}-n{n}"
                print(f"case M = {m}, N = {n}: {workdir}", flush=True)
                workdir.mkdir(parents=True, exist_ok=True)
                build_case(workdir, m, n, args.dims, args.layers, args.seed)
                run_case(workdir, args.cores)
    report(root)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
