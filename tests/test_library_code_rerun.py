"""A change of the library code a rule runs reruns that rule's jobs and nothing else (the `code` param of every rule,
lmcompare/code_digest.py): Snakemake's own code trigger sees only the rule's script in workflow_scripts/."""
import os
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import PROJECT, SNAKEMAKE, TINY_SECTIONS, tiny_config

pytestmark = pytest.mark.workflow


def _snakemake(project, workdir, *extra):
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(project / "src"))  # the copy's library
    command = [SNAKEMAKE, "-s", str(project / "Snakefile"), "--directory", str(workdir), "--configfile",
               str(workdir / "config.yaml"), "--cores", "2", *extra]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def _pending_rules(project, workdir) -> set:
    result = _snakemake(project, workdir, "--summary", "--quiet")
    rules = set()
    for line in result.stdout.splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) >= 6 and fields[5].strip() in ("update pending", "missing"):
            rules.add(fields[2])
    return rules


def test_editing_a_library_module_reruns_exactly_the_rules_that_run_it(tiny_models, tiny_corpus, tmp_path):
    project = tmp_path / "project"
    for part in ("rules", "schemas", "workflow_scripts", "report", "envs", "src"):
        shutil.copytree(PROJECT / part, project / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(PROJECT / "Snakefile", project / "Snakefile")
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = tiny_config(tiny_models, tiny_corpus, models=("bert",), variability=TINY_SECTIONS["variability"])
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    _snakemake(project, workdir)
    assert _pending_rules(project, workdir) == set()

    with open(project / "src/lmcompare/twotower/corpus.py", "a") as module:  # code no rule of this run runs
        module.write("\n# an edit\n")
    assert _pending_rules(project, workdir) == set()

    with open(project / "src/lmcompare/variability/nu.py", "a") as module:  # the metric: not the probe
        module.write("\n# an edit\n")
    # the rule that runs it, and downstream of its table the summary table and the summary page
    assert _pending_rules(project, workdir) == {"variability_nu", "variability_summary", "summary_figure"}

    with open(project / "src/lmcompare/hidden_states.py", "a") as module:  # the reader every stage uses
        module.write("\n# an edit\n")
    pending = _pending_rules(project, workdir)
    assert {"extract_hidden_states", "variability_nu", "variability_summary"} <= pending
    assert "materialise_model" not in pending and "prepare_dataset" not in pending
