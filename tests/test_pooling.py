"""The pooled file's summary token per architecture (extraction/pooling.py): for tiny random models of each
architecture the papers use, with the tokenizer class of that architecture, the `first` (summary token) and `mean`
vectors extraction writes equal those of an unpadded forward pass of each example alone, in batches of examples of
different lengths padded on the right and on the left."""
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from lmcompare import hidden_states
from lmcompare.data.prepare import build_dataset, write_dataset
from lmcompare.errors import WorkflowInputError
from lmcompare.extraction import pooling
from lmcompare.extraction.extract import ExtractionSettings, check_padding_side, extract
from tests.tokenizer_families import ARCHITECTURES, TEXTS, TOKENIZERS, build_model

pytestmark = pytest.mark.unit

# where each architecture's summary token stands: (rule, where in the tokenizer's template)
EXPECTED = {
    "bert": ("cls", "start"), "roberta": ("cls", "start"), "xlnet": ("cls", "end"), "gpt2": ("last", "last"),
    "albert": ("cls", "start"), "distilbert": ("cls", "start"), "electra": ("cls", "start"),
    "deberta": ("cls", "start"), "deberta-v2": ("cls", "start"), "longformer": ("cls", "start"),
    "xlm-roberta": ("cls", "start"),
}
assert set(EXPECTED) == set(ARCHITECTURES)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    raw = pd.DataFrame({"text": TEXTS, "label": ["a", "b"] * (len(TEXTS) // 2)})
    frame, _ = build_dataset(raw, {"name": "mixed", "text_column": "text", "label_column": "label",
                                   "test_fraction": 0.3, "seed": 1})
    path = tmp_path_factory.mktemp("data") / "mixed.parquet"
    write_dataset(frame, path, {"name": "mixed"})
    return path, frame


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """name -> a saved model folder (tiny random model + its architecture's tokenizer), built on first use."""
    root = tmp_path_factory.mktemp("models")
    built = {}

    def get(name):
        if name not in built:
            tokenizer = TOKENIZERS[name]()
            folder = root / name
            build_model(name, tokenizer).save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            built[name] = folder
        return built[name]

    return get


def _reference(folder, texts, max_length):
    """Per text alone, unpadded: (hidden states per layer (T, d), special-token mask, input ids)."""
    from lmcompare.models.loading import load_model, load_tokenizer

    model, tokenizer = load_model(folder), load_tokenizer(folder)
    out = []
    for text in texts:
        enc = tokenizer(text, truncation=True, max_length=max_length, return_special_tokens_mask=True)
        with torch.inference_mode():
            hidden = model(input_ids=torch.tensor([enc["input_ids"]]), output_hidden_states=True).hidden_states
        out.append(([h[0].numpy() for h in hidden], np.asarray(enc["special_tokens_mask"], bool), enc["input_ids"]))
    return out, tokenizer


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_summary_and_mean_vectors_equal_an_unpadded_forward_pass_under_right_and_left_padding(
        name, model_dirs, dataset, tmp_path):
    dataset_path, frame = dataset
    folder = model_dirs(name)
    # batches of 2-4 examples of different lengths (plan_batches keeps them within 0.8 of the longest)
    settings = dict(max_length=40, batch_tokens=100, sort_window=64, token_layers=(-1,))
    reference, tokenizer = _reference(folder, frame["text"], 40)
    rule, where = EXPECTED[name]
    for side in ("right", "left"):
        out = tmp_path / side
        out.mkdir()
        counts = extract(folder, dataset_path, out / "pooled.parquet", out / "tokens.parquet",
                         ExtractionSettings(**settings, padding_side=side), model_name=name, dataset_name="mixed",
                         progress=False)
        assert counts.padded_tokens > counts.tokens and counts.batches < len(frame)  # padding happened
        meta = hidden_states.read_hidden_metadata(out / "pooled.parquet")
        assert meta["padding_side"] == side and meta["model_type"] == name
        summary = meta["summary_token"]
        assert (summary["rule"], summary["where"]) == (rule, where)
        if rule == "cls":
            assert summary["token_id"] == tokenizer.cls_token_id
        pooled = pq.read_table(out / "pooled.parquet")
        tokens = pq.read_table(out / "tokens.parquet").to_pandas()
        positions = pooled.column("summary_position").to_numpy()
        for row, (hidden, special, ids) in enumerate(reference):
            expected_position = len(ids) - 1 if where in ("end", "last") else 0
            assert positions[row] == expected_position, (side, row)
            if rule == "cls":
                assert ids[positions[row]] == tokenizer.cls_token_id
            mine = tokens[tokens["example_id"] == frame["example_id"][row]]
            assert mine["token_id"].tolist() == list(ids)
            np.testing.assert_allclose(np.stack(mine[hidden_states.token_column(meta["n_layers"] - 1)].to_numpy()),
                                       hidden[-1], rtol=0, atol=1e-5, err_msg=f"{name} {side} tokens row {row}")
            for layer, states in enumerate(hidden):
                first = hidden_states.vectors(pooled.slice(row, 1), hidden_states.pooled_column(layer, "first"))[0]
                mean = hidden_states.vectors(pooled.slice(row, 1), hidden_states.pooled_column(layer, "mean"))[0]
                np.testing.assert_allclose(first, states[expected_position], rtol=0, atol=1e-5,
                                           err_msg=f"{name} {side} first, row {row}, layer {layer}")
                np.testing.assert_allclose(mean, states[~special].mean(0), rtol=0, atol=1e-5,
                                           err_msg=f"{name} {side} mean, row {row}, layer {layer}")


def test_the_summary_token_rule_per_model_type_and_override():
    bert, gpt2, xlnet = TOKENIZERS["bert"](), TOKENIZERS["gpt2"](), TOKENIZERS["xlnet"]()
    assert pooling.choose_summary_token("bert", bert).metadata() == {
        "rule": "cls", "token": "[CLS]", "token_id": bert.cls_token_id, "where": "start",
        "source": pooling.choose_summary_token("bert", bert).source}
    assert pooling.choose_summary_token("xlnet", xlnet).where == "end"
    for decoder in ("gpt2", "gpt_neox", "llama", "opt"):
        assert pooling.choose_summary_token(decoder, gpt2).rule == "last"
    # overrides: an encoder read at its last token, a decoder at position 0
    assert pooling.choose_summary_token("bert", bert, "last").rule == "last"
    first = pooling.choose_summary_token("gpt2", gpt2, "first")
    assert (first.rule, first.where) == ("first", "position 0")
    assert pooling.summary_position(first, [5, 6, 7], [0, 0, 0]) == 0
    with pytest.raises(WorkflowInputError, match="summary_token 'middle' is not one of"):
        pooling.choose_summary_token("bert", bert, "middle")


def test_a_model_without_a_classification_token_is_an_error_naming_the_fix():
    with pytest.raises(WorkflowInputError, match=r"has no classification token .*set S to last .*or first"):
        pooling.choose_summary_token("gpt2", TOKENIZERS["gpt2"](), "cls", model_name="g", setting="S")
    # a BERT tokenizer built bare (no post-processor template) has a cls_token but never adds it
    bare = TOKENIZERS["bert"]()
    bare._tokenizer.post_processor = None
    assert bare("a b")["input_ids"][0] != bare.cls_token_id
    with pytest.raises(WorkflowInputError, match=r"does not add it to an input .*set S to last"):
        pooling.choose_summary_token("bert", bare, model_name="b", setting="S")
    summary = pooling.choose_summary_token("bert", TOKENIZERS["bert"]())
    with pytest.raises(WorkflowInputError, match="example_id 7 has no classification token"):
        pooling.summary_position(summary, [5, 6], [0, 0], example_id=7)


def test_left_padding_is_refused_for_a_model_without_position_ids():
    from types import SimpleNamespace

    model = SimpleNamespace(config=SimpleNamespace(model_type="bart"), forward=lambda input_ids, attention_mask: 0)
    check_padding_side(model, "right")
    with pytest.raises(WorkflowInputError, match="takes no position ids.*padding_side: right"):
        check_padding_side(model, "left", "m")
    relative = SimpleNamespace(config=SimpleNamespace(model_type="xlnet"), forward=model.forward)
    check_padding_side(relative, "left")


def test_position_ids_give_each_token_its_unpadded_position():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert pooling.position_ids("bert", mask, 0).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    # RoBERTa-style: counted from the pad index (create_position_ids_from_input_ids), pads at the pad index
    assert pooling.position_ids("roberta", mask, 1).tolist() == [[1, 1, 2, 3, 4], [2, 3, 4, 5, 6]]
    assert pooling.position_ids("xlnet", mask, 5) is None


def test_the_per_model_setting_is_in_the_schema_and_derived_models_take_their_base_s():
    from lmcompare.config import check_schema
    from tests.conftest import PROJECT

    models = [{"name": "enc", "source": "local", "path": "x", "summary_token": "last"},
              {"name": "noisy", "source": "perturb", "base": "enc", "alpha": 0.1},
              {"name": "tuned", "source": "finetune", "base": "noisy", "dataset": "d", "summary_token": "first"},
              {"name": "plain", "source": "local", "path": "y"}]
    check_schema({"models": models, "datasets": [{"name": "d", "source": "file", "path": "d.csv"}]},
                 PROJECT / "schemas" / "config.schema.yaml")
    assert [pooling.configured_summary_token(models, m["name"]) for m in models] == ["last", "last", "first", "auto"]
    with pytest.raises(WorkflowInputError, match=r"models\[0\].summary_token: 'middle' is not one of"):
        check_schema({"models": [{**models[0], "summary_token": "middle"}], "datasets": []},
                     PROJECT / "schemas" / "config.schema.yaml")
