"""How a job runs: its log (what ran, on what, how long, the traceback on failure) and process tuning."""

import contextlib
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Iterator, Sequence

from lmcompare.errors import WorkflowInputError

LOG = logging.getLogger("workflow")


def limit_heap_fragmentation(threshold_bytes: int = 1 << 16) -> bool:
    """Make glibc serve large blocks by mmap and give freed memory back to the system.

    Batches of varying shapes otherwise fragment the heap and a long job's resident memory creeps up with the
    number of batches (measured in docs/performance.md); with this it stays flat. No-op off glibc. Used by the
    extraction only: it made training jobs (many short-lived tensors) markedly slower.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, threshold_bytes)) and bool(libc.mallopt(m_trim_threshold,
                                                                                            threshold_bytes))
    except (OSError, AttributeError):
        return False


def torch_threads(threads: int) -> None:
    """torch's intra-op threads for this process (a job's `threads`)."""
    import torch

    torch.set_num_threads(max(1, int(threads)))


def blas_threads(threads: int):
    """A context holding numpy/scipy's BLAS (OpenBLAS, MKL) to `threads` threads."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=max(1, int(threads)))


@contextlib.contextmanager
def job_logging(log_path: str | None = None, *, rule: str | None = None, wildcards: dict | None = None,
                inputs: Sequence[str] = (), outputs: Sequence[str] = ()) -> Iterator[logging.Logger]:
    """Log to a job's log file (and stderr): what ran, on what, how long; the traceback on failure.

    `log_path` None logs to stderr only. Every hidden-state file among `inputs` is checked first against the
    (dataset, model) its path names (hidden_states.check_hidden_inputs), so a file of another model or dataset stops
    the job before a row is read: one check for every reader.
    """
    from lmcompare.hidden_states import check_hidden_inputs

    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    logging.captureWarnings(True)
    started = time.perf_counter()
    if rule is not None:
        LOG.info("rule %s: wildcards %s", rule, dict(wildcards or {}))
        LOG.info("inputs: %s", list(inputs))
        LOG.info("outputs: %s", list(outputs))
    try:
        check_hidden_inputs(inputs)
        yield LOG
    except WorkflowInputError as err:
        LOG.error("%s", err)
        LOG.info("failed after %.1f s", time.perf_counter() - started)
        raise
    except BaseException:
        LOG.error("unexpected failure:\n%s", traceback.format_exc())
        LOG.info("failed after %.1f s", time.perf_counter() - started)
        raise
    LOG.info("done in %.1f s", time.perf_counter() - started)
