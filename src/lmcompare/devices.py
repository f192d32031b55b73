"""One GPU per concurrent model job on a workstation: a file-lock claim that sets CUDA_VISIBLE_DEVICES.

Snakemake's `--resources gpu=N` bounds how many GPU jobs run at once, but it gives no job a device id: without this
every job sees all GPUs and lands on device 0. `claim_gpus(1)`, called by the job before torch touches CUDA, takes
the first free device of the machine's list, by an exclusive `flock` on `<lock dir>/gpu-<id>.lock`, and sets
CUDA_VISIBLE_DEVICES to it; the lock is held until the process exits (the kernel drops it on any exit, SIGKILL
included, so a killed job never leaves a device claimed). When every device is claimed, the job **waits** for one
to be freed (it never shares a device; logged once). That happens only when more jobs than devices run at once:
`--resources gpu=N` with N above the device count, or a second workflow on the same machine, which claims from the
same lock folder.

The device list, first found: the config's `resources.gpu_devices` (ids as CUDA_VISIBLE_DEVICES takes them), the
CUDA_VISIBLE_DEVICES the job inherited, the GPUs `nvidia-smi` lists; none (no GPU) changes nothing. Inside a SLURM
job (SLURM_JOB_ID set) whose CUDA_VISIBLE_DEVICES holds no more devices than the job asked for, the scheduler's
assignment is kept; a larger allocation (Snakemake run with the local profile inside `salloc --gpus=4`) is shared
out like a workstation's, with a lock folder of that job's own.
"""

import fcntl
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOG = logging.getLogger("workflow")
LOCK_DIR_ENV = "LMCOMPARE_GPU_LOCK_DIR"
_HELD: list[int] = []  # descriptors of the claimed devices' lock files, open until the process exits


def device_list(configured=None, environ=None) -> list[str]:
    """The GPU ids this machine's jobs share: `configured` (resources.gpu_devices), else CUDA_VISIBLE_DEVICES
    (an empty value or -1 hides every GPU), else nvidia-smi's list, else none."""
    environ = os.environ if environ is None else environ
    if configured:
        return [str(device) for device in configured]
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = []
        for entry in (part.strip() for part in visible.split(",")):
            if not entry or entry == "-1":  # CUDA stops at the first invalid entry
                break
            devices.append(entry)
        return devices
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                                text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()] if listed.returncode == 0 else []


def default_lock_dir(environ=None) -> Path:
    environ = os.environ if environ is None else environ
    if environ.get(LOCK_DIR_ENV):
        return Path(environ[LOCK_DIR_ENV])
    base = Path(tempfile.gettempdir()) / "lmcompare-gpu-slots"
    return base / f"slurm-{environ['SLURM_JOB_ID']}" if environ.get("SLURM_JOB_ID") else base


def _try_lock(path: Path):
    """An exclusively flocked descriptor of `path`, or None when another process holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # another user's lock file: a read-only descriptor locks as well
        fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def claim_gpus(count: int = 1, *, devices=None, lock_dir=None, environ=None, wait_s: float | None = None,
               poll_s: float = 0.5) -> list[str] | None:
    """Claim `count` of the machine's GPUs for this process and set CUDA_VISIBLE_DEVICES to them (in `environ`,
    default os.environ). Call it before torch initialises CUDA. Returns the claimed ids, or None when nothing was
    changed (count 0, no GPU, a SLURM job's own assignment, no more devices than asked for). Waits while every
    device is claimed; `wait_s` bounds the wait (TimeoutError after it; None waits as long as it takes)."""
    environ = os.environ if environ is None else environ
    if count < 1:
        return None
    slurm = bool(environ.get("SLURM_JOB_ID")) and environ.get("CUDA_VISIBLE_DEVICES") is not None
    configured = None if slurm else devices  # a SLURM job's devices are the scheduler's, whatever the config says
    available = device_list(configured, environ)
    if not available:
        return None
    if not configured and len(available) <= count:
        if environ.get("SLURM_JOB_ID"):
            LOG.info("SLURM job %s: keeping the scheduler's GPU assignment CUDA_VISIBLE_DEVICES=%s",
                     environ["SLURM_JOB_ID"], environ.get("CUDA_VISIBLE_DEVICES"))
        return None
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
        LOG.warning("CUDA was initialised before the GPU claim: CUDA_VISIBLE_DEVICES set now has no effect")
    folder = Path(lock_dir) if lock_dir is not None else default_lock_dir(environ)
    folder.mkdir(parents=True, exist_ok=True)
    started, waiting_logged = time.monotonic(), False
    while True:
        claimed = []
        for device in available:
            fd = _try_lock(folder / f"gpu-{device}.lock")
            if fd is not None:
                claimed.append((device, fd))
                if len(claimed) == count:
                    break
        if len(claimed) == count:
            break
        for _, fd in claimed:  # all or nothing: give back a partial claim and wait
            os.close(fd)
        if wait_s is not None and time.monotonic() - started > wait_s:
            raise TimeoutError(f"no {count} free GPU(s) of {available} after {wait_s:.0f} s (locks in {folder})")
        if not waiting_logged:
            LOG.info("all GPUs of %s are claimed by other jobs (locks in %s); waiting for one to be freed",
                     available, folder)
            waiting_logged = True
        time.sleep(poll_s)
    _HELD.extend(fd for _, fd in claimed)
    ids = [device for device, _ in claimed]
    environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    LOG.info("claimed GPU %s of %s for this job: CUDA_VISIBLE_DEVICES=%s (lock %s, waited %.1f s)",
             ",".join(ids), available, environ["CUDA_VISIBLE_DEVICES"], folder, time.monotonic() - started)
    return ids


def release_gpus() -> None:
    """Give back every device this process claimed (a job's claim otherwise lasts until it exits)."""
    while _HELD:
        os.close(_HELD.pop())
