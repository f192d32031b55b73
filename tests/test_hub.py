"""The hub model source and the hub dataset reader against a real Hugging Face-compatible hub on 127.0.0.1
(olah, tests/hub.py): revisions resolved to commit shas and recorded, one weight format downloaded through the
Hugging Face cache, pickles loaded without running code, model code only on request, and bad input (unknown
repo or revision, no weights, a tokenizer without offsets, the hub dying mid-download, a hub that never answers)
stopping with one message that names the model and the fix, leaving nothing behind."""
import json
import logging
import os
import socket
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.hub import ORG, DyingProxy, GLUE_LIKE, GLUE_LABELS, unsafe_marker
from lmcompare.errors import WorkflowInputError
from lmcompare.models.loading import load_model, read_provenance, weights_sha256
from lmcompare.models.materialise import from_hub, materialise

BERT = f"{ORG}/tiny-bert"


def hub_entry(repo=BERT, revision="main", name="hub-bert", **extra):
    return {"name": name, "source": "hub", "repo_id": repo, "revision": revision, **extra}


def hub_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "not a commit" in r.getMessage()]


@pytest.mark.unit
def test_one_weight_format_and_only_top_level_files_are_chosen():
    from lmcompare.models.hub import HubFailure, choose_files

    repo = ["config.json", "tokenizer.json", "vocab.txt", "README.md", ".gitattributes", "modeling_x.py",
            "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
            "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json",
            "tf_model.h5", "flax_model.msgpack", "onnx/model.onnx", "onnx/config.json", "1_Pooling/config.json"]
    names, fmt = choose_files(repo)
    assert fmt == "safetensors" and names == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "tokenizer.json", "vocab.txt"]
    pickles = [f for f in repo if "safetensors" not in f]
    names, fmt = choose_files(pickles, trust_remote_code=True)
    assert fmt == "pytorch-pickle" and names == [
        "config.json", "modeling_x.py", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
        "pytorch_model.bin.index.json", "tokenizer.json", "vocab.txt"]
    with pytest.raises(HubFailure, match="no \\*.safetensors or pytorch_model"):
        choose_files(["config.json", "onnx/model.onnx", "onnx/model.safetensors"])


@pytest.mark.unit
def test_a_branch_and_a_tag_resolve_to_their_commit_and_only_safetensors_come_down(hub, tiny_models, tmp_path, caplog):
    """revision: main / a tag / a sha -> provenance records the commit; a branch or tag is a warning naming the sha
    to pin; the repo's pickle copy of the weights, its README and its model code are not downloaded; the files are
    hard links into the Hugging Face cache (HF_HOME), not a second copy."""
    main, tag = hub.sha(BERT, "main"), hub.sha(BERT, "v1.0")
    assert main != tag
    for revision, sha in (("main", main), ("v1.0", tag), (main, main)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="workflow"):
            record = materialise(hub_entry(revision=revision), tmp_path / revision)
        assert record["revision"] == sha and record["revision_requested"] == revision
        assert read_provenance(tmp_path / revision)["revision"] == sha
        warned = hub_warnings(caplog)
        if revision == sha:
            assert warned == []
        else:
            assert len(warned) == 1 and f"pin `revision: {sha}`" in warned[0] and repr(revision) in warned[0]
    folder = tmp_path / main
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "provenance.json",
                                                        "tokenizer.json", "tokenizer_config.json"]
    assert record["weights_format"] == "safetensors" and record["trust_remote_code"] is False
    assert record["weights_sha256"] == weights_sha256(tiny_models["bert"])
    cache = Path(os.environ["HF_HOME"]) / "hub" / f"models--{ORG}--tiny-bert" / "blobs"
    blobs = {p.stat().st_ino for p in cache.iterdir()}
    assert (folder / "model.safetensors").stat().st_ino in blobs


@pytest.mark.unit
def test_model_code_comes_down_and_runs_only_with_trust_remote_code(hub, tmp_path):
    """Without the model's switch its code is not downloaded and the model is refused, naming the switch; with it,
    the code loads the config and provenance names the switch."""
    repo = f"{ORG}/custom-code"
    with pytest.raises(WorkflowInputError, match=r"model 'custom': .*Set `trust_remote_code: true` on this model "
                                                 r"in the config only if you trust that code"):
        materialise(hub_entry(repo, name="custom"), tmp_path / "refused")
    assert list(tmp_path.iterdir()) == []
    record = materialise(hub_entry(repo, name="custom", trust_remote_code=True), tmp_path / "trusted")
    assert record["trust_remote_code"] is True and record["model_type"] == "lmcompare-custom"
    assert "configuration_custom.py" in record["files"] and (tmp_path / "trusted" / "configuration_custom.py").exists()


@pytest.mark.unit
def test_a_repo_with_only_pickle_weights_loads_them_without_running_code(hub, tiny_models, tmp_path):
    record = materialise(hub_entry(f"{ORG}/tiny-roberta-pickle", name="pickled"), tmp_path / "pickled")
    assert record["weights_format"] == "pytorch-pickle"
    assert sorted(p.name for p in (tmp_path / "pickled").glob("*.bin")) == ["pytorch_model.bin"]
    model = load_model(tmp_path / "pickled")
    assert model.config.hidden_size == 48


@pytest.mark.unit
def test_a_pickle_that_would_run_code_is_refused_and_does_not_run(hub, tmp_path):
    marker = unsafe_marker(hub.mirrors)
    with pytest.raises(WorkflowInputError) as caught:
        materialise(hub_entry(f"{ORG}/unsafe-pickle", name="unsafe"), tmp_path / "unsafe")
    message = str(caught.value)
    assert message.startswith("model 'unsafe': ") and "holds more than tensors" in message
    assert "Use a revision or repository with model.safetensors" in message
    assert not marker.exists(), "unpickling ran the payload's code"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.unit
@pytest.mark.parametrize("repo, revision, expected", [
    (f"{ORG}/no-such-model", "main", r"has no model repository 'lmcompare-test/no-such-model'.*set HF_TOKEN"),
    (BERT, "no-such-branch", r"has no revision 'no-such-branch' .*branches \['main'\], tags \['v1.0'\].*Fix "
                             r"models\[\]\.revision"),
    (BERT, "0" * 40, r"has no revision '0{40}' .*Fix models\[\]\.revision"),
    (f"{ORG}/no-weights", "main", r"holds no weights: no \*\.safetensors or pytorch_model\*\.bin.*Use a revision"),
    (f"{ORG}/slow-tokenizer", "main", r"ByT5Tokenizer\) is not a fast tokenizer, so it gives no character offsets"
                                      r".*use a repository or revision that has one"),
])
def test_bad_hub_models_stop_with_one_message_and_leave_nothing(hub, tmp_path, repo, revision, expected):
    with pytest.raises(WorkflowInputError, match=expected) as caught:
        materialise(hub_entry(repo, revision, name="bad"), tmp_path / "bad")
    assert str(caught.value).startswith("model 'bad': ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.unit
def test_the_hub_dying_mid_download_leaves_nothing_a_rerun_takes_as_complete(hub, tiny_models, tmp_path,
                                                                            monkeypatch):
    """The proxy stands for the hub: it sends half of model.safetensors and dies. The job stops with one message;
    no model folder, no complete weights in the cache; the rerun (hub back) downloads them whole."""
    repo = f"{ORG}/tiny-roberta-pickle"  # a repo no other test downloads first: nothing of it in the cache yet
    proxy = DyingProxy(hub.port, cut_suffix="pytorch_model.bin")
    monkeypatch.setenv("HF_ENDPOINT", proxy.endpoint)  # read by the download's own (spawned) process
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    try:
        with pytest.raises(WorkflowInputError, match=r"model 'cut': the download of lmcompare-test/tiny-roberta-pickle"
                                                     r"@main broke off .*Rerun when the hub answers again"):
            materialise(hub_entry(repo, name="cut"), tmp_path / "models" / "cut")
    finally:
        proxy.close()
    assert proxy.died.is_set()
    assert list((tmp_path / "models").iterdir()) == []
    cached = {p.name for p in (tmp_path / "cache").rglob("pytorch_model.bin")}
    assert cached == set(), "a partial file under its final name in the cache"
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    record = materialise(hub_entry(repo, name="cut"), tmp_path / "models" / "cut")
    assert record["weights_sha256"] == weights_sha256(hub.mirrors / "models" / repo)


@pytest.mark.unit
def test_the_token_in_hf_token_is_sent_to_the_hub(hub, tmp_path, monkeypatch):
    """olah serves no private or gated repositories, so this checks the half we can: HF_TOKEN reaches the hub as
    a bearer token on every request of the download."""
    proxy = DyingProxy(hub.port)
    monkeypatch.setenv("HF_ENDPOINT", proxy.endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_lmcompare_test_token")
    try:
        materialise(hub_entry(revision=hub.sha(BERT), name="tok"), tmp_path / "tok")
    finally:
        proxy.close()
    assert proxy.requests
    assert all(headers.get("authorization") == "Bearer hf_lmcompare_test_token" for _, _, headers in proxy.requests)


@pytest.mark.unit
def test_a_hub_download_that_never_answers_times_out_with_one_message(tmp_path, monkeypatch):
    """docs/reliability.md: "the download runs in a child process with a timeout so a hub that never answers
    cannot hang the job": a real socket that accepts connections and never answers."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    started = time.perf_counter()
    try:
        with pytest.raises(WorkflowInputError, match=r"model 'bert': the hub download of bert-base-uncased@main did "
                                                     r"not finish in 2 s"):
            from_hub({"name": "bert", "repo_id": "bert-base-uncased", "revision": "main"}, tmp_path / "bert",
                     timeout_s=2)
    finally:
        silent.close()
    assert time.perf_counter() - started < 60


# ---------------------------------------------------------------------------------------------- datasets
SST2 = {"name": "sst2", "source": "hub", "id": f"{ORG}/glue-like", "hub_config": "sst2",
        "splits": {"train": "train", "validation": "test"}, "text_column": "sentence", "label_column": "label",
        "split_column": None, "test_fraction": 0.2, "seed": 0, "max_examples": None}


@pytest.mark.unit
def test_a_hub_dataset_config_and_its_splits_are_prepared_at_a_recorded_commit(hub, tmp_path, caplog):
    from lmcompare.data.prepare import prepare

    sha = hub.sha(f"{ORG}/glue-like", "main", kind="datasets")
    with caplog.at_level(logging.INFO, logger="workflow"):
        counts = prepare(dict(SST2), tmp_path / "sst2.parquet")  # no revision: the default branch, said so
    (warning,) = hub_warnings(caplog)
    assert "dataset 'sst2'" in warning and f"pin `revision: {sha}`" in warning
    train, test = GLUE_LIKE["sst2"]["train"], GLUE_LIKE["sst2"]["validation"]
    assert counts["train"] == len(train[0]) and counts["test"] == len(test[0])
    table = pq.read_table(tmp_path / "sst2.parquet")
    columns = table.to_pydict()
    names = GLUE_LABELS["sst2"]
    assert columns["text"] == train[0] + test[0]
    assert columns["label"] == [names[i] for i in train[1] + test[1]]
    assert columns["split"] == ["train"] * len(train[0]) + ["test"] * len(test[0])
    meta = json.loads(table.schema.metadata[b"dataset"])
    assert meta["source_details"] == {"id": f"{ORG}/glue-like", "hub_config": "sst2", "revision_requested": None,
                                      "revision": sha}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="workflow"):  # pinned: the same rows, no warning
        prepare({**SST2, "hub_config": "cola", "revision": sha}, tmp_path / "cola.parquet")
    assert hub_warnings(caplog) == []
    assert pq.read_table(tmp_path / "cola.parquet").column("text").to_pylist() == (
        GLUE_LIKE["cola"]["train"][0] + GLUE_LIKE["cola"]["validation"][0])


@pytest.mark.unit
@pytest.mark.parametrize("change, expected", [
    ({"id": f"{ORG}/no-such-dataset"}, r"cannot resolve 'lmcompare-test/no-such-dataset' .*fix datasets\[\]\.id"),
    ({"revision": "no-such-branch"}, r"at revision 'no-such-branch' .*fix datasets\[\]\.revision.*\['v1.0'\]"),
    ({"hub_config": "mnli"}, r"cannot load 'lmcompare-test/glue-like' \(config 'mnli', split 'train', commit "
                             r"[0-9a-f]{40}\).*Check the config and split names"),
])
def test_bad_hub_datasets_stop_with_one_message_naming_the_dataset(hub, tmp_path, change, expected):
    from lmcompare.data.prepare import prepare

    with pytest.raises(WorkflowInputError, match=expected) as caught:
        prepare({**SST2, **change}, tmp_path / "sst2.parquet")
    assert str(caught.value).startswith("dataset 'sst2': ")
    assert list(tmp_path.iterdir()) == []
