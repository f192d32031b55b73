"""Claims the docs make that no other test checked: each test names the doc and the sentence it holds to."""
import json
import logging
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import binom

from tests.conftest import PROJECT
from lmcompare.errors import WorkflowInputError


@pytest.mark.unit
def test_the_readme_test_command_is_the_one_ci_runs_and_prints_skip_reasons():
    """README: "Run the tests ... `.ci/run` runs this same command"; `-ra` lists why each test was skipped."""
    readme = (PROJECT / "README.md").read_text()
    (command,) = [line for line in re.findall(r"```bash\n(.*?)\n```", readme, re.S) if "pytest" in line]
    ci = [line.strip() for line in (PROJECT / ".ci/run").read_text().splitlines()
          if "python -m pytest" in line and not line.lstrip().startswith("#")]
    assert ci == [command]
    assert re.search(r"pytest .*-ra\b", command)


@pytest.mark.unit
@pytest.mark.parametrize("profile", ["local", "slurm"])
def test_rerun_incomplete_is_set_in_both_profiles(profile):
    """docs/reliability.md: "the same command with `--rerun-incomplete` (set in both profiles) redoes the job"."""
    settings = yaml.safe_load((PROJECT / "profiles" / profile / "config.yaml").read_text())
    assert settings["rerun-incomplete"] is True


def _null_occurrences(n, n_types, seed):
    """Token occurrences of two towers with no preference: log p_a − log p_b is symmetric noise for every type."""
    rng = np.random.default_rng(seed)
    base, noise = rng.normal(-3, 1, size=n), rng.normal(0, 1, size=n)
    return pd.DataFrame({"token_id": rng.integers(0, n_types, n), "example_id": rng.integers(0, 400, n),
                         "logp_a": base + noise / 2, "logp_b": base - noise / 2, "logp_joint": base})


@pytest.mark.unit
def test_under_the_null_about_five_percent_of_types_have_p_below_005():
    """docs/twotower.md: "under the null about 5% of types fall below 0.05". With 200 permutations the p-value
    (1 + k)/201 is below 0.05 for k <= 9, so the exact rate is 10/201; types have disjoint occurrences, so the
    count is binomial: the fraction must lie in its 99.9% interval (for 1,000 types: 3.0%-7.3%)."""
    from lmcompare.twotower import preference as tp

    n_types, permutations = 1000, 200
    types, _, summary, _ = tp.analyse_measurement(_null_occurrences(150_000, n_types, seed=0), min_count=50,
                                                  permutations=permutations, seed=1)
    assert len(types) == n_types
    rate = 10 / (permutations + 1)
    low, high = binom.interval(0.999, n_types, rate)
    assert low / n_types <= summary["frac_types_p05"] <= high / n_types, summary["frac_types_p05"]


@pytest.mark.unit
def test_a_validated_alpha_at_an_end_of_the_grid_is_logged_as_a_warning(caplog):
    """docs/decomposition.md: "a choice at either end of the grid is logged as a warning"."""
    from lmcompare import decomposition as lmd

    rng = np.random.default_rng(3)
    z = rng.normal(size=(600, 6))
    u = z @ rng.normal(size=(6, 4))  # exact: the smallest alpha validates best
    parts = {"fit": slice(0, 300), "valid": slice(300, 400), "train": slice(0, 400), "test": slice(400, 600)}
    stats = {name: lmd.SplitStats.from_rows(u[s], z[s]) for name, s in parts.items()}
    grid = [1e-4, 1e-2, 1.0]
    with caplog.at_level(logging.WARNING, logger="workflow"):
        edge = lmd.scored_fit(stats, "validation", grid, "paper", "exact", 2, 2, 0.2)
    assert edge["alpha"] == 1e-4
    assert any("exact: the chosen alpha 0.0001 is at the edge" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    caplog.clear()
    # many basis dimensions for few units and a noisy target: a middle alpha validates best, and nothing is said
    z = rng.normal(size=(600, 60))
    noisy = z @ rng.normal(size=(60, 4)) * 0.3 + rng.normal(size=(600, 4))
    parts = {"fit": slice(0, 80), "valid": slice(80, 200), "train": slice(0, 200), "test": slice(200, 600)}
    stats = {name: lmd.SplitStats.from_rows(noisy[s], z[s]) for name, s in parts.items()}
    candidates = np.geomspace(1e-6, 1e6, 25)
    scores = [lmd.r_squared(lmd.fit_ridge(stats["fit"], a), stats["valid"])[0] for a in candidates]
    best = int(np.argmax(scores))
    assert 0 < best < len(candidates) - 1
    grid = [float(candidates[best]) / 100, float(candidates[best]), float(candidates[best]) * 100]
    with caplog.at_level(logging.WARNING, logger="workflow"):
        middle = lmd.scored_fit(stats, "validation", grid, "paper", "noisy", 2, 2, 0.2)
    assert middle["alpha"] == grid[1]
    assert not [r for r in caplog.records if "at the edge" in r.getMessage()]


@pytest.mark.unit
def test_a_tokenizer_without_offsets_stops_extraction_before_the_model_is_loaded(tiny_models, tiny_corpus, tmp_path,
                                                                               monkeypatch):
    """docs/reliability.md: "extraction stops before loading the model" for a tokenizer without offsets."""
    from lmcompare.extraction import extract as extract_hidden_states
    from lmcompare.extraction.extract import ExtractionSettings, extract
    from lmcompare.data.prepare import prepare

    folder = tmp_path / "slow-bert"
    shutil.copytree(tiny_models["bert"], folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (folder / name).unlink(missing_ok=True)
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "ByT5Tokenizer"}))
    loaded = []
    monkeypatch.setattr(extract_hidden_states, "load_model", lambda *a, **k: loaded.append(a) or 1 / 0)
    prepare({"name": "toy", "source": "file", "path": str(tiny_corpus[0]), "text_column": "text",
             "label_column": "label", "test_fraction": 0.2, "seed": 0}, tmp_path / "toy.parquet")
    with pytest.raises(WorkflowInputError, match="gives no character offsets"):
        extract(folder, tmp_path / "toy.parquet", tmp_path / "p.parquet", tmp_path / "t.parquet",
                ExtractionSettings(max_length=16), model_name="slow-bert", dataset_name="toy", progress=False)
    assert loaded == []


RULE_PARAMS_SCRIPT = r"""
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
with SnakemakeApi(OutputSettings()) as api:
    workflow = api.workflow(resource_settings=ResourceSettings(), snakefile=Path(sys.argv[1]),
                            config_settings=ConfigSettings(configfiles=[Path(sys.argv[2])]), workdir=Path("."))
    rule = workflow._workflow.get_rule("decomposition_moments")
    params = {name: value for name, value in rule.params.items() if not callable(value)}
    print("PARAMS=" + json.dumps(params, default=str))
"""


@pytest.mark.workflow
def test_the_moments_file_format_is_a_parameter_of_its_rule(tmp_path):
    """docs/decomposition.md: "a format-1 file ... the workflow recomputes it by itself (the format is a parameter
    of the moments rule)": Snakemake reruns a job whose recorded params differ (its default rerun triggers)."""
    import subprocess
    import sys

    from lmcompare.decomposition import MOMENTS_FORMAT

    from tests.bad_configs import BASE, write_local_sources

    write_local_sources(tmp_path)  # the local folders and files BASE names: the start-up checks pass
    config = dict(BASE, decomposition={"enabled": True})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-c", RULE_PARAMS_SCRIPT, str(PROJECT / "Snakefile"),
                             str(tmp_path / "config.yaml")], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("PARAMS=")] or [result.stderr[-2000:]]
    assert json.loads(line[len("PARAMS="):])["format"] == MOMENTS_FORMAT
    from snakemake.settings.enums import RerunTrigger
    from snakemake.settings.types import DAGSettings

    assert RerunTrigger.PARAMS in DAGSettings().rerun_triggers
