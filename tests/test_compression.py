"""Tests of the [CLS] compression stage and of fine-tuning as a model source."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from lmcompare import compression
from lmcompare import hidden_states
from lmcompare.probe import linear_probe
from lmcompare.errors import WorkflowInputError
from tests import factories


# ----------------------------------------------------------------------------------- synthetic data
def one_dim_label_data(n_train=300, n_test=200, d=8, label_dim=3, label_scale=1.0, noise_scale=1.0, seed=0):
    """Binary labels that live only in dimension `label_dim`: there x = label_scale * (+-1 + 0.3 N(0,1));
    every other dimension is noise_scale * N(0,1), independent of the label."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    y = rng.integers(0, 2, size=n)
    x = noise_scale * rng.normal(size=(n, d))
    x[:, label_dim] = label_scale * ((2 * y - 1) + 0.3 * rng.normal(size=n))
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


# ------------------------------------------------------------------------------------------ k grid
@pytest.mark.unit
def test_k_grid_powers_of_two_then_d():
    assert compression.k_grid(384) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 384]
    assert compression.k_grid(8) == [1, 2, 4, 8]
    assert compression.k_grid(1) == [1]


@pytest.mark.unit
def test_k_grid_caps_requested_k_at_d_with_a_log_line(caplog):
    with caplog.at_level(logging.INFO, logger="workflow"):
        assert compression.k_grid(10, [3, 1000, 10, 1]) == [1, 3, 10]
    assert "k=1000 is larger than the vector's 10 dimensions; capped at 10" in caplog.text
    with pytest.raises(WorkflowInputError, match="at least 1"):
        compression.k_grid(10, [0])


# --------------------------------------------------------------------------------------------- PCA
@pytest.mark.unit
def test_fit_pca_matches_scikit_learn():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)) + 3.0
    mean, components, variances = compression.fit_pca(x)
    reference = PCA().fit(x)
    np.testing.assert_allclose(mean, reference.mean_, atol=1e-10)
    np.testing.assert_allclose(variances / variances.sum(), reference.explained_variance_ratio_, atol=1e-10)
    # same axes up to sign
    np.testing.assert_allclose(np.abs(np.sum(components * reference.components_, axis=1)), 1.0, atol=1e-8)
    # and our sign convention: largest-magnitude loading positive
    assert np.all(components[np.arange(6), np.abs(components).argmax(axis=1)] > 0)


@pytest.mark.unit
def test_k1_pca_keeps_the_label_when_its_dimension_carries_most_variance():
    train_x, train_y, test_x, test_y = one_dim_label_data(label_scale=10.0, noise_scale=1.0)
    curve = compression.pca_curve(train_x, train_y, test_x, test_y, [1, 2, 4, 8])
    k1 = curve[(curve["kind"] == "pca") & (curve["k"] == 1)].iloc[0]
    full = curve[curve["kind"] == "full"].iloc[0]
    assert full["accuracy"] >= 0.99
    assert k1["accuracy"] >= 0.99
    assert k1["explained_variance"] > 0.9  # the label dimension holds ~ 100 / (100 + 7) of the variance
    assert compression.k_star(curve)[0] == 1


@pytest.mark.unit
def test_k1_pca_loses_the_label_when_its_dimension_carries_the_least_variance():
    train_x, train_y, test_x, test_y = one_dim_label_data(label_scale=1.0, noise_scale=5.0)
    curve = compression.pca_curve(train_x, train_y, test_x, test_y, [1, 2, 4, 8])
    pca = curve[curve["kind"] == "pca"].set_index("k")["accuracy"]
    full = float(curve.loc[curve["kind"] == "full", "accuracy"].iloc[0])
    assert full >= 0.99
    # the label direction is the 8th (last) principal component: k = 1, 2, 4 are at chance, k = 8 recovers it
    for k in (1, 2, 4):
        assert pca[k] < 0.65
    assert pca[8] >= 0.99
    assert compression.k_star(curve)[0] == 8


# ------------------------------------------------------------------------------------- single dims
@pytest.mark.unit
def test_the_label_dimension_ranks_first_and_others_are_at_chance():
    train_x, train_y, test_x, test_y = one_dim_label_data(d=12, label_dim=7)
    dims = compression.single_dim_scan(train_x, train_y, test_x, test_y)
    assert list(dims["dim"]) == list(range(12))
    assert sorted(dims["rank"]) == list(range(1, 13))
    top = dims.sort_values("rank").iloc[0]
    assert top["dim"] == 7
    assert top["accuracy"] >= 0.99
    others = dims[dims["dim"] != 7]
    assert others["accuracy"].max() < 0.65
    assert others["train_accuracy"].max() < top["train_accuracy"]


@pytest.mark.unit
def test_single_dim_scan_equals_the_shared_probe_with_a_fixed_c():
    rng = np.random.default_rng(3)
    n, d = 240, 5
    y = rng.integers(0, 3, size=n)
    x = rng.normal(size=(n, d)) + 0.8 * y[:, None] * rng.normal(size=d)
    x[:, 2] = 4.0  # a constant dimension
    train, test = slice(0, 160), slice(160, n)
    dims = compression.single_dim_scan(x[train], y[train], x[test], y[test], C=0.1)
    for j in range(d):
        reference = linear_probe(x[train, j], y[train], x[test, j], y[test], c_grid=(0.1,))
        row = dims.loc[dims["dim"] == j].iloc[0]
        assert row["accuracy"] == pytest.approx(reference.accuracy)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((reference.ci_low, reference.ci_high))
    assert dims.loc[dims["dim"] == 2, "variance"].item() == 0.0


@pytest.mark.unit
def test_best_dims_probes_use_the_full_protocol_on_train_ranked_dims():
    train_x, train_y, test_x, test_y = one_dim_label_data(d=6, label_dim=4)
    dims = compression.single_dim_scan(train_x, train_y, test_x, test_y)
    best = compression.best_dims_probes(train_x, train_y, test_x, test_y, dims, 2)
    assert list(best["kind"]) == ["single", "single", "top_together"]
    assert best.iloc[0]["dims"] == "4"
    reference = linear_probe(train_x[:, 4], train_y, test_x[:, 4], test_y)
    assert best.iloc[0]["accuracy"] == pytest.approx(reference.accuracy)
    assert best.iloc[0]["C"] == reference.C
    assert best.iloc[2]["k"] == 2 and best.iloc[2]["dims"].split(";")[0] == "4"


# --------------------------------------------------------------------------------- reading + analyse
def _pooled_fixture(tmp_path, labels=None, splits=None, d=8, label_dim=3):
    train_x, train_y, test_x, test_y = one_dim_label_data(n_train=120, n_test=60, d=d, label_dim=label_dim,
                                                          label_scale=3.0)
    x = np.concatenate([train_x, test_x])
    if labels is None:
        labels = np.where(np.concatenate([train_y, test_y]) == 1, "pos", "neg").astype(object)
    if splits is None:
        splits = ["train"] * 120 + ["test"] * 60
    layers = [np.random.default_rng(9).normal(size=x.shape), x]  # layer 0 noise, layer 1 (last) carries the label
    # first-token vectors x, mean vectors x + 100 (tests/factories.py)
    path = factories.write_pooled(tmp_path / "pooled.parquet", [layer + 100 for layer in layers], labels, splits,
                                  first=layers, row_group_size=max(1, len(labels) // 3))
    return path, x


@pytest.mark.unit
def test_read_view_streams_the_right_column_and_drops_unlabelled_rows(tmp_path, caplog):
    labels = np.where(np.arange(180) % 2 == 0, "a", "b").astype(object)
    labels[[0, 5, 170]] = None
    path, x = _pooled_fixture(tmp_path, labels=labels)
    with caplog.at_level(logging.INFO, logger="workflow"):
        view = compression.read_view(path, layer=-1, pooling="first")
    assert "3 of 180 rows carry no label" in caplog.text
    keep = np.setdiff1d(np.arange(180), [0, 5, 170])
    np.testing.assert_allclose(view["x"], x[keep].astype(np.float32))
    assert view["layer"] == 1 and view["column"] == "layer_01_first"
    assert view["classes"] == ["a", "b"]
    np.testing.assert_array_equal(view["y"], (keep % 2 == 1).astype(int))
    mean_view = compression.read_view(path, layer=1, pooling="mean")
    np.testing.assert_allclose(mean_view["x"], (x[keep] + 100).astype(np.float32), rtol=1e-6)


@pytest.mark.unit
def test_bad_inputs_give_clear_messages(tmp_path):
    path, _ = _pooled_fixture(tmp_path, labels=[None] * 180)
    with pytest.raises(WorkflowInputError, match="has no labels"):
        compression.read_view(path, layer=-1, pooling="first", dataset="corpus")
    path, _ = _pooled_fixture(tmp_path, labels=["same"] * 180)
    with pytest.raises(WorkflowInputError, match="1 class"):
        compression.read_view(path, layer=-1, pooling="first", dataset="corpus")
    with pytest.raises(WorkflowInputError, match="out of range"):
        compression.read_view(path, layer=5, pooling="first")
    # two classes overall, but only one of them in train
    labels = ["a"] * 120 + ["b"] * 60
    path, _ = _pooled_fixture(tmp_path, labels=labels)
    view = compression.read_view(path, layer=-1, pooling="first", model="m", dataset="corpus")
    with pytest.raises(WorkflowInputError, match="train split holds a single class"):
        compression.train_test(view, model="m", dataset="corpus")
    path, _ = _pooled_fixture(tmp_path, splits=["train"] * 180)
    view = compression.read_view(path, layer=-1, pooling="first")
    with pytest.raises(WorkflowInputError, match="no labelled test examples"):
        compression.train_test(view)


@pytest.mark.unit
def test_analyse_summary_on_synthetic_data(tmp_path):
    path, _ = _pooled_fixture(tmp_path, d=8, label_dim=5)
    view = compression.read_view(path, layer=-1, pooling="first")
    curve, dims, best, summary = compression.analyse(view, model="m", dataset="ds", pooling="first", n_best=3)
    row = summary.iloc[0]
    assert row["best_dim"] == 5
    assert row["full_accuracy"] >= 0.98 and row["best_dim_accuracy"] >= 0.98
    assert row["dims"] == 8 and row["n_train"] == 120 and row["n_test"] == 60 and row["n"] == 180
    assert list(curve["k"]) == [1, 2, 4, 8, 8]
    assert row["best_dims"].split(";")[0] == "5"
    assert row["single_dim_argmax_test"] == 5
    # k* (paired test against the full vector) with the test size beside it
    assert row["k_star"] == 1 and row["k_star_n_test"] == 60 and row["alpha"] == 0.05
    assert row["full_beats_majority"] and row["full_vs_majority_mcnemar_p"] < 1e-6
    assert list(summary.columns).index("k_star_n_test") == list(summary.columns).index("k_star") + 1
    at = curve[(curve["kind"] == "pca") & (curve["k"] == 1)].iloc[0]
    assert row["k_star_mcnemar_p"] == at["mcnemar_p"] and row["k_star_accuracy"] == at["accuracy"]
    for frame in (curve, dims, best, summary):
        assert {"model", "dataset", "layer", "pooling"} <= set(frame.columns)
        assert (frame["layer"] == 1).all()


# ------------------------------------------------------------------------------------------- pairs
@pytest.mark.unit
def test_resolve_pairs_from_config_and_finetune_entries():
    models = [
        {"name": "bert", "source": "hub"},
        {"name": "bert-ft", "source": "finetune", "base": "bert", "dataset": "d"},
        {"name": "other", "source": "local"},
        {"name": "other-ft", "source": "finetune", "base": "other", "dataset": "d"},
    ]
    declared = [{"pretrained": "other", "finetuned": "bert-ft"}, {"pretrained": "bert", "finetuned": "bert-ft"}]
    assert compression.resolve_pairs(declared, models, ["bert", "bert-ft", "other", "other-ft"]) == [
        ("other", "bert-ft"), ("bert", "bert-ft"), ("other", "other-ft")]
    assert compression.resolve_pairs([], models, ["bert", "bert-ft", "other"], derive=True) == [("bert", "bert-ft")]
    assert compression.resolve_pairs([], models, ["bert", "bert-ft"], derive=False) == []
    with pytest.raises(WorkflowInputError, match="'nope' is not a configured model"):
        compression.resolve_pairs([{"pretrained": "nope", "finetuned": "bert"}], models, ["bert"])


@pytest.mark.unit
def test_pairs_table_and_figures(tmp_path):
    frames = {}
    for model, shuffle in (("pre", True), ("ft", False)):
        train_x, train_y, test_x, test_y = one_dim_label_data(n_train=100, n_test=60, d=8)
        if shuffle:  # the "pretrained" vectors carry no label information
            rng = np.random.default_rng(5)
            train_x, test_x = rng.permutation(train_x), rng.permutation(test_x)
        view = {"x": np.concatenate([train_x, test_x]), "y": np.concatenate([train_y, test_y]),
                "split": np.array(["train"] * 100 + ["test"] * 60), "classes": ["a", "b"], "layer": 2}
        frames[model] = compression.analyse(view, model=model, dataset="ds", pooling="first", n_best=2)
    summary = pd.concat([frames[m][3] for m in frames], ignore_index=True)
    curves = pd.concat([frames[m][0] for m in frames], ignore_index=True)
    dims = pd.concat([frames[m][1] for m in frames], ignore_index=True)
    # label-free vectors: k* = 1 is trivial, and the summary says the full vector does not beat the majority class
    assert list(summary["full_beats_majority"]) == [False, True]
    table = compression.pairs_table(summary, [("pre", "ft")], {"ft": {"epochs": 2, "test_accuracy": 0.9}})
    assert len(table) == 1
    row = table.iloc[0]
    assert row["full_accuracy_gain"] == pytest.approx(row["full_accuracy_finetuned"] - row["full_accuracy_pretrained"])
    assert row["full_accuracy_gain"] > 0.3
    assert row["full_accuracy_finetuned"] >= 0.98
    assert row["finetune_epochs"] == 2 and row["finetune_test_accuracy"] == 0.9
    paths = [str(tmp_path / "curves.png"), str(tmp_path / "curves.svg")]
    compression.plot_curves(curves, summary, [("pre", "ft")], dataset="ds", view="first_layer-1", paths=paths)
    paths2 = [str(tmp_path / "dims.png"), str(tmp_path / "dims.svg")]
    compression.plot_single_dims(dims, summary, [], dataset="ds", view="first_layer-1", paths=paths2)
    for path in paths + paths2:
        assert (tmp_path / path).stat().st_size > 1000
    assert b"<svg" in (tmp_path / "curves.svg").read_bytes()[:500]


@pytest.mark.unit
def test_view_names_round_trip():
    assert compression.view_name("first", -1) == "first_layer-1"
    assert compression.parse_view("mean_layer6") == ("mean", 6)
    assert compression.parse_view(compression.view_name("first", -3)) == ("first", -3)
    with pytest.raises(WorkflowInputError):
        compression.parse_view("max_layer2")


# ------------------------------------------------------------------------------------- fine-tuning
FILLER = ("the a movie film plot actor scene story music camera light city night day house road car window "
          "table chair river tree stone paper book letter phone").split()


def diluted_task(n, seed, length=40):
    """One label word ('good' / 'bad') hidden among `length` random filler words: a random tiny model's [CLS]
    vector carries it only weakly, a fine-tuned one learns to attend to it."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        words = list(rng.choice(FILLER, size=length))
        label = int(rng.integers(0, 2))
        words.insert(int(rng.integers(0, length + 1)), "good" if label else "bad")
        texts.append(" ".join(words))
        labels.append(label)
    return texts, np.array(labels)


@pytest.fixture(scope="module")
def diluted_bert(tmp_path_factory):
    """A tiny random BERT (hidden 16, 2 layers) whose WordPiece vocabulary holds the diluted task's words."""
    import torch
    from transformers import BertConfig, BertModel

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("diluted") / "bert"
    # a fixed vocabulary (a trained one orders equal-count words differently from run to run)
    vocab = {word: i for i, word in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad"] + FILLER)}
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                           special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=64,
                                 pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def cls_vectors(folder, texts):
    import torch

    from lmcompare.models.loading import load_model, load_tokenizer

    model, tokenizer = load_model(folder), load_tokenizer(folder)
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        return model(**batch).last_hidden_state[:, 0].numpy()


@pytest.mark.unit
def test_finetuning_raises_the_cls_probe_accuracy(diluted_bert, tmp_path):
    import torch

    from lmcompare.models import finetune as finetune_model

    torch.set_num_threads(1)
    train_texts, train_y = diluted_task(160, 1)
    test_texts, test_y = diluted_task(80, 2)
    before = linear_probe(cls_vectors(diluted_bert, train_texts), train_y, cls_vectors(diluted_bert, test_texts), test_y)
    model, tokenizer, record = finetune_model.finetune(diluted_bert, train_texts, train_y, ["bad", "good"], epochs=15,
                                                       learning_rate=3e-3, batch_size=16, max_length=64, seed=0)
    assert record["steps"] == 150
    assert record["final_loss_mean_last_epoch"] < 0.2 < record["first_loss"]
    model.save_pretrained(tmp_path / "ft")
    tokenizer.save_pretrained(tmp_path / "ft")
    after = linear_probe(cls_vectors(tmp_path / "ft", train_texts), train_y, cls_vectors(tmp_path / "ft", test_texts),
                         test_y)
    print(f"probe accuracy before {before.accuracy:.3f}, after {after.accuracy:.3f}")
    assert before.accuracy < 0.9  # 0.84 with this seed: the label word is diluted among 40 fillers
    assert after.accuracy >= 0.95
    assert after.accuracy - before.accuracy >= 0.1


@pytest.mark.unit
def test_finetuning_is_seeded(diluted_bert):
    import torch

    from lmcompare.models import finetune as finetune_model

    torch.set_num_threads(1)
    texts, y = diluted_task(32, 3, length=8)
    states = [finetune_model.finetune(diluted_bert, texts, y, ["bad", "good"], epochs=1, learning_rate=1e-3,
                                      batch_size=8, max_length=32, seed=seed)[0].state_dict() for seed in (0, 0, 1)]
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
    assert not torch.equal(states[0]["classifier.weight"], states[2]["classifier.weight"])


@pytest.mark.unit
def test_finetuning_rejects_unusable_datasets(tmp_path):
    from lmcompare.models import finetune as finetune_model

    frame = pd.DataFrame({"example_id": [0, 1, 2, 3], "text": ["a", "b", "c", "d"], "split": ["train"] * 3 + ["test"],
                          "label": [None] * 4})
    frame.to_parquet(tmp_path / "unlabelled.parquet")
    with pytest.raises(WorkflowInputError, match="'corpus' has no labels"):
        finetune_model.training_examples(tmp_path / "unlabelled.parquet", "corpus")
    frame.assign(label=["x", "x", "x", "y"]).to_parquet(tmp_path / "one.parquet")
    with pytest.raises(WorkflowInputError, match="train split holds 1 class"):
        finetune_model.training_examples(tmp_path / "one.parquet", "corpus")


# ---------------------------------------------------------------------------------- the workflow
def compression_workflow_config(tiny_models, tiny_corpus, **compression_overrides):
    from tests.conftest import tiny_config

    config = tiny_config(tiny_models, tiny_corpus, models=("bert",))
    config["models"].append({"name": "tiny-bert-ft", "source": "finetune", "base": "tiny-bert", "dataset": "toy",
                             "epochs": 8, "learning_rate": 3e-3, "batch_size": 16, "max_length": 32, "seed": 0})
    config["compression"] = {"enabled": True, "n_best": 3, **compression_overrides}
    return config


@pytest.mark.workflow
def test_workflow_finetunes_extracts_and_compares(tiny_models, tiny_corpus, extracted_workdir, tmp_path):
    from tests.conftest import copy_workdir, pending_jobs, run_workflow
    from lmcompare.models.loading import load_model, load_tokenizer, read_provenance

    config = compression_workflow_config(tiny_models, tiny_corpus)
    copy_workdir(extracted_workdir, tmp_path)  # tiny-bert materialised and extracted already
    run_workflow(tmp_path, config)
    # the fine-tuned folder is a model like any other: loads offline with AutoModel, carries provenance
    folder = tmp_path / "results/models/tiny-bert-ft"
    model = load_model(folder)
    assert type(model).__name__ == "BertModel"
    assert load_tokenizer(folder).is_fast
    record = read_provenance(folder)
    assert (record["source"], record["base"], record["dataset"], record["seed"]) == ("finetune", "tiny-bert", "toy", 0)
    assert record["epochs"] == 8 and record["learning_rate"] == 3e-3
    assert record["train_accuracy"] >= 0.75  # chance: 0.5
    assert record["n_train"] + record["n_test"] == 80
    # the report's provenance row (the library function its rule calls) names the derivation
    from lmcompare.report.provenance import provenance_table

    row = provenance_table({"tiny-bert-ft": folder}).iloc[0]
    assert (row["source"], row["origin"], row["architecture"]) == ("finetune", "tiny-bert", record["architecture"])
    assert row["derivation"] == (f"base=tiny-bert; seed=0; dataset=toy; epochs=8; learning_rate=0.003; "
                                 f"train_accuracy={record['train_accuracy']}; test_accuracy={record['test_accuracy']}")
    # the recorded accuracies are the saved classification head's: reloaded from the folder, one text at a time
    # (no padding), on the dataset's labelled splits
    import torch
    from transformers import AutoModelForSequenceClassification

    from lmcompare.paths import dataset_path

    head = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = load_tokenizer(folder)
    frame = pd.read_parquet(tmp_path / dataset_path("toy"))
    labelled, classes = hidden_states.labelled_examples(frame, "toy")
    assert classes == record["classes"]
    for split in ("train", "test"):
        part = labelled[labelled["split"] == split]
        with torch.no_grad():
            predicted = [int(head(**tokenizer(text, truncation=True, max_length=record["max_length"],
                                               return_tensors="pt")).logits.argmax()) for text in part["text"]]
        assert record[f"{split}_accuracy"] == pytest.approx(float(np.mean(np.array(predicted) == part["label_code"])))
    meta = hidden_states.read_hidden_metadata(tmp_path / "results/hidden/toy/tiny-bert-ft/pooled.parquet")
    assert meta["model"] == "tiny-bert-ft" and meta["hidden_size"] == 32
    # compression outputs, pairs derived from the finetune entry
    for view in ("first_layer-1",):
        base = tmp_path / "results/analysis/compression/toy" / view
        summary = pd.read_csv(base / "summary.csv")
        assert sorted(summary["model"]) == ["tiny-bert", "tiny-bert-ft"]
        assert (summary["layer"] == 2).all() and (summary["dims"] == 32).all()
        assert summary["n"].eq(80).all()
        pairs = pd.read_csv(base / "pairs.csv")
        assert list(zip(pairs["pretrained"], pairs["finetuned"])) == [("tiny-bert", "tiny-bert-ft")]
        assert pairs["finetune_train_accuracy"].iloc[0] == pytest.approx(record["train_accuracy"])
        curve = pd.read_csv(base / "tiny-bert-ft" / "pca_curve.csv")
        assert list(curve["k"]) == [1, 2, 4, 8, 16, 32, 32]
        dims = pd.read_csv(base / "tiny-bert-ft" / "single_dims.csv")
        assert len(dims) == 32 and sorted(dims["rank"]) == list(range(1, 33))
        for name in ("accuracy_vs_k", "single_dims"):
            for suffix in ("png", "svg"):
                assert (tmp_path / f"results/figures/compression/toy/{view}/{name}.{suffix}").stat().st_size > 1000
    # the pair row joins the two models' summaries (the toy test split of ~20 examples is too small to compare them;
    # test_finetuning_raises_the_cls_probe_accuracy checks the gain on a controlled task)
    first = pd.read_csv(tmp_path / "results/analysis/compression/toy/first_layer-1/summary.csv").set_index("model")
    pair = pd.read_csv(tmp_path / "results/analysis/compression/toy/first_layer-1/pairs.csv").iloc[0]
    assert pair["full_accuracy_gain"] == pytest.approx(
        first.loc["tiny-bert-ft", "full_accuracy"] - first.loc["tiny-bert", "full_accuracy"])
    assert pair["best_dim_accuracy_pretrained"] == pytest.approx(first.loc["tiny-bert", "best_dim_accuracy"])
    assert (tmp_path / "results/logs/finetune_model/tiny-bert-ft.log").read_text().count("step ") >= 1
    assert pending_jobs(tmp_path) == []


@pytest.mark.workflow
def test_workflow_rejects_an_unlabelled_dataset(tiny_models, tiny_corpus, tmp_path):
    from tests.conftest import run_workflow

    config = compression_workflow_config(tiny_models, tiny_corpus, datasets=["plain"])
    config["datasets"].append({"name": "plain", "source": "file", "path": str(tiny_corpus[0]), "text_column": "text"})
    result = run_workflow(tmp_path / "a", config, extra=["-n"], check=False)
    assert result.returncode != 0
    assert "compression.datasets lists 'plain', which has no label_column" in result.stdout + result.stderr


@pytest.mark.unit
def test_finetuning_a_gpt2_style_model_without_pad_token(tiny_models, tiny_corpus, tmp_path):
    from lmcompare.models import finetune as finetune_model
    from lmcompare.models.loading import load_model

    _, texts, labels = tiny_corpus
    y = np.array([label == "great" for label in labels], dtype=np.int64)
    model, tokenizer, record = finetune_model.finetune(tiny_models["gpt2"], texts[:32], y[:32], ["other", "great"],
                                                       epochs=1, learning_rate=1e-3, batch_size=8, max_length=32)
    assert record["steps"] == 4
    assert model.config.pad_token_id == tokenizer.eos_token_id == tokenizer.pad_token_id
    predictions = finetune_model.predict(model, tokenizer, texts[32:40], batch_size=4, max_length=32, device="cpu")
    assert predictions.shape == (8,) and set(predictions) <= {0, 1}
    model.save_pretrained(tmp_path / "ft")
    assert type(load_model(tmp_path / "ft")).__name__ == "GPT2Model"
