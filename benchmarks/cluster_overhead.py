"""What a SLURM submission costs on the single-node test cluster (.ci/slurm), against a local run.

Starts the cluster (root, SLURM installed: .ci/slurm/install.sh), runs a toy workflow of N independent 1-second
jobs locally and through profiles/slurm for a few `slurm-init-seconds-before-status-checks` values, stops the
cluster, and prints wall times (also written to benchmarks/out/cluster_overhead.json).

    .venv/bin/python benchmarks/cluster_overhead.py [--jobs 2] [--init 2 5 40]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = """
N = int(config.get("njobs", 2))

rule all:
    input: expand("out/{i}.txt", i=range(N))

rule work:
    output: "out/{i}.txt"
    threads: 1
    resources: mem_mb=100, runtime=5
    shell: "sleep 1; echo {wildcards.i} > {output}"
"""


def timed(cmd, **kwargs) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kwargs)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed


def run_toy(workdir: Path, jobs: int, extra: list[str]) -> float:
    workdir.mkdir(parents=True)
    (workdir / "Snakefile").write_text(SNAKEFILE)
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(workdir), "--config", f"njobs={jobs}", *extra]
    return timed(cmd, cwd=workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="independent 1-second jobs (default 2)")
    parser.add_argument("--init", type=int, nargs="+", default=[2, 5, 40],
                        help="slurm-init-seconds-before-status-checks values to try")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (starts slurmctld/slurmd/munged)")

    results = {"jobs": args.jobs, "load_average_1min_before": os.getloadavg()[0], "runs": []}
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, CI_SLURM_DIR=str(tmp / "slurm"))
        results["start_s"] = round(timed(["bash", str(REPO / ".ci/slurm/start.sh")], env=env), 2)
        try:
            local = run_toy(tmp / "local", args.jobs, ["--cores", "2"])
            results["runs"].append({"executor": "local", "wall_s": round(local, 1)})
            for init in args.init:
                wall = run_toy(tmp / f"slurm-{init}", args.jobs,
                               ["--workflow-profile", str(REPO / "profiles/slurm"),
                                "--slurm-init-seconds-before-status-checks", str(init)])
                results["runs"].append({"executor": "slurm", "init_seconds": init, "wall_s": round(wall, 1)})
        finally:
            results["stop_s"] = round(timed(["bash", str(REPO / ".ci/slurm/stop.sh")], env=env), 2)
    results["load_average_1min_after"] = os.getloadavg()[0]

    print(f"cluster start {results['start_s']} s, stop {results['stop_s']} s; "
          f"{args.jobs} independent 1-s jobs, 2 cores, load average {results['load_average_1min_before']:.1f}")
    for run in results["runs"]:
        label = "local --cores 2" if run["executor"] == "local" else f"slurm, init {run['init_seconds']} s"
        print(f"  {label:<22} {run['wall_s']:>6.1f} s")
    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster_overhead.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
