"""Faults injected on purpose: killed jobs, corrupt and foreign files (determinism: tests/test_own_run.py)."""
import os
import shutil
import signal
import subprocess
import time

import pandas as pd
import pytest

from tests.conftest import (PROJECT, SNAKEMAKE, copy_workdir, make_corpus_texts, pending_jobs, run_workflow,
                            tiny_config)
from lmcompare import hidden_states, paths
from lmcompare.extraction.extract import ExtractionSettings, extract
from lmcompare.extraction.partial import partial_dir
from lmcompare.errors import WorkflowInputError


def hidden_files(workdir, dataset, model):
    return [workdir / paths.pooled_path(dataset, model), workdir / paths.tokens_path(dataset, model)]


@pytest.fixture(scope="module")
def bigger_corpus(tmp_path_factory):
    """Enough text that an extraction takes a few seconds (so it can be killed half-way)."""
    texts, labels = make_corpus_texts(n=600, seed=5)  # 38 windows of 16: about 2 s of extraction here
    path = tmp_path_factory.mktemp("big") / "big.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path, texts, labels


@pytest.mark.workflow
def test_killed_extraction_leaves_no_partial_file_and_the_rerun_matches_a_clean_run(
        tiny_models, bigger_corpus, tmp_path):
    """Snakemake and its extraction job SIGKILLed after a few windows: no output under its final name; the rerun
    (--rerun-incomplete) resumes at the first unfinished window and writes the uninterrupted run's bytes."""
    config = tiny_config(tiny_models, bigger_corpus, models=("roberta",))
    config["extraction"].update(sort_window=16, batch_tokens=64, token_layers=[0, 1, 2, 3])
    clean = tmp_path / "clean"
    run_workflow(clean, config)

    killed = tmp_path / "killed"
    killed.mkdir()
    import yaml

    (killed / "config.yaml").write_text(yaml.safe_dump(config))
    log = killed / "results/logs/extract_hidden_states/toy/tiny-roberta.log"
    process = subprocess.Popen(
        [SNAKEMAKE, "-s", str(PROJECT / "Snakefile"), "--directory", str(killed), "--cores", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        if log.exists() and "window 3/" in log.read_text():
            break
        time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("the extraction never got going")
    os.killpg(process.pid, signal.SIGKILL)  # Snakemake and its job, at once, as a node failure would
    process.wait()
    for path in hidden_files(killed, "toy", "tiny-roberta"):
        assert not path.exists(), f"{path} is visible under its final name after a kill"
    # the finished windows survive the kill in the hidden partial folder (not a declared output: Snakemake leaves it)
    partial = partial_dir(hidden_files(killed, "toy", "tiny-roberta")[0])
    finished = len(list(partial.glob("window-*.json")))
    assert finished >= 3, f"{partial} holds {finished} finished windows after the kill"
    # the same command again (the local profile adds --rerun-incomplete; a stale lock is cleared by --unlock)
    run_workflow(killed, None, extra=["--unlock"])
    run_workflow(killed, None, extra=["--rerun-incomplete"])
    rerun_log = log.read_text()
    assert f"resuming at window {finished + 1}/" in rerun_log, rerun_log[-3000:]
    assert "window 1/" not in rerun_log and f"window {finished}/" not in rerun_log  # nothing before k recomputed
    assert not partial.exists(), "the partial folder outlived the finished job"
    for mine, reference in zip(hidden_files(killed, "toy", "tiny-roberta"), hidden_files(clean, "toy", "tiny-roberta")):
        assert mine.read_bytes() == reference.read_bytes(), f"{mine.name} differs from an uninterrupted run"


# Analyses whose tables the determinism test compares: per-model jobs of two stages, on the CPU (cheap on tiny models).
DETERMINISM_ANALYSES = dict(
    variability={"enabled": True, "poolings": ["mean"], "datasets": ["toy"], "tolerance": 0.05,
                 "robustness": {"imbalanced_keep": 0.3, "subsample_fraction": 0.25, "seed": 0},
                 "probe": {"max_train_examples": None, "seed": 0}},
    compression={"enabled": True, "n_best": 2},
    figures={"enabled": False},
)


@pytest.fixture(scope="module")
def pair_run(extracted_workdir, tmp_path_factory):
    """One extraction-only run of two models (hidden sizes 32 and 48), shared by the corrupt/foreign-file tests:
    a copy of the session's extracted workdir, which is that run."""
    return copy_workdir(extracted_workdir, tmp_path_factory.mktemp("pair"))


@pytest.mark.workflow
def test_truncated_parquet_is_named_in_the_error(pair_run, tmp_path):
    pooled = pair_run / paths.pooled_path("toy", "tiny-bert")
    data = pooled.read_bytes()
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(WorkflowInputError, match="broken.parquet is not a readable Parquet file"):
        hidden_states.read_hidden_metadata(broken)
    with pytest.raises(WorkflowInputError, match="broken.parquet is not a readable Parquet file"):
        list(hidden_states.iter_row_groups(broken))


@pytest.mark.workflow
def test_parquet_of_another_model_is_refused(pair_run):
    foreign = pair_run / paths.pooled_path("toy", "tiny-roberta")
    with pytest.raises(WorkflowInputError, match="hidden_size=48 but 32 was expected"):
        hidden_states.check_hidden_metadata(foreign, hidden_size=32)
    with pytest.raises(WorkflowInputError, match="model='tiny-roberta' but 'tiny-bert' was expected"):
        hidden_states.check_hidden_metadata(foreign, model="tiny-bert")
    with pytest.raises(WorkflowInputError, match="dataset='toy' but 'other' was expected"):
        hidden_states.check_hidden_metadata(foreign, dataset="other", model="tiny-roberta")
    assert paths.hidden_path_owner(foreign) == ("toy", "tiny-roberta")


# Every stage that reads hidden-state Parquet, one job each: (stage, the job's output for tiny-bert on toy).
FOREIGN_FILE_JOBS = [
    ("variability", "results/analysis/variability/toy/mean/tiny-bert/nu.csv"),
    ("compression", "results/analysis/compression/toy/first_layer-1/tiny-bert/summary.csv"),
    ("geometry", "results/analysis/geometry/toy/measures/tiny-bert.csv"),  # reads tokens.parquet
    ("geometry", "results/analysis/geometry/scores/toy/tiny-bert.csv"),
    ("decomposition", "results/analysis/decomposition/toy/example/t-1_b-1/moments/tiny-bert/tiny-roberta.npz"),
]


@pytest.mark.workflow
def test_analysis_jobs_refuse_hidden_states_of_another_model(pair_run, tiny_models, tiny_corpus, tmp_path):
    """tiny-bert's pooled and tokens files replaced by tiny-roberta's (a copy gone wrong): every analysis job that
    reads them stops, naming the file and the fix, instead of analysing RoBERTa's vectors under BERT's name."""
    workdir = tmp_path / "run"
    shutil.copytree(pair_run, workdir, symlinks=True)
    for kind in (paths.pooled_path, paths.tokens_path):
        shutil.copyfile(workdir / kind("toy", "tiny-roberta"), workdir / kind("toy", "tiny-bert"))
    config = tiny_config(
        tiny_models, tiny_corpus, variability=DETERMINISM_ANALYSES["variability"],
        compression={"enabled": True}, figures={"enabled": False},
        geometry={"enabled": True, "max_points": None, "quantizer": {"M": 4, "nbits": 8, "small_cloud": "shrink"}},
        decomposition={"enabled": True, "units": ["example"], "modes": ["paper"], "alpha": [1e-6]})
    targets = [target for _, target in FOREIGN_FILE_JOBS]
    started = time.time()
    result = run_workflow(workdir, config, *targets, extra=["--keep-going"], check=False)
    assert result.returncode != 0
    log_dir = workdir / "results/logs"
    analysis_logs = {path: path.read_text() for path in log_dir.rglob("*.log") if path.stat().st_mtime >= started}
    assert len(analysis_logs) == len(FOREIGN_FILE_JOBS), sorted(analysis_logs)  # the five jobs ran, nothing else
    assert {path.relative_to(log_dir).parts[0] for path in analysis_logs} == {
        "variability", "compression_model", "geometry", "decomposition"}
    for path, text in analysis_logs.items():
        kind = paths.tokens_path if "measures" in path.parts else paths.pooled_path  # geometry measures: tokens
        hidden = kind("toy", "tiny-bert")
        assert f"{hidden} holds model='tiny-roberta' but 'tiny-bert' was expected" in text, (path, text[-2000:])
        assert f"Rerun the extraction for model 'tiny-bert' on dataset 'toy': delete {hidden}" in text
    for target in targets:
        assert not (workdir / target).exists(), f"{target} was written from another model's hidden states"
    # the fix the message gives: delete the files and the next run re-extracts them
    for kind in (paths.pooled_path, paths.tokens_path):
        (workdir / kind("toy", "tiny-bert")).unlink()
    assert ("extract_hidden_states", paths.pooled_path("toy", "tiny-bert")) in pending_jobs(workdir, *targets)


@pytest.mark.unit
def test_tokenizer_without_offsets_is_refused_naming_the_model(tiny_models, tiny_corpus, tmp_path):
    """A slow (pure-Python) tokenizer gives no character offsets: extraction stops, naming the model and the fix.

    ByT5's tokenizer exists only as a Python tokenizer, so transformers cannot convert it to a fast one on load
    (a folder declaring BertTokenizer loads as a fast tokenizer since transformers 5)."""
    import json

    from lmcompare.models.loading import load_tokenizer
    from lmcompare.data.prepare import prepare

    folder = tmp_path / "slow-bert"
    shutil.copytree(tiny_models["bert"], folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (folder / name).unlink(missing_ok=True)
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "ByT5Tokenizer"}))
    tokenizer = load_tokenizer(folder)
    assert not tokenizer.is_fast
    try:  # the fault is real: asking for offsets gives none (silently dropped, or refused by the tokenizer)
        assert "offset_mapping" not in tokenizer(["great coffee"], return_offsets_mapping=True)
    except NotImplementedError:
        pass
    prepare({"name": "toy", "source": "file", "path": str(tiny_corpus[0]), "text_column": "text",
             "label_column": "label", "test_fraction": 0.2, "seed": 0}, tmp_path / "toy.parquet")
    with pytest.raises(WorkflowInputError) as caught:
        extract(folder, tmp_path / "toy.parquet", tmp_path / "p.parquet", tmp_path / "t.parquet",
                ExtractionSettings(max_length=16), model_name="slow-bert", dataset_name="toy", progress=False)
    message = str(caught.value)
    assert message.startswith("model 'slow-bert': tokenizer ByT5Tokenizer in ")
    assert "gives no character offsets" in message and "Add a tokenizer.json to the model folder" in message
    assert not (tmp_path / "p.parquet").exists() and not (tmp_path / "t.parquet").exists()


@pytest.mark.workflow
def test_failed_job_removes_its_partial_output(tiny_models, tiny_corpus, tmp_path):
    """An extraction that fails half-way (non-finite values) leaves neither file, and Snakemake reports the job."""
    import torch
    from transformers import AutoTokenizer, BertModel

    folder = tmp_path / "poisoned"
    model = BertModel.from_pretrained(tiny_models["bert"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["bert"])
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[tokenizer("terrible", add_special_tokens=False)["input_ids"][0]] = \
            float("nan")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = tiny_config(tiny_models, tiny_corpus, models=())
    config["models"] = [{"name": "poisoned", "source": "local", "path": str(folder)}]
    result = run_workflow(tmp_path / "run", config, check=False)
    assert result.returncode != 0
    log = (tmp_path / "run/results/logs/extract_hidden_states/toy/poisoned.log").read_text()
    assert "non-finite hidden states" in log and "the first is example_id" in log
    for path in hidden_files(tmp_path / "run", "toy", "poisoned"):
        assert not path.exists()


def _kill_when_logged(workdir, log, marker, timeout=240):
    """Run the workflow in the background, SIGKILL it (Snakemake and its jobs) once `marker` is in `log`."""
    process = subprocess.Popen(
        [SNAKEMAKE, "-s", str(PROJECT / "Snakefile"), "--directory", str(workdir), "--cores", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists() and marker in log.read_text():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return
        if process.poll() is not None:
            pytest.fail(f"the workflow ended before {marker!r} appeared in {log}")
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    pytest.fail(f"{marker!r} never appeared in {log}")


@pytest.mark.workflow
def test_killed_fine_tuning_is_redone_and_gives_the_same_model(tiny_models, tiny_corpus, extracted_workdir,
                                                               tmp_path):
    import yaml

    from lmcompare.models.loading import read_provenance

    config = tiny_config(tiny_models, tiny_corpus, models=("bert",))
    config["models"].append({"name": "bert-ft", "source": "finetune", "base": "tiny-bert", "dataset": "toy",
                             "epochs": 60, "learning_rate": 1e-3, "batch_size": 8, "max_length": 32, "seed": 0})
    target = paths.model_dir("bert-ft")
    # both runs start from the session's extracted workdir: tiny-bert materialised, the toy dataset prepared
    run_workflow(copy_workdir(extracted_workdir, tmp_path / "clean"), config, target)
    killed = copy_workdir(extracted_workdir, tmp_path / "killed")
    (killed / "config.yaml").write_text(yaml.safe_dump(config))
    log = killed / "results/logs/finetune_model/bert-ft.log"
    _kill_when_logged(killed, log, "step 1/")
    assert not (killed / target).exists(), "a half-trained model folder is visible under its final name"
    run_workflow(killed, None, target, extra=["--unlock"])
    run_workflow(killed, None, target, extra=["--rerun-incomplete"])
    assert read_provenance(killed / target)["weights_sha256"] == read_provenance(tmp_path / "clean" / target)[
        "weights_sha256"]
