"""The workflow spine end to end on tiny models: sources, datasets, extraction, caching, bad input."""
import re
import shutil
import tarfile
import zipfile

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.bad_configs import CASES, bad_config, validation_messages
from tests.conftest import PROJECT, copy_workdir, pending_jobs, run_workflow, tiny_config
from lmcompare import hidden_states, paths
from lmcompare.models.materialise import materialise
from lmcompare.models.loading import read_provenance, weights_sha256
from lmcompare.data.prepare import build_dataset, clean_text, prepare, word_offsets
from lmcompare.errors import WorkflowInputError


@pytest.fixture(scope="module")
def spine_run(tmp_path_factory, tiny_models, tiny_corpus, extracted_workdir):
    """Two tiny models with different tokenizers and hidden sizes through the whole spine: a copy of the session's
    extracted workdir, which is that run of this config."""
    workdir = copy_workdir(extracted_workdir, tmp_path_factory.mktemp("spine"))
    return workdir, tiny_config(tiny_models, tiny_corpus)


@pytest.mark.workflow
def test_spine_produces_models_dataset_and_hidden_states(spine_run, tiny_corpus):
    workdir, config = spine_run
    dataset = pd.read_parquet(workdir / paths.dataset_path("toy"))
    assert len(dataset) == len(tiny_corpus[1])
    assert set(dataset["split"]) == {"train", "test"}
    for name, hidden in (("tiny-bert", 32), ("tiny-roberta", 48)):
        provenance = read_provenance(workdir / paths.model_dir(name))
        assert provenance["source"] == "local" and len(provenance["weights_sha256"]) == 64
        pooled = workdir / paths.pooled_path("toy", name)
        meta = hidden_states.read_hidden_metadata(pooled)
        assert meta["model"] == name and meta["hidden_size"] == hidden
        assert meta["weights_sha256"] == provenance["weights_sha256"]
        # row counts reconcile from dataset to hidden states
        assert pq.read_metadata(pooled).num_rows == len(dataset)
        tokens = pq.read_table(workdir / paths.tokens_path("toy", name), columns=["example_id"])
        counts = pq.read_table(pooled, columns=["n_tokens"]).column("n_tokens").to_numpy()
        assert tokens.num_rows == counts.sum()
        log = (workdir / f"results/logs/extract_hidden_states/toy/{name}.log").read_text()
        assert "extracted 80 of 80 examples" in log and "done in" in log


@pytest.mark.workflow
def test_rerun_with_nothing_changed_schedules_nothing(spine_run):
    workdir, _ = spine_run
    assert pending_jobs(workdir) == []


@pytest.mark.workflow
def test_adding_a_model_schedules_only_its_own_jobs(spine_run, tiny_models, tiny_corpus, tmp_path):
    """The new model's jobs, plus the joins that need it (the summary figure, the provenance table and the
    record of the config), and nothing of the other models."""
    workdir, config = spine_run
    grown = tiny_config(tiny_models, tiny_corpus, models=("bert", "roberta", "gpt2"))
    scratch = tmp_path / "grown"
    shutil.copytree(workdir, scratch, symlinks=True)
    (scratch / "config.yaml").unlink()
    run_workflow(scratch, grown, extra=["-n"])  # writes the config
    jobs = pending_jobs(scratch)
    joins = {"summary_figure", "model_provenance", "effective_config"}
    own = sorted(output for rule, output in jobs if rule not in joins)
    assert own == sorted([paths.model_dir("tiny-gpt2"), paths.pooled_path("toy", "tiny-gpt2"),
                          paths.tokens_path("toy", "tiny-gpt2")]), jobs
    assert {rule for rule, _ in jobs} - {"materialise_model", "extract_hidden_states"} == joins, jobs


@pytest.mark.unit
def test_materialise_from_split_zip_and_tar(tiny_models, tmp_path):
    source = tiny_models["bert"]
    archive = tmp_path / "bert.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in source.iterdir():
            bundle.write(path, f"wrapped/tiny-bert/{path.name}")
    data = archive.read_bytes()
    for index, start in enumerate(range(0, len(data), len(data) // 3 + 1)):
        (tmp_path / f"bert.zip.{index + 1:03d}").write_bytes(data[start:start + len(data) // 3 + 1])
    record = materialise({"name": "zipped", "source": "archive", "path": "bert.zip.*", "root": str(tmp_path)},
                         tmp_path / "out-zip")
    assert record["weights_sha256"] == weights_sha256(source)
    assert len(record["archive_parts"]) == 3
    with tarfile.open(tmp_path / "bert.tar.gz", "w:gz") as bundle:
        bundle.add(source, arcname="tiny-bert")
    record = materialise({"name": "tarred", "source": "archive", "path": str(tmp_path / "bert.tar.gz")},
                         tmp_path / "out-tar")
    assert record["weights_sha256"] == weights_sha256(source)


@pytest.mark.unit
def test_materialise_from_an_installed_package(tmp_path, tiny_models, monkeypatch):
    package = tmp_path / "site" / "tiny_model_pkg"
    shutil.copytree(tiny_models["roberta"], package / "weights")
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    record = materialise({"name": "pkg", "source": "package", "package": "tiny_model_pkg", "subdir": ""},
                         tmp_path / "out")
    assert record["path"].endswith("weights") and (tmp_path / "out" / "config.json").exists()
    # the package's own weights, by hash: sha256 over (name, bytes) of each weight file of the package, in name order
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((package / "weights").glob("*.safetensors")):
        digest.update(path.name.encode() + path.read_bytes())
    assert record["weights_sha256"] == digest.hexdigest()
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (package / "weights/model.safetensors").read_bytes()


@pytest.mark.unit
@pytest.mark.parametrize("entry, message", [
    ({"source": "package", "package": "no_such_package_xyz"}, "not installed"),
    ({"source": "local", "path": "/nonexistent/folder"}, "does not exist"),
    ({"source": "archive", "path": "nothing-*.zip", "root": "/tmp"}, "no file matches"),
])
def test_missing_model_sources_fail_with_a_message_and_leave_nothing(entry, message, tmp_path):
    with pytest.raises(WorkflowInputError, match=message):
        materialise({"name": "m", "subdir": "", **entry}, tmp_path / "m")
    assert not (tmp_path / "m").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.unit
def test_unreachable_hub_model_fails_with_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WorkflowInputError, match="cannot download bert-base-uncased"):
        materialise({"name": "bert", "source": "hub", "repo_id": "bert-base-uncased", "revision": "main"},
                    tmp_path / "bert")
    assert not (tmp_path / "bert").exists()


@pytest.mark.unit
def test_model_folder_without_weights_is_refused(tiny_models, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_models["bert"], broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(WorkflowInputError, match="no weight file"):
        materialise({"name": "broken", "source": "local", "path": str(broken), "subdir": ""}, tmp_path / "out")


# ------------------------------------------------------------------------------------------ datasets
@pytest.mark.unit
def test_word_offsets_cover_words_and_punctuation():
    text = "It's 3.5 stars,  ok?"
    starts, ends = word_offsets(text)
    assert [text[s:e] for s, e in zip(starts, ends)] == ["It", "'", "s", "3", ".", "5", "stars", ",", "ok", "?"]


@pytest.mark.unit
def test_untrusted_text_is_handled_counted_and_reconciled(tmp_path):
    raw = b"text,label\nplain text,a\n\"bell\x07 and tab\tok\",b\n,a\n\"bad \xff\xfe bytes\",b\n" + \
        b"\"" + b"very long " * 400 + b"\",a\n"
    path = tmp_path / "messy.csv"
    path.write_bytes(raw)
    entry = {"name": "messy", "source": "file", "path": str(path), "text_column": "text", "label_column": "label",
             "split_column": None, "test_fraction": 0.5, "seed": 0, "max_examples": None}
    counts = prepare(entry, tmp_path / "messy.parquet")
    frame = pd.read_parquet(tmp_path / "messy.parquet")
    assert counts["rows_in"] == 5 and counts["empty_texts_dropped"] == 1 and counts["rows_out"] == 4
    assert counts["control_characters_replaced"] == 1 and counts["replacement_characters"] == 2
    assert frame["example_id"].tolist() == [0, 1, 3, 4]  # the source rows: row 2 (empty text) is dropped
    assert pd.read_csv(tmp_path / "messy.dropped.csv")["example_id"].tolist() == [2]
    assert "\x07" not in frame["text"][1] and "\t" in frame["text"][1]
    assert clean_text("a\x00b") == ("a b", 1)


@pytest.mark.unit
def test_split_is_deterministic_and_subsample_keeps_proportions():
    raw = pd.DataFrame({"text": [f"text number {i}" for i in range(1000)], "label": ["a", "b"] * 500})
    entry = {"name": "d", "text_column": "text", "label_column": "label", "test_fraction": 0.2, "seed": 3,
             "max_examples": 100}
    first, _ = build_dataset(raw, entry)
    second, _ = build_dataset(raw, entry)
    pd.testing.assert_frame_equal(first, second)
    assert len(first) == 100 and 12 <= (first["split"] == "test").sum() <= 28


@pytest.mark.unit
@pytest.mark.parametrize("entry, message", [
    ({"text_column": "body"}, "no column 'body'"),
    ({"label_column": "stars"}, "no column 'stars'"),
])
def test_dataset_without_the_named_column_fails(entry, message, tiny_corpus, tmp_path):
    base = {"name": "toy", "source": "file", "path": str(tiny_corpus[0]), "text_column": "text",
            "label_column": "label", "test_fraction": 0.2, "seed": 0, "split_column": None}
    with pytest.raises(WorkflowInputError, match=message):
        prepare({**base, **entry}, tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.unit
def test_empty_dataset_fails(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("text,label\n")
    entry = {"name": "empty", "source": "file", "path": str(path), "text_column": "text", "label_column": "label",
             "test_fraction": 0.2, "seed": 0}
    with pytest.raises(WorkflowInputError, match="no rows"):
        prepare(entry, tmp_path / "out.parquet")


# ------------------------------------------------------------------------------------------- config
@pytest.fixture(scope="module")
def startup_messages():
    """What Snakemake, reading the real Snakefile, stops with for every bad config (one process for all)."""
    messages = validation_messages([bad_config(mutation) for _, mutation, _ in CASES] + [bad_config(lambda c: None)])
    return dict(zip([what for what, _, _ in CASES] + ["base"], messages))


@pytest.mark.workflow
@pytest.mark.parametrize("what, mutation, message", CASES, ids=[case[0] for case in CASES])
def test_every_bad_config_gets_a_message_naming_the_key(what, mutation, message, startup_messages):
    found = startup_messages[what]
    assert found is not None, f"{what}: accepted"
    assert re.search(message, found), found


@pytest.mark.workflow
def test_the_base_of_the_bad_configs_is_valid(startup_messages):
    assert startup_messages["base"] is None


@pytest.mark.workflow
@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["models"][0].update(source="ftp"), r"models\[0\].source: 'ftp' is not one of"),
    (lambda c: c["models"].append(dict(c["models"][0])), "used twice"),
])
def test_bad_config_stops_the_workflow_before_any_job(mutate, message, tiny_models, tiny_corpus, tmp_path):
    config = tiny_config(tiny_models, tiny_corpus)
    mutate(config)
    result = run_workflow(tmp_path, config, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert re.search(message, output), output[-3000:]
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------------------------------- conda environments
RULE_ENVS_SCRIPT = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import OutputSettings, ResourceSettings
with SnakemakeApi(OutputSettings()) as api:
    workflow = api.workflow(resource_settings=ResourceSettings(), snakefile=Path(sys.argv[1]), workdir=Path("."))
    rules = {}
    for rule in workflow._workflow.rules:
        runs_code = bool(rule.script or rule.shellcmd or rule.notebook or rule.wrapper or rule.is_run)
        rules[rule.name] = dict(runs_code=runs_code, conda=rule.conda_env, script=rule.script, basedir=str(rule.basedir))
print("RULES=" + json.dumps(rules))
"""
# Conda-forge names that differ from the pip distribution names in requirements.txt.
CONDA_TO_PIP = {"pytorch": "torch"}


def _normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _env_packages(path):
    """{normalised pip name: pinned version or None} of an envs/*.yaml (conda deps and the pip section)."""
    import yaml

    env = yaml.safe_load(path.read_text())
    assert env["channels"][0] == "conda-forge", path
    packages = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for spec in dep["pip"]:
                name, _, version = spec.partition("==")
                packages[_normalise(name)] = version or None
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(?:(==?)\s*([^=\s]+))?", dep)
        assert match, f"{path.name}: cannot read the dependency {dep!r}"
        name = _normalise(CONDA_TO_PIP.get(match.group(1), match.group(1)))
        packages[name] = match.group(3) if match.group(2) == "==" else None
    return packages


def _requirements():
    pins = {}
    for line in (PROJECT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_normalise(name)] = version
    return pins


def _third_party_imports(script, seen=None):
    """Top-level modules a rule's script imports (anywhere in it), following its imports of the lmcompare library
    (src/lmcompare) and of the scripts' shared module (workflow_scripts/job.py)."""
    import ast
    import sys

    seen = set() if seen is None else seen
    if script in seen:
        return set()
    seen.add(script)
    found = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: within the package of `script`
                package = script.parent.relative_to(PROJECT / "src").parts
                base = ".".join(package[:len(package) - node.level + 1] + tuple(filter(None, [node.module])))
            else:
                base = node.module
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            parts = name.strip(".").split(".")
            if parts[0] == "lmcompare":
                for depth in range(1, len(parts) + 1):
                    stem = PROJECT.joinpath("src", *parts[:depth])
                    for module in (stem.with_suffix(".py"), stem / "__init__.py"):
                        if module.exists():
                            found |= _third_party_imports(module, seen)
            elif parts[0] == "job" and len(parts) <= 2:
                found |= _third_party_imports(PROJECT / "workflow_scripts" / "job.py", seen)
            elif parts[0] not in sys.stdlib_module_names and parts[0] != "snakemake":
                found.add(parts[0])
    return found


@pytest.fixture(scope="module")
def rule_envs(tmp_path_factory):
    """Every rule of the default workflow, as Snakemake itself parsed it: its conda env and script."""
    import json
    import subprocess
    import sys

    workdir = tmp_path_factory.mktemp("conda-envs")
    shutil.copy(PROJECT / "config.yaml", workdir / "config.yaml")
    result = subprocess.run([sys.executable, "-c", RULE_ENVS_SCRIPT, str(PROJECT / "Snakefile")], cwd=workdir,
                            capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RULES=")]
    assert result.returncode == 0 and lines, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads(lines[-1][len("RULES="):])


@pytest.mark.unit
def test_conda_envs_parse_and_pin_exactly_the_requirements():
    """Every envs/*.yaml pins what requirements.txt pins; what it adds is pinned to the version installed here."""
    from importlib.metadata import version

    pins = _requirements()
    envs = sorted((PROJECT / "envs").glob("*.yaml"))
    assert envs
    for path in envs:
        for name, pinned in _env_packages(path).items():
            if name in ("python", "pip"):
                continue
            assert pinned is not None, f"{path.name}: {name} is not pinned"
            expected = pins.get(name) or version(name)
            assert pinned == expected.split("+")[0], f"{path.name}: {name}=={pinned}, requirements/venv: {expected}"


@pytest.mark.workflow
def test_every_rule_has_a_conda_env_with_every_package_its_script_imports(rule_envs):
    from importlib.metadata import packages_distributions

    distributions = packages_distributions()
    assert len(rule_envs) > 20, sorted(rule_envs)
    used = set()
    for name, rule in rule_envs.items():
        if not rule["runs_code"]:
            continue
        assert rule["conda"], f"rule {name} has no conda: directive"
        env_path = (PROJECT / "rules" / rule["conda"]).resolve()
        assert env_path.exists() and env_path.parent == PROJECT / "envs", f"rule {name}: {rule['conda']}"
        used.add(env_path.name)
        assert rule["script"], f"rule {name}: the import check covers script: rules only"
        packages = _env_packages(env_path)
        for module in _third_party_imports((PROJECT / "rules" / rule["script"]).resolve()):
            dists = [_normalise(d) for d in distributions.get(module, [module])]
            assert any(d in packages for d in dists), f"rule {name} imports {module} ({dists}), not in {env_path.name}"
    assert used == {path.name for path in (PROJECT / "envs").glob("*.yaml")}, "an envs/*.yaml no rule uses"
