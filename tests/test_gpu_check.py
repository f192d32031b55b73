"""benchmarks/gpu_check.sh refuses cleanly where no CUDA device is visible (it cannot run on the test machines)."""
import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT

pytestmark = pytest.mark.unit


def test_gpu_check_parses_its_options_and_refuses_without_cuda():
    env = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")  # no GPU, even on a GPU machine
    command = ["bash", str(PROJECT / "benchmarks/gpu_check.sh")]
    shown = subprocess.run([*command, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert shown.returncode == 0 and "--examples" in shown.stdout
    refused = subprocess.run([*command, "--examples", "8", "--models", "minilm"], capture_output=True, text=True,
                             env=env, timeout=300)
    assert refused.returncode == 3, refused.stderr[-2000:]
    assert "gpu_check: no CUDA device is visible" in refused.stderr and "Nothing was run." in refused.stderr
    wrong = subprocess.run([*command, "--examples", "many"], capture_output=True, text=True, env=env, timeout=120)
    assert wrong.returncode == 2 and "invalid int value" in wrong.stderr
