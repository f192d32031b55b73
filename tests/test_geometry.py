"""Geometry stage: measures against closed forms and direct implementations, perturbed models,
and the regression. Workflow tests at the end run Snakemake on tiny models."""
from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from lmcompare import geometry as g
from lmcompare import hidden_states, paths
from lmcompare.errors import WorkflowInputError
from tests import factories


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(1234)


# ------------------------------------------------------------------------------------ spread measures
def authors_eee(points):
    """The authors' EEE: sklearn PCA, cumulative explained variance minus the uniform line, sklearn auc."""
    from sklearn.decomposition import PCA
    from sklearn.metrics import auc

    pca = PCA().fit(points)
    k = pca.n_components_
    cumulative = np.cumsum(pca.explained_variance_)
    reference = np.cumsum([cumulative[-1] / k] * k)
    return auc(range(k), cumulative - reference) / (cumulative[-1] * k / 2)


def authors_vrm(points):
    """The authors' VRM with the sampled normal's total variance replaced by its expectation d."""
    from scipy.stats import differential_entropy
    from sklearn.decomposition import PCA

    n, d = points.shape
    pca = PCA()
    projected = pca.fit_transform(points)
    projected *= np.sqrt(d / pca.explained_variance_.sum())
    r = np.exp(differential_entropy(projected, method="vasicek")) / math.sqrt(2 * math.pi * math.e)
    return np.sum((1 - r) ** 2) / d


@pytest.mark.unit
def test_isotropic_gaussian_is_isotropic(rng):
    cloud = rng.standard_normal((20000, 32))
    assert g.isoscore(cloud) == pytest.approx(1.0, abs=0.01)
    assert g.eee(cloud) == pytest.approx(0.0, abs=0.03)
    assert g.vrm(cloud) == pytest.approx(0.0, abs=0.01)


@pytest.mark.unit
def test_cloud_on_one_direction_is_anisotropic(rng):
    d = 64
    direction = rng.standard_normal(d)
    cloud = np.outer(rng.standard_normal(5000), direction) + 1e-7 * rng.standard_normal((5000, d))
    # IsoScore's minimum is 0 (one direction); EEE of an exact rank-1 cloud is ((d - 1) / d)^2 -> 1.
    assert g.isoscore(cloud) == pytest.approx(0.0, abs=1e-3)
    assert g.eee(cloud) == pytest.approx(((d - 1) / d) ** 2, abs=1e-4)
    assert g.eee(cloud) > 0.95
    assert g.vrm(cloud) > 1.0


@pytest.mark.unit
def test_spread_measures_order_graded_anisotropy(rng):
    base = rng.standard_normal((6000, 24))
    scales = [np.ones(24), np.linspace(0.5, 1.5, 24), np.geomspace(0.05, 3, 24)]
    eees = [g.eee(base * s) for s in scales]
    isos = [g.isoscore(base * s) for s in scales]
    assert eees == sorted(eees) and isos == sorted(isos, reverse=True)


@pytest.mark.unit
@pytest.mark.parametrize("shape", [(3000, 40), (30, 50)])
def test_eee_and_vrm_equal_the_authors_formulas(rng, shape):
    cloud = rng.standard_normal(shape) @ rng.standard_normal((shape[1], shape[1]))
    assert g.eee(cloud) == pytest.approx(authors_eee(cloud), rel=1e-9, abs=1e-12)
    if shape[0] > shape[1]:
        assert g.vrm(cloud) == pytest.approx(authors_vrm(cloud), rel=1e-6)


@pytest.mark.unit
def test_isoscore_is_the_pinned_package_with_samples_as_rows(rng):
    from IsoScore.IsoScore import IsoScore

    cloud = rng.standard_normal((800, 16)) * np.linspace(0.2, 2, 16)
    assert g.isoscore(cloud) == pytest.approx(float(IsoScore(cloud)), rel=1e-9)
    assert g.isoscore(cloud) != pytest.approx(float(IsoScore(cloud.T)), rel=1e-2)


# ------------------------------------------------------------------------------------ quantizer measures
def card_patchiness(codes, K):
    """The card's formula, written out: concatenated per-codebook histograms, m = Σ counts / K."""
    counts = []
    for book in range(codes.shape[1]):
        histogram, _ = np.histogram(codes[:, book], bins=K, range=(0, K))
        counts.extend(histogram.tolist())
    counts = np.array(counts, dtype=float)
    m = counts.sum() / K
    V = np.mean((counts - counts.mean()) ** 2)
    return (m + V / m - 1) / m


@pytest.mark.unit
def test_patchiness_uniform_is_lower_than_piled_and_equals_the_card(rng):
    K, M, n = 16, 4, 1600
    uniform = np.stack([np.tile(np.arange(K), n // K)] * M, axis=1)
    piled = rng.choice(3, size=(n, M))  # every point in one of 3 cells per codebook
    random = rng.integers(0, K, size=(n, M))
    values = {}
    for name, codes in (("uniform", uniform), ("piled", piled), ("random", random)):
        value = g.patchiness(g.cell_counts(codes, K), K)
        assert value == pytest.approx(card_patchiness(codes, K), rel=1e-12)
        values[name] = value
    m = M * n / K
    assert values["uniform"] == pytest.approx((m - 1) / m, rel=1e-12)  # V = 0
    assert values["uniform"] < values["random"] < values["piled"]


@pytest.mark.unit
def test_cell_count_kl_and_variance_closed_forms():
    from scipy.special import kl_div

    K = 8
    uniform = np.full((2, K), 10)
    assert g.cell_count_kl(uniform) == pytest.approx(0.0, abs=1e-15)
    assert g.cell_count_variance(uniform) == pytest.approx(0.0, abs=1e-15)  # every odds ratio is 1
    one_cell = np.zeros((1, K))
    one_cell[0, 3] = 50
    assert g.cell_count_kl(one_cell) == pytest.approx(math.log(K))
    counts = np.array([[1, 2, 3, 4, 5, 6, 7, 12], [12, 0, 3, 5, 5, 5, 5, 5]])
    p = counts / counts.sum(axis=1, keepdims=True)
    assert g.cell_count_kl(counts) == pytest.approx(np.mean(kl_div(p, 1 / K).sum(axis=1)), rel=1e-12)
    odds = p / (1 - p) * (K - 1)
    assert g.cell_count_variance(counts) == pytest.approx(np.mean(odds.var(axis=1)), rel=1e-12)


@pytest.mark.unit
def test_reconstruction_measures_direct():
    from scipy.stats import skew

    points = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0], [6.0, 8.0]])
    recon = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    out = g.reconstruction_measures(points, recon)
    errors = np.array([0.0, 1.0, 1.0, 5.0])
    assert out["recon_error_mean"] == pytest.approx((0 + 1 + 1 + 25) / (25 + 1 + 4 + 100))
    assert out["recon_error_iqr"] == pytest.approx(np.subtract(*np.percentile(errors / 5, [75, 25])))
    assert out["recon_error_skew"] == pytest.approx(skew(errors))
    assert g.reconstruction_measures(points, np.zeros_like(points))["recon_error_mean"] == pytest.approx(1.0)


@pytest.mark.unit
def test_centroid_nn_distance_variance_matches_faiss_search(rng):
    import faiss

    centroids = rng.standard_normal((3, 20, 5)).astype(np.float32)
    nearest = []
    for book in centroids:
        index = faiss.IndexFlatL2(5)
        index.add(book)
        distances, _ = index.search(book, 2)
        nearest.extend(distances[:, 1])
    nearest = np.array(nearest, dtype=float)
    assert g.centroid_nn_distance_variance(centroids) == pytest.approx(np.var(nearest / nearest.max()), rel=1e-4)


@pytest.mark.unit
@pytest.mark.parametrize("kind", g.QUANTIZERS)
@pytest.mark.parametrize("nbits", [8, 5])
def test_codes_unpack_to_the_quantizers_reconstruction(rng, kind, nbits):
    points = rng.standard_normal((1500, 16)).astype(np.float32)
    quantizer = g.train_quantizer(kind, points, 4, nbits, seed=0, lsq_train_iters=2)
    codes, recon = g.encode(quantizer, points, 4, nbits)
    assert codes.shape == (1500, 4) and codes.min() >= 0 and codes.max() < 2**nbits
    centroids = g.quantizer_centroids(quantizer)
    parts = [centroids[m][codes[:, m]] for m in range(4)]
    manual = np.concatenate(parts, axis=1) if kind == "product" else np.sum(parts, axis=0)
    np.testing.assert_allclose(manual, recon, atol=1e-5)


@pytest.mark.unit
def test_measure_cloud_rows_and_seed_determinism(rng):
    points = rng.standard_normal((700, 8)).astype(np.float32)
    kwargs = dict(M=2, nbits=4, seed=3, min_points_per_centroid=39, lsq_train_iters=2)
    rows = g.measure_cloud(points, **kwargs)
    names = [row["measure"] for row in rows]
    assert names == [f"{q}_{m}" for q in g.QUANTIZERS for m in g.QUANTIZER_MEASURES] + list(g.SPREAD_MEASURES)
    assert all(np.isfinite(row["value"]) for row in rows)
    assert [row["value"] for row in rows] == [row["value"] for row in g.measure_cloud(points, **kwargs)]


@pytest.mark.unit
def test_too_few_points_fails_naming_the_minimum_or_shrinks_with_a_log_line(caplog):
    with pytest.raises(WorkflowInputError, match=r"need at least 9984 .*small_cloud: shrink"):
        g.choose_nbits(5000, 8, 39, "fail", "geometry of model 'm' on dataset 'd'")
    with caplog.at_level(logging.WARNING, logger="workflow"):
        assert g.choose_nbits(5000, 8, 39, "shrink", "cloud") == 7  # 39 * 128 = 4992 <= 5000
    assert "2^7 = 128 centroids" in caplog.text
    assert g.choose_nbits(9984, 8, 39, "fail", "cloud") == 8
    with pytest.raises(WorkflowInputError, match="too few for any codebook"):
        g.choose_nbits(50, 8, 39, "shrink", "cloud")


# ------------------------------------------------------------------------------------ token cloud I/O
def write_tokens(path, layers, n_examples=30, hidden=6, rows_per_group=17, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 9, n_examples)
    example_id = np.repeat(np.arange(n_examples), lengths)
    position = np.concatenate([np.arange(n) for n in lengths])
    n = len(example_id)
    vectors = {layer: rng.standard_normal((n, hidden)).astype(np.float32) for layer in layers}
    rows = {"example_id": example_id, "split": ["train"] * n, "position": position, "is_special": position == 0}
    factories.write_tokens(path, vectors, rows, model="toy", dataset="d", n_layers=4, row_group_size=rows_per_group)
    return vectors


@pytest.mark.unit
def test_read_token_cloud_streams_a_seeded_subsample(tmp_path):
    path = tmp_path / "tokens.parquet"
    vectors = write_tokens(path, [3])
    n = len(vectors[3])
    points, n_total, layer, _ = g.read_token_cloud(path, -1, 40, seed=7)
    assert (n_total, layer, points.shape) == (n, 3, (40, 6))
    np.testing.assert_array_equal(points, vectors[3][g.subsample_indices(n, 40, 7)])
    everything, _, _, _ = g.read_token_cloud(path, 3, None, seed=7)
    np.testing.assert_array_equal(everything, vectors[3])
    assert len(set(g.subsample_indices(n, 40, 7))) == 40
    assert not np.array_equal(g.subsample_indices(n, 40, 7), g.subsample_indices(n, 40, 8))


@pytest.mark.unit
def test_read_token_cloud_names_a_missing_layer(tmp_path):
    path = tmp_path / "tokens.parquet"
    write_tokens(path, [3])
    with pytest.raises(WorkflowInputError, match=r"extraction.token_layers"):
        g.read_token_cloud(path, 1, None, seed=0)


# ------------------------------------------------------------------------------------ scores and regression
@pytest.mark.unit
def test_probe_score_is_the_shared_probe(tmp_path, rng):
    from lmcompare.probe import linear_probe

    n, hidden = 120, 5
    labels = rng.choice(["neg", "pos"], n)
    x = rng.standard_normal((n, hidden)).astype(np.float32) + (labels == "pos")[:, None] * 1.5
    split = np.where(np.arange(n) < 80, "train", "test")
    factories.write_pooled(tmp_path / "pooled.parquet", {1: x}, labels, split, first=np.negative, model="toy",
                           dataset="d", row_group_size=50)
    row = g.probe_score(tmp_path / "pooled.parquet", layer=-1, pooling="mean", seed=0, dataset="d", protocol="split")
    y = (labels == "pos").astype(int)
    expected = linear_probe(x[:80], y[:80], x[80:], y[80:], seed=0)
    assert row["score"] == expected.accuracy and row["n_test"] == 40 and row["layer"] == 1
    assert row["score"] > 0.75


@pytest.mark.unit
def test_fit_line_matches_numpy_and_refuses_small_or_constant_inputs():
    x = np.array([0.1, 0.4, 0.35, 0.8, 0.9])
    y = np.array([0.9, 0.7, 0.75, 0.4, 0.3])
    fit = g.fit_line(x, y)
    slope, intercept = np.polyfit(x, y, 1)
    r = np.corrcoef(x, y)[0, 1]
    assert fit["slope"] == pytest.approx(slope) and fit["intercept"] == pytest.approx(intercept)
    assert fit["pearson_r"] == pytest.approx(r) and fit["r2"] == pytest.approx(r * r) and fit["n"] == 5
    small = g.fit_line(x[:2], y[:2])
    assert math.isnan(small["r2"]) and "fewer than 3 models" in small["note"] and small["n"] == 2
    assert "constant" in g.fit_line(np.ones(4), np.arange(4.0))["note"]
    assert g.fit_line(np.array([1, 2, np.nan, 4.0]), np.array([1, 2, 3, 5.0]))["n"] == 3


@pytest.mark.unit
def test_regression_table_sorted_by_r2_with_unfit_rows_last():
    models = ["a", "b", "c", "d"]
    score = np.array([0.5, 0.6, 0.7, 0.8])
    measures = pd.DataFrame(
        [dict(model=m, measure="exact", value=2 * s) for m, s in zip(models, score)]
        + [dict(model=m, measure="noisy", value=v) for m, v in zip(models, [1.0, 0.0, 3.0, 2.0])]
        + [dict(model=m, measure="flat", value=1.0) for m in models]
    )
    scores = pd.DataFrame({"model": models, "score": score})
    table = g.regression_table(measures, scores, dataset="d", score_name="acc")
    assert list(table["measure"]) == ["exact", "noisy", "flat"]
    assert table.loc[0, "r2"] == pytest.approx(1.0) and table.loc[0, "slope"] == pytest.approx(0.5)
    assert math.isnan(table.loc[2, "r2"]) and "constant" in table.loc[2, "note"]
    two = g.regression_table(measures, scores.iloc[:2], dataset="d", score_name="acc")
    assert two["r2"].isna().all() and two["note"].str.contains("fewer than 3 models").all()


@pytest.mark.unit
def test_score_table_checks_columns_and_skips_unscored_models(tmp_path):
    path = tmp_path / "scores.csv"
    pd.DataFrame({"model": ["a", "b", "zz"], "score": [0.7, None, 0.1]}).to_csv(path, index=False)
    frame = g.read_score_table(path, ["a", "b", "c"])
    assert frame.to_dict("records") == [{"model": "a", "score": 0.7}]
    pd.DataFrame({"name": ["a"], "glue": [1.0]}).to_csv(path, index=False)
    with pytest.raises(WorkflowInputError, match=r"lacks the column\(s\) \['model', 'score'\]"):
        g.read_score_table(path, ["a"])


# ------------------------------------------------------------------------------------ perturbed models
def tiny_bert(seed=0):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=32)
    return BertModel(config).eval()


@pytest.mark.unit
def test_perturbed_tensors_are_the_encoder_weights():
    from lmcompare.models.perturb import perturbed_parameter_names

    model = tiny_bert()
    names = perturbed_parameter_names(model)
    expected = [n for n, _ in model.named_parameters() if n.startswith("encoder.") and n.endswith("weight")]
    assert names == expected and len(names) == 2 * 8  # q, k, v, attn out, attn LN, intermediate, out, out LN
    with_biases = perturbed_parameter_names(model, "encoder_parameters")
    assert set(with_biases) == {n for n, _ in model.named_parameters() if n.startswith("encoder.")}


@pytest.mark.unit
def test_perturbation_alpha_zero_is_exact_and_alpha_one_replaces(tmp_path):
    import torch

    from lmcompare.models.perturb import perturb_

    base = tiny_bert()
    ids = torch.tensor([[1, 5, 7, 9, 2], [1, 4, 4, 2, 0]])
    with torch.no_grad():
        reference = base(input_ids=ids, output_hidden_states=True).hidden_states
    state = {k: v.clone() for k, v in base.state_dict().items()}

    same = tiny_bert()
    names = perturb_(same, 0.0, seed=5)
    with torch.no_grad():
        hidden = same(input_ids=ids, output_hidden_states=True).hidden_states
    for a, b in zip(reference, hidden):
        assert torch.equal(a, b)

    noisy = tiny_bert()
    perturb_(noisy, 1.0, seed=5)
    weights = noisy.state_dict()
    for name, value in weights.items():
        if name in names:
            assert not torch.equal(value, state[name])
        else:
            assert torch.equal(value, state[name]), name
    noise = torch.cat([weights[n].flatten() for n in names])
    assert abs(noise.mean().item()) < 0.05 and noise.std().item() == pytest.approx(1.0, abs=0.05)  # ~3.6k values
    # a = 1 is pure noise: the result no longer depends on the base weights, only on the seed
    other_base = tiny_bert(seed=99)
    perturb_(other_base, 1.0, seed=5)
    assert all(torch.equal(other_base.state_dict()[n], weights[n]) for n in names)
    reseeded = tiny_bert()
    perturb_(reseeded, 1.0, seed=6)
    assert not torch.equal(reseeded.state_dict()[names[0]], weights[names[0]])

    half = tiny_bert()
    perturb_(half, 0.25, seed=5)
    expected = 0.75 * state[names[0]] + 0.25 * (weights[names[0]])
    assert torch.allclose(half.state_dict()[names[0]], expected, atol=1e-6)


@pytest.mark.unit
def test_gpt2_like_models_use_their_layer_stack():
    from transformers import GPT2Config, GPT2Model

    from lmcompare.models.perturb import perturbed_parameter_names

    model = GPT2Model(GPT2Config(vocab_size=40, n_positions=16, n_embd=8, n_layer=2, n_head=2))
    names = perturbed_parameter_names(model)
    assert names and all(n.startswith("h.") and n.endswith("weight") for n in names)
    assert "wte.weight" not in names and "ln_f.weight" not in names


def save_tiny_bert_folder(folder):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    model = tiny_bert()
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=50, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer.train_from_iterator(["the cat sat on the mat", "a dog ran far away", "models read text"], trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")),
                                                 ("[SEP]", tokenizer.token_to_id("[SEP]"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return model, fast


@pytest.mark.unit
def test_perturb_model_folder_loads_offline_with_provenance(tmp_path):
    import torch

    from lmcompare.models import loading as model_loading
    from lmcompare.models.perturb import perturb_model_folder

    base_dir = tmp_path / "base"
    base, tokenizer = save_tiny_bert_folder(base_dir)
    out = tmp_path / "models" / "tiny-a0"
    record = perturb_model_folder(base_dir, out, alpha=0.0, seed=1, base_name="tiny")
    assert record["alpha"] == 0.0 and record["base"] == "tiny" and record["source"] == "perturb"
    assert record["perturbed_tensors"][0].startswith("encoder.layer.0.")
    assert model_loading.read_provenance(out)["weights_sha256"] == model_loading.weights_sha256(out)
    loaded = model_loading.load_model(out)
    batch = model_loading.load_tokenizer(out)(["the cat sat", "a dog"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).last_hidden_state, base(**batch).last_hidden_state)
    assert not list(out.parent.glob(".*tmp*"))

    out1 = tmp_path / "models" / "tiny-a1"
    perturb_model_folder(base_dir, out1, alpha=1.0, seed=1, base_name="tiny")
    with torch.no_grad():
        assert not torch.allclose(model_loading.load_model(out1)(**batch).last_hidden_state,
                                  base(**batch).last_hidden_state)


# ------------------------------------------------------------------------------------ workflow, end to end
GEOMETRY_TEST_SECTION = {
    "enabled": True,
    "max_points": None,
    "quantizer": {"M": 4, "nbits": 8, "small_cloud": "shrink", "lsq_train_iters": 3},
    "regression": {"top_k": 2},
}


def geometry_config(tiny_models, tiny_corpus, **geometry):
    from tests.conftest import tiny_config

    config = tiny_config(tiny_models, tiny_corpus, models=("bert",), geometry={**GEOMETRY_TEST_SECTION, **geometry})
    config["models"] += [
        {"name": "tiny-bert-a0", "source": "perturb", "base": "tiny-bert", "alpha": 0.0, "seed": 1},
        {"name": "tiny-bert-a1", "source": "perturb", "base": "tiny-bert", "alpha": 1.0, "seed": 1},
    ]
    return config


@pytest.fixture(scope="module")
def geometry_run(tmp_path_factory, tiny_models, tiny_corpus, extracted_workdir):
    """tiny-bert and two perturbed copies, on a copy of the session's extracted workdir (which holds tiny-bert's)."""
    from tests.conftest import copy_workdir, run_workflow

    workdir = copy_workdir(extracted_workdir, tmp_path_factory.mktemp("geometry"))
    config = geometry_config(tiny_models, tiny_corpus)
    run_workflow(workdir, config)
    return workdir, config


@pytest.mark.workflow
def test_workflow_perturbed_models_are_models(geometry_run):
    from lmcompare.models.loading import read_provenance

    workdir, _ = geometry_run
    provenance = read_provenance(workdir / paths.model_dir("tiny-bert-a1"))
    assert provenance["source"] == "perturb" and provenance["base"] == "tiny-bert" and provenance["alpha"] == 1.0
    assert provenance["perturbed_tensors"] and all(n.startswith("encoder.") for n in provenance["perturbed_tensors"])
    base = pq.read_table(workdir / paths.tokens_path("toy", "tiny-bert"))
    same = pq.read_table(workdir / paths.tokens_path("toy", "tiny-bert-a0"))
    noisy = pq.read_table(workdir / paths.tokens_path("toy", "tiny-bert-a1"))
    column = hidden_states.token_column(2)
    np.testing.assert_array_equal(hidden_states.vectors(same, column), hidden_states.vectors(base, column))  # a = 0: exact
    assert not np.allclose(hidden_states.vectors(noisy, column), hidden_states.vectors(base, column))
    log = (workdir / "results/logs/perturb_model/tiny-bert-a1.log").read_text()
    assert "perturbed 16 tensors" in log and "done in" in log


@pytest.mark.workflow
def test_workflow_provenance_rows_of_perturbed_models_name_their_derivation(geometry_run):
    """The report's provenance table (the library function its rule calls) on this run's model folders: a perturbed
    model's row names its base, alpha and seed, and its hash is the hash of the folder's weights."""
    from lmcompare.models.loading import weights_sha256
    from lmcompare.report.provenance import provenance_table

    workdir, config = geometry_run
    folders = {entry["name"]: workdir / paths.model_dir(entry["name"]) for entry in config["models"]}
    table = provenance_table(folders).set_index("model")
    assert list(table.index) == [entry["name"] for entry in config["models"]]
    assert table.loc["tiny-bert-a1", "derivation"] == "base=tiny-bert; alpha=1.0; seed=1"
    assert table.loc["tiny-bert-a0", "derivation"] == "base=tiny-bert; alpha=0.0; seed=1"
    assert table.loc["tiny-bert-a1", "source"] == "perturb" and table.loc["tiny-bert-a1", "origin"] == "tiny-bert"
    assert table.loc["tiny-bert", "derivation"] == "" and table.loc["tiny-bert", "source"] == "local"
    for name, folder in folders.items():
        assert table.loc[name, "weights_sha256"] == weights_sha256(folder), name
    # alpha = 0 leaves the weights as they were: the same hash as the base's
    assert table.loc["tiny-bert-a0", "weights_sha256"] == table.loc["tiny-bert", "weights_sha256"]
    assert table.loc["tiny-bert-a1", "weights_sha256"] != table.loc["tiny-bert", "weights_sha256"]


def independent_fits(measures: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """The regression table recomputed with numpy's polyfit and corrcoef and scipy's pearsonr (not linregress,
    which the implementation uses): constant columns unfit, sorted by R² then measure, unfit rows last."""
    from scipy.stats import pearsonr

    wide = measures.pivot_table(index="model", columns="measure", values="value")
    score = scores.set_index("model")["score"].loc[wide.index].to_numpy(dtype=float)
    rows = []
    for measure in wide.columns:
        x = wide[measure].to_numpy(dtype=float)
        if np.ptp(x) == 0 or np.ptp(score) == 0:
            rows.append(dict(measure=measure, n=len(x), slope=np.nan, intercept=np.nan, pearson_r=np.nan,
                             r2=np.nan, p_value=np.nan))
            continue
        slope, intercept = np.polyfit(x, score, 1)
        r = np.corrcoef(x, score)[0, 1]
        rows.append(dict(measure=measure, n=len(x), slope=slope, intercept=intercept, pearson_r=r, r2=r * r,
                         p_value=pearsonr(x, score).pvalue))
    table = pd.DataFrame(rows)
    fitted = table.dropna(subset=["r2"]).sort_values(["r2", "measure"], ascending=[False, True])
    unfit = table[table["r2"].isna()].sort_values("measure")
    return pd.concat([fitted, unfit]).reset_index(drop=True)


@pytest.mark.workflow
def test_workflow_measures_scores_regression_and_figures(geometry_run):
    workdir, config = geometry_run
    out = workdir / "results/analysis/geometry/toy"
    measures = pd.read_csv(out / "measures.csv")
    models = [m["name"] for m in config["models"]]
    assert sorted(measures["model"].unique()) == sorted(models)
    assert len(measures) == len(models) * (2 * len(g.QUANTIZER_MEASURES) + len(g.SPREAD_MEASURES))
    assert measures.groupby("model")["measure"].nunique().eq(17).all()
    tokens = pq.read_metadata(workdir / paths.tokens_path("toy", "tiny-bert")).num_rows
    bert = measures[measures["model"] == "tiny-bert"]
    assert (bert["n"] == tokens).all() and (bert["dims"] == 32).all() and (bert["layer"] == 2).all()
    quantized = measures[measures["quantizer"] != "none"]
    assert (quantized["nbits"] < 8).all()  # shrunk: ~1,200 tokens cannot train 256 centroids
    assert "training smaller codebooks" in (workdir / "results/logs/geometry/measures/toy/tiny-bert.log").read_text()
    # the measures of a = 0 equal the base model's (same cloud, same seeds)
    wide = measures.pivot_table(index="measure", columns="model", values="value")
    np.testing.assert_allclose(wide["tiny-bert-a0"], wide["tiny-bert"], rtol=1e-6)
    scores = pd.read_csv(out / "scores.csv")
    assert sorted(scores["model"]) == sorted(models)
    # each score is the cross-validated shared probe (against scikit-learn in test_geometry_stats.py) on the model's
    # last-layer mean-pooled vectors of every labelled example, as the public reader gives them
    for row in scores.itertuples():
        data = hidden_states.load_hidden_states(workdir / paths.pooled_path("toy", row.model)).labelled_layer(-1, "mean")
        expected = g.cv_probe_accuracy(data.x, data.y, folds=5, seed=0)
        assert row.score == expected["score"] and row.n_test == expected["n"] == len(data.y), row
    assert scores.set_index("model").loc["tiny-bert-a0", "score"] == scores.set_index("model").loc["tiny-bert", "score"]
    # probe accuracies on 21 test examples can tie (they differ by one example or not at all, depending on the
    # CPU's float rounding), so the file is checked against the fit recomputed from the two tables; the fits
    # themselves on distinct scores are the next test's
    regression = pd.read_csv(out / "regression.csv")
    assert len(regression) == 17 and (regression["n"] == 3).all()
    # compared measure by measure: with tied scores every R² is 1 up to rounding, so the file's order among
    # near-ties is rounding noise; the order is checked as sorted by R² (to 1e-9), unfit rows last
    expected = independent_fits(measures, scores).set_index("measure")
    got = regression.set_index("measure")
    assert sorted(got.index) == sorted(expected.index)
    for column in ("n", "slope", "intercept", "pearson_r", "r2"):
        np.testing.assert_allclose(got[column], expected.loc[got.index, column], rtol=1e-6, atol=1e-12,
                                   equal_nan=True)
    # at |r| = 1 up to rounding (n = 3, one degree of freedom) the p-value is rounding too: scipy's pearsonr
    # clips it to 0, linregress gives ~1e-10..1e-8
    np.testing.assert_allclose(got["p_value"], expected.loc[got.index, "p_value"], rtol=1e-6, atol=1e-7,
                               equal_nan=True)
    r2 = regression["r2"].to_numpy()
    fitted = np.isfinite(r2)
    assert np.all(np.diff(r2[fitted]) <= 1e-9)
    assert list(fitted) == sorted(fitted, reverse=True)  # unfit rows last
    notes = [note if isinstance(note, str) else "" for note in regression["note"]]
    assert [bool(note) for note in notes] == list(~fitted)
    figures = workdir / "results/figures/geometry/toy"
    for name in ("r2_by_measure", "scatter_top1", "scatter_top2"):
        assert (figures / f"{name}.png").stat().st_size > 1000 and (figures / f"{name}.svg").exists()


@pytest.mark.workflow
def test_workflow_regression_on_a_score_table_fits_every_varying_measure(geometry_run, tmp_path):
    import shutil

    from tests.conftest import run_workflow

    workdir, config = geometry_run
    scratch = tmp_path / "table"
    shutil.copytree(workdir, scratch, symlinks=True)
    score_table = tmp_path / "glue.csv"
    glue = {"tiny-bert": 0.80, "tiny-bert-a0": 0.78, "tiny-bert-a1": 0.41}
    pd.DataFrame({"model": list(glue), "score": list(glue.values())}).to_csv(score_table, index=False)
    scored = dict(config, geometry={**config["geometry"], "score": {"source": "table", "table": str(score_table),
                                                                     "name": "GLUE average"}})
    result = run_workflow(scratch, scored)
    assert "rule geometry_measures" not in result.stdout + result.stderr  # cached per (dataset, model)
    out = scratch / "results/analysis/geometry/toy"
    measures = pd.read_csv(out / "measures.csv")
    regression = pd.read_csv(out / "regression.csv")
    assert len(regression) == 17 and (regression["n"] == 3).all() and (regression["score_name"] == "GLUE average").all()
    wide = measures.pivot_table(index="model", columns="measure", values="value").loc[list(glue)]
    varying = [m for m in wide.columns if np.ptp(wide[m].to_numpy()) > 0]
    fitted = regression.dropna(subset=["r2"])
    assert sorted(fitted["measure"]) == sorted(varying) and len(varying) >= 10
    assert np.all(np.diff(fitted["r2"].to_numpy()) <= 0) and list(regression["measure"][: len(fitted)]) == list(fitted["measure"])
    for row in fitted.itertuples():
        slope, intercept = np.polyfit(wide[row.measure].to_numpy(), list(glue.values()), 1)
        assert row.slope == pytest.approx(slope, rel=1e-6) and row.intercept == pytest.approx(intercept, rel=1e-6, abs=1e-9)
    figures = scratch / "results/figures/geometry/toy"
    for name in ("r2_by_measure", "scatter_top1", "scatter_top2"):
        assert (figures / f"{name}.png").stat().st_size > 1000


@pytest.mark.workflow
def test_workflow_fewer_than_three_models_says_so(geometry_run, tiny_models, tiny_corpus, tmp_path):
    import shutil

    from tests.conftest import run_workflow

    workdir, config = geometry_run
    scratch = tmp_path / "two"
    shutil.copytree(workdir, scratch, symlinks=True)
    small = dict(config, models=config["models"][:2])
    score_table = tmp_path / "glue.csv"
    pd.DataFrame({"model": ["tiny-bert", "tiny-bert-a0"], "score": [0.8, 0.7]}).to_csv(score_table, index=False)
    small["geometry"] = {**config["geometry"], "score": {"source": "table", "table": str(score_table),
                                                         "name": "GLUE average"}}
    result = run_workflow(scratch, small)
    assert "rule geometry_measures" not in result.stdout + result.stderr  # cached per (dataset, model)
    regression = pd.read_csv(scratch / "results/analysis/geometry/toy/regression.csv")
    assert regression["r2"].isna().all() and (regression["n"] == 2).all()
    assert regression["note"].str.contains("fewer than 3 models").all()
    assert (regression["score_name"] == "GLUE average").all()


@pytest.mark.workflow
def test_workflow_bad_quantizer_input_names_the_minimum(geometry_run, tmp_path):
    import shutil

    from tests.conftest import run_workflow

    workdir, config = geometry_run
    scratch = tmp_path / "fail"
    shutil.copytree(workdir, scratch, symlinks=True)
    strict = dict(config, models=config["models"][:1])
    strict["geometry"] = {**config["geometry"], "quantizer": {**config["geometry"]["quantizer"], "small_cloud": "fail"}}
    result = run_workflow(scratch, strict, check=False)
    assert result.returncode != 0
    log = (scratch / "results/logs/geometry/measures/toy/tiny-bert.log").read_text()
    assert "need at least 9984" in log and "small_cloud: shrink" in log
    assert not (scratch / "results/analysis/geometry/toy/measures/tiny-bert.csv").exists()
