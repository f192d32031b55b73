"""Tests of the two-tower language model stage: model, training, resume, per-tower heads,
preference maths, the shuffled control, bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lmcompare import twotower as tt
from lmcompare.twotower import preference as tp
from lmcompare.errors import WorkflowInputError

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ helpers
def toy_stream(n_sentences: int, seed: int, vocab: int = 24, patterns: int = 4, length: int = 6) -> np.ndarray:
    """Sentences drawn from a few fixed token patterns: the next token is predictable from the context."""
    rng = np.random.default_rng(1234)  # the patterns are fixed; `seed` draws the sentence order
    table = [rng.choice(np.arange(1, vocab), size=length, replace=False) for _ in range(patterns)]
    order = np.random.default_rng(seed).integers(0, patterns, size=n_sentences)
    return np.concatenate([np.concatenate([table[k], [0]]) for k in order]).astype(np.int64)


def toy_corpus(vocab: int = 24, n_train: int = 600, n_test: int = 300) -> tt.Corpus:
    train = toy_stream(n_train, 1, vocab)
    test = toy_stream(n_test, 2, vocab)
    example = np.cumsum(np.r_[0, (test[:-1] == 0)])  # each sentence is a document
    info = {"train_tokens": len(train), "test_tokens": len(test)}
    return tt.Corpus(train, test, example, np.arange(vocab, dtype=np.int64), 0, info)


TINY = dict(window=16, n_layer=1, n_embd=32, n_head=2)


def tiny_tokenizer(tmp_path, with_sep: bool = True):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sentences = ["the cat sat on the mat", "a dog ran in the park", "good product works well",
                 "bad item broke fast", "the battery lasts long"] * 4
    specials = ["[UNK]", "[PAD]", "[CLS]", "[MASK]"] + (["[SEP]"] if with_sep else [])
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(sentences, trainers.WordPieceTrainer(vocab_size=80, special_tokens=specials))
    kwargs = dict(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    if with_sep:
        kwargs["sep_token"] = "[SEP]"
    return PreTrainedTokenizerFast(**kwargs)


def dataset_frame(n_train: int, n_test: int) -> pd.DataFrame:
    texts = ["the cat sat on the mat and the dog ran in the park",
             "good product works well and the battery lasts long"]
    rows = [(i, texts[i % 2], "train" if i < n_train else "test") for i in range(n_train + n_test)]
    return pd.DataFrame(rows, columns=["example_id", "text", "split"])


# ------------------------------------------------------------------------------------------- corpus
@pytest.mark.unit
def test_eval_windows_predict_every_token_once():
    ids = np.arange(37)
    windows, mask, index = tt.eval_windows(ids, 8)
    targets = index[mask]
    assert np.array_equal(np.sort(targets), np.arange(1, 37))
    # every target sits right after its context token
    rows, cols = np.nonzero(mask)
    assert np.array_equal(windows[rows, cols + 1], ids[index[rows, cols]])


@pytest.mark.unit
def test_random_windows_depend_only_on_seed_and_step():
    ids = np.arange(1000)
    a = tt.random_windows(ids, 10, 4, seed=3, step=7)
    assert np.array_equal(a, tt.random_windows(ids, 10, 4, seed=3, step=7))
    assert not np.array_equal(a, tt.random_windows(ids, 10, 4, seed=3, step=8))
    assert np.all(np.diff(a, axis=1) == 1) and a.shape == (4, 11)


@pytest.mark.unit
def test_build_corpus_joins_documents_with_separator(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    frame = dataset_frame(6, 4)
    corpus = tt.build_corpus(frame, tok, window=8, separator="auto", vocabulary="full")
    sep = tok.convert_tokens_to_ids("[SEP]")
    assert corpus.separator_id == sep
    expected = sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in frame.text[frame.split == "train"])
    assert len(corpus.train_ids) == expected
    assert (corpus.train_ids == sep).sum() == 6
    # test tokens carry their document's example id; the separator ends each document
    ends = np.nonzero(corpus.test_ids == sep)[0]
    assert list(corpus.test_example[ends]) == [6, 7, 8, 9]


@pytest.mark.unit
def test_compact_vocabulary_maps_back_to_tokenizer_ids(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    frame = dataset_frame(6, 4)
    full = tt.build_corpus(frame, tok, window=8, separator="auto", vocabulary="full")
    compact = tt.build_corpus(frame, tok, window=8, separator="auto", vocabulary="corpus")
    assert compact.vocab_size == len(np.unique(full.train_ids)) + 1
    assert compact.vocab_ids[-1] == tt.UNSEEN
    assert np.array_equal(compact.vocab_ids[compact.train_ids], full.train_ids)
    seen = np.isin(full.test_ids, full.train_ids)
    assert np.array_equal(compact.vocab_ids[compact.test_ids][seen], full.test_ids[seen])
    assert np.all(compact.test_ids[~seen] == compact.vocab_size - 1)


@pytest.mark.unit
def test_corpus_shorter_than_a_window_is_refused(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    with pytest.raises(WorkflowInputError, match=r"test split holds \d+ tokens, fewer than one window"):
        tt.build_corpus(dataset_frame(40, 1), tok, window=64, separator="auto", vocabulary="full")


@pytest.mark.unit
def test_missing_special_token_is_refused(tmp_path):
    tok = tiny_tokenizer(tmp_path, with_sep=False)
    with pytest.raises(WorkflowInputError, match="neither an eos_token nor a sep_token"):
        tt.build_corpus(dataset_frame(6, 4), tok, window=8, separator="auto", vocabulary="full")
    with pytest.raises(WorkflowInputError, match=r"'<\|endoftext\|>' is not in this tokenizer's vocabulary"):
        tt.build_corpus(dataset_frame(6, 4), tok, window=8, separator="<|endoftext|>", vocabulary="full")


# -------------------------------------------------------------------------------------------- model
@pytest.mark.unit
def test_architecture_shares_embeddings_and_ties_output():
    model = tt.build_model(tt.TowerConfig(vocab_size=24, **TINY), seed=0)
    a, b = model.towers
    assert a.wte.weight is b.wte.weight and a.wpe.weight is b.wpe.weight
    ids = torch.randint(0, 24, (2, 16))
    with torch.no_grad():
        sa, sb = model.tower_states(ids)
        expected = model.ln_out(torch.nn.functional.gelu(model.dense(model.ln_concat(torch.cat([sa, sb], -1)))))
        expected = expected @ a.wte.weight.T + model.out_bias
        assert torch.allclose(model(ids), expected, atol=1e-6)
    # the towers differ at initialisation (own parameters), and own parameters exclude the shared embeddings
    matrices = [[p for p in model.tower_parameters(k) if p.dim() == 2] for k in (0, 1)]
    assert matrices[0] and not any(torch.equal(p, q) for p, q in zip(*matrices))
    shared = {id(a.wte.weight), id(a.wpe.weight)}
    assert not shared & {id(p) for p in model.tower_parameters(0) + model.tower_parameters(1)}
    # causal: changing a later token leaves earlier outputs untouched
    changed = ids.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 24
    with torch.no_grad():
        assert torch.allclose(model(ids)[:, :10], model(changed)[:, :10], atol=1e-6)
        assert not torch.allclose(model(ids)[:, 10:], model(changed)[:, 10:])


@pytest.mark.unit
def test_loss_goes_down_on_toy_corpus(tmp_path):
    corpus = toy_corpus()
    cfg = tt.TowerConfig(vocab_size=24, **TINY)
    train = tt.TrainConfig(steps=200, batch_size=8, learning_rate=3e-3, warmup_steps=10, eval_every=100,
                           eval_max_windows=32, checkpoint_every=100)
    _, history = tt.train_two_tower(corpus, cfg, train, seed=0, work_dir=tmp_path / "work")
    start, end = history[0]["test_loss"], history[-1]["test_loss"]
    assert start > 0.9 * np.log(24)
    # patterns of 6 tokens + separator: the first token of a sentence is a 1-in-4 guess, the rest determined
    assert end < 0.4 * start, history


@pytest.mark.unit
def test_resume_after_kill_gives_the_uninterrupted_result(tmp_path):
    corpus = toy_corpus()
    cfg = tt.TowerConfig(vocab_size=24, **TINY)
    train = tt.TrainConfig(steps=30, batch_size=4, warmup_steps=5, eval_every=10, eval_max_windows=4,
                           checkpoint_every=10, snapshot_steps=(20,))
    straight, hist_straight = tt.train_two_tower(corpus, cfg, train, seed=5, work_dir=tmp_path / "a")
    # "killed" after 17 steps: the last checkpoint is step 10; steps 11-17 are lost and redone
    tt.train_two_tower(corpus, cfg, train, seed=5, work_dir=tmp_path / "b", stop_after=17)
    (tmp_path / "b" / ".last.pt.tmp-999").write_bytes(b"half-written")  # debris of a kill during a write
    resumed, hist_resumed = tt.train_two_tower(corpus, cfg, train, seed=5, work_dir=tmp_path / "b")
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    assert [h["test_loss"] for h in hist_straight] == [h["test_loss"] for h in hist_resumed]
    assert (tmp_path / "b" / tt.snapshot_name(20)).exists() and (tmp_path / "b" / tt.snapshot_name(30)).exists()
    assert not (tmp_path / "b" / ".last.pt.tmp-999").exists()
    # other settings never resume from a foreign checkpoint
    other = tt.TrainConfig(**{**train.__dict__, "learning_rate": 5e-4})
    _, hist_other = tt.train_two_tower(corpus, cfg, other, seed=5, work_dir=tmp_path / "b")
    assert hist_other[0]["step"] == 0 and hist_other[-1]["test_loss"] != hist_resumed[-1]["test_loss"]


@pytest.mark.unit
def test_checkpoints_hold_only_tensors_and_plain_values(tmp_path):
    """Our own checkpoints load with torch.load(..., weights_only=True): no pickled code, and the snapshot reads
    back into the same model (issue 14: weights_only=False was needed before)."""
    corpus = toy_corpus()
    cfg = tt.TowerConfig(vocab_size=24, **TINY)
    train = tt.TrainConfig(steps=4, batch_size=4, warmup_steps=1, eval_every=4, eval_max_windows=2,
                           checkpoint_every=4)
    model, _ = tt.train_two_tower(corpus, cfg, train, seed=1, work_dir=tmp_path)
    for name in ("last.pt", tt.snapshot_name(4)):
        torch.load(tmp_path / name, weights_only=True)
    loaded, state = tt.load_snapshot(tmp_path / tt.snapshot_name(4))
    assert np.array_equal(np.asarray(state["vocab_ids"]), corpus.vocab_ids)
    for (key, p), q in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(p, q), key


def _measure(model, corpus, steps=60):
    heads = tt.train_tower_heads(model, corpus, tt.HeadConfig(steps=steps, batch_size=8, learning_rate=3e-3))
    result = tt.heldout_logprobs(model, heads, corpus)
    return tp.type_means(result["token_id"], result["logp_a"], result["logp_b"]), result


@pytest.mark.unit
def test_swapping_towers_negates_every_preference():
    corpus = toy_corpus()
    model = tt.build_model(tt.TowerConfig(vocab_size=24, **TINY), seed=3)
    before, result = _measure(model, corpus)
    assert np.abs(before["preference"]).max() > 1e-3  # the two random towers do differ
    tt.swap_towers(model)
    after, _ = _measure(model, corpus)
    assert np.array_equal(before["token_id"], after["token_id"])
    np.testing.assert_allclose(after["preference"], -before["preference"], atol=1e-5)
    np.testing.assert_allclose(after["count"], before["count"])
    assert len(result["logp_joint"]) == len(corpus.test_ids) - 1
    # the forced-identical control: with tower b a copy of tower a, no type has any preference
    tt.make_towers_identical(model)
    identical, _ = _measure(model, corpus)
    assert np.array_equal(identical["preference"], np.zeros(len(identical)))


@pytest.mark.unit
def test_planted_asymmetry_is_seen(tmp_path):
    """Tower b stays at its random initialisation while tower a trains: a wins nearly every frequent type."""
    # 12 types in 4 patterns of 6: types recur across patterns, so no type is given away by the previous token
    # alone (with 24 types some are, and both towers then predict them perfectly: a tie, not a preference)
    corpus = toy_corpus(vocab=12)
    cfg = tt.TowerConfig(vocab_size=12, **TINY)
    init_b = [p.detach().clone() for p in tt.build_model(cfg, seed=0).tower_parameters(1)]
    train = tt.TrainConfig(steps=200, batch_size=8, learning_rate=3e-3, warmup_steps=10, eval_every=200,
                           eval_max_windows=8, checkpoint_every=200, freeze_tower="b")
    model, _ = tt.train_two_tower(corpus, cfg, train, seed=0, work_dir=tmp_path / "work")
    assert all(torch.equal(p, q) for p, q in zip(model.tower_parameters(1), init_b))
    types, _ = _measure(model, corpus, steps=150)
    frequent = types[types["count"] >= 30]
    assert len(frequent) >= 10
    assert (frequent["preference"] > 0).mean() >= 0.9, frequent
    assert (frequent["mean_logp_a"] > -0.8).all()  # the trained tower's head predicts well


# ------------------------------------------------------------------------------------ preference maths
def synthetic_occurrences(n=20000, n_types=40, effect=0.0, seed=0):
    """Occurrences with a planted per-type preference `effect * beta_t` plus per-occurrence noise."""
    rng = np.random.default_rng(seed)
    token = rng.integers(0, n_types, n)
    example = rng.integers(0, 400, n)
    beta = rng.normal(size=n_types)
    base = rng.normal(-3, 1, size=n)
    noise = rng.normal(0, 1, size=n)
    logp_a = base + effect * beta[token] / 2 + noise / 2
    logp_b = base - effect * beta[token] / 2 - noise / 2
    return token, example, logp_a, logp_b, beta


@pytest.mark.unit
def test_type_means_match_groupby():
    token, example, la, lb, _ = synthetic_occurrences(n=3000, n_types=15, effect=1.0)
    got = tp.type_means(token, la, lb).set_index("token_id")
    frame = pd.DataFrame({"t": token, "a": la, "b": lb}).groupby("t")
    np.testing.assert_allclose(got["mean_logp_a"], frame["a"].mean())
    np.testing.assert_allclose(got["preference"], frame["a"].mean() - frame["b"].mean())
    np.testing.assert_array_equal(got["count"], frame.size())


@pytest.mark.unit
def test_split_half_matches_direct_computation():
    from scipy.stats import pearsonr, spearmanr

    token, example, la, lb, _ = synthetic_occurrences(effect=0.5)
    frame, result = tp.split_half(token, example, la, lb, min_count=50)
    direct = pd.DataFrame({"t": token, "h": example % 2, "d": la - lb})
    means = direct.groupby(["h", "t"])["d"].agg(["mean", "size"]).unstack(0)
    keep = (means["size"] >= 50).all(axis=1)
    x, y = means["mean"][0][keep], means["mean"][1][keep]
    assert result["n_types"] == keep.sum() > 30
    assert result["pearson"] == pytest.approx(pearsonr(x, y)[0])
    assert result["spearman"] == pytest.approx(spearmanr(x, y)[0])
    assert result["sign_agreement"] == pytest.approx(np.mean(np.sign(x) == np.sign(y)))


@pytest.mark.unit
def test_planted_preference_is_consistent_and_the_shuffled_control_is_not():
    token, example, la, lb, beta = synthetic_occurrences(effect=0.5)
    frame = pd.DataFrame({"token_id": token, "example_id": example, "logp_a": la, "logp_b": lb, "logp_joint": la})
    types, rows, summary, control = tp.analyse_measurement(frame, min_count=50, permutations=200, seed=1)
    pearson = rows[0]
    assert pearson["measure"] == "pearson" and pearson["value"] > 0.9
    assert pearson["p_value"] == pytest.approx(1 / 201)
    assert abs(pearson["null_mean"]) < 0.1 and pearson["null_q95"] < 0.4
    assert np.corrcoef(types["preference"], beta[types["token_id"]])[0, 1] > 0.95
    assert summary["frac_types_p05"] > 0.8
    assert summary["control_std"] < 0.3 * summary["std"]
    # null data: no planted preference -> no consistent preference, uniform-ish p-values
    token, example, la, lb, _ = synthetic_occurrences(effect=0.0, seed=4)
    frame = pd.DataFrame({"token_id": token, "example_id": example, "logp_a": la, "logp_b": lb, "logp_joint": la})
    types, rows, summary, _ = tp.analyse_measurement(frame, min_count=50, permutations=200, seed=1)
    assert abs(rows[0]["value"]) < 0.4 and rows[0]["p_value"] > 0.01
    assert summary["frac_types_p05"] < 0.2


@pytest.mark.unit
def test_swap_invariant_seed_comparison():
    rng = np.random.default_rng(0)
    x = pd.Series(rng.normal(size=200), index=np.arange(200))
    y = pd.Series(0.8 * x.to_numpy() + 0.2 * rng.normal(size=200), index=np.arange(200))
    plain = tp.swap_invariant_comparison(x, y)
    swapped = tp.swap_invariant_comparison(x, -y)
    for key in plain:
        assert plain[key] == pytest.approx(swapped[key])
    assert plain["abs_pearson"] == pytest.approx(abs(np.corrcoef(x, y)[0, 1]))
    assert plain["ks_abs"] < 0.2
    # |x| and |3y| are half-normal with scales 1 and 3 * sqrt(0.68): population KS distance 0.411
    assert tp.swap_invariant_comparison(x, 3 * y)["ks_abs"] == pytest.approx(0.411, abs=0.1)


@pytest.mark.unit
def test_across_checkpoints_and_top_tokens():
    idx = np.arange(10)
    prefs = {100: pd.Series(np.arange(10.0), idx), 200: pd.Series(np.arange(10.0) * 2, idx),
             300: pd.Series(-np.arange(10.0), idx)}
    rows = {(r["step"], r["measure"]): r["value"] for r in tp.across_checkpoints(prefs)}
    assert rows[(100, "pearson")] == pytest.approx(-1) and rows[(200, "spearman")] == pytest.approx(-1)
    types = pd.DataFrame({"token_id": idx, "preference": np.linspace(-1, 1, 10)})
    top = tp.top_tokens(types, 3)
    assert list(top[top.tower == "a"]["token_id"]) == [9, 8, 7]
    assert list(top[top.tower == "b"]["token_id"]) == [0, 1, 2]
    assert list(top["rank"]) == [1, 2, 3, 1, 2, 3]


# ---------------------------------------------------------------------------------------- workflow
TINY_STAGE = {"enabled": True, "dataset": "toy", "tokenizer_model": "tiny-bert", "vocabulary": "corpus",
              "window": 16, "n_layer": 1, "n_embd": 16, "n_head": 2, "seeds": [0, 1], "steps": 40,
              "batch_size": 4, "learning_rate": 3e-3, "warmup_steps": 5, "eval_every": 20, "eval_max_windows": 8,
              "checkpoint_every": 20, "measure_steps": [], "min_count": 3, "top_k": 5,
              "control_permutations": 20, "device": "cpu",
              "head": {"steps": 20, "batch_size": 4, "learning_rate": 3e-3}}


TARGETS = [f"results/analysis/twotower/toy/tiny-bert/{name}.csv" for name in ("preference", "consistency",
                                                                                "top_tokens")] + \
    [f"results/figures/twotower/toy/tiny-bert/{name}.{ext}" for name in ("loss", "preference_distribution",
                                                                          "split_half") for ext in ("png", "svg")]


def _pending(workdir) -> list[tuple[str, str]]:
    """(rule, output) of the jobs a run of TARGETS would execute."""
    from tests.conftest import pending_jobs

    return pending_jobs(workdir, *TARGETS)


@pytest.mark.workflow
def test_workflow_end_to_end(tmp_path, tiny_models, tiny_corpus, extracted_workdir):
    from tests.conftest import copy_workdir, run_workflow, tiny_config

    config = tiny_config(tiny_models, tiny_corpus, models=("bert",), twotower=TINY_STAGE)
    copy_workdir(extracted_workdir, tmp_path)  # tiny-bert materialised and the toy dataset prepared already
    run_workflow(tmp_path, config, *TARGETS)
    base = tmp_path / "results/analysis/twotower/toy/tiny-bert"
    for seed in (0, 1):
        assert (base / f"seed{seed}/step40.pt").exists()
        assert (base / f"seed{seed}/logprobs_step40.parquet").exists()
        assert not (base / f"seed{seed}/checkpoints").exists()  # cleaned after a finished run
    train_log = (tmp_path / "results/logs/twotower/train/toy/tiny-bert/seed0.log").read_text()
    assert "step 40/40" in train_log and "test-split loss" in train_log
    history = pd.read_csv(base / "history.csv")
    assert sorted(history.seed.unique()) == [0, 1] and list(history[history.seed == 0].step) == [0, 20, 40]
    assert (history.groupby("seed")["test_loss"].last() < history.groupby("seed")["test_loss"].first()).all()
    prefs = pd.read_csv(base / "preference.csv", keep_default_na=False)
    assert {"model", "dataset", "seed", "step", "token_id", "token", "count", "preference", "p_value"} <= set(prefs)
    assert (prefs["count"] >= 3).all() and set(prefs.step) == {40}
    np.testing.assert_allclose(prefs["preference"], prefs["mean_logp_a"] - prefs["mean_logp_b"], atol=1e-9)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["bert"])
    assert list(prefs["token"]) == tok.convert_ids_to_tokens(prefs["token_id"].tolist())
    consistency = pd.read_csv(base / "consistency.csv")
    assert set(consistency.comparison) == {"split_half", "seed"}  # checkpoints: with measure_steps (unit-tested)
    tops = pd.read_csv(base / "top_tokens.csv", keep_default_na=False)
    assert (tops[tops.tower == "a"]["preference"] > 0).all() and (tops[tops.tower == "b"]["preference"] < 0).all()
    for name in ("loss", "preference_distribution", "split_half"):
        for ext in ("png", "svg"):
            assert (tmp_path / f"results/figures/twotower/toy/tiny-bert/{name}.{ext}").stat().st_size > 1000
    assert _pending(tmp_path) == []
    # a new seed schedules only that seed's training and measurements, then the joins
    config["twotower"] = dict(TINY_STAGE, seeds=[0, 1, 2])
    (tmp_path / "config.yaml").write_text(__import__("yaml").safe_dump(config, sort_keys=False))
    pending = _pending(tmp_path)
    per_seed = {output for rule, output in pending if rule in ("twotower_train", "twotower_measure")}
    assert per_seed == {f"{base.relative_to(tmp_path)}/seed2/{name}"
                        for name in ("step40.pt", "history.csv", "logprobs_step40.parquet")}, pending
    rules = {rule for rule, _ in pending}
    assert rules == {"twotower_train", "twotower_measure", "twotower_preference", "twotower_figures"}, pending
    # measure_steps beyond the training is refused with a message naming the key
    config["twotower"] = dict(TINY_STAGE, measure_steps=[80])
    result = run_workflow(tmp_path, config, *TARGETS, extra=["-n"], check=False)
    assert result.returncode != 0 and "twotower.measure_steps" in result.stdout + result.stderr


KILL_SCRIPT = """
import sys, numpy as np, torch
sys.path.insert(0, {project!r}); sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from test_twotower import toy_corpus, TINY, tt
cfg = tt.TowerConfig(vocab_size=24, **TINY)
train = tt.TrainConfig(**{train!r})
tt.train_two_tower(toy_corpus(), cfg, train, seed=2, work_dir={work!r})
"""


@pytest.mark.unit
def test_sigkill_during_training_resumes_bit_identically(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    settings = dict(steps=120, batch_size=4, warmup_steps=5, eval_every=60, eval_max_windows=2, checkpoint_every=5)
    work = tmp_path / "killed"
    here = Path(__file__).resolve().parent
    script = KILL_SCRIPT.format(project=str(here.parent), tests=str(here), train=settings, work=str(work))
    process = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 120
    while not (work / "last.pt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    cut = torch.load(work / "last.pt", weights_only=True)["step"]
    assert 0 < cut < 120, "the run must be killed mid-way"
    cfg = tt.TowerConfig(vocab_size=24, **TINY)
    resumed, _ = tt.train_two_tower(toy_corpus(), cfg, tt.TrainConfig(**settings), seed=2, work_dir=work)
    straight, _ = tt.train_two_tower(toy_corpus(), cfg, tt.TrainConfig(**settings), seed=2,
                                     work_dir=tmp_path / "straight")
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
