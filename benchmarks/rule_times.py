"""Job time and peak memory by rule, from the Snakemake `benchmark:` files of a run (docs/performance.md's table).

    .venv/bin/python benchmarks/rule_times.py [--results results] [--rule RULE ...]

Each rule with a `benchmark:` directive in rules/*.smk writes one TSV per job (columns `s`, `max_rss`,
`cpu_time`, ...). This sums the wall seconds (and CPU seconds) over each rule's jobs and takes the largest
`max_rss` (MB) of any of its jobs, naming that job by the path of its benchmark file. Files that match no rule's
benchmark pattern are listed as unmatched. Rules without a `benchmark:` directive (the light summary and figure
jobs) are not in the table. With --rule, also each job of those rules (seconds, CPU seconds, max_rss).
"""
import argparse
import re
from pathlib import Path

import pandas as pd

PROJECT = Path(__file__).resolve().parents[1]


def benchmark_patterns() -> dict:
    """{rule: compiled regex of its benchmark path relative to results/benchmarks/} from rules/*.smk."""
    patterns = {}
    for smk in sorted((PROJECT / "rules").glob("*.smk")):
        rule = None
        lines = smk.read_text().splitlines()
        for i, line in enumerate(lines):
            match = re.match(r"rule (\w+):", line)
            if match:
                rule = match.group(1)
            elif rule and line.strip() == "benchmark:" and i + 1 < len(lines):
                path = lines[i + 1].strip().strip(",").strip('"').strip("'")
                path = path.removeprefix("results/benchmarks/")
                regex = ""
                for part in re.split(r"(\{\w+\})", path):
                    regex += "[^/]+" if re.fullmatch(r"\{\w+\}", part) else re.escape(part)
                patterns[rule] = re.compile(regex + "$")
    return patterns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--rule", nargs="*", default=[], help="also list each job of these rules")
    args = parser.parse_args()
    root = args.results / "benchmarks"
    files = sorted(root.rglob("*.tsv"))
    if not files:
        raise SystemExit(f"no benchmark files under {root}: run the workflow first")
    patterns = benchmark_patterns()
    rows, unmatched = [], []
    for path in files:
        relative = path.relative_to(root).as_posix()
        rule = next((name for name, regex in patterns.items() if regex.match(relative)), None)
        if rule is None:
            unmatched.append(relative)
            continue
        table = pd.read_csv(path, sep="\t")
        for record in table.itertuples():  # one row per job (more with `benchmark: repeat(...)`)
            rows.append({"rule": rule, "job": relative, "s": float(record.s), "cpu_s": float(record.cpu_time),
                         "max_rss": pd.to_numeric(record.max_rss, errors="coerce")})
    frame = pd.DataFrame(rows)
    print(f"{len(files)} benchmark files under {root}; seconds summed over each rule's jobs, "
          f"peak MB = largest max_rss of one job\n")
    print("| rule | jobs | seconds | CPU seconds | peak MB | largest job |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    summary = []
    for rule, jobs in frame.groupby("rule"):
        peak = jobs.loc[jobs.max_rss.idxmax()] if jobs.max_rss.notna().any() else None
        summary.append((jobs.s.sum(), rule, len(jobs), jobs.cpu_s.sum(), peak))
    for seconds, rule, n, cpu, peak in sorted(summary, key=lambda item: -item[0]):
        peak_mb = f"{peak.max_rss:.0f}" if peak is not None else "-"
        largest = Path(peak.job).with_suffix("").as_posix().split("/", 1)[-1] if peak is not None else ""
        print(f"| {rule} | {n} | {seconds:.0f} | {cpu:.0f} | {peak_mb} | {largest} |")
    print(f"\ntotal: {len(frame)} jobs, {frame.s.sum():.0f} s summed job time")
    for rule in args.rule:
        jobs = frame[frame.rule == rule]
        print(f"\n{rule}: {len(jobs)} jobs")
        for job in jobs.itertuples():
            print(f"- {job.job}: {job.s:.1f} s, {job.cpu_s:.1f} CPU s, {job.max_rss:.0f} MB")
    for relative in unmatched:
        print(f"unmatched (no rule's benchmark pattern): {relative}")


if __name__ == "__main__":
    main()
