"""The decomposition against the authors' released code (haozhg/lmd, PyPI nlp.lmd 0.2.0, lmd/cli.py).

The released solver, its development predecessor and its chunking are transcribed below from the published
source (read from the 0.2.0 wheel and the haozhg/lmd history), not imported: the package is not a dependency.
"""

from itertools import chain

import numpy as np
import pandas as pd
import pytest
import torch

from tests.factories import latent_models, token_table, write_pooled, write_tokens
from lmcompare.errors import WorkflowInputError
from lmcompare.data import chunks as chunk_dataset
from lmcompare import decomposition as lmd

pytestmark = pytest.mark.unit


# ------------------------------------------------------------------------ transcriptions of the release
class ReleasedLMD:
    """nlp.lmd 0.2.0, lmd/cli.py, class LanguageModelDecomposition (train / score), logging and asserts dropped.

    One change: torch.eye(..., dtype=A.dtype). The release's embeddings are float32 tensors, so its eye is too;
    here the arrays are float64, and a float32 eye would round alpha (0.3 -> 0.30000001).
    """

    def __init__(self, input, output, alpha):
        self.input = [input] if isinstance(input, str) else input
        self.output = output
        self.alpha = alpha

    def train(self, train_embeddings):
        Z = torch.cat([train_embeddings[i] for i in self.input], dim=1).T
        U = train_embeddings[self.output].T
        output_size = U.shape[0]
        A = torch.cov(Z)
        UZ = torch.cat((U, Z), dim=0)
        UZ_cov = torch.cov(UZ)
        B = UZ_cov[:output_size, output_size:]
        self.W = torch.linalg.solve(A + self.alpha * torch.eye(A.shape[0], dtype=A.dtype), B.T).T
        self.b = U.mean(dim=1) - torch.matmul(self.W, Z.mean(dim=1))

    def score(self, embeddings):
        Z = torch.cat([embeddings[i] for i in self.input], dim=1).T
        U = embeddings[self.output].T
        E = U - torch.mm(self.W, Z) - self.b.unsqueeze(dim=1)
        EU = U.mean(dim=1)
        SSR = torch.sum(E ** 2, dim=0).mean().item()
        SST = torch.sum((U - EU.unsqueeze(dim=1)) ** 2, dim=0).mean().item()
        return 1 - SSR / SST


class DevLMD(ReleasedLMD):
    """haozhg/lmd at 1eae068 (the parent of c3810d8 "add intercept"): raw moments divided by Z.shape[0] (the
    basis dims), no intercept, uncentred SST."""

    def train(self, train_embeddings):
        Z = torch.cat([train_embeddings[i] for i in self.input], dim=1).T
        U = train_embeddings[self.output].T
        A = torch.mm(Z, Z.T) / Z.shape[0]
        B = torch.mm(U, Z.T) / Z.shape[0]
        self.W = torch.linalg.solve(A + self.alpha * torch.eye(A.shape[0], dtype=A.dtype), B.T).T

    def score(self, embeddings):
        Z = torch.cat([embeddings[i] for i in self.input], dim=1).T
        U = embeddings[self.output].T
        E = U - torch.mm(self.W, Z)
        SSR = torch.sum(E ** 2, dim=0).mean().item()
        SST = torch.sum(U ** 2, dim=0).mean().item()
        return 1 - SSR / SST


def released_sequences(texts_by_split: dict, tokenizer, max_seq_length: int, seed: int = 42) -> dict:
    """nlp.lmd 0.2.0 main() + gen_sequence(): shuffle(seed), tokenize (special tokens), group_texts per batch of
    1000 rows, batch_decode(skip_special_tokens=True); run with the `datasets` library as the release runs it."""
    from datasets import Dataset, DatasetDict

    raw_datasets = DatasetDict({s: Dataset.from_dict({"text": t}) for s, t in texts_by_split.items()})
    raw_datasets = raw_datasets.shuffle(seed=seed)
    column_names = raw_datasets["train"].column_names

    def tokenize_function(examples):
        return tokenizer(examples["text"])

    tokenized_datasets = raw_datasets.map(tokenize_function, batched=True, remove_columns=column_names)

    def group_texts(examples):
        concatenated_examples = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated_examples[list(examples.keys())[0]])
        if total_length >= max_seq_length:
            total_length = (total_length // max_seq_length) * max_seq_length
        return {k: [t[i: i + max_seq_length] for i in range(0, total_length, max_seq_length)]
                for k, t in concatenated_examples.items()}

    grouped_datasets = tokenized_datasets.map(group_texts, batched=True)

    def get_sequence_text(examples):
        return {"text": tokenizer.batch_decode(examples["input_ids"], skip_special_tokens=True)}

    column_names = tokenized_datasets["train"].column_names
    sequence_datasets = grouped_datasets.map(get_sequence_text, batched=True, remove_columns=column_names)
    return {split: list(sequence_datasets[split]["text"]) for split in sequence_datasets}


# ------------------------------------------------------------------------------------------ solver
def three_models(seed, n, d=6):
    """Three models of equal width (the release asserts input_size == num_inputs * output_size), large means."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n)
    split = np.where(rng.random(n) < 0.4, "test", "train")
    values = dict(zip(("m1", "m2", "m3"), latent_models(rng, n, [d, d, d], noise=0.5)))
    return ids, split, {m: v.astype(np.float32).astype(np.float64) for m, v in values.items()}  # as stored


@pytest.mark.parametrize("mode, reference", [("paper", ReleasedLMD), ("uncentred", DevLMD)])
@pytest.mark.parametrize("alpha", [1e-6, 0.5])
def test_modes_equal_the_transcribed_authors_solver_on_the_same_arrays(tmp_path, mode, reference, alpha):
    # few train units (about 50), so that dividing by n - 1 instead of n shows at alpha 0.5
    ids, split, values = three_models(3, 85)
    paths = {m: write_pooled(tmp_path / f"{m}.parquet", {1: v}, splits=split, example_ids=ids, model=m,
                          dataset="synthetic", row_group_size=20) for m, v in values.items()}
    pair_paths = {}
    for a, b in lmd.model_pairs(list(values)):
        va, vb = (lmd.model_layers(m, paths[m], "example", -1, -1) for m in (a, b))
        moments, _ = lmd.compute_pair_moments(va, vb, "example", block_rows=16)
        pair_paths[(a, b)] = tmp_path / f"{a}_{b}.npz"
        lmd.save_pair_moments(pair_paths[(a, b)], va, vb, moments, {})
    group, pairs = lmd.decompose(pair_paths, list(values), alpha, mode)
    tensors = {s: {m: torch.from_numpy(v[split == s]) for m, v in values.items()} for s in ("train", "test")}
    for row in [*group, *({**r, "basis_models": r["basis_model"]} for r in pairs)]:
        basis = row["basis_models"].split(";")
        released = reference(basis, row["model"], alpha)
        released.train(tensors["train"])
        assert abs(row["r2_train"] - released.score(tensors["train"])) < 1e-10
        assert abs(row["r2_test"] - released.score(tensors["test"])) < 1e-10
        # and the fit itself, from materialised rows
        tr = split == "train"
        stats = lmd.SplitStats.from_rows(values[row["model"]][tr], np.hstack([values[m][tr] for m in basis]))
        fit = lmd.fit_ridge(stats, alpha, mode)
        assert np.max(np.abs(fit.W - released.W.numpy())) < 1e-10 * max(1.0, np.abs(released.W.numpy()).max())
        if mode == "paper":
            assert np.max(np.abs(fit.b - released.b.numpy())) < 1e-10 * max(1.0, np.abs(released.b.numpy()).max())
    if mode == "paper" and alpha == 0.5:
        # the test sees the divisor: alpha on the population (divided by n) covariance gives another R²
        row = group[0]
        basis = row["basis_models"].split(";")
        tr, te = split == "train", split == "test"
        z, u = np.hstack([values[m] for m in basis]), values[row["model"]]
        n = tr.sum()
        population = lmd.fit_ridge(lmd.SplitStats.from_rows(u[tr], z[tr]), alpha * (n - 1) / n, "paper")
        other = lmd.fit_ridge(lmd.SplitStats.from_rows(u[tr], z[tr]), alpha * n / (n - 1), "paper")
        test = lmd.SplitStats.from_rows(u[te], z[te])
        assert abs(lmd.r_squared(population, test)[0] - lmd.r_squared(other, test)[0]) > 1e-6


# ------------------------------------------------------------------------------ effective sample size
def test_underdetermined_counts_independent_examples_as_well_as_units():
    assert lmd.is_underdetermined(33_951, 480, 2_688)  # words of 480 train reviews, a 2,688-dim basis
    assert not lmd.is_underdetermined(20_000, 20_000, 50)
    assert lmd.is_underdetermined(40, 40, 50) and not lmd.is_underdetermined(20_000, 51, 50)


def test_streamed_examples_and_between_example_share_of_word_units(tmp_path):
    rng = np.random.default_rng(21)
    n_examples = 36
    words = rng.integers(8, 20, size=n_examples)
    split_of = lambda e: "test" if e % 4 == 0 else "train"  # noqa: E731
    rows = token_table(words, lambda e, w: 1 + (e + w) % 2, split_of)
    # a review-level component shared by the words of one example, plus word-level noise
    effect_a, effect_b = rng.normal(size=(n_examples, 5)) * 2.0, rng.normal(size=(n_examples, 7))
    ex = rows["example_id"].to_numpy()
    tok_a = (effect_a[ex] + rng.normal(size=(len(rows), 5)) + 10.0).astype(np.float32)
    tok_b = (effect_b[ex] + effect_a[ex] @ rng.normal(size=(5, 7)) + rng.normal(size=(len(rows), 7))).astype(np.float32)
    pa_ = write_tokens(tmp_path / "a.parquet", {2: tok_a}, rows, model="a", dataset="synthetic", n_layers=3, row_group_size=41)
    pb_ = write_tokens(tmp_path / "b.parquet", {2: tok_b}, rows, model="b", dataset="synthetic", n_layers=3, row_group_size=29)
    va, vb = lmd.model_layers("a", pa_, "word", -1, -1), lmd.model_layers("b", pb_, "word", -1, -1)
    moments, _ = lmd.compute_pair_moments(va, vb, "word", block_rows=50, validation_fraction=0.25)
    lmd.save_pair_moments(tmp_path / "ab.npz", va, vb, moments, {}, 0.25, 0)
    pair = lmd.PairMoments.load(tmp_path / "ab.npz")

    # reference: the word means materialised, grouped by example
    def word_means(tokens):
        frame = pd.DataFrame(tokens.astype(np.float64)).assign(e=ex, w=rows["word_id"].to_numpy())
        return frame[frame.w >= 0].groupby(["e", "w"]).mean()

    means_a, means_b = word_means(tok_a), word_means(tok_b)
    example = means_a.index.get_level_values(0).to_numpy()
    train = np.array([split_of(e) == "train" for e in example])
    valid = train & lmd.validation_mask(example, 0.25)
    for name, members in (("train", train), ("fit", train & ~valid), ("valid", valid), ("test", ~train)):
        for model, means in (("a", means_a), ("b", means_b)):
            expected = lmd.SplitStats.from_rows(means.to_numpy()[members], means.to_numpy()[members], example[members])
            assert pair.groups[name] == expected.n_groups == len(set(example[members]))
            assert abs(pair.between_share(model, name) - expected.between_share) < 1e-9
    assert 0.2 < pair.between_share("a", "train") < 0.9  # the fixture has a real review-level component
    # the fit rows carry them; 27 train examples for 7 basis dims: not flagged; for a wider basis it would be
    _, rows_out = lmd.decompose({("a", "b"): tmp_path / "ab.npz"}, ["a", "b"], 1e-6, min_train=2, min_test=2)
    row = next(r for r in rows_out if r["model"] == "a")
    assert row["n_train_examples"] == pair.groups["train"] == 27 and row["n_train"] == pair.n["train"]
    assert abs(row["between_example_share"] - pair.between_share("a", "train")) < 1e-12
    assert not row["underdetermined"]
    assert lmd.is_underdetermined(row["n_train"], row["n_train_examples"], 30) and row["n_train"] > 30


# ---------------------------------------------------------------------------------------- chunking
def test_release_chunking_equals_the_released_gen_sequence(tiny_models, tiny_corpus):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["bert"])
    texts = [t for _ in range(30) for t in tiny_corpus[1]]  # 2,400 texts: batches of 1000 cut the train split
    base = pd.DataFrame({"example_id": np.arange(len(texts)), "text": texts,
                         "split": np.where(np.arange(len(texts)) % 4 == 0, "test", "train")})
    entry = {"name": "c", "base": "toy", "tokenizer_model": "tiny-bert", "chunk_tokens": 16}
    frame, counts = chunk_dataset.build_chunks(base, tokenizer, 16, entry)
    released = released_sequences({s: base.loc[base.split == s, "text"].tolist() for s in ("train", "test")},
                                   tokenizer, 16)
    assert counts["train_empty_chunks_dropped"] == counts["test_empty_chunks_dropped"] == 0
    for split in ("train", "test"):
        assert frame.loc[frame.split == split, "text"].tolist() == released[split]
    assert counts["train_remainder_tokens_dropped"] > 0 and counts["chunking"] == "release"
    # the special tokens took chunk positions: more chunks than the text tokens alone fill
    text_only, _ = chunk_dataset.build_chunks(base, tokenizer, 16, {**entry, "chunking": "text_tokens"})
    assert len(frame) > len(text_only)
    ids = tokenizer(frame["text"].head(200).tolist(), add_special_tokens=False)["input_ids"]
    assert np.mean([len(i) for i in ids]) < 16 - 1  # fewer text tokens per chunk than T
    # without the shuffle, the release's chunks are cut in example order
    ordered, _ = chunk_dataset.build_chunks(base, tokenizer, 16, {**entry, "shuffle_seed": None})
    flat = [t for ids in tokenizer(base.loc[base.split == "train", "text"].tolist()[:1000])["input_ids"] for t in ids]
    assert ordered["text"].iloc[0] == tokenizer.decode(flat[:16], skip_special_tokens=True)


def test_release_split_is_positional_as_datasets_percent_slices(tiny_models, tiny_corpus):
    from datasets import ReadInstruction
    from transformers import AutoTokenizer

    for n in (7, 20, 99, 1000, 1234):
        split = chunk_dataset.release_split(n)
        for spec, name in (("train[:5%]", "validation"), ("train[5%:10%]", "test"), ("train[10%:]", "train")):
            (instruction,) = ReadInstruction.from_spec(spec).to_absolute({"train": n})
            assert np.flatnonzero(split == name).tolist() == list(range(instruction.from_, instruction.to)), (n, spec)
    # a chunks dataset with chunk_split: release ignores the base's split and cuts the rows by position
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["bert"])
    texts = [t for _ in range(3) for t in tiny_corpus[1]]  # 240 rows: 12 validation, 12 test, 216 train
    base = pd.DataFrame({"example_id": np.arange(len(texts)), "text": texts, "split": "train"})
    entry = {"name": "c", "base": "toy", "tokenizer_model": "tiny-bert", "chunk_tokens": 16}
    frame, counts = chunk_dataset.build_chunks(base.sample(frac=1, random_state=0), tokenizer, 16,
                                               {**entry, "chunk_split": "release"})
    assert counts["release_validation_rows_unused"] == 12
    by_hand = base.assign(split=["validation"] * 12 + ["test"] * 12 + ["train"] * 216)
    expected, _ = chunk_dataset.build_chunks(by_hand[by_hand.split != "validation"], tokenizer, 16, entry)
    assert frame["text"].tolist() == expected["text"].tolist() and frame["split"].tolist() == expected["split"].tolist()


def test_chunks_longer_than_a_models_positions_stop_the_extraction(tiny_models, tiny_corpus, tmp_path):
    # a too-small limit must not silently change the unit: the tiny BERT reads at most 64 positions
    from lmcompare.extraction.extract import ExtractionSettings, extract
    from lmcompare.data.prepare import build_dataset, write_dataset

    raw = pd.DataFrame({"text": list(tiny_corpus[1][:6]), "label": list(tiny_corpus[2][:6])})
    frame, _ = build_dataset(raw, {"name": "c", "text_column": "text", "label_column": "label", "test_fraction": 0.3,
                                   "seed": 1})
    write_dataset(frame, tmp_path / "c.parquet", {"name": "c"})
    settings = ExtractionSettings(max_length=128, token_layers=(-1,), truncation_note="chunk_tokens = 128")
    with pytest.raises(WorkflowInputError, match=r"reads at most 64 tokens.*chunk_tokens <= 64"):
        extract(tiny_models["bert"], tmp_path / "c.parquet", tmp_path / "p.parquet", tmp_path / "t.parquet", settings,
                model_name="tiny-bert", dataset_name="c", progress=False)


def test_words_clustered_by_example_overfit_a_split_by_example_that_the_unit_count_hides():
    # Known mechanism: each example carries a nuisance vector in the basis (constant over its words). With no more
    # train examples than basis dims, alpha ~ 0 uses it to reproduce each train example's mean of u: the fit
    # carries over to new words of the same examples (a random word split) but not to new examples.
    rng = np.random.default_rng(31)
    n_groups, per_group, d_u, d_signal, d_nuisance = 90, 25, 4, 6, 54
    group = np.repeat(np.arange(n_groups), per_group)
    signal = rng.normal(size=(n_groups, d_signal))
    own = rng.normal(size=(n_groups, d_u)) * 2.0  # the part of u's example mean no basis signal explains
    u = signal[group] @ rng.normal(size=(d_signal, d_u)) + own[group] + 0.5 * rng.normal(size=(group.size, d_u))
    nuisance = rng.normal(size=(n_groups, d_nuisance))
    z = np.hstack([signal[group] + 0.1 * rng.normal(size=(group.size, d_signal)),
                   nuisance[group] + 0.1 * rng.normal(size=(group.size, d_nuisance))])
    by_example = group < 60  # 60 train examples for 60 basis dims; 30 test examples
    by_word = rng.random(group.size) < 2 / 3
    scores = {}
    for name, train in (("example", by_example), ("word", by_word)):
        stats = lmd.SplitStats.from_rows(u[train], z[train], group[train])
        _, scores[name] = lmd.fit_and_score(stats, lmd.SplitStats.from_rows(u[~train], z[~train]), 1e-6, "paper", name)
    # measured: split by example R² train 0.93 / test -1.70; random word split 0.82 / 0.82
    assert scores["example"]["r2_test"] < scores["word"]["r2_test"] - 0.3, scores
    assert scores["example"]["underdetermined"] and not scores["word"]["underdetermined"]
    assert scores["example"]["n_train_examples"] == 60 and 1500 > 60  # 1,500 units: the unit count alone passes
    assert scores["example"]["between_example_share"] > 0.7
