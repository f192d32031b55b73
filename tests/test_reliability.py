"""Faults injected on purpose: killed jobs, corrupt and foreign files, determinism."""
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.conftest import PROJECT, SNAKEMAKE, make_corpus_texts, run_workflow, tiny_config
from workflow_scripts import storage
from workflow_scripts.extract_hidden_states import ExtractionSettings, extract
from workflow_scripts.storage import WorkflowInputError


def hidden_files(workdir, dataset, model):
    return [workdir / storage.pooled_path(dataset, model), workdir / storage.tokens_path(dataset, model)]


@pytest.fixture(scope="module")
def bigger_corpus(tmp_path_factory):
    """Enough text that an extraction takes a few seconds (so it can be killed half-way)."""
    texts, labels = make_corpus_texts(n=1500, seed=5)
    path = tmp_path_factory.mktemp("big") / "big.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path, texts, labels


def test_killed_extraction_leaves_no_partial_file_and_the_rerun_matches_a_clean_run(
        tiny_models, bigger_corpus, tmp_path):
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
    # the same command again (the local profile adds --rerun-incomplete; a stale lock is cleared by --unlock)
    run_workflow(killed, None, extra=["--unlock"])
    run_workflow(killed, None, extra=["--rerun-incomplete"])
    for mine, reference in zip(hidden_files(killed, "toy", "tiny-roberta"), hidden_files(clean, "toy", "tiny-roberta")):
        assert mine.read_bytes() == reference.read_bytes(), f"{mine.name} differs from an uninterrupted run"


def test_two_runs_from_scratch_give_byte_identical_outputs(tiny_models, tiny_corpus, tmp_path):
    config = tiny_config(tiny_models, tiny_corpus, models=("bert",))
    run_workflow(tmp_path / "a", config)
    run_workflow(tmp_path / "b", config)
    for relative in (storage.dataset_path("toy"), storage.pooled_path("toy", "tiny-bert"),
                     storage.tokens_path("toy", "tiny-bert")):
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative


def test_truncated_parquet_is_named_in_the_error(tiny_models, tiny_corpus, tmp_path):
    config = tiny_config(tiny_models, tiny_corpus, models=("bert",))
    run_workflow(tmp_path, config)
    pooled = tmp_path / storage.pooled_path("toy", "tiny-bert")
    data = pooled.read_bytes()
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(WorkflowInputError, match="broken.parquet is not a readable Parquet file"):
        storage.read_hidden_metadata(broken)
    with pytest.raises(WorkflowInputError, match="broken.parquet is not a readable Parquet file"):
        list(storage.iter_row_groups(broken))


def test_parquet_of_another_model_is_refused(tiny_models, tiny_corpus, tmp_path):
    config = tiny_config(tiny_models, tiny_corpus)
    run_workflow(tmp_path, config)
    foreign = tmp_path / storage.pooled_path("toy", "tiny-roberta")
    with pytest.raises(WorkflowInputError, match="hidden_size=48 but 32 was expected"):
        storage.check_hidden_metadata(foreign, hidden_size=32)
    with pytest.raises(WorkflowInputError, match="model='tiny-roberta' but 'tiny-bert' was expected"):
        storage.check_hidden_metadata(foreign, model="tiny-bert")


def test_tokenizer_without_offsets_is_refused_naming_the_model(tiny_models, tiny_corpus, tmp_path):
    """A slow (Python) tokenizer gives no character offsets: extraction stops with the model named."""
    folder = tmp_path / "slow-bert"
    shutil.copytree(tiny_models["bert"], folder)
    (folder / "tokenizer.json").unlink()
    from transformers import AutoTokenizer

    fast = AutoTokenizer.from_pretrained(tiny_models["bert"])
    (folder / "vocab.txt").write_text("\n".join(sorted(fast.get_vocab(), key=fast.get_vocab().get)) + "\n")
    config_path = folder / "tokenizer_config.json"
    import json

    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["tokenizer_class"] = "BertTokenizer"
    config_path.write_text(json.dumps(tokenizer_config))
    from workflow_scripts.prepare_dataset import prepare

    prepare({"name": "toy", "source": "file", "path": str(tiny_corpus[0]), "text_column": "text",
             "label_column": "label", "test_fraction": 0.2, "seed": 0}, tmp_path / "toy.parquet")
    try:
        extract(folder, tmp_path / "toy.parquet", tmp_path / "p.parquet", tmp_path / "t.parquet",
                ExtractionSettings(max_length=16), model_name="slow-bert", dataset_name="toy", progress=False)
    except WorkflowInputError as err:
        assert "slow-bert" in str(err) and ("offsets" in str(err) or "tokenizer" in str(err))
    else:  # transformers may convert a slow tokenizer to a fast one on load; then offsets exist and all is well
        assert pq.read_metadata(tmp_path / "p.parquet").num_rows > 0


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


def test_killed_fine_tuning_is_redone_and_gives_the_same_model(tiny_models, tiny_corpus, tmp_path):
    import yaml

    from workflow_scripts.model_loading import read_provenance

    config = tiny_config(tiny_models, tiny_corpus, models=("bert",))
    config["models"].append({"name": "bert-ft", "source": "finetune", "base": "tiny-bert", "dataset": "toy",
                             "epochs": 60, "learning_rate": 1e-3, "batch_size": 8, "max_length": 32, "seed": 0})
    target = storage.model_dir("bert-ft")
    run_workflow(tmp_path / "clean", config, target)
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "config.yaml").write_text(yaml.safe_dump(config))
    log = killed / "results/logs/finetune_model/bert-ft.log"
    _kill_when_logged(killed, log, "step 1/")
    assert not (killed / target).exists(), "a half-trained model folder is visible under its final name"
    run_workflow(killed, None, target, extra=["--unlock"])
    run_workflow(killed, None, target, extra=["--rerun-incomplete"])
    assert read_provenance(killed / target)["weights_sha256"] == read_provenance(tmp_path / "clean" / target)[
        "weights_sha256"]
