"""Cluster scheduling on a real single-node SLURM cluster.

A session fixture brings up munged, slurmctld and slurmd through .ci/slurm/start.sh (partitions debug and gpu over
this machine as its only node, one fake GPU as GRES `gpu:fake:1`) and stops them by their pid files afterwards. The workflow
then runs through `--workflow-profile profiles/slurm`, and what SLURM recorded for every job (`scontrol show job`:
comment = rule and wildcards, TresPerJob, memory, time limit, CPUs) is checked against what the rule declared.

Skipped, with the reason, where no SLURM can be started: not root, or SLURM not installed and not on CI (on CI,
CI=true, the fixture installs the packages through .ci/slurm/install.sh and a failure to start is an error).
Every subprocess has a hard timeout; each round of SLURM jobs costs 20-45 s of polling, so the workflows stay small.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from lmcompare import hidden_states, paths

pytestmark = pytest.mark.workflow

REPO = Path(__file__).resolve().parents[1]
CI_SLURM = REPO / ".ci" / "slurm"
SLURM_PROFILE = REPO / "profiles" / "slurm"
LOCAL_PROFILE = REPO / "profiles" / "local"
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "srun", "munged")
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Status checks 5 s after submission, then the plugin adds 10 s per check (5, 20, 45 s...) until a job ends.
FAST_STATUS = ["--slurm-init-seconds-before-status-checks", "5"]
SNAKEMAKE_TIMEOUT_S = 300
FIRST_TIMEOUT_S = 480  # the first SLURM run: five rounds of jobs, five GPU jobs queueing for the one (fake) GPU


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
    pid_files = {"slurmd": "run/slurmd.pid", "slurmctld": "run/slurmctld.pid", "munged": "munge/munged.pid"}
    pids = {name: int((state_dir / path).read_text().strip()) for name, path in pid_files.items()}
    assert all(_running(pid, name) for name, pid in pids.items()), pids
    try:
        yield env
    finally:
        stopped = subprocess.run(["bash", str(CI_SLURM / "stop.sh")], env=env, capture_output=True, text=True,
                                 timeout=120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        still = {name: pid for name, pid in pids.items() if _running(pid, name)}
        assert not still, f"stop.sh left daemons running: {still}"
        assert not Path("/etc/slurm/slurm.conf").is_symlink() or not os.readlink("/etc/slurm/slurm.conf").startswith(
            str(state_dir)), "stop.sh left /etc/slurm/slurm.conf pointing into the scratch folder"


def _running(pid: int, name: str) -> bool:
    """pid is a live (not zombie) process called name."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return fields.get("Name", "").strip() == name and not fields.get("State", "").strip().startswith("Z")


# --------------------------------------------------------------------------------------------------------------
# Running Snakemake and reading back what SLURM recorded


@dataclass
class Run:
    returncode: int
    output: str
    run_id: str | None
    jobs: dict = field(default_factory=dict)  # snakemake jobid -> {"rule", "wildcards", "threads", "resources", "slurm_id"}
    slurm: dict = field(default_factory=dict)  # SLURM job id -> `scontrol show job` fields, read right after the run
    slurm_jobs: list = field(default_factory=list)  # (comment, state) of every SLURM job named with the run ID


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
            output, _ = proc.communicate(timeout=30)
        pytest.fail(f"snakemake timed out after {timeout} s: {' '.join(cmd)}\n{output[-6000:]}")
    run = parse_run(proc.returncode, output)
    if run.run_id and env is not None:  # a SLURM run: read what SLURM recorded while it still lists the jobs
        run.slurm_jobs = jobs_of_run(run.run_id, env)
        run.slurm = {job["slurm_id"]: slurm_job(job["slurm_id"], env) for job in run.jobs.values() if "slurm_id" in job}
    return run


_RULE_RE = re.compile(r"^(local)?rule (\S+):$")
_SUBMITTED_RE = re.compile(r"^Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+)\)\.$")


def parse_run(returncode: int, output: str) -> Run:
    """Snakemake's job blocks (rule, jobid, wildcards, resources) and the SLURM job id of every submitted job."""
    run_id = re.search(r"SLURM run ID: (\S+)", output)
    run = Run(returncode, output, run_id.group(1) if run_id else None)
    current = None
    for line in output.splitlines():
        stripped = line.strip()
        match = _RULE_RE.match(stripped)
        if match:
            current = {"rule": match.group(2), "local": bool(match.group(1)), "wildcards": {}, "resources": {},
                       "threads": 1}
            continue
        if current is not None and stripped.startswith("jobid: "):
            run.jobs[int(stripped.split()[1])] = current
        elif current is not None and stripped.startswith("threads: "):
            current["threads"] = int(stripped.split()[1])
        elif current is not None and stripped.startswith("wildcards: "):
            current["wildcards"] = dict(item.split("=", 1) for item in stripped[len("wildcards: "):].split(", "))
        elif current is not None and stripped.startswith("resources: "):
            current["resources"] = dict(item.split("=", 1) for item in stripped[len("resources: "):].split(", "))
        match = _SUBMITTED_RE.match(stripped)
        if match:
            run.jobs[int(match.group(1))].update(slurm_id=match.group(2), slurm_log=match.group(3))
    return run


def slurm_job(job_id: str, env: dict) -> dict:
    """`scontrol show job -o` as a dict (finished jobs stay listed for MinJobAge, 3600 s on the test cluster)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def jobs_of_run(run_id: str, env: dict) -> list[tuple[str, str]]:
    """(comment, state) of every SLURM job that a Snakemake run submitted (comment: rule_<rule>_wildcards_<..>)."""
    assert run_id, "no SLURM run ID in the snakemake output"
    out = subprocess.run(["squeue", "--states=all", "--noheader", "--name", run_id, "--format=%k|%T"], env=env,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return sorted(tuple(line.strip().split("|")) for line in out.splitlines() if line.strip())


def mem_mb(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", value).groups()
    return round(float(number) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[unit])


def minutes(value: str) -> int:
    days, _, clock = value.rpartition("-")
    hours, mins, secs = (int(x) for x in clock.split(":"))
    return (int(days) if days else 0) * 1440 + hours * 60 + mins + (1 if secs else 0)


def check_submissions(run: Run, *, gpu_rules: set[str], gpu_model: str | None = None, partitions: dict | None = None,
                      account: str | None = None) -> list[str]:
    """Every submitted job asked SLURM for what its rule declared (and a site profile's partition per rule, default
    'debug', and account); returns the rules seen."""
    assert run.returncode == 0, run.output[-6000:]
    submitted = [job for job in run.jobs.values() if "slurm_id" in job]
    assert submitted, f"no job was submitted to SLURM:\n{run.output[-6000:]}"
    for job in submitted:
        rule, resources = job["rule"], job["resources"]
        info = run.slurm[job["slurm_id"]]
        what = f"rule {rule} {job['wildcards']} (SLURM job {job['slurm_id']}): {info}"
        assert info["JobState"] == "COMPLETED", what
        assert info["Comment"].startswith(f"rule_{rule}"), what
        assert info["Partition"] == (partitions or {}).get(rule, "debug"), what
        if account:
            assert info["Account"] == account, what
        assert mem_mb(info["MinMemoryNode"]) == int(resources["mem_mb"]), what
        assert minutes(info["TimeLimit"]) == int(resources["runtime"]), what
        assert int(info["NumCPUs"]) == job["threads"], what
        if rule in gpu_rules:
            assert resources.get("gpu") == "1", what
            expected = f"gres:gpu:{gpu_model}:1" if gpu_model else "gres:gpu:1"
            assert info.get("TresPerJob") == expected, what
        else:
            assert "gpu" not in resources, what
            assert "gpu" not in info.get("TresPerJob", "") and "gpu" not in info.get("TRES", ""), what
    return sorted({job["rule"] for job in submitted})


# --------------------------------------------------------------------------------------------------------------
# Profiles on a toy workflow: no cluster needed


TOY_SNAKEFILE = """
N = ["a", "b"]

rule all:
    input: expand("out/cpu_{n}.txt", n=N)

rule gpu_step:
    output: "out/gpu_{n}.txt"
    threads: 1
    resources: mem_mb=300, runtime=7, gpu=1
    shell: "date +%s.%N > {output}; sleep 1; date +%s.%N >> {output}"

rule cpu_step:
    input: "out/gpu_{n}.txt"
    output: "out/cpu_{n}.txt"
    threads: 1
    resources: mem_mb=250, runtime=5
    shell: "cat {input} > {output}"
"""


SITE_PROFILE = """
default-resources:
  slurm_account: myproject
  slurm_partition: cpu
set-resources:
  gpu_step:
    slurm_partition: gpu
    gpu_model: a100
"""


def test_slurm_profile_keeps_rule_resources_and_passes_a_site_profile_through(tmp_path):
    """profiles/slurm loads (executor slurm), leaves each rule's declared resources as they are, and lets a site
    profile (--profile) set the account, the partitions and a GPU model (docs/cluster.md)."""
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "config.yaml").write_text(SITE_PROFILE)
    run = run_snakemake(["--profile", str(tmp_path / "site"), "--workflow-profile", str(SLURM_PROFILE),
                         "--dry-run"], workdir=tmp_path, timeout=120)
    assert run.returncode == 0, run.output
    assert f"workflow specific profile {SLURM_PROFILE}" in run.output
    by_rule = {job["rule"]: job["resources"] for job in run.jobs.values()}
    gpu, cpu = by_rule["gpu_step"], by_rule["cpu_step"]
    assert (gpu["gpu"], gpu["mem_mb"], gpu["runtime"]) == ("1", "300", "7")
    assert (gpu["slurm_partition"], gpu["gpu_model"], gpu["slurm_account"]) == ("gpu", "a100", "myproject")
    assert "gpu" not in cpu and (cpu["mem_mb"], cpu["runtime"]) == ("250", "5")
    assert (cpu["slurm_partition"], cpu["slurm_account"]) == ("cpu", "myproject")
    assert "gpu_model" not in cpu


def test_local_profile_runs_gpu_rules_one_at_a_time(tmp_path):
    """With profiles/local two GPU jobs never overlap although two cores would let them."""
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE)
    run = run_snakemake(["--workflow-profile", str(LOCAL_PROFILE), "--cores", "2"], workdir=tmp_path, timeout=120)
    assert run.returncode == 0, run.output
    (a_start, a_end), (b_start, b_end) = (
        [float(x) for x in (tmp_path / "out" / f"gpu_{n}.txt").read_text().split()] for n in "ab")
    assert a_end <= b_start or b_end <= a_start, "two gpu=1 jobs ran at once under profiles/local"


# --------------------------------------------------------------------------------------------------------------
# Every rule of the project declares what it needs (no cluster needed)

# Rules that run a model and so declare gpu=1 (extraction, fine-tuning, two-tower training; the two-tower
# measure runs the trained model; geometry_family_extract is the extraction rule reused for the geometry-only
# perturbation family). A new model-running rule is added here on purpose, not by accident.
MODEL_RUNNING_RULES = {"extract_hidden_states", "geometry_family_extract", "finetune_model", "twotower_train",
                       "twotower_measure"}
MUST_USE_GPU = {"extract_hidden_states", "geometry_family_extract", "finetune_model", "twotower_train"}

_DECLARED_RESOURCES = """
import json, os, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

for configfile in sys.argv[2:]:
    os.chdir(Path(configfile).parent)
    with SnakemakeApi(OutputSettings()) as api:
        wf = api.workflow(snakefile=Path(sys.argv[1]), workdir=Path.cwd(),
                          config_settings=ConfigSettings(configfiles=[Path(configfile)]),
                          resource_settings=ResourceSettings(), storage_settings=StorageSettings())
        rules = {rule.name: sorted(rule.resources) for rule in wf._workflow.rules}
    print("DECLARED=" + json.dumps(rules), flush=True)
"""


def declared_resources(workdir: Path, *configs: dict) -> list[dict]:
    """Resource names each rule of the project's Snakefile declares, per config (the workflow is read, not run)."""
    import json

    paths = []
    for index, config in enumerate(configs):
        (workdir / str(index)).mkdir(parents=True, exist_ok=True)
        paths.append(workdir / str(index) / "config.yaml")
        paths[-1].write_text(yaml.safe_dump(config, sort_keys=False))
    proc = subprocess.run([sys.executable, "-c", _DECLARED_RESOURCES, str(REPO / "Snakefile"), *map(str, paths)],
                          cwd=workdir, capture_output=True, text=True, timeout=180)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("DECLARED=")]
    assert proc.returncode == 0 and len(lines) == len(configs), proc.stdout[-4000:] + proc.stderr[-4000:]
    return [json.loads(line[len("DECLARED="):]) for line in lines]


STAGES = ("decomposition", "variability", "compression", "geometry", "twotower", "figures")


def test_every_rule_declares_memory_runtime_and_gpu_only_where_a_model_runs(tiny_models, tiny_corpus, tmp_path):
    from tests.conftest import tiny_config

    config = tiny_config(tiny_models, tiny_corpus, **{stage: {"enabled": True} for stage in STAGES})
    typed = dict(config, resources=dict(config["resources"], gpu_model="a100"))
    off = dict(config, resources=dict(config["resources"], gpu_rules_use_gpu=False))
    rules, rules_typed, rules_off = declared_resources(tmp_path, config, typed, off)
    assert MUST_USE_GPU | {"materialise_model", "prepare_dataset"} <= set(rules)
    for rule, names in rules.items():
        if rule == "all":
            continue
        assert {"mem_mb", "runtime"} <= set(names), f"rule {rule} declares no mem_mb/runtime: {names}"
        assert "gres" not in names and "slurm_extra" not in names, f"rule {rule}: GPUs go through gpu=1 only"
        if rule in MUST_USE_GPU:
            assert "gpu" in names, f"rule {rule} runs a model but declares no gpu"
        if "gpu" in names:
            assert rule in MODEL_RUNNING_RULES, f"rule {rule} declares a gpu but is not a model-running rule"
        assert "gpu_model" not in names, f"rule {rule}: gpu_model without config resources.gpu_model"

    # One place to change it: config `resources` (gpu_model -> --gpus=<model>:1; gpu_rules_use_gpu: false -> none).
    assert set(rules_typed) == set(rules) == set(rules_off)
    for rule, names in rules_typed.items():
        assert ("gpu_model" in names) == ("gpu" in rules[rule]), rule
    assert not [rule for rule, names in rules_off.items() if "gpu" in names]


# --------------------------------------------------------------------------------------------------------------
# The project's workflow on tiny models: locally and on SLURM


# Every model-running rule (extraction, fine-tuning, two-tower training and measuring) goes through SLURM below.
GPU_RULES = MODEL_RUNNING_RULES - {"geometry_family_extract"}  # the cluster config has no geometry family
# Besides each model's hidden states: a fine-tuned model's compression tables (per model and the pretrained vs
# fine-tuned pair) and a one-seed two-tower run up to its preference tables (its figures would be one more round
# of SLURM jobs, so the runs name their targets instead of running `all`).
STAGE_TARGETS = [f"results/analysis/compression/toy/first_layer-1/{name}.csv" for name in ("summary", "pairs")] + [
    f"results/analysis/twotower/toy/tiny-bert/{name}.csv" for name in ("preference", "consistency")]
FIRST_JOBS = [
    ("rule_compression_dataset_wildcards_toy_first_layer-1", "COMPLETED"),
    ("rule_compression_model_wildcards_toy_first_layer-1_tiny-bert", "COMPLETED"),
    ("rule_compression_model_wildcards_toy_first_layer-1_tiny-bert-ft", "COMPLETED"),
    ("rule_extract_hidden_states_wildcards_toy_tiny-bert", "COMPLETED"),
    ("rule_extract_hidden_states_wildcards_toy_tiny-bert-ft", "COMPLETED"),
    ("rule_finetune_model_wildcards_tiny-bert-ft", "COMPLETED"),
    ("rule_materialise_model_wildcards_tiny-bert", "COMPLETED"),
    ("rule_prepare_dataset_wildcards_toy", "COMPLETED"),
    ("rule_twotower_corpus_wildcards_toy_tiny-bert", "COMPLETED"),
    ("rule_twotower_measure_wildcards_toy_tiny-bert_0_20", "COMPLETED"),
    ("rule_twotower_preference_wildcards_toy_tiny-bert", "COMPLETED"),
    ("rule_twotower_train_wildcards_toy_tiny-bert_0", "COMPLETED"),
]


def cluster_config(tiny_models, tiny_corpus, models) -> dict:
    """Tiny models, a fine-tuned copy of tiny-bert (as in tests/test_compression.py, 2 epochs), compression on
    tiny-bert and its fine-tuned copy, and a one-seed, 20-step two-tower run on tiny-bert's tokenizer
    (conftest's TINY_SECTIONS, shortened); the other analyses and the summary figure switched off."""
    from tests.conftest import TINY_SECTIONS, tiny_config

    TINY_STAGE = TINY_SECTIONS["twotower"]

    config = tiny_config(tiny_models, tiny_corpus, models=models, **{stage: {"enabled": False} for stage in STAGES})
    config["models"].insert(1, {"name": "tiny-bert-ft", "source": "finetune", "base": "tiny-bert", "dataset": "toy",
                                "epochs": 2, "learning_rate": 3e-3, "batch_size": 16, "max_length": 32, "seed": 0})
    # compression on the pair only: adding a model later must not rerun the cross-model compression tables
    config["compression"] = {"enabled": True, "n_best": 3, "models": ["tiny-bert", "tiny-bert-ft"]}
    config["twotower"] = dict(TINY_STAGE, seeds=[0], steps=20, eval_every=10, checkpoint_every=10,
                              head=dict(TINY_STAGE["head"], steps=10), memory_mb=1000, runtime_minutes=10)
    return config


def cluster_targets(config: dict) -> list[str]:
    return [str(paths.pooled_path("toy", model["name"])) for model in config["models"]] + STAGE_TARGETS


def run_project(workdir: Path, config: dict, env: dict, *args: str, timeout: int = SNAKEMAKE_TIMEOUT_S) -> Run:
    """The project's Snakefile through the SLURM workflow profile, with `config` as workdir/config.yaml."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return run_snakemake(["-s", str(REPO / "Snakefile"), "--configfile", str(workdir / "config.yaml"),
                          "--workflow-profile", str(SLURM_PROFILE), *FAST_STATUS, *args],
                         workdir=workdir, env=dict(env, PYTHONHASHSEED="0"), timeout=timeout)


# The CI cluster's second partition `gpu` (.ci/slurm/start.sh); no accounting, so any account name is accepted.
CLUSTER_SITE_PROFILE = """
default-resources:
  slurm_account: myproject
set-resources:
  extract_hidden_states: {slurm_partition: gpu}
"""


@pytest.fixture(scope="module")
def cluster_runs(slurm_cluster, tiny_models, tiny_corpus, tmp_path_factory):
    """The same workflow run locally (profiles/local) and on SLURM: first tiny-bert with its fine-tuned copy,
    compression and two-tower training, then tiny-roberta added."""
    from tests.conftest import run_workflow

    base = tmp_path_factory.mktemp("cluster")
    one = cluster_config(tiny_models, tiny_corpus, ("bert",))
    two = cluster_config(tiny_models, tiny_corpus, ("bert", "roberta"))
    # The local run goes on beside the SLURM runs, which spend most of their time waiting for status checks.
    with ThreadPoolExecutor(max_workers=1) as pool:
        local = pool.submit(run_workflow, base / "local", two, *cluster_targets(two),
                            extra=["--workflow-profile", str(LOCAL_PROFILE)], timeout=600)
        # five rounds of jobs (dataset and model; fine-tuning, extraction, corpus; extraction of the fine-tuned
        # model, training, compression; compression, measuring; the cross-model tables and preference)
        first = run_project(base / "slurm", one, slurm_cluster, "--", *cluster_targets(one), timeout=FIRST_TIMEOUT_S)
        # The second run adds a model and names a GPU model (a resource: it must not rerun anything by itself),
        # through a site profile (--profile, docs/cluster.md) that also sets an account and the GPU rules' partition.
        two_typed = dict(two, resources=dict(two["resources"], gpu_model="fake"))
        site = base / "site-profile"
        site.mkdir()
        (site / "config.yaml").write_text(CLUSTER_SITE_PROFILE)
        second = run_project(base / "slurm", two_typed, slurm_cluster, "--profile", str(site), "--",
                             *cluster_targets(two_typed))
        again = run_project(base / "slurm", two_typed, slurm_cluster, "--", *cluster_targets(two_typed))
        local = local.result()
    return {"base": base, "local": local, "first": first, "second": second, "again": again, "config": two_typed}


def test_gpu_rules_are_submitted_with_a_gpu_and_the_others_without(cluster_runs):
    """Extraction, fine-tuning, two-tower training and measuring ask SLURM for a GPU; the dataset, the model
    download, the compression and the other two-tower rules for none."""
    first = cluster_runs["first"]
    rules = check_submissions(first, gpu_rules=GPU_RULES)
    assert first.slurm_jobs == FIRST_JOBS
    # every rule that declares a GPU was submitted, with its gpu request (check_submissions)
    assert GPU_RULES <= set(rules), GPU_RULES - set(rules)
    # A named GPU model becomes --gpus=<model>:1 (TresPerJob gres:gpu:fake:1).
    # A site profile's account and partitions reach the jobs (`scontrol show job`: Account, Partition).
    check_submissions(cluster_runs["second"], gpu_rules=GPU_RULES, gpu_model="fake",
                      partitions={"extract_hidden_states": "gpu"}, account="myproject")
    # SLURM's job logs go under results/logs/slurm/rule_<rule>/<wildcards>/ and are removed once a job succeeded.
    slurm_logs = cluster_runs["base"] / "slurm" / "results" / "logs" / "slurm"
    for job in (job for job in first.jobs.values() if "slurm_id" in job):
        log = Path(job["slurm_log"])
        assert log.parent.parent.parent == slurm_logs and log.parent.parent.name == f"rule_{job['rule']}", log
        assert log.name == f"{job['slurm_id']}.log" and not log.exists(), log
    assert not list(slurm_logs.rglob("*.log"))


def test_adding_a_model_on_the_cluster_submits_only_its_jobs(cluster_runs):
    second, again = cluster_runs["second"], cluster_runs["again"]
    assert second.returncode == 0, second.output[-6000:]
    assert second.slurm_jobs == [
        ("rule_extract_hidden_states_wildcards_toy_tiny-roberta", "COMPLETED"),
        ("rule_materialise_model_wildcards_tiny-roberta", "COMPLETED"),
    ]
    # Nothing changed: nothing is submitted.
    assert again.returncode == 0, again.output[-6000:]
    assert "Nothing to be done" in again.output
    assert not [job for job in again.jobs.values() if "slurm_id" in job]


def result_tables(root: Path) -> dict:
    """Every Parquet and CSV table under results/ (logs and benchmarks aside), by path relative to root."""
    found = {}
    for path in sorted((root / "results").rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[1] in ("logs", "benchmarks") or path.suffix not in (".parquet", ".csv"):
            continue
        found[str(rel)] = path
    return found


# Wall-clock columns (two-tower training's history): the only values allowed to differ between the two runs.
TIMING_COLUMNS = {"elapsed_s"}


def assert_same_tables(local_root: Path, slurm_root: Path, expected: set[str]) -> None:
    """Every Parquet and CSV table of the two runs is equal, value for value (timing columns aside)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    local, slurm = result_tables(local_root), result_tables(slurm_root)
    assert sorted(local) == sorted(slurm)
    assert expected <= set(local), expected - set(local)
    for rel, path in local.items():
        read = pq.read_table if path.suffix == ".parquet" else pcsv.read_csv
        mine, theirs = read(path), read(slurm[rel])
        assert mine.num_rows > 0 or rel.endswith(".dropped.csv"), rel  # no row of the toy corpus is dropped
        assert mine.schema.remove_metadata() == theirs.schema.remove_metadata(), rel
        timing = [name for name in mine.column_names if name in TIMING_COLUMNS]
        mine, theirs = mine.drop_columns(timing), theirs.drop_columns(timing)
        assert mine.equals(theirs), f"{rel} differs between the local and the SLURM run"


def test_results_on_slurm_equal_the_local_run(cluster_runs):
    """Every table of the SLURM runs (datasets, hidden states, the fine-tuned model's, compression and two-tower
    tables) equals the local run's, value for value: each job runs seeded, on the CPU, with threads=1
    (torch.set_num_threads) in both; only the training history's wall-clock column is left out."""
    import torch

    from lmcompare.models.loading import read_provenance

    local_root, slurm_root = cluster_runs["base"] / "local", cluster_runs["base"] / "slurm"
    compression, twotower = "results/analysis/compression/toy/first_layer-1", "results/analysis/twotower/toy/tiny-bert"
    assert_same_tables(local_root, slurm_root, {
        "results/data/toy.parquet", "results/hidden/toy/tiny-bert/pooled.parquet",
        "results/hidden/toy/tiny-roberta/tokens.parquet", "results/hidden/toy/tiny-bert-ft/pooled.parquet",
        f"{compression}/summary.csv", f"{compression}/pairs.csv", f"{compression}/tiny-bert-ft/pca_curve.csv",
        f"{twotower}/preference.csv", f"{twotower}/consistency.csv", f"{twotower}/history.csv",
        f"{twotower}/seed0/logprobs_step20.parquet"})
    stable = ("model", "dataset", "architecture", "n_layers", "hidden_size", "token_layers", "store_dtype",
              "compute_dtype", "device", "weights_sha256")
    for model in ("tiny-bert", "tiny-bert-ft", "tiny-roberta"):
        ours = hidden_states.read_hidden_metadata(local_root / paths.pooled_path("toy", model))
        theirs = hidden_states.read_hidden_metadata(slurm_root / paths.pooled_path("toy", model))
        assert {k: ours.get(k) for k in stable} == {k: theirs.get(k) for k in stable}
        assert ours["model"] == model and ours["device"] == "cpu"  # the fake GPU job fell back to the CPU
        assert (read_provenance(local_root / paths.model_dir(model))["weights_sha256"]
                == read_provenance(slurm_root / paths.model_dir(model))["weights_sha256"])
    # the fine-tuning record and the trained two-tower weights are the same too
    ours, theirs = (read_provenance(root / paths.model_dir("tiny-bert-ft")) for root in (local_root, slurm_root))
    assert ours["source"] == "finetune"
    assert {k: ours[k] for k in ("steps", "train_accuracy", "test_accuracy")} == {
        k: theirs[k] for k in ("steps", "train_accuracy", "test_accuracy")}
    ours, theirs = (torch.load(root / twotower / "seed0" / "step20.pt", map_location="cpu", weights_only=True)["model"]
                    for root in (local_root, slurm_root))
    assert sorted(ours) == sorted(theirs)
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), f"two-tower weight {name} differs between the local and the SLURM run"


@pytest.fixture(scope="module")
def failing_run(cluster_runs, slurm_cluster, tmp_path_factory):
    """On copies of the SLURM workdir: one run asks for two GPUs on a one-GPU cluster (a forced job's outputs are
    removed before it is submitted), another materialises a model folder without weights, which fails inside its
    SLURM job. Two runs, since a refused submission ends a run before other jobs are submitted."""
    runs = {}
    for name in ("gpus", "broken"):
        workdir = tmp_path_factory.mktemp(f"failing-{name}") / "slurm"
        shutil.copytree(cluster_runs["base"] / "slurm", workdir, symlinks=True)
        config = dict(cluster_runs["config"])
        if name == "gpus":
            runs[name] = workdir, run_project(workdir, config, slurm_cluster, "--set-resources",
                                              "extract_hidden_states:gpu=2", "--forcerun", "extract_hidden_states",
                                              "--retries", "0", "--", str(paths.pooled_path("toy", "tiny-bert")))
            continue
        broken = workdir.parent / "broken-model"
        shutil.copytree(cluster_runs["base"] / "slurm" / paths.model_dir("tiny-bert"), broken)
        for weights in [*broken.glob("*.safetensors"), *broken.glob("*.bin")]:
            weights.unlink()
        config["models"] = [*config["models"], {"name": "broken", "source": "local", "path": str(broken)}]
        # its extraction is targeted too: Snakemake runs a run's only job on the submitting host
        runs[name] = workdir, run_project(workdir, config, slurm_cluster, "--retries", "0", "--",
                                          paths.pooled_path("toy", "broken"))
    return runs


def test_more_gpus_than_the_cluster_has_fails_at_submission(failing_run):
    _, over = failing_run["gpus"]
    assert over.returncode != 0
    assert "SLURM sbatch failed" in over.output
    assert "Requested node configuration is not available" in over.output  # SLURM's own words
    assert "--gpus=fake:2" in over.output  # the sbatch call is shown
    # SLURM refused it: no extraction job was ever queued.
    assert not [c for c, state in over.slurm_jobs if c.startswith("rule_extract") and state != "FAILED"]


def test_a_job_failing_on_the_cluster_keeps_its_log_and_shows_why(failing_run):
    workdir, over = failing_run["broken"]
    failed = [job for job in over.jobs.values() if job["rule"] == "materialise_model" and "slurm_id" in job]
    assert len(failed) == 1 and failed[0]["wildcards"] == {"model": "broken"}, over.jobs
    assert over.slurm[failed[0]["slurm_id"]]["JobState"] == "FAILED"
    assert f"SLURM-job '{failed[0]['slurm_id']}' failed, SLURM status is: 'FAILED'" in over.output
    # The SLURM log of a failed job is kept, and shown (show-failed-logs) with the workflow's own error message.
    log = Path(failed[0]["slurm_log"])
    assert log.is_file() and log.parent.parent.parent == workdir / "results" / "logs" / "slurm"
    assert "WorkflowInputError" in log.read_text() and "no weight file" in log.read_text()
    assert f"Logfile {log}:" in over.output and "no weight file" in over.output
    assert not (workdir / paths.model_dir("broken")).exists()
