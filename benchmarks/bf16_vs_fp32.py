"""How far every analysis's numbers move when the hidden states come from a bf16 (or fp16, tf32) forward pass, or
are stored as float16 (--store-dtype float16 with --precision float32: extraction.store_dtype).

    nice -n 10 .venv/bin/python benchmarks/bf16_vs_fp32.py --reference RUN --workdir SCRATCH \
        [--precision bfloat16] [--store-dtype float16] [--cores 2] [--stage ...]

--reference is a finished float32 run of the default (a project copy whose results/ holds the models, the data
and every analysis table); it is only read. The script
1. sets up --workdir with the reference's config.yaml, symlinks to its results/models/* and a copy of its
   results/data/*.parquet (no model is re-made: the models are the same bytes as in the reference);
2. extracts every (dataset, model)'s hidden states with the same extraction code (workflow_scripts/
   extract_hidden_states.extract) but a forward pass in the emulated precision (workflow_scripts/
   precision_emulation.py: weights rounded, every op's output rounded, as on a GPU; a real bf16 forward runs ~25x
   slower on a CPU without bf16 instructions, and the emulation's error matches it, tests/
   test_precision_emulation.py);
3. runs the analyses (decomposition, similarity, variability, compression, geometry; not the two-tower LM, which does not read
   hidden states) on those states with Snakemake in --workdir (`--until` the analysis rules);
4. compares every analysis table (CSV) with the reference's: per table and numeric column the largest absolute
   difference over rows, plus the headline numbers per analysis, written to --workdir/precision_deltas.csv and
   printed as a table (docs/performance.md, "GPU precision").
--stage states instead measures, per model and emulated precision (tf32, float16, bfloat16), the median relative
error of the token states and of the mean-pooled last layer against float32 on the first --texts texts.
"""
import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

ANALYSES = ("decomposition", "similarity", "variability", "compression", "geometry")
UNTIL_RULES = ["decomposition_fit", "similarity", "variability_summary", "compression_dataset", "geometry_regression"]
# rules that must never run in the work directory (their outputs come from the reference or from step 2)
FORBIDDEN = ["materialise_model", "perturb_model", "finetune_model", "prepare_dataset", "extract_hidden_states"]
LOG = logging.getLogger("bf16_vs_fp32")


def setup_workdir(reference: Path, workdir: Path, config_file: Path | None = None) -> dict:
    (workdir / "results" / "models").mkdir(parents=True, exist_ok=True)
    (workdir / "results" / "data").mkdir(parents=True, exist_ok=True)
    if not (workdir / "config.yaml").exists():
        shutil.copy2(config_file or reference / "config.yaml", workdir / "config.yaml")
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    for model_dir in sorted((reference / "results" / "models").iterdir()):
        link = workdir / "results" / "models" / model_dir.name
        if not link.exists():
            link.symlink_to(model_dir.resolve(), target_is_directory=True)
    for data in sorted((reference / "results" / "data").glob("*.parquet")):
        target = workdir / "results" / "data" / data.name
        if not target.exists():
            shutil.copyfile(data, target)
        stat = data.stat()  # the reference's mtime: older than the models made from it, so nothing reruns
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return config


def extract_all(config: dict, workdir: Path, precision: str, threads: int, only=None,
                store_dtype: str = "float32") -> list[dict]:
    import torch

    from lmcompare.extraction import extract as ex
    from lmcompare.extraction.precision import emulate

    torch.set_num_threads(threads)
    original_load = ex.load_model

    def load_emulated(*args, **kwargs):
        return emulate(original_load(*args, **kwargs), precision)

    ex.load_model = load_emulated
    settings = ex.ExtractionSettings.from_config({**config.get("extraction", {}), "store_dtype": store_dtype})
    datasets = config.get("extraction", {}).get("datasets") or [d["name"] for d in config["datasets"]]
    rows = []
    try:
        for dataset in datasets:
            for entry in config["models"]:
                model = entry["name"]
                if only and model not in only:
                    continue
                if not (workdir / "results" / "models" / model).exists():
                    raise SystemExit(f"model {model} is not in the reference's results/models yet; wait for it")
                out = workdir / "results" / "hidden" / dataset / model
                if (out / "tokens.parquet").exists():
                    continue
                out.mkdir(parents=True, exist_ok=True)
                tic = time.perf_counter()
                counts = ex.extract(workdir / "results" / "models" / model, workdir / "results" / "data" /
                                    f"{dataset}.parquet", out / "pooled.parquet", out / "tokens.parquet", settings,
                                    model_name=model, dataset_name=dataset, progress=False)
                rows.append({"dataset": dataset, "model": model, "tokens": counts.tokens,
                             "seconds": time.perf_counter() - tic})
                LOG.info("extracted %s/%s in %s emulation, stored as %s: %d tokens, %.0f s", dataset, model,
                         precision, store_dtype, counts.tokens, rows[-1]["seconds"])
    finally:
        ex.load_model = original_load
    return rows


def state_errors(reference: Path, config: dict, n_texts: int, threads: int, only=None) -> pd.DataFrame:
    """Median relative error |h - h32| / |h32| of every model's token states (first and last layer) and of the
    mean-pooled last layer, per emulated precision, on the first n_texts texts of each dataset."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from lmcompare.extraction.precision import PRECISIONS, emulate

    torch.set_num_threads(threads)
    datasets = config.get("extraction", {}).get("datasets") or [d["name"] for d in config["datasets"]]
    max_length = config.get("extraction", {}).get("max_length", 128)
    rows = []
    for dataset in datasets:
        texts = pd.read_parquet(reference / "results" / "data" / f"{dataset}.parquet",
                                columns=["text"])["text"].head(n_texts).tolist()
        for entry in config["models"]:
            if only and entry["name"] not in only:
                continue
            folder = reference / "results" / "models" / entry["name"]
            if not folder.exists():
                LOG.warning("model %s is not in %s yet: left out", entry["name"], folder.parent)
                continue
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                                return_token_type_ids=False)
            mask = encoded["attention_mask"].bool()
            weights = encoded["attention_mask"].unsqueeze(-1).float()
            outputs = {}
            for precision in PRECISIONS:
                model = emulate(AutoModel.from_pretrained(folder, local_files_only=True).eval(), precision)
                with torch.inference_mode():
                    outputs[precision] = [h.float() for h in model(**encoded, output_hidden_states=True).hidden_states]
            ref = outputs["float32"]
            for precision in PRECISIONS[1:]:
                new = outputs[precision]

                def rel(a, b):
                    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).median())

                pooled = lambda h: (h * weights).sum(1) / weights.sum(1)  # noqa: E731
                rows.append({"dataset": dataset, "model": entry["name"], "precision": precision,
                             "tokens": int(mask.sum()), "layer_1_tokens": rel(new[1][mask], ref[1][mask]),
                             "last_layer_tokens": rel(new[-1][mask], ref[-1][mask]),
                             "last_layer_mean": rel(pooled(new[-1]), pooled(ref[-1]))})
            LOG.info("state errors of %s done", entry["name"])
    return pd.DataFrame(rows)


def run_analyses(workdir: Path, cores: int) -> None:
    command = [sys.executable, "-m", "snakemake", "-s", str(PROJECT / "Snakefile"), "--directory", str(workdir),
               "--cores", str(cores), "--rerun-triggers", "mtime", "--until", *UNTIL_RULES]
    dry = subprocess.run(command + ["-n", "--quiet", "rules"], capture_output=True, text=True, cwd=workdir)
    planned = set(re.findall(r"^(\w+)\s+\d+\s*$", dry.stdout, flags=re.M))  # the dry run's job table
    again = [rule for rule in FORBIDDEN if rule in planned]
    if dry.returncode or again:
        raise SystemExit(f"the analyses would rerun {again or dry.stderr[-2000:]} in {workdir}: the hidden states "
                         f"must be newer than the models and the data")
    LOG.info("running %s", " ".join(command))
    with open(workdir / "snakemake.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)


def key_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c]) or
            pd.api.types.is_bool_dtype(table[c]) or c in ("layer", "k", "seed", "dim", "rank", "n", "fold")]


def compare_tables(reference: Path, workdir: Path) -> pd.DataFrame:
    """Per analysis table and numeric column: largest |new - reference| over rows and the reference's range."""
    rows = []
    for analysis in ANALYSES:
        ref_root = reference / "results" / "analysis" / analysis
        for ref_path in sorted(ref_root.rglob("*.csv")):
            rel = ref_path.relative_to(reference / "results" / "analysis")
            new_path = workdir / "results" / "analysis" / rel
            if not new_path.exists():
                rows.append({"analysis": analysis, "table": str(rel), "column": None, "note": "missing in the run"})
                continue
            ref, new = pd.read_csv(ref_path), pd.read_csv(new_path)
            keys = [c for c in key_columns(ref) if c in new.columns]
            numeric = [c for c in ref.columns if c not in keys and pd.api.types.is_numeric_dtype(ref[c])
                       and c in new.columns]
            if len(ref) != len(new):
                rows.append({"analysis": analysis, "table": str(rel), "column": None,
                             "note": f"{len(ref)} rows in the reference, {len(new)} here"})
                continue
            if keys:
                merged = ref.merge(new, on=keys, how="outer", suffixes=("_ref", "_new"), indicator=True)
                if (merged["_merge"] != "both").any():  # keys differ (e.g. a selected layer): compare by position
                    merged = ref.add_suffix("_ref").join(new.add_suffix("_new"))
            else:
                merged = ref.add_suffix("_ref").join(new.add_suffix("_new"))
            for column in numeric:
                a = pd.to_numeric(merged[f"{column}_ref"], errors="coerce").to_numpy(float)
                b = pd.to_numeric(merged[f"{column}_new"], errors="coerce").to_numpy(float)
                both = np.isfinite(a) & np.isfinite(b)
                diff = np.abs(a - b)[both]
                rows.append({"analysis": analysis, "table": str(rel), "column": column, "rows": int(both.sum()),
                             "max_abs_delta": float(diff.max()) if diff.size else np.nan,
                             "median_abs_delta": float(np.median(diff)) if diff.size else np.nan,
                             "ref_min": float(np.nanmin(a)) if np.isfinite(a).any() else np.nan,
                             "ref_max": float(np.nanmax(a)) if np.isfinite(a).any() else np.nan,
                             "nan_mismatch": int((np.isfinite(a) != np.isfinite(b)).sum()), "note": ""})
            for column in [c for c in keys if c in ref.columns and c in new.columns and c not in ("model", "dataset")]:
                if not ref[column].astype(str).equals(new[column].astype(str)):
                    changed = int((ref[column].astype(str) != new[column].astype(str)).sum())
                    rows.append({"analysis": analysis, "table": str(rel), "column": column,
                                 "note": f"{changed} row(s) with a different value (a choice changed)"})
    return pd.DataFrame(rows)


# the numbers a reader takes from each table (file name -> columns); the full comparison is in precision_deltas.csv
HEADLINES = {"group.csv": ["r2_train", "r2_valid", "r2_test"], "pairwise.csv": ["r2_train", "r2_valid", "r2_test"],
             "nu.csv": ["nu"], "probe.csv": ["accuracy"], "selection.csv": ["recommended_layer", "nu"],
             "pca_curve.csv": ["accuracy"], "summary.csv": ["full_accuracy", "smallest_k_within_tolerance",
                                                           "pca_k1_accuracy", "best_dim_accuracy"],
             "single_dims.csv": ["accuracy"], "measures.csv": None, "regression.csv": ["r", "r2"],
             "pairs.csv": None, "similarity.csv": ["value"]}


def headline_summary(deltas: pd.DataFrame) -> pd.DataFrame:
    """Per analysis, table kind and headline column: the largest |delta| over models and rows, and relative to the
    reference's largest |value|."""
    rows = []
    for (analysis, kind), group in deltas.assign(kind=deltas["table"].str.split("/").str[-1]).groupby(
            ["analysis", "kind"]):
        wanted = HEADLINES.get(kind, [])
        for column, part in group[group["column"].notna()].groupby("column"):
            if wanted is not None and column not in wanted:
                continue
            if part["max_abs_delta"].isna().all():
                continue
            scale = np.nanmax(np.abs(part[["ref_min", "ref_max"]].to_numpy(float)))
            rows.append({"analysis": analysis, "table": kind, "column": column, "tables": len(part),
                         "max_abs_delta": part["max_abs_delta"].max(),
                         "max_rel_delta": part["max_abs_delta"].max() / scale if scale else np.nan})
        changed = group[group["note"].fillna("").str.contains("different value")]
        for _, row in changed.iterrows():
            rows.append({"analysis": analysis, "table": kind, "column": row["column"], "tables": 1,
                         "max_abs_delta": np.nan, "max_rel_delta": np.nan, "note": row["note"]})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="a finished float32 default run (read only)")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--precision", default="bfloat16", choices=["bfloat16", "float16", "tf32", "float32"])
    parser.add_argument("--config", type=Path, default=None,
                        help="config for the work directory (default: the reference's config.yaml), e.g. fewer "
                             "models; then run --precision float32 into a second work directory and compare the "
                             "two with --stage compare --reference FP32_WORKDIR")
    parser.add_argument("--store-dtype", default="float32", choices=["float32", "float16"],
                        help="the storage type of the extracted vectors (extraction.store_dtype): with --precision "
                             "float32, float16 measures what half-size files cost every analysis")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--stage", choices=["all", "extract", "analyse", "compare", "states"], default="all",
                        help="extract: only the hidden states (--models limits them); analyse: the analyses and "
                             "the comparison; compare: only the comparison")
    parser.add_argument("--models", nargs="*", default=None, help="(extract, states) only these models")
    parser.add_argument("--texts", type=int, default=64, help="(states) texts per dataset")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("workflow").setLevel(logging.WARNING)
    reference, workdir = args.reference.resolve(), args.workdir.resolve()
    if args.stage == "states":
        config = yaml.safe_load((reference / "config.yaml").read_text())
        errors = state_errors(reference, config, args.texts, args.cores, args.models)
        workdir.mkdir(parents=True, exist_ok=True)
        errors.to_csv(workdir / "state_errors.csv", index=False)
        print(errors.to_markdown(index=False, floatfmt=".2e") if hasattr(errors, "to_markdown") else errors)
        return
    if args.stage in ("all", "extract"):
        config = setup_workdir(reference, workdir, args.config)
        started = time.perf_counter()
        timings = extract_all(config, workdir, args.precision, args.cores, args.models, args.store_dtype)
        times = workdir / "extraction_times.csv"
        pd.concat(([pd.read_csv(times)] if times.exists() else []) + [pd.DataFrame(timings)]).to_csv(times, index=False)
        LOG.info("extraction done in %.0f s", time.perf_counter() - started)
        if args.stage == "extract":
            return
    if not (reference / "results" / "analysis").is_dir():
        raise SystemExit(f"{reference}/results/analysis is missing: --reference must be a finished default run")
    if args.stage in ("all", "analyse"):
        setup_workdir(reference, workdir, args.config)
        run_analyses(workdir, args.cores)
    deltas = compare_tables(reference, workdir)
    deltas.insert(0, "precision", args.precision if args.store_dtype == "float32" else f"stored {args.store_dtype}")
    deltas.to_csv(workdir / "precision_deltas.csv", index=False)
    summary = headline_summary(deltas)
    summary.to_csv(workdir / "precision_headlines.csv", index=False)
    print(f"all columns: {workdir / 'precision_deltas.csv'}\n")
    print(summary.to_markdown(index=False, floatfmt=".2g"))


if __name__ == "__main__":
    main()
