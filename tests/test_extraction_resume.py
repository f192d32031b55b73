"""An extraction killed inside its job resumes at the first unfinished window: the library function SIGKILLed in
a child process after k windows (or half-way through window k), then run again; the final files equal an
uninterrupted run's byte for byte and windows before k are not recomputed (docs/reliability.md)."""
import logging
import os
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from lmcompare.data.prepare import build_dataset, write_dataset
from lmcompare.extraction import extract as extract_module
from lmcompare.extraction.extract import ExtractionSettings, extract
from lmcompare.extraction.partial import partial_dir
from tests.conftest import PROJECT, make_corpus_texts

pytestmark = pytest.mark.unit

SETTINGS = dict(max_length=24, batch_tokens=96, sort_window=8, token_layers=(0, -1))
N_TEXTS = 96  # 12 windows of 8


@pytest.fixture(scope="module")
def resume_dataset(tmp_path_factory):
    texts, labels = make_corpus_texts(n=N_TEXTS, seed=3)
    frame, _ = build_dataset(pd.DataFrame({"text": texts, "label": labels}),
                             {"name": "toy", "text_column": "text", "label_column": "label", "test_fraction": 0.25,
                              "seed": 0})
    path = tmp_path_factory.mktemp("resume") / "toy.parquet"
    write_dataset(frame, path, {"name": "toy"})
    return path


@pytest.fixture(scope="module")
def clean_run(tiny_models, resume_dataset, tmp_path_factory):
    """An uninterrupted extraction (shared by the kill cases); its partial folder is gone when it returns."""
    clean = tmp_path_factory.mktemp("clean")
    run_extract(tiny_models["roberta"], resume_dataset, clean)
    assert not partial_dir(clean / "pooled.parquet").exists(), "the partial folder outlived a finished extraction"
    return clean


def run_extract(model_dir, dataset, out, **overrides):
    out.mkdir(parents=True, exist_ok=True)
    return extract(model_dir, dataset, out / "pooled.parquet", out / "tokens.parquet",
                   ExtractionSettings(**{**SETTINGS, **overrides}), model_name="m", dataset_name="toy",
                   progress=False)


# The child: the library function, SIGKILLed by itself at a chosen point (after window k's commit record, or after
# window k's pooled part but before its tokens part and commit record): no cleanup code of any kind runs.
CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch
    from lmcompare.extraction import partial
    from lmcompare.extraction.extract import ExtractionSettings, extract

    model, dataset, out, where, k = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    torch.set_num_threads(int(sys.argv[6]))  # the rerun's thread count: it is part of the resume fingerprint
    commit, write_part = partial.PartialWindows.commit, partial.PartialWindows.write_part

    def killing_commit(self, index, counts):
        commit(self, index, counts)
        if where == "after_commit" and index + 1 == k:
            os.kill(os.getpid(), signal.SIGKILL)

    def killing_write_part(self, kind, index, *args, **kwargs):
        write_part(self, kind, index, *args, **kwargs)
        if where == "mid_window" and index == k and kind == "pooled":
            os.kill(os.getpid(), signal.SIGKILL)

    partial.PartialWindows.commit, partial.PartialWindows.write_part = killing_commit, killing_write_part
    out.mkdir(parents=True, exist_ok=True)
    extract(model, dataset, out / "pooled.parquet", out / "tokens.parquet", ExtractionSettings(**SETTINGS),
            model_name="m", dataset_name="toy", progress=False)
    """).replace("**SETTINGS", ", ".join(f"{key}={value!r}" for key, value in SETTINGS.items()))


def killed_run(model_dir, dataset, out, where, k):
    """The child killed at window k, with this process's torch thread count (the in-process rerun's: a job requeued
    with another thread count starts afresh, since its vectors may differ in the last bits; another test of this
    worker may have changed the count)."""
    import torch

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PROJECT / "src"), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", CHILD, str(model_dir), str(dataset), str(out), where, str(k),
                             str(torch.get_num_threads())],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]


@pytest.mark.parametrize("where", ["after_commit", "mid_window"])
def test_killed_extraction_resumes_at_window_k_and_equals_an_uninterrupted_run(
        where, tiny_models, resume_dataset, clean_run, tmp_path, caplog, monkeypatch):
    k = 5
    clean = clean_run
    out = tmp_path / "killed"
    killed_run(tiny_models["roberta"], resume_dataset, out, where, k)
    folder = partial_dir(out / "pooled.parquet")
    assert not (out / "pooled.parquet").exists() and not (out / "tokens.parquet").exists()
    assert sorted(p.name for p in folder.glob("window-*.json")) == [f"window-{i:06d}.json" for i in range(k)]
    if where == "mid_window":
        assert (folder / f"pooled-{k:06d}.parquet").exists()  # a part without its commit record
    (folder / f".tokens-{k:06d}.parquet.tmp").write_bytes(b"PAR1 torn")  # and a torn write, as a kill leaves one

    computed = []
    window_function = extract_module.extract_window

    def counting_window(model, tokenizer, window, *args, **kwargs):
        computed.append(int(window["example_id"].iloc[0]))
        return window_function(model, tokenizer, window, *args, **kwargs)

    monkeypatch.setattr(extract_module, "extract_window", counting_window)
    with caplog.at_level(logging.INFO, logger="workflow"):
        counts = run_extract(tiny_models["roberta"], resume_dataset, out)
    n_windows = N_TEXTS // SETTINGS["sort_window"]
    log = caplog.text
    assert f"resuming at window {k + 1}/{n_windows}: windows 1-{k} " in log
    logged = [int(line.split("window ")[1].split("/")[0]) for line in log.splitlines() if " window " in line
              and "examples done" in line]
    assert logged == list(range(k + 1, n_windows + 1)), logged  # windows 1..k were not run again
    assert len(computed) == n_windows - k and min(computed) >= k * SETTINGS["sort_window"]
    assert counts.examples == N_TEXTS  # the counts of the resumed windows are restored
    for name in ("pooled.parquet", "tokens.parquet"):
        assert (out / name).read_bytes() == (clean / name).read_bytes(), f"{name} differs from an uninterrupted run"
    assert not folder.exists(), "the partial folder was not removed after the outputs were written"


def test_a_partial_folder_of_other_settings_is_discarded_with_a_log_line(tiny_models, resume_dataset, tmp_path,
                                                                           caplog):
    out = tmp_path / "out"
    killed_run(tiny_models["roberta"], resume_dataset, out, "after_commit", 3)
    assert len(list(partial_dir(out / "pooled.parquet").glob("window-*.json"))) == 3
    with caplog.at_level(logging.INFO, logger="workflow"):
        counts = run_extract(tiny_models["roberta"], resume_dataset, out, batch_tokens=128)
    assert "its finished windows belong to other inputs or settings (extraction.batch_tokens: 96 -> 128)" in caplog.text
    assert "resuming" not in caplog.text and "window 1/12: " in caplog.text
    assert counts.examples == N_TEXTS and not partial_dir(out / "pooled.parquet").exists()
