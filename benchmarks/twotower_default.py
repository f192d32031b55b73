"""Time the two-tower stage with the default config on the reviews corpus, in a scratch folder.

    .venv/bin/python benchmarks/twotower_default.py [--workdir DIR] [--threads N] [snakemake args...]

Runs only the twotower targets (the tokenizer model and the dataset are materialised/prepared first), then
prints each job's wall time (Snakemake benchmark files), the test-split loss curve and the consistency table.
Other stages are disabled; the models list is cut to the tokenizer model.
"""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

PROJECT = Path(__file__).resolve().parents[1]


def main():
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/twotower_benchmark")
    parser.add_argument("--threads", type=int, default=None, help="resources.threads (torch threads per job)")
    args, snakemake_args = parser.parse_known_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((PROJECT / "config.yaml").read_text())
    stage = config["twotower"]
    config["models"] = [m for m in config["models"] if m["name"] == stage["tokenizer_model"]]
    config["datasets"] = [d for d in config["datasets"] if d["name"] == stage["dataset"]]
    if args.threads:
        config.setdefault("resources", {})["threads"] = args.threads
    for key in ("decomposition", "variability", "compression", "geometry", "figures"):
        config[key] = {"enabled": False}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    base = f"results/analysis/twotower/{stage['dataset']}/{stage['tokenizer_model']}"
    targets = [f"{base}/{name}.csv" for name in ("preference", "consistency", "distribution", "top_tokens",
                                                  "history")]
    targets += [f"results/figures/twotower/{stage['dataset']}/{stage['tokenizer_model']}/{name}.png"
                for name in ("loss", "preference_distribution", "split_half")]
    command = [str(Path(sys.executable).with_name("snakemake")), "-s", str(PROJECT / "Snakefile"), "--directory",
               str(workdir), "--configfile", str(workdir / "config.yaml"), "--cores", "2", *snakemake_args, *targets]
    subprocess.run(command, check=True, cwd=workdir)
    rows = []
    for tsv in sorted((workdir / "results/benchmarks/twotower").rglob("*.tsv")):
        frame = pd.read_csv(tsv, sep="\t")
        rows.append({"job": str(tsv.relative_to(workdir / "results/benchmarks/twotower")), "wall_s": frame["s"].iloc[0],
                     "max_rss_mb": frame["max_rss"].iloc[0]})
    pd.set_option("display.width", 200)
    print(pd.DataFrame(rows).to_string(index=False))
    print((workdir / f"{base}/corpus.json").read_text())
    print(pd.read_csv(workdir / f"{base}/history.csv").to_string(index=False))
    print(pd.read_csv(workdir / f"{base}/distribution.csv").round(4).to_string(index=False))
    print(pd.read_csv(workdir / f"{base}/consistency.csv").round(4).to_string(index=False))


if __name__ == "__main__":
    main()
