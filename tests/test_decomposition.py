"""Tests of the Language Model Decomposition stage (workflow_scripts/decomposition.py, rules/decomposition.smk)."""

import json
import re
import logging

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import Ridge

from lmcompare import decomposition as lmd
from lmcompare import hidden_states, paths
from lmcompare.data.prepare import word_offsets
from lmcompare.errors import WorkflowInputError
from tests import factories
from tests.factories import latent_models, token_table


# ------------------------------------------------------------------------------------------ helpers
def relative(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def direct_r2(u_train, z_train, u_test, z_test, alpha, mode="paper"):
    """Unstreamed reference: materialised arrays, the formulas written out literally (paper: sample covariances
    divided by n - 1, as torch.cov in nlp.lmd 0.2.0; uncentred: raw moments divided by the basis dims)."""
    if mode == "paper":
        mu, mz = u_train.mean(0), z_train.mean(0)
        czz = (z_train - mz).T @ (z_train - mz) / (len(z_train) - 1)
        cuz = (u_train - mu).T @ (z_train - mz) / (len(z_train) - 1)
        W = np.linalg.solve(czz + alpha * np.eye(czz.shape[0]), cuz.T).T
        b = mu - W @ mz
        sst = ((u_test - u_test.mean(0)) ** 2).sum()
    else:
        ezz = z_train.T @ z_train / z_train.shape[1]
        euz = u_train.T @ z_train / z_train.shape[1]
        W = np.linalg.solve(ezz + alpha * np.eye(ezz.shape[0]), euz.T).T
        b = np.zeros(u_train.shape[1])
        sst = (u_test ** 2).sum()
    sse = ((u_test - z_test @ W.T - b) ** 2).sum()
    return 1 - sse / sst, W, b


def write_pooled(path, model, example_ids, splits, layers: dict, row_group_size=None, n_layers=None):
    """A pooled.parquet of a synthetic model (tests/factories.py); only these layers' columns."""
    return str(factories.write_pooled(path, layers, splits=splits, example_ids=example_ids, model=model,
                                      dataset="synthetic", n_layers=n_layers, row_group_size=row_group_size))


def write_tokens(path, model, rows: pd.DataFrame, layer_values: dict, n_layers, row_group_size=None):
    """A tokens.parquet of a synthetic model (tests/factories.py): rows has example_id, split, position, word_id,
    is_special."""
    return str(factories.write_tokens(path, layer_values, rows, model=model, dataset="synthetic", n_layers=n_layers,
                                      row_group_size=row_group_size))


# ------------------------------------------------------------------------------------------ moments
@pytest.mark.unit
def test_streamed_moments_match_direct_covariance():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(1000, 7)) * [1, 2, 3, 4, 5, 6, 7] + 1e4  # large means: the naive formula loses digits
    moments = lmd.Moments(7)
    for start, stop in ((0, 1), (1, 250), (250, 251), (251, 1000)):
        moments.update(rows[start:stop])
    moments.update(rows[:0])
    assert moments.n == 1000
    assert relative(moments.mean, rows.mean(0)) < 1e-13
    assert relative(moments.covariance(), np.cov(rows, rowvar=False, bias=True)) < 1e-10


# ---------------------------------------------------------------------------------- ridge and R²
@pytest.mark.unit
@pytest.mark.parametrize("alpha", [1e-6, 0.3])
def test_ridge_matches_sklearn(alpha):
    rng = np.random.default_rng(1)
    u, z = latent_models(rng, 3000, [5, 12])
    train, test = slice(0, 2000), slice(2000, 3000)
    fit = lmd.fit_ridge(lmd.SplitStats.from_rows(u[train], z[train]), alpha)
    # sklearn's alpha multiplies ||w||² next to the *sum* of squares; ours (as nlp.lmd's) next to the sample
    # covariance (sum / (n - 1)): alpha_sklearn = (n_train - 1) * alpha.
    reference = Ridge(alpha=alpha * 1999, fit_intercept=True, solver="cholesky").fit(z[train], u[train])
    assert relative(fit.W, reference.coef_) < 1e-6
    assert relative(fit.b, reference.intercept_) < 1e-6
    r2_test = lmd.r_squared(fit, lmd.SplitStats.from_rows(u[test], z[test]))[0]
    pred = reference.predict(z[test])
    sk_r2 = 1 - ((u[test] - pred) ** 2).sum() / ((u[test] - u[test].mean(0)) ** 2).sum()
    assert abs(r2_test - sk_r2) / abs(sk_r2) < 1e-6
    assert 0.5 < r2_test < 1.0  # the fixture has a real, imperfect linear relation
    r2_train = lmd.r_squared(fit, lmd.SplitStats.from_rows(u[train], z[train]))[0]
    sk_train = 1 - ((u[train] - reference.predict(z[train])) ** 2).sum() / ((u[train] - u[train].mean(0)) ** 2).sum()
    assert abs(r2_train - sk_train) / sk_train < 1e-6


@pytest.mark.unit
def test_uncentred_mode_is_raw_moments_and_differs_from_paper():
    rng = np.random.default_rng(2)
    u, z = latent_models(rng, 2000, [4, 9], offset=3.0)
    train, test = slice(0, 1500), slice(1500, 2000)
    fit = lmd.fit_ridge(lmd.SplitStats.from_rows(u[train], z[train]), 1e-6, "uncentred")
    r2 = lmd.r_squared(fit, lmd.SplitStats.from_rows(u[test], z[test]), "uncentred")[0]
    expected, W, b = direct_r2(u[train], z[train], u[test], z[test], 1e-6, "uncentred")
    assert relative(fit.W, W) < 1e-8 and np.all(fit.b == 0)
    assert abs(r2 - expected) < 1e-9
    paper = lmd.r_squared(lmd.fit_ridge(lmd.SplitStats.from_rows(u[train], z[train]), 1e-6),
                          lmd.SplitStats.from_rows(u[test], z[test]))[0]
    assert r2 > paper + 0.01  # the uncentred SST inflates R² when means are large


@pytest.mark.unit
def test_r2_matches_analytic_value_within_sampling_error():
    # u = A z + e with z ~ N(0, I_p), e ~ N(0, s² I_d): population R² = tr(A A^T) / (tr(A A^T) + d s²).
    rng = np.random.default_rng(3)
    p, d, s = 10, 6, 1.5
    A = rng.normal(size=(d, p)) * 0.5
    expected = np.trace(A @ A.T) / (np.trace(A @ A.T) + d * s * s)
    z = rng.normal(size=(40000, p))
    u = z @ A.T + s * rng.normal(size=(40000, d)) + 2.0
    fit = lmd.fit_ridge(lmd.SplitStats.from_rows(u[:20000], z[:20000]), 1e-6)
    r2 = lmd.r_squared(fit, lmd.SplitStats.from_rows(u[20000:], z[20000:]))[0]
    assert 0.3 < expected < 0.8
    # the test R²'s standard deviation over 30 seeds of this setup is 0.0019 (one-off measurement): 4 of them
    assert abs(r2 - expected) < 0.008
    # the tolerance tells the estimators apart: the uncentred fit and SST (haozhg/lmd 1eae068) is far off here
    authors = lmd.r_squared(lmd.fit_ridge(lmd.SplitStats.from_rows(u[:20000], z[:20000]), 1e-6, "uncentred"),
                            lmd.SplitStats.from_rows(u[20000:], z[20000:]), "uncentred")[0]
    assert abs(authors - expected) > 0.1


@pytest.mark.unit
def test_exact_copy_in_basis_gives_r2_one_and_noise_gives_zero():
    rng = np.random.default_rng(4)
    u, other = latent_models(rng, 4000, [8, 8])
    z = np.hstack([other, u])  # the basis contains an exact copy of the target
    fit = lmd.fit_ridge(lmd.SplitStats.from_rows(u[:3000], z[:3000]), 1e-6)
    assert lmd.r_squared(fit, lmd.SplitStats.from_rows(u[3000:], z[3000:]))[0] > 1 - 1e-6
    noise = rng.normal(size=(4000, 16))
    fit = lmd.fit_ridge(lmd.SplitStats.from_rows(u[:3000], noise[:3000]), 1e-6)
    r2 = lmd.r_squared(fit, lmd.SplitStats.from_rows(u[3000:], noise[3000:]))[0]
    assert -0.02 < r2 < 0.005  # ≈ 0 or below: nothing to explain with noise


@pytest.mark.unit
def test_ill_conditioned_basis_falls_back_and_logs(caplog):
    rng = np.random.default_rng(5)
    u, z = latent_models(rng, 600, [3, 4])
    z = np.hstack([z, z[:, :2], z[:, :1] * 2.0])  # collinear columns: a singular covariance
    stats = lmd.SplitStats.from_rows(u[:400], z[:400])
    with caplog.at_level(logging.WARNING, logger="workflow"):
        fit = lmd.fit_ridge(stats, 0.0, what="target 'x'")
    assert fit.solver == "eigh_fallback"
    assert "ill-conditioned" in caplog.text and "target 'x'" in caplog.text
    # the fallback is the minimum-norm least-squares solution
    zc = z[:400] - z[:400].mean(0)
    reference = np.linalg.lstsq(zc, u[:400] - u[:400].mean(0), rcond=None)[0].T
    assert relative(fit.W, reference) < 1e-6
    r2 = lmd.r_squared(fit, lmd.SplitStats.from_rows(u[400:], z[400:]))[0]
    assert np.isfinite(r2) and 0.5 < r2 < 1


# ----------------------------------------------------------------------------- streams and alignment
@pytest.mark.unit
def test_align_streams_joins_sorted_chunks_and_counts_drops():
    def stream(keys, sizes):
        keys = np.asarray(keys, np.int64)
        out, start = [], 0
        for size in sizes:
            part = keys[start:start + size]
            out.append((part, (part % 2).astype(np.int8), part[:, None].astype(float) * [1.0, -1.0]))
            start += size
        return out

    a = stream([0, 1, 2, 4, 5, 7, 8, 9, 12], [2, 0, 4, 3])
    b = stream([1, 2, 3, 4, 7, 9, 10, 12, 13], [1, 1, 5, 2])
    counts = lmd.AlignmentCounts()
    blocks = list(lmd.align_streams(a, b, counts))
    joined_a = np.vstack([va for _, va, _ in blocks])
    joined_b = np.vstack([vb for _, _, vb in blocks])
    assert joined_a[:, 0].tolist() == [1, 2, 4, 7, 9, 12]
    assert np.array_equal(joined_a, joined_b)
    assert np.concatenate([c for c, _, _ in blocks]).tolist() == [1, 0, 0, 1, 1, 0]
    assert (counts.matched, counts.only_a, counts.only_b) == (6, 3, 3)


@pytest.mark.unit
def test_pair_files_reproduce_direct_group_and_pairwise_fits(tmp_path):
    rng = np.random.default_rng(6)
    n = 900
    dims = {"m1": 5, "m2": 7, "m3": 4}
    values = dict(zip(dims, latent_models(rng, n, list(dims.values()))))
    ids = np.arange(n)
    split = np.where(rng.random(n) < 0.3, "test", "train")
    paths = {}
    for index, (model, vecs) in enumerate(values.items()):
        # different row-group sizes per model: the readers must align by example_id, not by row group
        paths[model] = write_pooled(tmp_path / model / "pooled.parquet", model, ids, split,
                                    {0: rng.normal(size=vecs.shape), 2: vecs}, row_group_size=100 + 37 * index)
    pair_paths = {}
    for a, b in lmd.model_pairs(list(dims)):
        va, vb = (lmd.model_layers(m, paths[m], "example", -1, -1) for m in (a, b))
        moments, counts = lmd.compute_pair_moments(va, vb, "example", block_rows=128)  # several blocks merged
        assert counts.matched == n and counts.only_a == counts.only_b == 0
        pair_paths[(a, b)] = tmp_path / "moments" / a / f"{b}.npz"
        lmd.save_pair_moments(pair_paths[(a, b)], va, vb, moments, {})
    group, pairs = lmd.decompose(pair_paths, ["m2", "m1", "m3"], 1e-6)
    tr, te = split == "train", split == "test"
    f32 = {m: v.astype(np.float32).astype(np.float64) for m, v in values.items()}  # what the Parquet holds
    for row in group:
        basis = [m for m in ["m2", "m1", "m3"] if m != row["model"]]
        z = np.hstack([f32[m] for m in basis])
        u = f32[row["model"]]
        expected = direct_r2(u[tr], z[tr], u[te], z[te], 1e-6)[0]
        assert abs(row["r2_test"] - expected) < 1e-8
        assert row["n_train"] == tr.sum() and row["n_test"] == te.sum() and row["layer"] == 2
        assert row["basis_dims"] == z.shape[1] and row["units_consistent"]
    assert len(pairs) == 6
    for row in pairs:
        u, z = f32[row["model"]], f32[row["basis_model"]]
        assert abs(row["r2_test"] - direct_r2(u[tr], z[tr], u[te], z[te], 1e-6)[0]) < 1e-8
    matrix = lmd.pairwise_matrix(pairs, ["m2", "m1", "m3"])
    assert list(matrix.index) == ["m2", "m1", "m3"] and np.isnan(matrix.loc["m1", "m1"])
    assert matrix.loc["m1", "m3"] == next(r["r2_test"] for r in pairs if r["model"] == "m1" and r["basis_model"] == "m3")


@pytest.mark.unit
def test_target_and_basis_layers_can_differ(tmp_path):
    rng = np.random.default_rng(7)
    n = 500
    ids = np.arange(n)
    split = np.where(np.arange(n) % 4 == 0, "test", "train")
    a1, a3, b1, b3 = latent_models(rng, n, [4, 4, 6, 6])
    pa_ = write_pooled(tmp_path / "a.parquet", "a", ids, split, {1: a1, 3: a3}, n_layers=4)
    pb_ = write_pooled(tmp_path / "b.parquet", "b", ids, split, {1: b1, 3: b3}, n_layers=4)
    va, vb = lmd.model_layers("a", pa_, "example", -1, 1), lmd.model_layers("b", pb_, "example", -1, 1)
    assert va.layers == (3, 1)
    moments, _ = lmd.compute_pair_moments(va, vb, "example")
    lmd.save_pair_moments(tmp_path / "m.npz", va, vb, moments, {})
    _, pairs = lmd.decompose({("a", "b"): tmp_path / "m.npz"}, ["a", "b"], 1e-6)
    f = lambda x: x.astype(np.float32).astype(np.float64)  # noqa: E731
    tr, te = split == "train", split == "test"
    row = next(r for r in pairs if r["model"] == "a")  # a at layer 3 from b at layer 1
    assert (row["layer"], row["basis_layer"]) == (3, 1)
    assert abs(row["r2_test"] - direct_r2(f(a3)[tr], f(b1)[tr], f(a3)[te], f(b1)[te], 1e-6)[0]) < 1e-8


@pytest.mark.unit
def test_word_and_chunk_units_aggregate_tokens_and_align_words(tmp_path):
    rng = np.random.default_rng(8)
    words = rng.integers(1, 6, size=40)
    split_of = lambda e: "test" if e % 3 == 0 else "train"  # noqa: E731
    rows_a = token_table(words, lambda e, w: 1, split_of)  # one token per word
    rows_b = token_table(words, lambda e, w: 1 + (e + w) % 3, split_of)  # words split into 1-3 tokens
    rows_b = rows_b[~((rows_b.example_id == 5) & (rows_b.word_id == 0))]  # a word model b lost (e.g. truncation)
    va_tok = rng.normal(size=(len(rows_a), 3)).astype(np.float32)
    vb_tok = rng.normal(size=(len(rows_b), 5)).astype(np.float32)
    pa_ = write_tokens(tmp_path / "a.parquet", "a", rows_a, {2: va_tok}, n_layers=3, row_group_size=37)
    pb_ = write_tokens(tmp_path / "b.parquet", "b", rows_b.reset_index(drop=True), {2: vb_tok}, n_layers=3, row_group_size=50)
    view_a, view_b = lmd.model_layers("a", pa_, "word", -1, -1), lmd.model_layers("b", pb_, "word", -1, -1)
    counts = lmd.AlignmentCounts()
    blocks = list(lmd.align_streams(lmd.iter_units(view_a, "word"), lmd.iter_units(view_b, "word"), counts))
    got_a = np.vstack([x for _, x, _ in blocks])
    got_b = np.vstack([y for _, _, y in blocks])

    def word_means(rows, vecs):
        frame = pd.DataFrame(vecs.astype(np.float64)).assign(e=rows.example_id.to_numpy(), w=rows.word_id.to_numpy())
        return frame[frame.w >= 0].groupby(["e", "w"]).mean()

    ref_a, ref_b = word_means(rows_a, va_tok), word_means(rows_b.reset_index(drop=True), vb_tok)
    shared = ref_a.index.intersection(ref_b.index)
    assert counts.matched == len(shared) == words.sum() - 1 and counts.only_a == 1 and counts.only_b == 0
    assert np.allclose(got_a, ref_a.loc[shared].to_numpy(), atol=1e-6)
    assert np.allclose(got_b, ref_b.loc[shared].to_numpy(), atol=1e-6)
    codes = np.concatenate([c for c, _, _ in blocks])
    assert codes.tolist() == [int(split_of(e) == "test") for e, _ in shared]

    # chunk unit: every token of the example (special included) summed and divided by T
    units = list(lmd.iter_units(view_b, "chunk", chunk_tokens=16))
    keys = np.concatenate([k for k, _, _ in units])
    sums = pd.DataFrame(vb_tok.astype(np.float64)).groupby(rows_b.example_id.to_numpy()).sum() / 16
    assert keys.tolist() == list(range(40))
    assert np.allclose(np.vstack([v for _, _, v in units]), sums.to_numpy(), atol=1e-6)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.unit
def test_bad_inputs_name_the_model_and_the_fix(tmp_path):
    rng = np.random.default_rng(9)
    ids = np.arange(30)
    split = np.where(ids < 28, "train", "test")
    good = write_pooled(tmp_path / "good.parquet", "good", ids, split, {2: rng.normal(size=(30, 3))})
    with pytest.raises(WorkflowInputError, match="target_layer for model 'good'.*out of range"):
        lmd.model_layers("good", good, "example", 7, -1)
    with pytest.raises(WorkflowInputError, match="extraction.token_layers"):
        lmd.model_layers("good", good, "word", -1, -1)
    broken = rng.normal(size=(30, 3))
    broken[11, 1] = np.nan
    bad = write_pooled(tmp_path / "bad.parquet", "bad", ids, split, {2: broken})
    va, vb = lmd.model_layers("good", good, "example", -1, -1), lmd.model_layers("bad", bad, "example", -1, -1)
    with pytest.raises(WorkflowInputError, match=r"model 'bad'.*example_id 11.*nonfinite"):
        lmd.compute_pair_moments(va, vb, "example")
    other = write_pooled(tmp_path / "other.parquet", "other", ids, split, {2: rng.normal(size=(30, 4))})
    vo = lmd.model_layers("other", other, "example", -1, -1)
    moments, _ = lmd.compute_pair_moments(va, vo, "example")
    lmd.save_pair_moments(tmp_path / "p.npz", va, vo, moments, {})
    with pytest.raises(WorkflowInputError, match="at least two models"):
        lmd.decompose({}, ["good"], 1e-6)
    with pytest.raises(WorkflowInputError, match=r"target 'good'.*2 test units.*min_test_units"):
        lmd.decompose({("good", "other"): tmp_path / "p.npz"}, ["good", "other"], 1e-6, min_test=5)


# ------------------------------------------------------------------------- workflow, end to end
from tests.conftest import CHUNKS, copy_run, pending_jobs, run_workflow, lmd_config  # noqa: E402

ALPHAS = ("alpha-1e-06", "alpha-validation")
LMD_OUT = "results/analysis/decomposition"


def write_config(workdir, config):
    import yaml

    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def token_frame(workdir, dataset, model, layer):
    path = workdir / paths.tokens_path(dataset, model)
    table = pq.read_table(path)
    frame = table.select(["example_id", "split", "word_id", "is_special", "char_start", "char_end"]).to_pandas()
    return frame, hidden_states.vectors(table, hidden_states.token_column(layer)).astype(np.float64)


@pytest.mark.workflow
def test_workflow_writes_tables_and_figures(lmd_run):
    workdir, _ = lmd_run
    for dataset, unit in (("toy", "example"), ("toy", "word")):
        for alpha in ALPHAS:
            stem = f"{dataset}/{unit}/t-1_b-1/paper/{alpha}"
            group = pd.read_csv(workdir / LMD_OUT / stem / "group.csv")
            assert group["model"].tolist() == ["tiny-bert", "tiny-roberta"]
            assert group["dims"].tolist() == [32, 48] and group["basis_dims"].tolist() == [48, 32]
            assert group["layer"].tolist() == [2, 3]  # last layer of each (embeddings = 0)
            assert np.isfinite(group[["r2_train", "r2_test"]].to_numpy()).all()
            assert (group["r2_train"] <= 1).all() and (group["n_test"] >= 5).all()
            if alpha == "alpha-validation":
                assert (group["alpha_choice"] == "validation").all() and group["r2_valid"].notna().all()
                assert set(group["alpha"]) <= set(lmd.DEFAULT_ALPHA_GRID) and (group["n_valid"] >= 5).all()
            else:
                assert (group["alpha"] == 1e-6).all() and group["r2_valid"].isna().all()
            pairs = pd.read_csv(workdir / LMD_OUT / stem / "pairwise.csv")
            # with two models the group fit is the pairwise fit
            for row in group.itertuples():
                assert pairs.loc[pairs["model"] == row.model, "r2_test"].item() == pytest.approx(row.r2_test, rel=1e-9)
            matrix = pd.read_csv(workdir / LMD_OUT / stem / "pairwise_matrix.csv").set_index("model")
            assert matrix.loc["tiny-bert", "tiny-roberta"] == pytest.approx(
                pairs.query("model == 'tiny-bert'")["r2_test"].item())
            for name in ("pairwise_r2", "group_r2"):
                for ext in ("png", "svg"):
                    assert (workdir / "results/figures/decomposition" / stem / f"{name}.{ext}").stat().st_size > 1000
    log = (workdir / "results/logs/decomposition/moments/toy/word/t-1_b-1/tiny-bert/tiny-roberta.log").read_text()
    assert "aligned" in log and "done in" in log


@pytest.mark.workflow
def test_word_units_align_the_same_words_across_tokenizers(lmd_run):
    workdir, _ = lmd_run
    dataset = pd.read_parquet(workdir / paths.dataset_path("toy"))
    means = {}
    for model, layer in (("tiny-bert", 2), ("tiny-roberta", 3)):
        frame, vecs = token_frame(workdir, "toy", model, layer)
        words = frame[frame["word_id"] >= 0]
        # every token of word w lies inside the dataset's character span of word w
        starts = dataset.set_index("example_id")["word_starts"]
        ends = dataset.set_index("example_id")["word_ends"]
        for row in words.sample(200, random_state=0).itertuples():
            text = dataset.loc[row.example_id, "text"]
            first = row.char_start + len(text[row.char_start:row.char_end]) - len(text[row.char_start:row.char_end].lstrip())
            assert starts[row.example_id][row.word_id] <= first < ends[row.example_id][row.word_id]
        means[model] = pd.DataFrame(vecs[words.index]).groupby(
            [words["example_id"].to_numpy(), words["word_id"].to_numpy()]).mean()
        means[model + "_split"] = words.groupby(["example_id", "word_id"])["split"].first()
    shared = means["tiny-bert"].index.intersection(means["tiny-roberta"].index)
    total_words = sum(len(s) for s in dataset["word_starts"])
    assert 0.5 * total_words < len(shared) <= total_words
    rows = np.hstack([means["tiny-bert"].loc[shared].to_numpy(), means["tiny-roberta"].loc[shared].to_numpy()])
    split = means["tiny-bert_split"].loc[shared].to_numpy()
    pair = lmd.PairMoments.load(workdir / LMD_OUT / "toy/word/t-1_b-1/moments/tiny-bert/tiny-roberta.npz")
    assert pair.models == ("tiny-bert", "tiny-roberta") and pair.dims == (32, 48)
    for name in ("train", "test"):
        subset = rows[split == name]
        assert pair.n[name] == len(subset)
        assert relative(pair.mean[name], subset.mean(0)) < 1e-6
        assert relative(pair.comoment[name], np.cov(subset, rowvar=False, bias=True) * len(subset)) < 1e-6


@pytest.mark.unit
def test_chunks_cut_the_reference_tokens_per_split(tiny_models, tiny_corpus):
    from transformers import AutoTokenizer

    from lmcompare.data import chunks as chunk_dataset

    assert chunk_dataset.cut_chunks([[1, 2, 3], [4], [5, 6, 7, 8, 9]], 4) == ([[1, 2, 3, 4], [5, 6, 7, 8]], 1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["bert"])
    texts = tiny_corpus[1]
    base = pd.DataFrame({"example_id": np.arange(len(texts)), "text": texts,
                         "split": np.where(np.arange(len(texts)) % 4 == 0, "test", "train")})
    entry = {**CHUNKS, "max_examples": None, "chunking": "text_tokens"}  # ours; the release's: test_decomposition_release
    frame, counts = chunk_dataset.build_chunks(base, tokenizer, 16, entry)
    for split in ("train", "test"):
        ids = tokenizer(base.loc[base.split == split, "text"].tolist(), add_special_tokens=False)["input_ids"]
        total = sum(len(i) for i in ids)
        assert counts[f"{split}_chunks"] == (frame["split"] == split).sum() == total // 16
        assert counts[f"{split}_remainder_tokens_dropped"] == total % 16
        # the first chunk of the split decodes exactly the first 16 reference tokens of its texts
        flat = [t for i in ids for t in i]
        assert frame.loc[frame.split == split, "text"].iloc[0] == tokenizer.decode(flat[:16], skip_special_tokens=True)
    assert frame["example_id"].tolist() == list(range(len(frame))) and frame["label"].isna().all()
    lengths = np.array([len(i) for i in tokenizer(frame["text"].tolist(), add_special_tokens=False)["input_ids"]])
    assert np.mean(lengths == 16) > 0.8  # decoding and re-encoding is nearly the identity
    assert counts["reencoded_longer_than_T"] == int((lengths + 2 > 16).sum())  # + [CLS] and [SEP]
    for row in frame.head(5).itertuples():
        assert (list(row.word_starts), list(row.word_ends)) == word_offsets(row.text) and len(row.word_starts) > 3
    sub, _ = chunk_dataset.build_chunks(base, tokenizer, 16, {**entry, "max_examples": 20})
    assert len(sub) == 20 and set(sub["text"]) <= set(frame["text"]) and set(sub["split"]) == {"train", "test"}
    with pytest.raises(WorkflowInputError, match="fewer than one chunk"):
        chunk_dataset.build_chunks(base.head(2), tokenizer, 10_000, entry)


# The paper's setup as docs/decomposition.md shows it: one chunks dataset and `units: [chunk]`, nothing else; a
# disabled two-tower section naming a dataset that is not configured must not stop the run.
PAPER_SETUP = {"units": ["chunk"], "alpha": 1e-6, "modes": ["paper"]}


@pytest.mark.workflow
def test_paper_setup_block_runs_the_chunk_unit_end_to_end(lmd_run, tiny_models, tiny_corpus, tmp_path):
    config = lmd_config(tiny_models, tiny_corpus, chunks=True, section=PAPER_SETUP, similarity={"enabled": False})
    config["decomposition"] = {"enabled": True, **PAPER_SETUP, "min_train_units": 5, "min_test_units": 5}
    config["twotower"] = {"enabled": False, "dataset": "reviews"}
    # planned from scratch: the base dataset is prepared (for the chunks) but not extracted
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    write_config(fresh, config)
    planned = pending_jobs(fresh)
    extracted = sorted(out for rule, out in planned if rule == "extract_hidden_states")
    assert extracted and all("/chunks16/" in out for out in extracted), extracted
    assert paths.dataset_path("toy") in {out for _, out in planned}
    workdir = copy_run(lmd_run[0], tmp_path / "chunks")  # reuses the materialised models and the base dataset
    run_workflow(workdir, config)
    chunks = pq.read_table(workdir / paths.dataset_path("chunks16"))
    assert chunks.schema.names == ["example_id", "text", "label", "split", "word_starts", "word_ends"]
    meta = json.loads(chunks.schema.metadata[b"dataset"])
    assert (meta["source"], meta["base"], meta["tokenizer_model"], meta["chunk_tokens"]) == ("chunks", "toy", "tiny-bert", 16)
    assert (meta["chunking"], meta["chunk_split"]) == ("release", "base")
    assert meta["counts"]["train"] + meta["counts"]["test"] == chunks.num_rows > 40
    # every model reads the chunks truncated at T = 16 (special tokens included), although extraction.max_length
    # is 32, and the log says so instead of advising to raise max_length
    for model in ("tiny-bert", "tiny-roberta"):
        tokens = workdir / paths.tokens_path("chunks16", model)
        assert hidden_states.read_hidden_metadata(tokens)["max_length"] == 16
        counted = pq.read_table(tokens, columns=["example_id"]).to_pandas().groupby("example_id").size()
        assert counted.max() == 16
        log = (workdir / f"results/logs/extract_hidden_states/chunks16/{model}.log").read_text()
        assert "as the LMD release does" in log and "raise extraction.max_length" not in log
    group = pd.read_csv(workdir / f"{LMD_OUT}/chunks16/chunk/t-1_b-1/paper/alpha-1e-06/group.csv")
    assert set(group["model"]) == {"tiny-bert", "tiny-roberta"}
    # the group R² recomputed from the token files: a chunk's unit is the sum of all T = 16 token vectors the model
    # read (special tokens included) over T, the fit the literal formula (direct_r2)
    chunk_units = {}
    for model, layer in (("tiny-bert", 2), ("tiny-roberta", 3)):
        frame, vecs = token_frame(workdir, "chunks16", model, layer)
        chunk_units[model] = pd.DataFrame(vecs).groupby(frame["example_id"].to_numpy()).sum() / 16
        chunk_units[model + "_split"] = frame.groupby("example_id")["split"].first()
    split = chunk_units["tiny-bert_split"].loc[chunk_units["tiny-bert"].index].to_numpy()
    assert (chunk_units["tiny-bert"].index == chunk_units["tiny-roberta"].index).all()
    for target, basis in (("tiny-bert", "tiny-roberta"), ("tiny-roberta", "tiny-bert")):
        u, z = chunk_units[target].to_numpy(), chunk_units[basis].to_numpy()
        tr, te = split == "train", split == "test"
        row = group.set_index("model").loc[target]
        assert (row["n_train"], row["n_test"]) == (tr.sum(), te.sum())
        for column, (fit_u, fit_z) in (("r2_test", (u[te], z[te])), ("r2_train", (u[tr], z[tr]))):
            assert relative(row[column], direct_r2(u[tr], z[tr], fit_u, fit_z, 1e-6)[0]) < 1e-6, (target, column)
    assert (group["n_train_examples"] == group["n_train"]).all()  # one unit per chunk
    assert group["between_example_share"].between(0.999999, 1.000001).all()  # one unit per example: all between
    assert not any("/toy/chunk/" in str(p) for p in (workdir / LMD_OUT).rglob("*"))  # chunks datasets only


@pytest.mark.workflow
def test_adding_a_model_computes_only_its_pairs(lmd_run, tiny_models, tiny_corpus, tmp_path):
    scratch = copy_run(lmd_run[0], tmp_path / "grown")
    write_config(scratch, lmd_config(tiny_models, tiny_corpus, models=("bert", "roberta", "gpt2")))
    jobs = pending_jobs(scratch)
    moments = sorted(out for rule, out in jobs if rule == "decomposition_moments")
    expected = sorted(f"{LMD_OUT}/toy/{unit}/t-1_b-1/moments/{a}/{b}.npz" for unit in ("example", "word")
                      for a, b in (("tiny-bert", "tiny-gpt2"), ("tiny-gpt2", "tiny-roberta")))
    assert moments == expected, jobs
    assert {rule for rule, _ in jobs} == {"materialise_model", "extract_hidden_states", "decomposition_moments",
                                          "decomposition_fit", "decomposition_figures", "similarity",
                                          "similarity_sweep_moments", "similarity_knn", "similarity_sweep_pair",
                                          "similarity_sweep", "similarity_sweep_fits", "similarity_sweep_fits_join"}, jobs
    assert not any("tiny-bert/tiny-roberta" in out for _, out in jobs)  # existing pair: not recomputed
    assert sum(rule == "decomposition_fit" for rule, _ in jobs) == 3 * 2 * 2  # 3 tables x 2 units x 2 alphas
    # the similarity join: one job per unit (its table and the 7 measures' png and svg)
    assert sum(rule == "similarity" for rule, _ in jobs) == 2 * (1 + 7 * 2)
    # the layer sweep (example units): the new pairs' passes, kNN and measures (a table and the 2 measures' png and
    # svg each), and the join (its two tables and the 2 best-layer figures' png and svg)
    sweep = "results/analysis/similarity/toy/example/sweep/all"
    assert sorted(out for rule, out in jobs if rule == "similarity_sweep_moments") == [
        f"{sweep}/moments/{a}/{b}.npz" for a, b in (("tiny-bert", "tiny-gpt2"), ("tiny-gpt2", "tiny-roberta"))]
    assert sum(rule == "similarity_knn" for rule, _ in jobs) == 2
    assert sum(rule == "similarity_sweep_pair" for rule, _ in jobs) == 2 * (1 + 2 * 2)
    assert sum(rule == "similarity_sweep" for rule, _ in jobs) == 2 + 2 * 2
    # the sweep's R²: the new pairs' fits (a table and, per fit setting (2 alphas), a heatmap's png and svg), and the
    # join (its three tables, and per setting the best-layer and group figures' png and svg)
    assert sorted(out for rule, out in jobs if rule == "similarity_sweep_fits" and out.endswith(".csv")) == [
        f"{sweep}/r2/{a}/{b}.csv" for a, b in (("tiny-bert", "tiny-gpt2"), ("tiny-gpt2", "tiny-roberta"))]
    assert sum(rule == "similarity_sweep_fits" for rule, _ in jobs) == 2 * (1 + 2 * 2)
    assert sum(rule == "similarity_sweep_fits_join" for rule, _ in jobs) == 3 + 2 * 2 * 2


@pytest.mark.workflow
@pytest.mark.parametrize("section, message", [
    ({"models": ["tiny-bert"]}, "at least two models"),
    ({"models": ["tiny-bert", "nope"]}, r"decomposition.models lists \['nope'\]"),
    ({"alpha": "validation", "alpha_grid": []}, "alpha_grid is empty"),
])
def test_bad_config_stops_before_any_job(section, message, tiny_models, tiny_corpus, tmp_path):
    result = run_workflow(tmp_path, lmd_config(tiny_models, tiny_corpus, section=section), extra=["-n"], check=False)
    assert result.returncode != 0
    assert re.search(message, result.stdout + result.stderr)


@pytest.mark.unit
def test_pairs_with_different_unit_sets_fit_the_units_all_models_have(tmp_path, caplog):
    rng = np.random.default_rng(10)
    n = 1200
    ids = np.arange(n)
    split = np.where(ids % 4 == 0, "test", "train")
    values = dict(zip(("a", "b", "c"), latent_models(rng, n, [4, 5, 6])))
    keep_c = np.ones(n, bool)
    keep_c[[3, 4, 8, 17, 40]] = False  # model c lost five units (e.g. dropped non-finite rows)
    paths = {m: write_pooled(tmp_path / f"{m}.parquet", m, ids[keep_c] if m == "c" else ids,
                             split[keep_c] if m == "c" else split, {1: v[keep_c] if m == "c" else v})
             for m, v in values.items()}
    pair_paths = {}
    for a, b in lmd.model_pairs(["a", "b", "c"]):
        va, vb = (lmd.model_layers(m, paths[m], "example", -1, -1) for m in (a, b))
        moments, counts = lmd.compute_pair_moments(va, vb, "example")
        assert counts.only_a == (5 if b == "c" else 0)
        pair_paths[(a, b)] = tmp_path / f"{a}{b}.npz"
        lmd.save_pair_moments(pair_paths[(a, b)], va, vb, moments, {"unit": "example", "pooling": "mean"})
    f = {m: v.astype(np.float32).astype(np.float64) for m, v in values.items()}
    tr, te = (split == "train") & keep_c, (split == "test") & keep_c

    def exact_group_r2(target):
        z = np.hstack([f[m] for m in ("a", "b", "c") if m != target])
        return direct_r2(f[target][tr], z[tr], f[target][te], z[te], 1e-6)[0]

    # from the pair files alone: the pairwise-complete estimate, close here (five of 1200 units differ)
    with caplog.at_level(logging.WARNING, logger="workflow"):
        group, _ = lmd.decompose(pair_paths, ["a", "b", "c"], 1e-6)
    assert "pairwise-complete" in caplog.text
    for row in group:
        assert not row["units_consistent"] and row["joint_covariance"] == "pairwise_complete"
        assert abs(row["r2_test"] - exact_group_r2(row["model"])) < 0.01
    # with the hidden-state files: one pass on the units every model has, exact
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="workflow"):
        group, pairs = lmd.decompose(pair_paths, ["a", "b", "c"], 1e-6, hidden_files=paths)
    assert "units every model has" in caplog.text and "pairwise-complete" not in caplog.text
    for row in group:
        assert not row["units_consistent"] and row["joint_covariance"] == "common_units"
        assert relative(row["r2_test"], exact_group_r2(row["model"])) < 1e-10
        assert row["n_train"] == tr.sum() and row["n_test"] == te.sum()
    row = next(r for r in pairs if (r["model"], r["basis_model"]) == ("a", "b"))  # pairwise: exact, all units
    assert row["n_train"] + row["n_test"] == n
    full_tr, full_te = split == "train", split == "test"
    assert abs(row["r2_test"] - direct_r2(f["a"][full_tr], f["b"][full_tr], f["a"][full_te], f["b"][full_te], 1e-6)[0]) < 1e-8


@pytest.mark.workflow
def test_changing_alpha_refits_without_recomputing_moments(lmd_run, tiny_models, tiny_corpus, tmp_path):
    scratch = copy_run(lmd_run[0], tmp_path / "alpha")
    write_config(scratch, lmd_config(tiny_models, tiny_corpus, section={"alpha": [0.5, "validation"]}))
    jobs = pending_jobs(scratch)
    # (and the layer sweep's R² of every layer pair, per pair and joined, from the sweep files: no pass)
    fit_rules = {"decomposition_fit", "decomposition_figures", "similarity_sweep_fits", "similarity_sweep_fits_join"}
    assert {rule for rule, _ in jobs} == fit_rules, jobs
    lmd_jobs = [out for rule, out in jobs if not rule.startswith("similarity")]
    assert all("/alpha-0.5/" in out for out in lmd_jobs), jobs  # the validated tables are left alone
    # a new grid re-runs only the validated fits
    write_config(scratch, lmd_config(tiny_models, tiny_corpus, section={"alpha_grid": [1e-3, 1.0]}))
    jobs = pending_jobs(scratch)
    assert {rule for rule, _ in jobs} == fit_rules, jobs
    assert jobs and all("/alpha-validation/" in out for rule, out in jobs if not rule.startswith("similarity")), jobs
    # a second mode fits into its own folder: only its fits and figures, the pair files and paper tables stay
    write_config(scratch, lmd_config(tiny_models, tiny_corpus, section={"modes": ["paper", "uncentred"]}))
    jobs = pending_jobs(scratch)
    assert {rule for rule, _ in jobs} == fit_rules, jobs
    lmd_jobs = [out for rule, out in jobs if not rule.startswith("similarity")]
    assert len(lmd_jobs) == 2 * 2 * (3 + 4) and all("/uncentred/" in out for out in lmd_jobs), jobs  # units x alphas
    # another model order: the fits (the order of the basis columns and of the tables), the similarity
    # heatmaps (the order of their rows and columns) and the layer sweep's joins (each model's colour follows its
    # configured index), but no pair file, no sweep pass and no per-pair sweep job
    write_config(scratch, lmd_config(tiny_models, tiny_corpus, models=("roberta", "bert")))
    jobs = pending_jobs(scratch)
    assert {rule for rule, _ in jobs} == {"decomposition_fit", "decomposition_figures", "similarity",
                                          "similarity_sweep", "similarity_sweep_fits_join"}, jobs
    lmd_jobs = [out for rule, out in jobs if not rule.startswith("similarity")]
    assert len(lmd_jobs) == 2 * 2 * (3 + 4) and all("/paper/" in out for out in lmd_jobs), jobs


@pytest.mark.unit
def test_fewer_train_units_than_basis_dims_is_flagged(tmp_path, caplog):
    rng = np.random.default_rng(11)
    u, z = latent_models(rng, 60, [3, 50])
    with caplog.at_level(logging.WARNING, logger="workflow"):
        _, scores = lmd.fit_and_score(lmd.SplitStats.from_rows(u[:40], z[:40]), lmd.SplitStats.from_rows(u[40:], z[40:]),
                                       1e-6, "paper", "target 'u'")
    assert scores["underdetermined"] and scores["r2_train"] > 0.999 and scores["r2_test"] < scores["r2_train"] - 0.1
    assert "40 train units from 40 independent examples for 50 basis dimensions" in caplog.text
    _, scores = lmd.fit_and_score(lmd.SplitStats.from_rows(u[:40], z[:40, :5]), lmd.SplitStats.from_rows(u[40:], z[40:, :5]),
                                   1e-6, "paper", "target 'u'")
    assert not scores["underdetermined"]


# ------------------------------------------------------------------------------ validation-chosen alpha
@pytest.mark.unit
@pytest.mark.parametrize("mode", ["paper", "uncentred"])
def test_validation_path_equals_fitting_and_scoring_each_alpha(mode):
    """The validation R² of every alpha from one eigendecomposition (validation_path, in the eigenbasis, no W formed)
    equals fit_ridge (Cholesky) on the fit part scored by r_squared on the valid part, to 1e-10 (1e-8 where the fit
    part has fewer units than basis dimensions: at alpha 1e-6 the system's condition number is ~1e8 and the two
    solvers' rounding differs there by ~2e-9), wide and narrow targets, with a precomputed BasisPath shared by two
    targets of one basis; and the chosen alpha is the argmax."""
    rng = np.random.default_rng(31)
    grid = [1e-6, 1e-4, 1e-2, 1.0, 100.0, 1e4]
    for d_u, d_z, n in ((7, 12, 150), (20, 5, 90), (9, 30, 25)):  # the last: fewer fit units than basis dims
        z = rng.normal(size=(n, d_z)) @ rng.normal(size=(d_z, d_z)) + 3.0
        us = [z @ rng.normal(size=(d_z, d_u)) + rng.normal(size=(n, d_u)) - 1.0 for _ in range(2)]
        cut = int(0.7 * n)
        shared = None  # the first target's BasisPath, reused for the second (it depends on the basis alone)
        for u in us:
            fit_part = lmd.SplitStats.from_rows(u[:cut], z[:cut])
            valid_part = lmd.SplitStats.from_rows(u[cut:], z[cut:])
            shared = shared or lmd.basis_path(fit_part, valid_part, mode)
            direct = [lmd.r_squared(lmd.fit_ridge(fit_part, a, mode), valid_part, mode)[0] for a in grid]
            for scores in (lmd.validation_path(fit_part, valid_part, grid, mode),
                           lmd.validation_path(fit_part, valid_part, grid, mode, shared)):
                tolerance = 1e-10 if cut > d_z else 1e-8
                assert np.allclose(scores, direct, rtol=0, atol=tolerance), (d_u, d_z, n, scores, direct)
            alpha, best, scores = lmd.choose_alpha(fit_part, valid_part, grid, mode, basis=shared)
            assert best == max(scores) and alpha == grid[int(np.argmax(scores))]


def write_models(tmp_path, values: dict, ids, split, row_group_size=None):
    return {m: write_pooled(tmp_path / f"{m}.parquet", m, ids, split, {1: v}, row_group_size=row_group_size)
            for m, v in values.items()}


def written_latent_models(tmp_path, seed: int, n: int, dims: dict, noise=0.3, row_group_size=None):
    """latent_models for {model: dims}, a quarter of the units in the test split, written as pooled Parquet:
    (ids, split, values, paths)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n)
    split = np.where(rng.random(n) < 0.25, "test", "train")
    values = dict(zip(dims, latent_models(rng, n, list(dims.values()), noise=noise)))
    return ids, split, values, write_models(tmp_path, values, ids, split, row_group_size=row_group_size)


def pair_files(tmp_path, paths, models, fraction=0.2, seed=0, tag=""):
    pair_paths = {}
    for a, b in lmd.model_pairs(models):
        va, vb = (lmd.model_layers(m, paths[m], "example", -1, -1) for m in (a, b))
        moments, _ = lmd.compute_pair_moments(va, vb, "example", block_rows=64, validation_fraction=fraction,
                                              validation_seed=seed)
        pair_paths[(a, b)] = tmp_path / f"{tag}{a}_{b}.npz"
        lmd.save_pair_moments(pair_paths[(a, b)], va, vb, moments, {}, fraction, seed)
    return pair_paths


def sklearn_choice(u_fit, z_fit, u_valid, z_valid, grid):
    """The argmin of the validation error with scikit-learn on materialised rows (same centring: intercept)."""
    scores = []
    for alpha in grid:
        model = Ridge(alpha=alpha * (len(u_fit) - 1), fit_intercept=True, solver="cholesky").fit(z_fit, u_fit)
        residual = ((u_valid - model.predict(z_valid)) ** 2).sum()
        scores.append(1 - residual / ((u_valid - u_valid.mean(0)) ** 2).sum())
    best = max(scores)
    return max(a for a, r in zip(grid, scores) if r >= best - 1e-12 * max(1, abs(best))), scores


@pytest.mark.unit
def test_validation_split_is_deterministic_per_example_and_seeded():
    ids = np.arange(20000)
    mask = lmd.validation_mask(ids, 0.2, seed=0)
    assert abs(mask.mean() - 0.2) < 0.01
    assert np.array_equal(mask, lmd.validation_mask(ids, 0.2, seed=0))
    assert np.array_equal(mask[5000:6000], lmd.validation_mask(ids[5000:6000], 0.2, seed=0))  # per id, not per block
    other = lmd.validation_mask(ids, 0.2, seed=1)
    assert 0.25 < (mask != other).mean() < 0.4  # an independent draw: 2 x 0.2 x 0.8 = 0.32
    assert not lmd.validation_mask(ids, 0.0).any()
    # word keys: every word of an example on the side of its example
    keys = (np.repeat(ids[:500], 7) << lmd.WORD_BITS) | np.tile(np.arange(7), 500)
    codes = np.zeros(keys.size, np.int8)
    codes[::11] = 1  # test units keep their code
    (_, marked, _), = lmd.mark_validation([(keys, codes, None)], "word", 0.2)
    expected = np.where(codes == 1, 1, np.where(np.repeat(mask[:500], 7), lmd.VALID_CODE, 0))
    assert np.array_equal(marked, expected)


@pytest.mark.unit
def test_train_moments_are_fit_plus_valid_and_paper_results_are_unchanged(tmp_path):
    models = ["p", "q", "r"]
    ids, split, values, paths = written_latent_models(tmp_path, 12, 700, dict(zip(models, [4, 6, 5])),
                                                      row_group_size=90)
    cut = pair_files(tmp_path, paths, models, fraction=0.2, tag="cut")
    whole = pair_files(tmp_path, paths, models, fraction=0.0, tag="whole")  # the train split in one piece
    pair = lmd.PairMoments.load(cut[("p", "q")])
    valid = lmd.validation_mask(ids, 0.2) & (split == "train")
    assert pair.n["valid"] == valid.sum() > 100 and pair.n["fit"] + pair.n["valid"] == pair.n["train"]
    rows = np.hstack([values["p"], values["q"]]).astype(np.float32).astype(np.float64)
    for name, rows_of in (("fit", (split == "train") & ~valid), ("valid", valid), ("train", split == "train")):
        assert relative(pair.mean[name], rows[rows_of].mean(0)) < 1e-12
        assert relative(pair.comoment[name], np.cov(rows[rows_of], rowvar=False, bias=True) * rows_of.sum()) < 1e-10
    for mode in lmd.MODES:
        for alpha in (1e-6, 0.3):
            new = lmd.decompose(cut, models, alpha, mode)
            old = lmd.decompose(whole, models, alpha, mode)
            for new_rows, old_rows in zip(new, old):
                for a, b in zip(new_rows, old_rows):
                    assert abs(a["r2_test"] - b["r2_test"]) < 1e-10 and abs(a["r2_train"] - b["r2_train"]) < 1e-10
                    assert a["alpha"] == alpha and a["alpha_choice"] == "fixed" and np.isnan(a["r2_valid"])


@pytest.mark.unit
def test_validated_alpha_is_the_sklearn_argmin_and_refits_on_the_whole_train_split(tmp_path):
    models = ["a", "b", "c"]
    ids, split, values, paths = written_latent_models(tmp_path, 13, 500, dict(zip(models, [6, 30, 25])), noise=1.0)
    pair_paths = pair_files(tmp_path, paths, models)
    grid = [1e-6, 1e-4, 1e-2, 1e-1, 1.0, 10.0, 100.0]
    group, pairs = lmd.decompose(pair_paths, models, "validation", "paper", alpha_grid=grid)
    f = {m: v.astype(np.float32).astype(np.float64) for m, v in values.items()}
    valid = lmd.validation_mask(ids, 0.2) & (split == "train")
    fit_rows, train, test = (split == "train") & ~valid, split == "train", split == "test"
    chosen = set()
    for row in [*group, *({**r, "basis_models": r["basis_model"]} for r in pairs)]:
        u = f[row["model"]]
        z = np.hstack([f[m] for m in row["basis_models"].split(";")])
        expected, scores = sklearn_choice(u[fit_rows], z[fit_rows], u[valid], z[valid], grid)
        assert row["alpha"] == expected and row["alpha_choice"] == "validation", (row, scores)
        assert abs(row["r2_valid"] - max(scores)) < 1e-8 and row["n_valid"] == valid.sum()
        # then refitted on fit + valid with the chosen alpha, scored on test
        assert abs(row["r2_test"] - direct_r2(u[train], z[train], u[test], z[test], expected)[0]) < 1e-8
        chosen.add(expected)
    assert len(chosen) > 1  # the fixture makes different fits prefer different alphas


@pytest.mark.unit
def test_validated_alpha_rescues_a_near_collinear_basis():
    # the target's basis: eight near-copies of one model (copy + tiny noise), as with perturbed siblings; few train
    # units for the basis dimensions, so alpha = 1e-6 fits the tiny differences between the copies
    rng = np.random.default_rng(14)
    n_fit, n_valid, n_test, d = 200, 60, 400, 24
    n = n_fit + n_valid + n_test
    x = rng.normal(size=(n, d))
    u = x @ rng.normal(size=(d, 8)) * 0.3 + rng.normal(size=(n, 8))
    z = np.hstack([x + 0.01 * rng.normal(size=(n, d)) for _ in range(8)])  # 192 basis dims for 260 train units
    parts = {"fit": slice(0, n_fit), "valid": slice(n_fit, n_fit + n_valid), "train": slice(0, n_fit + n_valid),
             "test": slice(n_fit + n_valid, n)}
    stats = {name: lmd.SplitStats.from_rows(u[s], z[s]) for name, s in parts.items()}
    paper = lmd.scored_fit(stats, 1e-6, [], "paper", "u", 2, 2, 0.2)
    validated = lmd.scored_fit(stats, "validation", lmd.DEFAULT_ALPHA_GRID, "paper", "u", 2, 2, 0.2)
    assert paper["r2_train"] > 0.85 and paper["r2_test"] < 0.0  # over-fitted (measured: 0.91 / -0.12)
    assert validated["alpha"] >= 1e-2 and validated["r2_test"] > paper["r2_test"] + 0.5  # measured 0.62
    assert abs(validated["r2_test"] - validated["r2_valid"]) < 0.1  # the validation R² predicts the test R²


@pytest.mark.unit
def test_validation_bad_inputs_give_clear_messages(tmp_path):
    rng = np.random.default_rng(15)
    n = 120
    ids = np.arange(n)
    split = np.where(ids % 4 == 0, "test", "train")
    values = dict(zip(["a", "b"], latent_models(rng, n, [3, 4])))
    paths = write_models(tmp_path, values, ids, split)
    with pytest.raises(WorkflowInputError, match="alpha_grid is empty"):
        lmd.decompose(pair_files(tmp_path, paths, ["a", "b"]), ["a", "b"], "validation", alpha_grid=[])
    no_valid = pair_files(tmp_path, paths, ["a", "b"], fraction=0.0, tag="none")
    with pytest.raises(WorkflowInputError, match=r"0 validation units.*validation_fraction 0.0"):
        lmd.decompose(no_valid, ["a", "b"], "validation")
    assert lmd.decompose(no_valid, ["a", "b"], 1e-6)[0]  # a fixed alpha needs no validation part
    tiny = pair_files(tmp_path, paths, ["a", "b"], fraction=0.05, tag="tiny")  # about 4 validation examples
    with pytest.raises(WorkflowInputError, match=r"fit and \d validation units.*min_train_units / min_test_units"):
        lmd.decompose(tiny, ["a", "b"], "validation", min_train=5, min_test=10)
    with pytest.raises(WorkflowInputError, match="neither a number"):
        lmd.decompose(tiny, ["a", "b"], "cross-validation")
    assert lmd.alpha_tag(1e-6) == "alpha-1e-06" and lmd.alpha_from_tag("alpha-1e-06") == 1e-6
    assert lmd.alpha_tag("validation") == "alpha-validation" and lmd.alpha_from_tag("alpha-0.5") == 0.5
    # moments files of the previous format (one train block) are refused with the fix
    old = tmp_path / "old.npz"
    np.savez(old, format=np.array(1), models=np.array(["a", "b"]))
    with pytest.raises(WorkflowInputError, match="another version of this stage.*format 1.*delete it"):
        lmd.PairMoments.load(old)
    with pytest.raises(WorkflowInputError, match="another version"):
        lmd.decompose({("a", "b"): old}, ["a", "b"], 1e-6)
