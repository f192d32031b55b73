"""Geometry, issue 13 items 3-4: every perturbed model its own noise (seeds per model, the geometry-only family),
the cross-validated probe score, and the statistics of the regression (bootstrap interval of r over models,
permutation p value, Holm correction) against independent references: scipy.stats.permutation_test and
scipy.stats.bootstrap, closed forms, a hand-computed Holm example, scikit-learn's cross_val_predict."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd
import pytest

from lmcompare import geometry as g
from lmcompare.models.perturb import (derived_seed, family_entries, model_seed, perturb_,
                                            perturbed_parameter_names)
from lmcompare.errors import WorkflowInputError
from tests import factories

pytestmark = pytest.mark.unit


# ------------------------------------------------------------------------------------ seeds and noise
def tiny_bert():
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=32)
    return BertModel(config).eval()


def noise_of(alpha: float, seed: int):
    """The noise tensor N (all perturbed tensors, flattened) of one perturbed copy: N = (W' - (1 - a) W) / a."""
    import torch

    base = tiny_bert()
    names = perturbed_parameter_names(base)
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    perturb_(base, alpha, seed)
    after = dict(base.named_parameters())
    return torch.cat([((after[n].detach() - (1 - alpha) * before[n]) / alpha).flatten() for n in names]).double()


def cosine(a, b) -> float:
    return float((a @ b) / (a.norm() * b.norm()))


def test_perturbed_models_with_different_seeds_draw_orthogonal_noise_and_the_same_seed_the_same():
    # seeds as the workflow gives them: derived from the model names when the entries have none
    seed_a, source_a = model_seed("minilm-p0.02", None)
    seed_b, _ = model_seed("minilm-p0.05", None)
    assert source_a == "derived from the model name" and seed_a != seed_b
    a, b = noise_of(0.02, seed_a), noise_of(0.05, seed_b)
    n = len(a)  # ~3.6k values: the cosine of independent N(0, 1) vectors has sd 1/sqrt(n) ~ 0.017
    assert abs(cosine(a, b)) < 5 / math.sqrt(n)
    assert cosine(noise_of(0.02, seed_a), noise_of(0.1, seed_a)) == pytest.approx(1.0, abs=1e-6)  # same seed
    # the configuration the issue found: one explicit seed for every alpha, one line in weight space
    assert cosine(noise_of(0.02, 0), noise_of(0.05, 0)) == pytest.approx(1.0, abs=1e-6)


def test_derived_seed_is_sha256_of_the_name_and_an_explicit_seed_wins():
    name = "minilm-p0.1"
    expected = int(hashlib.sha256(b"perturb:minilm-p0.1").hexdigest()[:8], 16)
    assert derived_seed(name) == expected and 0 <= expected < 2**32
    assert model_seed(name, None) == (expected, "derived from the model name")
    assert model_seed(name, 0) == (0, "config") and model_seed(name, 7) == (7, "config")
    assert len({derived_seed(f"minilm-p0.05-r{i}") for i in range(1, 50)}) == 49


def test_family_entries_names_seeds_and_errors():
    models = {"minilm": {"name": "minilm"}, "minilm-p0.05": {"name": "minilm-p0.05"}}
    entries = family_entries({"base": "minilm", "alphas": [0.02, 0.1], "replicates": 2}, models)
    assert [e["name"] for e in entries] == ["minilm-p0.02-r1", "minilm-p0.02-r2", "minilm-p0.1-r1", "minilm-p0.1-r2"]
    assert all(e["source"] == "perturb" and e["base"] == "minilm" and e["seed"] is None for e in entries)
    assert [e["alpha"] for e in entries] == [0.02, 0.02, 0.1, 0.1]
    assert family_entries({"base": None, "alphas": [0.1], "replicates": 2}, models) == []
    assert family_entries({"base": "minilm", "alphas": [], "replicates": 2}, models) == []
    with pytest.raises(WorkflowInputError, match="geometry.family.base 'bert' is not a configured model"):
        family_entries({"base": "bert", "alphas": [0.1], "replicates": 1}, models)
    clash = {**models, "minilm-p0.1-r1": {"name": "minilm-p0.1-r1"}}
    with pytest.raises(WorkflowInputError, match="'minilm-p0.1-r1' has the name of a configured model"):
        family_entries({"base": "minilm", "alphas": [0.1], "replicates": 1}, clash)
    with pytest.raises(WorkflowInputError, match="lists a value twice"):
        family_entries({"base": "minilm", "alphas": [0.1, 0.1], "replicates": 1}, models)


# ------------------------------------------------------------------------------------ permutation p value
def scipy_exact_p(x, y):
    from scipy import stats

    return stats.permutation_test((y,), lambda yy: abs(stats.pearsonr(x, yy).statistic), permutation_type="pairings",
                                  alternative="greater", n_resamples=np.inf).pvalue


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_permutation_p_equals_scipy_permutation_test(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(6)
    y = 0.8 * x + rng.standard_normal(6)
    result = g.permutation_p_value(x, y, n_permutations=9999)
    assert result["exact"] and result["permutations"] == 720
    assert result["p"] == pytest.approx(scipy_exact_p(x, y), abs=1e-12)
    assert result["r"] == pytest.approx(abs(np.corrcoef(x, y)[0, 1]), rel=1e-12)


def test_permutation_p_closed_forms():
    # x = y = 1..n: only the identity and the reversal reach |r| = 1, so p = 2 / n!
    x = np.arange(5.0)
    assert g.permutation_p_value(x, x)["p"] == pytest.approx(2 / math.factorial(5), rel=1e-12)
    # n = 3, three distinct |r| values at most: every pairing's |r| >= the smallest one, p = 1
    x3, y3 = np.array([0.0, 1.0, 3.0]), np.array([2.0, 0.0, 1.0])
    null = [abs(np.corrcoef(x3, y3[list(p)])[0, 1]) for p in __import__("itertools").permutations(range(3))]
    observed = abs(np.corrcoef(x3, y3)[0, 1])
    assert g.permutation_p_value(x3, y3)["p"] == pytest.approx(np.mean(np.array(null) >= observed - 1e-12))


def test_random_permutation_p_agrees_with_scipy_within_monte_carlo_error():
    from scipy import stats

    rng = np.random.default_rng(5)
    x = rng.standard_normal(12)
    y = 0.4 * x + rng.standard_normal(12)
    ours = g.permutation_p_value(x, y, n_permutations=9999, seed=3)
    assert not ours["exact"] and ours["permutations"] == 9999  # 12! > 9999
    reference = stats.permutation_test(
        (y,), lambda yy, axis=-1: np.abs(g.rowwise_pearson(np.broadcast_to(x, yy.shape), yy)), vectorized=True,
        permutation_type="pairings", alternative="greater", n_resamples=9999, rng=11).pvalue
    p = reference
    assert ours["p"] == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / 9999) * math.sqrt(2) + 1e-4)
    # and against the t test of r (a different, parametric reference) for normal data at this n
    assert ours["p"] == pytest.approx(stats.pearsonr(x, y).pvalue, abs=0.03)


# ------------------------------------------------------------------------------------ bootstrap interval
def test_bootstrap_interval_agrees_with_scipy_bootstrap_percentile():
    from scipy import stats

    rng = np.random.default_rng(7)
    x = rng.standard_normal(30)
    y = 0.5 * x + rng.standard_normal(30)
    ours = g.bootstrap_r_interval(x, y, n_resamples=20000, confidence=0.9, seed=1)
    reference = stats.bootstrap((x, y), lambda a, b, axis=-1: g.rowwise_pearson(a, b), paired=True, vectorized=True,
                                method="percentile", confidence_level=0.9, n_resamples=20000, rng=2).confidence_interval
    assert ours["low"] == pytest.approx(reference.low, abs=0.02)
    assert ours["high"] == pytest.approx(reference.high, abs=0.02)
    assert ours["n_used"] == 20000 and ours["low"] < np.corrcoef(x, y)[0, 1] < ours["high"]


def test_bootstrap_leaves_out_resamples_with_a_constant_measure():
    x = np.array([0.1, 0.5, 0.9])
    y = np.array([0.2, 0.1, 0.7])
    result = g.bootstrap_r_interval(x, y, n_resamples=3000, seed=4)
    index = g.bootstrap_indices(3, 3000, 4)
    assert result["n_used"] == int(np.sum(np.ptp(index, axis=1) > 0))  # all-equal rows: r undefined
    assert 3000 * 8 / 9 * 0.95 < result["n_used"] < 3000 * 8 / 9 * 1.05  # P(all three the same) = 3/27
    assert -1 <= result["low"] <= result["high"] <= 1
    perfect = g.bootstrap_r_interval(np.arange(6.0), 2 * np.arange(6.0) + 1, n_resamples=500)
    assert perfect["low"] == pytest.approx(1.0) and perfect["high"] == pytest.approx(1.0)


def test_rowwise_pearson_equals_numpy_and_marks_constant_rows():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 9)), rng.standard_normal((4, 9))
    a[2] = 3.0
    r = g.rowwise_pearson(a, b)
    for i in (0, 1, 3):
        assert r[i] == pytest.approx(np.corrcoef(a[i], b[i])[0, 1], rel=1e-12)
    assert np.isnan(r[2])


# ------------------------------------------------------------------------------------ Holm
def test_holm_hand_computed_example():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> max(0.06, 0.04) = 0.06
    adjusted = g.holm_adjust([0.01, 0.04, 0.03, 0.005, np.nan])
    np.testing.assert_allclose(adjusted[:4], [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    assert np.isnan(adjusted[4])
    np.testing.assert_allclose(g.holm_adjust([0.5, 0.4, 0.9]), [1.0, 1.0, 1.0])  # capped at 1
    p = np.random.default_rng(2).uniform(0, 0.2, 17)
    holm = g.holm_adjust(p)
    assert np.all(holm >= p) and np.all(holm <= np.minimum(1, 17 * p) + 1e-15)  # between raw and Bonferroni
    assert np.all(np.isnan(g.holm_adjust([np.nan, np.nan])))


# ------------------------------------------------------------------------------------ the regression table
def test_regression_table_carries_intervals_permutation_and_holm():
    rng = np.random.default_rng(3)
    models = [f"m{i}" for i in range(7)]
    score = np.linspace(0.6, 0.8, 7)
    values = {"tracks": score * 3 + rng.normal(0, 0.01, 7), "noise": rng.standard_normal(7),
              "flat": np.ones(7)}
    measures = pd.DataFrame([dict(model=m, measure=k, value=v[i]) for k, v in values.items()
                             for i, m in enumerate(models)])
    table = g.regression_table(measures, pd.DataFrame({"model": models, "score": score}), dataset="d",
                               score_name="acc", bootstrap=500, permutations=9999, seed=0)
    assert list(table.columns) == g.REGRESSION_COLUMNS
    rows = table.set_index("measure")
    tracks = rows.loc["tracks"]
    assert tracks["permutations"] == "exact 5040"  # 7! <= 9999: every pairing
    assert tracks["p_permutation"] == pytest.approx(2 / 5040, abs=2 / 5040)  # near-perfect order: tiny p
    assert tracks["r_ci_low"] <= tracks["pearson_r"] <= tracks["r_ci_high"] and tracks["r_ci_low"] > 0.9
    fitted = table.dropna(subset=["r2"])
    np.testing.assert_allclose(fitted["p_holm"], g.holm_adjust(fitted["p_permutation"].to_numpy()))
    flat = rows.loc["flat"]
    assert np.isnan(flat["p_holm"]) and np.isnan(flat["r_ci_low"]) and flat["permutations"] == ""
    fig = g.r2_figure(table, dataset="d", score_name="acc")  # the figure draws intervals and the unfit row
    assert len(fig.axes[0].lines) >= 2 * len(fitted)


# ------------------------------------------------------------------------------------ cross-validated score
def sklearn_nested_cv_accuracy(x, y, folds, seed):
    """The probe protocol composed from scikit-learn: standardise on the outer train part, choose C by 3-fold
    stratified CV there (GridSearchCV, first best on ties), predict the outer fold; cross_val_predict."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from lmcompare.probe import C_GRID

    inner = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    probe = make_pipeline(StandardScaler(), GridSearchCV(LogisticRegression(max_iter=1000), {"C": list(C_GRID)},
                                                         cv=inner))
    outer = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with threadpool_limits(limits=1):  # tiny fits: one BLAS thread is several times cheaper
        return float(np.mean(cross_val_predict(probe, x, y, cv=outer) == y))


def test_cv_probe_accuracy_equals_scikit_learn_nested_cross_validation():
    rng = np.random.default_rng(11)
    y = np.repeat([0, 1, 2], 30)
    x = rng.standard_normal((90, 4)) + 0.7 * np.eye(3, 4)[y]
    result = g.cv_probe_accuracy(x, y, folds=5, seed=0)
    assert result["score"] == pytest.approx(sklearn_nested_cv_accuracy(x, y, 5, 0), abs=1e-12)
    assert result["n"] == 90 and result["folds"] == 5 and len(result["C"].split(";")) == 5
    assert result["ci_low"] < result["score"] < result["ci_high"]
    small = np.r_[0:6, 30:33]  # classes 0 (6 examples) and 1 (3): at most 3 stratified folds
    assert g.cv_probe_accuracy(x[small], y[small], folds=5)["folds"] == 3


def test_probe_score_cv_uses_every_labelled_example(tmp_path):
    rng = np.random.default_rng(4)
    n, hidden = 100, 5
    labels = np.where(np.arange(n) % 2 == 0, "pos", "neg").astype(object)
    labels[::10] = None  # unlabelled rows are left out
    x = rng.standard_normal((n, hidden)).astype(np.float32) + (labels == "pos")[:, None] * 1.0
    split = np.where(np.arange(n) < 80, "train", "test")
    factories.write_pooled(tmp_path / "pooled.parquet", {1: x}, labels, split, model="toy", dataset="d",
                           row_group_size=30)
    row = g.probe_score(tmp_path / "pooled.parquet", layer=-1, pooling="mean", seed=0, dataset="d", protocol="cv",
                        folds=4)
    keep = np.array([label is not None for label in labels])
    y = (labels[keep] == "pos").astype(int)
    assert row["protocol"] == "cv" and row["n_test"] == keep.sum() == 90 and row["folds"] == 4
    assert row["score"] == pytest.approx(sklearn_nested_cv_accuracy(x[keep], y, 4, 0), abs=1e-12)
    # a model fine-tuned on the train labels: cross-validated on the test split only
    test_only = g.probe_score(tmp_path / "pooled.parquet", layer=-1, pooling="mean", seed=0, dataset="d",
                              protocol="cv", folds=4, cv_splits=["test"])
    in_test = keep & (split == "test")
    assert test_only["splits"] == "test" and test_only["n_test"] == in_test.sum() == 18
    assert test_only["score"] == pytest.approx(
        sklearn_nested_cv_accuracy(x[in_test], (labels[in_test] == "pos").astype(int), 4, 0), abs=1e-12)
    with pytest.raises(WorkflowInputError, match="protocol must be 'cv' or 'split'"):
        g.probe_score(tmp_path / "pooled.parquet", protocol="holdout")
