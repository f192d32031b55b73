"""One GPU per concurrent model job (lmcompare.devices): processes claim different devices of a simulated list, a
job beyond the device count waits for one to be freed, and a SLURM job keeps the scheduler's assignment."""
import os
import subprocess
import sys
import textwrap
import time

import pytest

from lmcompare.devices import claim_gpus, device_list, release_gpus
from tests.conftest import PROJECT

pytestmark = pytest.mark.unit

# A job: claim one GPU, print what CUDA_VISIBLE_DEVICES became, hold it until the file `release` appears.
JOB = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from lmcompare.devices import claim_gpus
    lock_dir, release, devices = sys.argv[1], Path(sys.argv[2]), sys.argv[3:] or None
    claim_gpus(1, devices=devices, lock_dir=lock_dir, poll_s=0.05)
    print(os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
    while not release.exists():
        time.sleep(0.05)
    """)


def start_job(lock_dir, release, env_devices=None, configured=()):
    env = {key: value for key, value in os.environ.items() if key not in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES")}
    env["PYTHONPATH"] = str(PROJECT / "src")
    if env_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = env_devices
    return subprocess.Popen([sys.executable, "-c", JOB, str(lock_dir), str(release), *map(str, configured)],
                            stdout=subprocess.PIPE, text=True, env=env)


def read_claim(process, timeout=60):
    """The device a job printed, or None when it printed nothing within `timeout` s (still waiting)."""
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return None
    return process.stdout.readline().strip()


@pytest.mark.parametrize("source", ["environment", "config"])
def test_concurrent_jobs_claim_different_gpus_and_a_third_waits_for_a_free_one(source, tmp_path):
    """Two devices ("0,1" as CUDA_VISIBLE_DEVICES, or resources.gpu_devices [0, 1]) and three jobs: the first two
    get one each, the third waits (it does not share) until a device is freed and then gets that one."""
    env_devices, configured = ("0,1", ()) if source == "environment" else ("0,1,2,3", (0, 1))
    jobs = []
    try:
        for index in range(2):
            jobs.append(start_job(tmp_path / "locks", tmp_path / f"release{index}", env_devices, configured))
        claims = [read_claim(job) for job in jobs]
        assert sorted(claims) == ["0", "1"], claims
        third = start_job(tmp_path / "locks", tmp_path / "release2", env_devices, configured)
        jobs.append(third)
        assert read_claim(third, timeout=3) is None, "a third job got a GPU while both were claimed"
        (tmp_path / "release1").touch()  # the second job ends: its device is free
        jobs[1].wait(timeout=60)
        assert read_claim(third) == claims[1]
    finally:
        for index in range(3):
            (tmp_path / f"release{index}").touch()
        for job in jobs:
            job.wait(timeout=60)


def test_a_killed_job_frees_its_gpu(tmp_path):
    first = start_job(tmp_path / "locks", tmp_path / "never", "0,1")
    second = start_job(tmp_path / "locks", tmp_path / "never", "0,1")
    try:
        claims = [read_claim(first), read_claim(second)]
        first.kill()  # SIGKILL: no cleanup runs; the kernel drops the flock
        first.wait(timeout=60)
        third = start_job(tmp_path / "locks", tmp_path / "never", "0,1")
        assert read_claim(third) == claims[0]
        third.kill()
        third.wait(timeout=60)
    finally:
        for job in (first, second):
            job.kill()
            job.wait(timeout=60)


def test_slurm_assignment_single_gpus_and_cpu_machines_are_left_alone(tmp_path):
    """A SLURM job keeps the scheduler's CUDA_VISIBLE_DEVICES (whatever the config lists); one visible GPU needs no
    claim; no GPU (CUDA_VISIBLE_DEVICES empty) changes nothing; a job without gpu claims nothing."""
    slurm = {"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "3"}
    assert claim_gpus(1, devices=[0, 1], lock_dir=tmp_path, environ=slurm) is None
    assert slurm["CUDA_VISIBLE_DEVICES"] == "3"
    single = {"CUDA_VISIBLE_DEVICES": "2"}
    assert claim_gpus(1, lock_dir=tmp_path, environ=single) is None and single["CUDA_VISIBLE_DEVICES"] == "2"
    hidden = {"CUDA_VISIBLE_DEVICES": ""}
    assert claim_gpus(1, lock_dir=tmp_path, environ=hidden) is None and hidden["CUDA_VISIBLE_DEVICES"] == ""
    assert claim_gpus(0, lock_dir=tmp_path, environ={"CUDA_VISIBLE_DEVICES": "0,1"}) is None
    assert device_list(None, {"CUDA_VISIBLE_DEVICES": "1, 2,-1,3"}) == ["1", "2"]
    # a SLURM allocation of several GPUs (the local profile inside salloc --gpus=2) is shared out like a machine's
    allocation = {"SLURM_JOB_ID": "43", "CUDA_VISIBLE_DEVICES": "0,1"}
    try:
        assert claim_gpus(1, lock_dir=tmp_path, environ=allocation) == ["0"]
        assert allocation["CUDA_VISIBLE_DEVICES"] == "0"
        assert claim_gpus(1, lock_dir=tmp_path, environ={"CUDA_VISIBLE_DEVICES": "0,1"}) == ["1"]
        with pytest.raises(TimeoutError, match="no 1 free GPU"):  # a bounded wait ends; the default waits on
            claim_gpus(1, lock_dir=tmp_path, environ={"CUDA_VISIBLE_DEVICES": "0,1"}, wait_s=0.2, poll_s=0.05)
    finally:
        release_gpus()
    started = time.monotonic()
    assert claim_gpus(2, lock_dir=tmp_path, environ={"CUDA_VISIBLE_DEVICES": "0,1,2"}) == ["0", "1"]
    assert time.monotonic() - started < 5
    release_gpus()
