"""A change of the library code a rule runs reruns that rule's jobs and nothing else (the `code` param of every rule,
lmcompare/code_digest.py): Snakemake's own code trigger sees only the rule's script in workflow_scripts/. The
digests' on-disk cache serves a digest only while no library file has changed."""
import json
import os
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import PROJECT, SNAKEMAKE, TINY_SECTIONS, tiny_config


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


@pytest.mark.workflow
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


@pytest.mark.unit
def test_the_digest_cache_is_used_only_while_no_library_file_changes(tmp_path, monkeypatch):
    """code_digest's on-disk cache: a second process (fresh in-memory caches) reads the digest from the file; an
    edit of a library module (its size and mtime change) recomputes it, and the new digest differs; the cache of
    another library state is kept beside; an unwritable cache folder only costs the recomputation."""
    from lmcompare import code_digest as cd

    library = tmp_path / "lib" / "lmcompare"
    shutil.copytree(cd.LIBRARY, library, ignore=shutil.ignore_patterns("__pycache__"))
    script = tmp_path / "script.py"
    script.write_text("from lmcompare.decomposition.pair_file import write_pair_moments\n")
    monkeypatch.setattr(cd, "LIBRARY", library)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def fresh_process():
        for cached in (cd._library_key, cd._cached_digests, cd.code_digest, cd._imported_modules, cd._lazy_table):
            cached.cache_clear()

    fresh_process()
    first = cd.code_digest(str(script))
    assert first == cd._computed_digest(str(script))
    stored = json.loads(cd.code_digest_cache().read_text())
    assert list(stored["libraries"].values()) == [{json.dumps(cd._stamp(script)): first}]
    # a second process reads the file: a planted digest under the same key comes back unchanged
    key = next(iter(stored["libraries"]))
    stored["libraries"][key] = {json.dumps(cd._stamp(script)): "planted"}
    cd.code_digest_cache().write_text(json.dumps(stored))
    fresh_process()
    assert cd.code_digest(str(script)) == "planted"
    # an edit of a module the script reaches: another key, the true digest, the old state kept beside
    moments = library / "decomposition" / "moments.py"
    moments.write_text(moments.read_text() + "\n# edited\n")
    fresh_process()
    edited = cd.code_digest(str(script))
    assert edited == cd._computed_digest(str(script)) != first
    assert len(json.loads(cd.code_digest_cache().read_text())["libraries"]) == 2
    # a cache that cannot be written: the digest is computed all the same
    monkeypatch.setenv("XDG_CACHE_HOME", str(script))  # a file, not a folder
    fresh_process()
    assert cd.code_digest(str(script)) == edited
