"""Hidden-state extraction: vectors equal a direct forward pass on each text alone; pooling; word alignment."""
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from lmcompare import hidden_states
from lmcompare.extraction.extract import ExtractionSettings, extract, plan_batches, word_ids_for_tokens
from lmcompare.data.prepare import build_dataset, write_dataset

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory, tiny_corpus):
    path, texts, labels = tiny_corpus
    texts = list(texts[:30]) + ["x", "A much longer text " * 12]  # a one-character text and a truncated one
    raw = pd.DataFrame({"text": texts, "label": (list(labels[:30]) + ["great", "other"])})
    entry = {"name": "toy", "text_column": "text", "label_column": "label", "test_fraction": 0.3, "seed": 1}
    frame, _ = build_dataset(raw, entry)
    out = tmp_path_factory.mktemp("data") / "toy.parquet"
    write_dataset(frame, out, {"name": "toy"})
    return out, frame


def extract_tiny(model_dir, dataset_path, out_dir, **overrides):
    options = dict(max_length=24, batch_tokens=120, sort_window=11, token_layers=(0, -1))
    settings = ExtractionSettings(**{**options, **overrides})
    pooled, tokens = out_dir / "pooled.parquet", out_dir / "tokens.parquet"
    counts = extract(model_dir, dataset_path, pooled, tokens, settings, model_name="m", dataset_name="toy",
                     progress=False)
    return pooled, tokens, counts


@pytest.mark.parametrize("name", ["bert", "roberta", "gpt2"])
def test_vectors_equal_a_direct_forward_pass_on_each_text_alone(name, tiny_models, toy_dataset, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    dataset_path, frame = toy_dataset
    pooled_path, tokens_path, counts = extract_tiny(tiny_models[name], dataset_path, tmp_path)
    meta = hidden_states.read_hidden_metadata(pooled_path)
    model = AutoModel.from_pretrained(tiny_models[name], local_files_only=True, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[name])
    n_layers = model.config.num_hidden_layers + 1
    assert meta["n_layers"] == n_layers and meta["hidden_size"] == model.config.hidden_size
    assert meta["token_layers"] == [0, n_layers - 1]
    assert meta["summary_token"]["rule"] == ("last" if name == "gpt2" else "cls")
    pooled = pq.read_table(pooled_path)
    tokens = pq.read_table(tokens_path).to_pandas()
    assert pooled.column("example_id").to_pylist() == frame["example_id"].tolist()
    assert counts.truncated >= 1 and counts.examples == len(frame)
    for row, text in enumerate(frame["text"]):
        enc = tokenizer(text, truncation=True, max_length=meta["max_length"], return_tensors="pt",
                        return_special_tokens_mask=True)
        special = enc.pop("special_tokens_mask")[0].bool()
        with torch.no_grad():
            hidden = model(**enc, output_hidden_states=True).hidden_states
        mine = tokens[tokens["example_id"] == row]
        assert mine["token_id"].tolist() == enc["input_ids"][0].tolist()
        assert mine["is_special"].tolist() == special.tolist()
        # the summary token: [CLS] / <s> at position 0 of the encoders, the last token of GPT-2 (a decoder)
        summary = len(special) - 1 if name == "gpt2" else 0
        assert pooled.column("summary_position")[row].as_py() == summary
        for layer in range(n_layers):
            reference = hidden[layer][0]
            first = hidden_states.vectors(pooled.slice(row, 1), hidden_states.pooled_column(layer, "first"))[0]
            mean = hidden_states.vectors(pooled.slice(row, 1), hidden_states.pooled_column(layer, "mean"))[0]
            np.testing.assert_allclose(first, reference[summary].numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(mean, reference[~special].mean(0).numpy(), rtol=1e-4, atol=1e-5)
        for layer in (0, n_layers - 1):
            stored = np.stack(mine[hidden_states.token_column(layer)].to_numpy())
            np.testing.assert_allclose(stored, hidden[layer][0].numpy(), rtol=1e-4, atol=1e-5)


def test_pooled_mean_is_mean_of_non_special_token_rows(tiny_models, toy_dataset, tmp_path):
    pooled_path, tokens_path, _ = extract_tiny(tiny_models["roberta"], toy_dataset[0], tmp_path)
    meta = hidden_states.read_hidden_metadata(pooled_path)
    last = meta["n_layers"] - 1
    pooled = pq.read_table(pooled_path)
    tokens = pq.read_table(tokens_path)
    ids = tokens.column("example_id").to_numpy()
    special = tokens.column("is_special").to_numpy()
    vectors = hidden_states.vectors(tokens, hidden_states.token_column(last))
    means = hidden_states.vectors(pooled, hidden_states.pooled_column(last, "mean"))
    firsts = hidden_states.vectors(pooled, hidden_states.pooled_column(last, "first"))
    for row, example in enumerate(pooled.column("example_id").to_numpy()):
        rows = ids == example
        np.testing.assert_allclose(means[row], vectors[rows & ~special].mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(firsts[row], vectors[rows][0], rtol=0, atol=0)


def test_word_ids_map_every_model_onto_the_same_characters(tiny_models, toy_dataset, tmp_path):
    """For two tokenizers, each word id points at the same dataset word, and tokens lie inside their word."""
    dataset_path, frame = toy_dataset
    covered = {}
    for name in ("bert", "roberta"):
        out = tmp_path / name
        out.mkdir()
        _, tokens_path, _ = extract_tiny(tiny_models[name], dataset_path, out)
        tokens = pq.read_table(tokens_path, columns=["example_id", "word_id", "char_start", "char_end",
                                                     "is_special"]).to_pandas()
        words = tokens[tokens["word_id"] >= 0]
        for example, start, end, word in zip(words["example_id"], words["char_start"], words["char_end"],
                                             words["word_id"]):
            text = frame["text"][example]
            w_start, w_end = frame["word_starts"][example][word], frame["word_ends"][example][word]
            first_char = start + len(text[start:end]) - len(text[start:end].lstrip())
            assert w_start <= first_char < w_end
        assert (tokens.loc[tokens["is_special"], "word_id"] == -1).all()
        covered[name] = set(zip(words["example_id"], words["word_id"]))
    # untruncated examples: both models cover every word of the text
    short = [i for i, text in enumerate(frame["text"]) if len(text) < 40]
    for example in short:
        n_words = len(frame["word_starts"][example])
        for name in covered:
            assert {w for e, w in covered[name] if e == example} == set(range(n_words)), (name, example)


def test_padding_never_changes_a_result(tiny_models, toy_dataset, tmp_path):
    """One example per batch and many per batch give the same vectors."""
    dataset_path, _ = toy_dataset
    small = tmp_path / "small"
    large = tmp_path / "large"
    small.mkdir()
    large.mkdir()
    pooled_a, _, counts_a = extract_tiny(tiny_models["gpt2"], dataset_path, small, batch_tokens=24)
    pooled_b, _, counts_b = extract_tiny(tiny_models["gpt2"], dataset_path, large, batch_tokens=2000)
    assert counts_a.batches > counts_b.batches
    column = hidden_states.pooled_column(2, "mean")
    np.testing.assert_allclose(hidden_states.vectors(pq.read_table(pooled_a), column),
                               hidden_states.vectors(pq.read_table(pooled_b), column), rtol=1e-4, atol=1e-5)


def test_plan_batches_respects_the_token_budget():
    lengths = [5, 30, 7, 30, 12, 3, 3, 29]
    batches = plan_batches(lengths, 64)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 64


def test_word_ids_for_byte_level_tokens_with_leading_spaces():
    text = "Hi, it's fine"
    starts, ends = [0, 2, 4, 6, 7, 9], [2, 3, 6, 7, 8, 13]
    offsets = [(0, 0), (0, 2), (2, 3), (3, 6), (6, 8), (8, 13), (0, 0)]
    special = [1, 0, 0, 0, 0, 0, 1]
    assert word_ids_for_tokens(offsets, special, text, starts, ends).tolist() == [-1, 0, 1, 2, 3, 5, -1]


def test_nonfinite_hidden_states_fail_naming_the_example_or_are_dropped(tiny_models, toy_dataset, tmp_path):
    from transformers import AutoTokenizer, BertModel

    from lmcompare.errors import WorkflowInputError

    dataset_path, frame = toy_dataset
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["bert"])
    poisoned = tokenizer("wonderful", add_special_tokens=False)["input_ids"][0]
    model = BertModel.from_pretrained(tiny_models["bert"])
    with torch.no_grad():  # an infinite embedding poisons every example holding that token
        model.embeddings.word_embeddings.weight[poisoned] = float("inf")
    folder = tmp_path / "broken"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    bad = [i for i, text in enumerate(frame["text"])
           if poisoned in tokenizer(text, truncation=True, max_length=24)["input_ids"]]
    assert bad
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(WorkflowInputError, match=f"example_id {bad[0]}"):
        extract_tiny(folder, dataset_path, out)
    assert not (out / "pooled.parquet").exists() and not (out / "tokens.parquet").exists()
    _, _, counts = extract_tiny(folder, dataset_path, out, nonfinite="drop")
    assert counts.nonfinite_dropped == len(bad)
    kept = pq.read_table(out / "pooled.parquet", columns=["example_id"]).column("example_id").to_pylist()
    assert kept == [i for i in range(len(frame)) if i not in bad]


def test_float16_storage_overflow_fails_naming_the_layer_or_is_dropped(tiny_models, toy_dataset, tmp_path,
                                                                        monkeypatch):
    """Hidden states finite in float32 but above float16's 65,504 (layer 1 of the examples holding one token,
    scaled by 1e6) would be stored as inf: with store_dtype float16 the extraction stops naming the model, the
    layer, the first example and the fix, or drops and counts them under nonfinite: drop; float32 keeps them all."""
    from transformers import AutoTokenizer

    from lmcompare.errors import WorkflowInputError
    from lmcompare.extraction import extract as extract_module

    dataset_path, frame = toy_dataset
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["bert"])
    loud = tokenizer("wonderful", add_special_tokens=False)["input_ids"][0]
    bad = [i for i, text in enumerate(frame["text"])
           if loud in tokenizer(text, truncation=True, max_length=24)["input_ids"]]
    assert bad
    forward = extract_module.forward_batch

    def loud_forward(model, input_ids, pad_id, device, **options):
        hidden, mask = forward(model, input_ids, pad_id, device, **options)
        rows = torch.tensor([loud in ids for ids in input_ids])
        scaled = torch.where(rows[:, None, None], hidden[1] * 1e6, hidden[1])
        return (hidden[0], scaled, *hidden[2:]), mask

    monkeypatch.setattr(extract_module, "forward_batch", loud_forward)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(WorkflowInputError) as caught:
        extract_tiny(tiny_models["bert"], dataset_path, out, store_dtype="float16")
    message = str(caught.value)
    assert message.startswith("model 'm': hidden states of layer 1 exceed float16's range (|value| > 65,504)")
    assert f"the first is example_id {bad[0]}" in message and "extraction.store_dtype: float32" in message
    assert not (out / "pooled.parquet").exists() and not (out / "tokens.parquet").exists()

    _, _, counts = extract_tiny(tiny_models["bert"], dataset_path, out, store_dtype="float16", nonfinite="drop")
    assert counts.nonfinite_dropped == len(bad)
    pooled = pq.read_table(out / "pooled.parquet")
    assert pooled.column("example_id").to_pylist() == [i for i in range(len(frame)) if i not in bad]
    assert np.isfinite(hidden_states.vectors(pooled, hidden_states.pooled_column(1, "mean"))).all()

    _, _, counts = extract_tiny(tiny_models["bert"], dataset_path, out, store_dtype="float32")
    assert counts.nonfinite_dropped == 0 and counts.examples == len(frame)


def test_unlabelled_dataset_extracts_with_null_labels(tiny_models, tmp_path):
    from lmcompare.data.prepare import prepare

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("first line of text\nsecond line, longer than the first\n\nthird\n")
    prepare({"name": "raw", "source": "file", "path": str(corpus), "text_column": "text", "label_column": None,
             "test_fraction": 0.3, "seed": 0}, tmp_path / "raw.parquet")
    pooled, _, counts = extract_tiny(tiny_models["bert"], tmp_path / "raw.parquet", tmp_path)
    assert counts.examples == 3
    assert pq.read_table(pooled, columns=["label"]).column("label").to_pylist() == [None, None, None]


def test_examples_straddling_token_row_groups_give_the_same_word_units(tiny_models, toy_dataset, tmp_path,
                                                                         monkeypatch):
    """Token row groups are capped in rows; readers that aggregate per word must not care where the cuts fall."""
    from lmcompare import decomposition
    from lmcompare.extraction import extract as extract_hidden_states

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir()
    cut.mkdir()
    extract_tiny(tiny_models["bert"], toy_dataset[0], whole)
    monkeypatch.setattr(extract_hidden_states, "TOKEN_ROW_GROUP_ROWS", 7)
    _, tokens_cut, _ = extract_tiny(tiny_models["bert"], toy_dataset[0], cut)
    assert pq.ParquetFile(tokens_cut).num_row_groups > 20
    units = {}
    for name, folder in (("whole", whole), ("cut", cut)):
        view = decomposition.model_layers("m", str(folder / "tokens.parquet"), "word", -1, -1)
        parts = list(decomposition.iter_units(view, "word"))
        units[name] = (np.concatenate([p[0] for p in parts]), np.vstack([p[2] for p in parts]))
    np.testing.assert_array_equal(units["whole"][0], units["cut"][0])
    np.testing.assert_allclose(units["whole"][1], units["cut"][1], rtol=1e-6)
