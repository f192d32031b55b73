"""Determinism as a user runs the workflow: the README's command line (`--cores 2 --workflow-profile
profiles/local`), the default threads per job (2), no PYTHONHASHSEED; every analysis that runs on the CPU, geometry
(FAISS k-means and quantizer training, two OpenMP threads) and decomposition included. Two runs from scratch must
give byte-identical files (the tolerance documented in docs/reliability.md is zero)."""
import os
from pathlib import Path

import pytest

from tests.conftest import PROJECT, run_workflow, tiny_config
from lmcompare import paths

pytestmark = pytest.mark.workflow

ANALYSES = dict(
    decomposition={"enabled": True, "units": ["example"], "modes": ["paper"], "alpha": [1e-6],
                   "min_train_units": 5, "min_test_units": 5},
    variability={"enabled": True, "poolings": ["mean"], "datasets": ["toy"], "tolerance": 0.05,
                 "robustness": {"imbalanced_keep": 0.3, "subsample_fraction": 0.25, "seed": 0},
                 "probe": {"max_train_examples": None, "seed": 0}},
    compression={"enabled": True, "n_best": 2},
    geometry={"enabled": True, "max_points": None, "regression": {"top_k": 2},
              "quantizer": {"M": 4, "nbits": 8, "small_cloud": "shrink", "lsq_train_iters": 3}},
    figures={"enabled": False},
)


def test_two_runs_as_a_user_runs_them_give_byte_identical_files(tiny_models, tiny_corpus, tmp_path):
    config = tiny_config(tiny_models, tiny_corpus, models=("bert", "gpt2"), **ANALYSES)
    del config["resources"]  # the default: 2 threads per heavy job
    env = {key: value for key, value in os.environ.items() if key != "PYTHONHASHSEED"}
    user = ["--workflow-profile", str(PROJECT / "profiles/local")]
    for run in ("a", "b"):
        run_workflow(tmp_path / run, config, extra=user, env=env, timeout=1800)
    a, b = tmp_path / "a", tmp_path / "b"
    tables = sorted(path.relative_to(a).as_posix() for path in (a / "results/analysis").rglob("*.csv"))
    assert {Path(t).parts[2] for t in tables} == {"decomposition", "variability", "compression", "geometry"}, tables
    assert len(tables) == 27, tables  # decomposition 3, variability 7, compression 10, geometry 7
    assert any(t.endswith("geometry/toy/measures.csv") for t in tables)
    assert any(t.endswith("/group.csv") for t in tables) and any(t.endswith("/pairwise.csv") for t in tables)
    hidden = [paths.pooled_path("toy", f"tiny-{m}") for m in ("bert", "gpt2")]
    hidden += [paths.tokens_path("toy", f"tiny-{m}") for m in ("bert", "gpt2")]
    differ = [relative for relative in (paths.dataset_path("toy"), *hidden, *tables)
              if (a / relative).read_bytes() != (b / relative).read_bytes()]
    assert not differ, f"not byte-identical between two runs: {differ}"
