"""Cluster scheduling on a real single-node SLURM cluster (issue 9).

A session fixture brings up munged, slurmctld and slurmd through .ci/slurm/start.sh (one partition, this machine
as its only node, one fake GPU as GRES `gpu:fake:1`) and stops them by their pid files afterwards. The workflow
then runs through `--workflow-profile profiles/slurm`, and what SLURM recorded for every job (`scontrol show job`:
comment = rule and wildcards, TresPerJob, memory, time limit, CPUs) is checked against what the rule declared.

Skipped, with the reason, where no SLURM can be started: not root, or SLURM not installed and not on CI (on CI,
CI=true, the fixture installs the packages through .ci/slurm/install.sh and a failure to start is an error).
Every subprocess has a hard timeout; each SLURM job costs about 15 s of polling, so the workflows stay small.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CI_SLURM = REPO / ".ci" / "slurm"
SLURM_PROFILE = REPO / "profiles" / "slurm"
LOCAL_PROFILE = REPO / "profiles" / "local"
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "srun", "munged")
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Each job: submission, then status checks 2 s after submission and every ~10 s after.
FAST_STATUS = ["--slurm-init-seconds-before-status-checks", "2"]
SNAKEMAKE_TIMEOUT_S = 300


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _missing_binaries() -> list[str]:
    return [b for b in BINARIES if _which(b) is None]


def _cannot(reason: str):
    """Skip off CI; on CI the cluster test must run, so not being able to is an error."""
    if ON_CI:
        pytest.fail(f"SLURM cluster test cannot run on CI: {reason}")
    pytest.skip(reason)


def _script_env(state_dir: Path) -> dict:
    env = dict(os.environ)
    env["CI_SLURM_DIR"] = str(state_dir)
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
    return env


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running single-node SLURM cluster; yields the environment its commands need."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        _cannot("needs root to start slurmctld/slurmd/munged (run as root, e.g. on CI)")
    if _missing_binaries():
        if not ON_CI:
            pytest.skip(
                f"SLURM not installed (missing {', '.join(_missing_binaries())}); "
                "install with .ci/slurm/install.sh (apt-get install slurmctld slurmd slurm-client munge)"
            )
        proc = subprocess.run(["bash", str(CI_SLURM / "install.sh")], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0 or _missing_binaries():
            pytest.fail(f".ci/slurm/install.sh failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    state_dir = tmp_path_factory.mktemp("slurm")
    env = _script_env(state_dir)
    try:
        started = subprocess.run(["bash", str(CI_SLURM / "start.sh")], env=env, capture_output=True, text=True,
                                 timeout=180)
    except subprocess.TimeoutExpired as exc:
        subprocess.run(["bash", str(CI_SLURM / "stop.sh")], env=env, capture_output=True, timeout=120)
        _cannot(f".ci/slurm/start.sh timed out after 180 s: {exc.stdout}\n{exc.stderr}")
    if started.returncode != 0:
        subprocess.run(["bash", str(CI_SLURM / "stop.sh")], env=env, capture_output=True, timeout=120)
        _cannot(f".ci/slurm/start.sh failed (rc {started.returncode}):\n{started.stdout}\n{started.stderr}")
    try:
        yield env
    finally:
        stopped = subprocess.run(["bash", str(CI_SLURM / "stop.sh")], env=env, capture_output=True, text=True,
                                 timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        for pid_file in ("run/slurmd.pid", "run/slurmctld.pid", "munge/munged.pid"):
            assert not (state_dir / pid_file).exists(), f"{pid_file} left behind by stop.sh"


# --------------------------------------------------------------------------------------------------------------
# Running Snakemake and reading back what SLURM recorded


@dataclass
class Run:
    returncode: int
    output: str
    run_id: str | None
    jobs: dict = field(default_factory=dict)  # snakemake jobid -> {"rule", "wildcards", "resources", "slurm_id"}


def run_snakemake(args: list[str], *, workdir: Path, env: dict | None = None, timeout: int = SNAKEMAKE_TIMEOUT_S) -> Run:
    """Run snakemake (this interpreter's, so cluster jobs use the same environment) with a hard timeout."""
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(workdir), "--nocolor", *args]
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # snakemake cancels its SLURM jobs on TERM
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        pytest.fail(f"snakemake timed out after {timeout} s: {' '.join(cmd)}\n{output[-6000:]}")
    return parse_run(proc.returncode, output)


_RULE_RE = re.compile(r"^(local)?rule (\S+):$")
_SUBMITTED_RE = re.compile(r"^Job (\d+) has been submitted with SLURM jobid (\d+)")


def parse_run(returncode: int, output: str) -> Run:
    """Snakemake's job blocks (rule, jobid, wildcards, resources) and the SLURM job id of every submitted job."""
    run_id = re.search(r"SLURM run ID: (\S+)", output)
    run = Run(returncode, output, run_id.group(1) if run_id else None)
    current = None
    for line in output.splitlines():
        stripped = line.strip()
        match = _RULE_RE.match(stripped)
        if match:
            current = {"rule": match.group(2), "local": bool(match.group(1)), "wildcards": {}, "resources": {}}
            continue
        if current is not None and stripped.startswith("jobid: "):
            run.jobs[int(stripped.split()[1])] = current
        elif current is not None and stripped.startswith("wildcards: "):
            current["wildcards"] = dict(item.split("=", 1) for item in stripped[len("wildcards: "):].split(", "))
        elif current is not None and stripped.startswith("resources: "):
            current["resources"] = dict(item.split("=", 1) for item in stripped[len("resources: "):].split(", "))
        match = _SUBMITTED_RE.match(stripped)
        if match:
            run.jobs[int(match.group(1))]["slurm_id"] = match.group(2)
    return run


def slurm_job(job_id: str, env: dict) -> dict:
    """`scontrol show job -o` as a dict (finished jobs stay visible for MinJobAge=300 s)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def jobs_of_run(run_id: str, env: dict) -> list[str]:
    """Comments (rule_<rule>[_wildcards_<values>]) of every SLURM job that a Snakemake run submitted."""
    out = subprocess.run(["squeue", "--states=all", "--noheader", "--name", run_id, "--format=%k"], env=env,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return sorted(line.strip() for line in out.splitlines() if line.strip())


def mem_mb(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", value).groups()
    return round(float(number) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[unit])


def minutes(value: str) -> int:
    days, _, clock = value.rpartition("-")
    hours, mins, secs = (int(x) for x in clock.split(":"))
    return (int(days) if days else 0) * 1440 + hours * 60 + mins + (1 if secs else 0)


def check_submissions(run: Run, env: dict, *, gpu_rules: set[str], gpu_model: str | None = None) -> list[str]:
    """Every submitted job asked SLURM for what its rule declared; returns the rules seen."""
    assert run.returncode == 0, run.output[-6000:]
    submitted = [job for job in run.jobs.values() if "slurm_id" in job]
    assert submitted, f"no job was submitted to SLURM:\n{run.output[-6000:]}"
    for job in submitted:
        rule, resources = job["rule"], job["resources"]
        info = slurm_job(job["slurm_id"], env)
        what = f"rule {rule} {job['wildcards']} (SLURM job {job['slurm_id']}): {info}"
        assert info["JobState"] == "COMPLETED", what
        assert info["Comment"].startswith(f"rule_{rule}"), what
        assert info["Partition"] == "debug", what
        assert mem_mb(info["MinMemoryNode"]) == int(resources["mem_mb"]), what
        assert minutes(info["TimeLimit"]) == int(resources["runtime"]), what
        if rule in gpu_rules:
            assert resources.get("gpu") == "1", what
            expected = f"gres:gpu:{gpu_model}:1" if gpu_model else "gres:gpu:1"
            assert info.get("TresPerJob") == expected, what
        else:
            assert "gpu" not in resources, what
            assert "gpu" not in info.get("TresPerJob", "") and "gpu" not in info.get("TRES", ""), what
    return sorted({job["rule"] for job in submitted})


# --------------------------------------------------------------------------------------------------------------
# Profiles: static checks that need no cluster


def test_profiles_parse_and_map_resources(tmp_path):
    """Both profiles are valid Snakemake profiles; a dry run shows what each rule would be given."""
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE)
    local = run_snakemake(["--workflow-profile", str(LOCAL_PROFILE), "--dry-run"], workdir=tmp_path, timeout=120)
    assert local.returncode == 0, local.output
    assert "Using workflow specific profile" in local.output
    assert {job["rule"] for job in local.jobs.values()} == {"gpu_step", "cpu_step", "all"}
    gpu_job = next(job for job in local.jobs.values() if job["rule"] == "gpu_step")
    assert gpu_job["resources"]["gpu"] == "1"


# --------------------------------------------------------------------------------------------------------------
# A toy workflow: one GPU rule, one CPU rule


TOY_SNAKEFILE = """
N = config.get("n", ["a"])

rule all:
    input: expand("out/cpu_{n}.txt", n=N)

rule gpu_step:
    output: "out/gpu_{n}.txt"
    threads: 1
    resources: mem_mb=300, runtime=7, gpu=1
    shell: "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES > {output}"

rule cpu_step:
    input: "out/gpu_{n}.txt"
    output: "out/cpu_{n}.txt"
    threads: 1
    resources: mem_mb=250, runtime=5
    shell: "cat {input} > {output}"
"""


def test_toy_workflow_on_slurm(slurm_cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE)
    run = run_snakemake(["--workflow-profile", str(SLURM_PROFILE), *FAST_STATUS], workdir=tmp_path,
                        env=slurm_cluster)
    assert check_submissions(run, slurm_cluster, gpu_rules={"gpu_step"}) == ["cpu_step", "gpu_step"]
    assert jobs_of_run(run.run_id, slurm_cluster) == ["rule_cpu_step_wildcards_a", "rule_gpu_step_wildcards_a"]
    # The GPU job saw the GRES device SLURM gave it.
    assert (tmp_path / "out" / "cpu_a.txt").read_text() == "CUDA_VISIBLE_DEVICES=0\n"

    # Too many GPUs: SLURM refuses at submission and its message reaches the user.
    over = run_snakemake(["--workflow-profile", str(SLURM_PROFILE), *FAST_STATUS, "--set-resources",
                          "gpu_step:gpu=2", "--", "out/gpu_b.txt"],
                         workdir=tmp_path, env=slurm_cluster)
    assert over.returncode != 0
    assert "Requested node configuration is not available" in over.output
    assert "--gpus=2" in over.output
    assert not (tmp_path / "out" / "gpu_b.txt").exists()
