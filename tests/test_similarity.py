"""Tests of the similarity measures (lmcompare.similarity, rules/similarity.smk): every measure from the streamed
statistics against a direct computation on the materialised rows, written independently of the library (kernels,
QR / SVD of the data, scipy's orthogonal Procrustes)."""

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import yaml

from lmcompare import decomposition as lmd
from lmcompare import similarity as sim
from lmcompare.errors import WorkflowInputError
from tests import factories
from tests.factories import latent_models

TOLERANCE = sim.DEFAULT_CCA_RANK_TOLERANCE


# ------------------------------------------------------------------------ direct references
def centred(x):
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(axis=0)


def direct_cka(x, y):
    """Kornblith et al.'s HSIC form: tr(K H L H) / sqrt(tr(K H K H) tr(L H L H)), K = X X^T on the raw rows."""
    n = len(x)
    h = np.eye(n) - 1.0 / n
    k, l_ = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return np.sum(k * l_) / np.sqrt(np.sum(k * k) * np.sum(l_ * l_))


def unbiased_hsic(k, l_):
    """Song et al. (2012), eq. 5, on the uncentred kernel matrices with their diagonals set to zero."""
    n = len(k)
    k, l_ = k - np.diag(np.diag(k)), l_ - np.diag(np.diag(l_))
    return (np.sum(k * l_) + k.sum() * l_.sum() / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * k.sum(axis=0) @ l_.sum(axis=0)) / (n * (n - 3))


def direct_debiased_cka(x, y):
    k, l_ = x @ x.T, y @ y.T
    return unbiased_hsic(k, l_) / np.sqrt(unbiased_hsic(k, k) * unbiased_hsic(l_, l_))


def orthonormal_basis(xc, tolerance=TOLERANCE):
    """An orthonormal basis of the centred data's column space, directions whose variance is below tolerance x the
    largest dropped (the rank cut, on the data's singular values)."""
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    return u[:, s ** 2 > tolerance * s[0] ** 2]


def direct_cca(x, y, tolerance=TOLERANCE):
    """(canonical correlations, Qx, Qy, U, V^T) from orthonormal bases of the centred data (SVD of Qx^T Qy)."""
    qx, qy = orthonormal_basis(centred(x), tolerance), orthonormal_basis(centred(y), tolerance)
    u, rho, vt = np.linalg.svd(qx.T @ qy, full_matrices=False)
    return rho, qx, qy, u, vt


def direct_pwcca(x, y, tolerance=TOLERANCE):
    """Morcos et al.: alpha_i = sum_j |<h_i, x_j>| over the centred neurons x_j of the side with fewer directions."""
    rho, qx, qy, u, vt = direct_cca(x, y, tolerance)
    variates, data = (qx @ u, centred(x)) if qx.shape[1] <= qy.shape[1] else (qy @ vt.T, centred(y))
    weights = np.abs(variates.T @ data).sum(axis=1)
    return weights @ rho / weights.sum()


def top_directions(x, variance):
    """The centred data projected on its fewest top right singular vectors with sum s² >= variance x total."""
    xc = centred(x)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    share = np.cumsum(s ** 2) / np.sum(s ** 2)
    kept = int(np.argmax(share >= variance * (1 - 1e-12))) + 1
    return xc @ vt[:kept].T


def direct_svcca(x, y, variance):
    px, py = top_directions(x, variance), top_directions(y, variance)
    return direct_cca(px, py)[0].mean(), px.shape[1], py.shape[1]


def direct_procrustes(x, y):
    """1 - d²/2, d² = min_R ||Xn R - Yn||_F² by scipy (the narrower side padded with zero columns)."""
    xn, yn = centred(x) / np.linalg.norm(centred(x)), centred(y) / np.linalg.norm(centred(y))
    width = max(xn.shape[1], yn.shape[1])
    xn, yn = (np.hstack([m, np.zeros((len(m), width - m.shape[1]))]) for m in (xn, yn))
    rotation, _ = scipy.linalg.orthogonal_procrustes(xn, yn)
    return 1 - np.sum((xn @ rotation - yn) ** 2) / 2


def direct_measures(x, y, variance=sim.DEFAULT_SVCCA_VARIANCE):
    """Every measure of the materialised rows: measure -> (value, kept_x, kept_y)."""
    rho, qx, qy, _, _ = direct_cca(x, y)
    svcca_value, kx, ky = direct_svcca(x, y, variance)
    rank = (qx.shape[1], qy.shape[1])
    full = (x.shape[1], y.shape[1])
    return {"cka": (direct_cka(x, y), *full), "cka_debiased": (direct_debiased_cka(x, y), *full),
            "cca_mean": (rho.mean(), *rank), "cca_mean_squared": (np.mean(rho ** 2), *rank),
            "svcca": (svcca_value, kx, ky), "pwcca": (direct_pwcca(x, y), *rank),
            "procrustes": (direct_procrustes(x, y), *full)}


# ------------------------------------------------------------------------------ statistics
@pytest.mark.unit
def test_norm_statistics_stream_and_merge_exactly():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(900, 7)) * np.arange(1, 8) + 1e3  # large means: raw power sums would lose digits
    blocks = ((0, 3), (3, 7))
    parts = [lmd.Moments(7, blocks=blocks) for _ in range(2)]
    for start, stop in ((0, 1), (1, 300), (300, 301), (301, 500)):
        parts[0].update(rows[start:stop])
    parts[1].update(rows[500:])
    merged = parts[0].copy()
    merged.merge(parts[1])
    r = rows - rows.mean(axis=0)
    norms = np.column_stack([np.sum(r[:, a:b] ** 2, axis=1) for a, b in blocks])
    assert merged.n == 900
    assert np.max(np.abs(merged.norm_products - norms.T @ norms)) < 1e-11 * np.max(norms.T @ norms)
    assert np.max(np.abs(merged.norm_weighted - r.T @ norms)) < 1e-9 * np.max(np.abs(r.T @ norms))
    stats = sim.PairStatistics.from_rows(rows[:, :3], rows[:, 3:])
    assert stats.norm_xy == pytest.approx(merged.norm_products[0, 1], rel=1e-11)
    assert stats.norm4_x == pytest.approx(merged.norm_products[0, 0], rel=1e-11)
    with pytest.raises(ValueError, match="cannot be merged"):
        merged.merge(lmd.Moments(7, 3, rows[:3].mean(0), np.eye(7)))


def write_model(tmp_path, model, ids, split, layers, row_group_size):
    return str(factories.write_pooled(tmp_path / f"{model}.parquet", layers, splits=split, example_ids=ids,
                                      model=model, dataset="synthetic", row_group_size=row_group_size))


@pytest.mark.unit
def test_every_measure_from_a_pair_file_matches_the_direct_computation(tmp_path):
    """d_x = 5, d_y = 8, two layers per model (the target layer 3 is measured, not the basis layer 1), the train
    split cut into fit and validation parts: the pair file's three parts merged give every unit."""
    rng = np.random.default_rng(1)
    n = 400
    ids = np.arange(n)
    split = np.where(rng.random(n) < 0.3, "test", "train")
    x, y = latent_models(rng, n, [5, 8], latent=4, noise=0.8)
    path_x = write_model(tmp_path, "mx", ids, split, {1: rng.normal(size=(n, 5)), 3: x}, row_group_size=70)
    path_y = write_model(tmp_path, "my", ids, split, {1: rng.normal(size=(n, 8)), 3: y}, row_group_size=111)
    vx, vy = (lmd.model_layers(m, p, "example", -1, 1) for m, p in (("mx", path_x), ("my", path_y)))
    moments, _ = lmd.compute_pair_moments(vx, vy, "example", block_rows=64)
    assert moments["valid"].n > 0 and moments["fit"].n > 0 and moments["test"].n > 0
    lmd.save_pair_moments(tmp_path / "pair.npz", vx, vy, moments, {})
    table = sim.similarity_table({("mx", "my"): tmp_path / "pair.npz"}, ["my", "mx"], svcca_variance=0.9)
    f32 = lambda v: v.astype(np.float32).astype(np.float64)  # noqa: E731  what the Parquet holds
    expected = direct_measures(f32(x), f32(y), variance=0.9)
    assert table["measure"].tolist() == list(sim.MEASURES)
    for row in table.itertuples():
        value, kept_x, kept_y = expected[row.measure]
        assert abs(row.value - value) < 1e-8, row.measure
        assert (row.kept_a, row.kept_b) == (kept_x, kept_y), row.measure
        assert (row.model_a, row.model_b, row.n_units, row.dims_a, row.dims_b) == ("mx", "my", n, 5, 8)
        assert (row.layer_a, row.layer_b) == (3, 3)
        cut = {"svcca": 0.9, "cca_mean": TOLERANCE, "cca_mean_squared": TOLERANCE, "pwcca": TOLERANCE}
        assert row.cut == cut[row.measure] if row.measure in cut else np.isnan(row.cut)
    assert 0 < table.set_index("measure").loc["svcca", "kept_a"] < 5  # the 90 % cut dropped a direction
    # the statistics through the pair file are those of the materialised rows; the pair's splits stay as they were
    pair = lmd.PairMoments.load(tmp_path / "pair.npz")
    train = pair.comoment["train"].copy()
    stats = sim.PairStatistics.from_pair(pair, "my", "mx")
    assert np.array_equal(pair.comoment["train"], train) and pair.all_units().n == n
    direct = sim.PairStatistics.from_rows(f32(y), f32(x))
    for name in ("sxx", "syy", "sxy", "norm4_x", "norm4_y", "norm_xy"):
        assert np.allclose(getattr(stats, name), getattr(direct, name), rtol=1e-10, atol=0), name


@pytest.mark.unit
def test_rotated_copy_is_one_and_each_measure_ignores_what_it_should():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 4.0
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    rotated = sim.measure_pair(sim.PairStatistics.from_rows(x, 3.0 * x @ q + 1.0))
    for row in rotated:
        assert row["value"] == pytest.approx(1.0, abs=1e-10), row["measure"]
    # an invertible but not orthogonal map: CCA (every kind) stays 1, CKA and Procrustes do not
    stretched = x @ np.diag([1.0, 1.0, 1.0, 1.0, 10.0, 0.1])
    values = {row["measure"]: row["value"] for row in sim.measure_pair(sim.PairStatistics.from_rows(x, stretched))}
    for measure in ("cca_mean", "cca_mean_squared", "pwcca"):
        assert values[measure] == pytest.approx(1.0, abs=1e-10), measure
    for measure in ("cka", "cka_debiased", "procrustes"):
        assert values[measure] < 0.99, measure
    assert values["cka"] == pytest.approx(direct_cka(x, stretched), abs=1e-10)


@pytest.mark.unit
def test_independent_noise_debiased_cka_is_about_zero_where_cka_is_not():
    """At n = 40 units of 10 and 15 independent dimensions, the biased HSIC's expectation is not zero (linear CKA
    about 0.24 here), the unbiased one's is: over 20 draws its mean lies within a few of its standard errors of 0,
    and in every draw linear CKA is further from 0 than the debiased one."""
    rng = np.random.default_rng(3)
    biased, debiased = [], []
    for _ in range(20):
        x, y = rng.normal(size=(40, 10)), rng.normal(size=(40, 15))
        stats = sim.PairStatistics.from_rows(x, y)
        biased.append(sim.linear_cka(stats.sxx, stats.syy, stats.sxy))
        debiased.append(sim.debiased_cka(stats))
        assert debiased[-1] == pytest.approx(direct_debiased_cka(x, y), abs=1e-10)
    error = np.std(debiased) / np.sqrt(len(debiased))
    assert abs(np.mean(debiased)) < 4 * error
    assert np.min(biased) > np.max(np.abs(debiased)) and np.mean(biased) > 25 * error


@pytest.mark.unit
def test_singular_covariance_is_cut_to_its_rank():
    """A duplicated column (rank 5 of 6 dimensions): the rank cut gives the CCA of the 5 distinct columns."""
    rng = np.random.default_rng(4)
    x, y = latent_models(rng, 200, [5, 4], latent=3, noise=0.5)
    doubled = np.hstack([x, x[:, :1]])
    stats = sim.PairStatistics.from_rows(doubled, y)
    cca = sim.canonical_correlations(stats.sxx, stats.syy, stats.sxy)
    assert (cca.kept_x, cca.kept_y) == (5, 4)
    qx, _ = np.linalg.qr(centred(x))  # the five distinct columns, full rank: plain QR
    qy, _ = np.linalg.qr(centred(y))
    assert np.allclose(cca.rho, np.linalg.svd(qx.T @ qy, compute_uv=False), rtol=0, atol=1e-10)
    assert sim.pwcca(cca) == pytest.approx(direct_pwcca(doubled, y), abs=1e-10)  # weights over y: fewer directions
    with pytest.raises(ValueError, match="constant over the units"):
        sim.canonical_correlations(np.zeros((3, 3)), stats.syy, np.zeros((3, 4)))


@pytest.mark.unit
def test_bad_inputs_name_the_input_and_the_fix(tmp_path):
    stats = sim.PairStatistics.from_rows(np.eye(5), np.eye(5)[::-1])
    with pytest.raises(WorkflowInputError, match=r"similarity.measures \['cka', 'nope'\].*one of"):
        sim.measure_pair(stats, ["cka", "nope"])
    with pytest.raises(WorkflowInputError, match="no pair file for models 'a' and 'b'"):
        sim.similarity_table({}, ["b", "a"])
    with pytest.raises(WorkflowInputError, match="at least two models"):
        sim.similarity_table({}, ["a"])
    with pytest.raises(ValueError, match="at least 4 units"):
        sim.debiased_cka(sim.PairStatistics.from_rows(np.eye(3), np.eye(3)))
    with pytest.raises(ValueError, match="variance fraction"):
        sim.svcca(stats.sxx, stats.syy, stats.sxy, variance=1.5)


@pytest.mark.unit
def test_similarity_matrix_is_symmetric_with_ones_on_the_diagonal():
    table = pd.DataFrame({"model_a": ["a", "a", "b"], "model_b": ["b", "c", "c"], "measure": ["cka"] * 3,
                          "value": [0.5, 0.25, 0.75]})
    matrix = sim.similarity_matrix(table, "cka", ["c", "a", "b"])
    assert np.array_equal(matrix, matrix.T) and np.all(np.diag(matrix) == 1.0)
    assert matrix[1, 2] == 0.5 and matrix[0, 1] == 0.25 and matrix[0, 2] == 0.75


# ---------------------------------------------------------------------------------- layer sweeps
def sweep_models(tmp_path, rng, n=300):
    """Two pooled files of models of different depth and width (4 layers x 5 dims, 3 layers x 8 dims), sharing
    a latent across layers, with a few units only in one model, in row groups of different sizes."""
    ids = np.arange(n)
    split = np.where(rng.random(n) < 0.3, "test", "train")
    shared = rng.normal(size=(n, 3))
    layers_x = {layer: shared @ rng.normal(size=(3, 5)) + (0.3 + layer) * rng.normal(size=(n, 5)) + 7.0
                for layer in range(4)}
    layers_y = {layer: shared @ rng.normal(size=(3, 8)) + (0.5 + layer) * rng.normal(size=(n, 8)) - 3.0
                for layer in range(3)}
    keep_x, keep_y = np.ones(n, bool), np.ones(n, bool)
    keep_x[[4, 50, 51]] = False
    keep_y[[7, 199]] = False
    path_x = write_model(tmp_path, "mx", ids[keep_x], split[keep_x], {k: v[keep_x] for k, v in layers_x.items()}, 37)
    path_y = write_model(tmp_path, "my", ids[keep_y], split[keep_y], {k: v[keep_y] for k, v in layers_y.items()}, 64)
    f32 = lambda v: v.astype(np.float32).astype(np.float64)  # noqa: E731  what the Parquet holds
    common = keep_x & keep_y
    return path_x, path_y, {k: f32(v[common]) for k, v in layers_x.items()}, {k: f32(v[common]) for k, v in layers_y.items()}


@pytest.mark.unit
def test_layer_sweep_matches_the_direct_computation_of_every_layer_pair(tmp_path):
    """Every measure of every (layer of mx, layer of my) from one streamed pass (blocks of 50 rows, so that the
    running update and the norm shifts run many times) equals the direct computation on the materialised rows of
    the units both models have, to 1e-8; relative depths l / (L - 1); the best basis layer is the argmax."""
    rng = np.random.default_rng(11)
    path_x, path_y, xs, ys = sweep_models(tmp_path, rng)
    x, y = sim.swept_model("mx", path_x, "example"), sim.swept_model("my", path_y, "example")
    assert x.source.layers == (0, 1, 2, 3) and y.source.layers == (0, 1, 2)
    parts, counts = sim.compute_sweep_moments(x, y, "example", block_rows=50, validation_fraction=0.25)
    assert (counts.matched, counts.only_a, counts.only_b) == (295, 2, 3)
    assert all(part.nbytes == sim.sweep_memory_bytes((5, 8), (4, 3)) for part in parts.values())
    assert sum(part.n for part in parts.values()) == 295 and min(part.n for part in parts.values()) > 30
    assert all(part.groups == part.n for part in parts.values())  # example units: one example each
    sim.save_sweep(tmp_path / "sweep.npz", x, y, parts, {}, (0.25, 0))
    # the parts merged (in memory, or read block by block from the memory-mapped file) are every unit
    lazy = sim.SweepFile.load(tmp_path / "sweep.npz", lazy=True)
    assert isinstance(lazy.parts["fit"].cross.base, np.memmap) and lazy.validation == (0.25, 0)
    whole = lazy.all_units()
    eager = sim.SweepFile.load(tmp_path / "sweep.npz").all_units()
    assert whole.n == 295  # (memory-mapped operands can take other SIMD paths: equal to rounding, not bitwise)
    assert all(np.allclose(getattr(whole, a), getattr(eager, a), rtol=1e-13, atol=0) for a in sim.sweep.ARRAYS)
    table = sim.sweep_table(lazy, sim.MEASURES, 0.9, TOLERANCE)
    assert len(table) == 4 * 3 * len(sim.MEASURES)
    direct = {(a, b): direct_measures(xs[a], ys[b], variance=0.9) for a in xs for b in ys}
    for row in table.itertuples():
        value, kept_x, kept_y = direct[row.layer_a, row.layer_b][row.measure]
        assert abs(row.value - value) < 1e-8, (row.measure, row.layer_a, row.layer_b)
        assert (row.kept_a, row.kept_b, row.n_units) == (kept_x, kept_y, 295)
        assert (row.depth_a, row.depth_b) == (row.layer_a / 3, row.layer_b / 2)
    best = sim.best_matches(table)
    cka = table[table["measure"] == "cka"]
    for row in best[best["measure"] == "cka"].itertuples():
        side, other = ("a", "b") if row.target == "mx" else ("b", "a")
        candidates = cka[cka[f"layer_{side}"] == row.target_layer]
        assert row.best_basis_layer == candidates.loc[candidates["value"].idxmax(), f"layer_{other}"]
        assert row.depth_difference == pytest.approx(row.best_basis_depth - row.target_depth)
    assert len(best[best["measure"] == "cka"]) == 4 + 3  # every layer of each model as the target once
    # a selection of layers (negative from the end) sweeps only those
    chosen = sim.swept_model("mx", path_x, "example", [0, -1])
    assert chosen.source.layers == (0, 3) and list(chosen.depths()) == [0.0, 1.0]


def split_rows(ids, split, fraction, seed=0):
    """Masks of the fit, valid and test parts of units (example ids, their split), as the pair files cut them."""
    from lmcompare.decomposition.validation_split import validation_mask

    valid = (split == "train") & validation_mask(ids, fraction, seed)
    return {"fit": (split == "train") & ~valid, "valid": valid, "test": split == "test"}


def direct_fit(u, z, masks, alpha, grid=lmd.DEFAULT_ALPHA_GRID):
    """decomposition.fit.scored_fit on statistics of the materialised rows of each split (no streaming)."""
    from lmcompare.decomposition.fit import scored_fit

    stats = {split: lmd.SplitStats.from_rows(u[mask], z[mask]) for split, mask in masks.items()}
    train = masks["fit"] | masks["valid"]
    stats["train"] = lmd.SplitStats.from_rows(u[train], z[train])
    return scored_fit(stats, alpha, list(grid), "paper", "direct", 5, 5, 0.3, log=False)


def swept_files(tmp_path, rng, n=240, drop=None):
    """Three pooled models of different depth and width sharing a latent (mx 4 layers x 5, my 3 x 8, mz 2 x 4; every
    unit in all three unless `drop`: model -> ids it lacks), their sweep files (validation fraction 0.3) and rows."""
    tmp_path.mkdir(exist_ok=True)
    ids = np.arange(n)
    split = np.where(rng.random(n) < 0.35, "test", "train")
    shared = rng.normal(size=(n, 3))
    shapes = {"mx": (4, 5), "my": (3, 8), "mz": (2, 4)}
    rows, paths = {}, {}
    for model, (layers, dims) in shapes.items():
        keep = ~np.isin(ids, (drop or {}).get(model, []))
        vectors = {layer: shared @ rng.normal(size=(3, dims)) + (0.4 + 0.5 * layer) * rng.normal(size=(n, dims)) + 2.0
                   for layer in range(layers)}
        paths[model] = write_model(tmp_path, model, ids[keep], split[keep], {k: v[keep] for k, v in vectors.items()},
                                   41 + 7 * layers)
        rows[model] = {k: np.where(keep[:, None], v.astype(np.float32).astype(np.float64), np.nan)
                       for k, v in vectors.items()}
    sweeps = {}
    for a, b in lmd.model_pairs(sorted(shapes)):
        x, y = sim.swept_model(a, paths[a], "example"), sim.swept_model(b, paths[b], "example")
        parts, _ = sim.compute_sweep_moments(x, y, "example", block_rows=60, validation_fraction=0.3)
        sim.save_sweep(tmp_path / f"{a}-{b}.npz", x, y, parts, {}, (0.3, 0))
        sweeps[(a, b)] = sim.SweepFile.load(tmp_path / f"{a}-{b}.npz", lazy=True)
    return sweeps, rows, ids, split


@pytest.mark.unit
def test_r2_of_every_layer_pair_equals_the_fit_on_the_materialised_rows(tmp_path):
    """The decomposition's R² of every layer of mx from every layer of my and back, from the sweep file's parts, equals
    scored_fit on each split's materialised rows to 1e-8 (a fixed alpha and the validation choice: the same chosen
    alpha), and scikit-learn's Ridge scored with the variance-weighted R² (the decomposition's definition)."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(21)
    sweeps, rows, ids, split = swept_files(tmp_path, rng, drop={"my": [3, 77]})
    masks = split_rows(ids, split, 0.3)
    common = np.isfinite(rows["mx"][0][:, 0]) & np.isfinite(rows["my"][0][:, 0])
    masks = {name: mask & common for name, mask in masks.items()}
    settings = sim.fit_settings(["paper"], [1e-6, "validation"])
    table = sim.pair_layer_fits(sweeps[("mx", "my")], settings, lmd.DEFAULT_ALPHA_GRID, 5, 5)
    assert len(table) == 2 * 2 * 4 * 3 and set(table["alpha_setting"]) == {"paper_alpha-1e-06", "paper_alpha-validation"}
    for row in table.itertuples():
        u, z = rows[row.target][row.target_layer], rows[row.basis][row.basis_layer]
        expected = direct_fit(u, z, masks, 1e-6 if row.alpha_choice == "fixed" else "validation")
        for column in ("r2_train", "r2_test", "alpha"):
            assert abs(getattr(row, column) - expected[column]) < 1e-8, (row, column)
        assert row.r2_valid == pytest.approx(expected["r2_valid"], abs=1e-8, nan_ok=True)
        assert (row.n_train, row.n_test) == (int((masks["fit"] | masks["valid"]).sum()), int(masks["test"].sum()))
        assert (row.target_depth, row.basis_depth) == pytest.approx(
            (row.target_layer / (row.n_layers_target - 1), row.basis_layer / (row.n_layers_basis - 1)))
    row = table[(table["target"] == "my") & (table["target_layer"] == 2) & (table["basis_layer"] == 1)
                & (table["alpha_choice"] == "fixed")].iloc[0]
    train, test = masks["fit"] | masks["valid"], masks["test"]
    u, z = rows["my"][2], rows["mx"][1]
    ridge = Ridge(alpha=(train.sum() - 1) * 1e-6).fit(z[train], u[train])
    assert row.r2_test == pytest.approx(r2_score(u[test], ridge.predict(z[test]), multioutput="variance_weighted"),
                                        abs=1e-8)
    best = sim.best_r2_layers(table)
    assert len(best) == 2 * (4 + 3)  # per setting, every layer of each model as the target once
    for b in best.itertuples():
        candidates = table[(table["alpha_setting"] == b.alpha_setting) & (table["target"] == b.target)
                           & (table["target_layer"] == b.target_layer)]
        assert b.best_basis_layer == candidates.loc[candidates["r2_test"].idxmax(), "basis_layer"]


@pytest.mark.unit
def test_group_r2_per_target_layer_equals_the_fit_on_the_depth_matched_basis_rows(tmp_path):
    """Every layer of each of three models from the other two, each at its layer of the nearest relative depth (a
    tie to the deeper layer), from the three sweep files, equals scored_fit on the concatenated materialised basis
    rows to 1e-8; units missing from one model make the estimate pairwise-complete, and say so."""
    assert sim.matched_layer([0, 1, 2, 3], 4, 0.5) == 2 and sim.matched_layer([0, 1, 2], 3, 1 / 3) == 1
    assert sim.matched_layer([0, 2], 3, 0.5) == 2 and sim.matched_layer([0, 1], 2, 0.49) == 0
    rng = np.random.default_rng(22)
    sweeps, rows, ids, split = swept_files(tmp_path, rng)
    masks = split_rows(ids, split, 0.3)
    settings = sim.fit_settings(["paper"], [1e-3, "validation"])
    table = sim.group_layer_fits(sweeps, ["mx", "my", "mz"], settings, lmd.DEFAULT_ALPHA_GRID, 5, 5)
    assert len(table) == 2 * (4 + 3 + 2) and (table["joint_covariance"] == "from_pairs").all()
    n_layers = {"mx": 4, "my": 3, "mz": 2}
    for row in table.itertuples():
        basis = list(zip(row.basis_models.split(";"), (int(k) for k in row.basis_layers.split(";"))))
        depth = row.target_layer / (n_layers[row.target] - 1)
        assert basis == [(m, sim.matched_layer(list(range(n_layers[m])), n_layers[m], depth))
                         for m in ("mx", "my", "mz") if m != row.target]
        z = np.hstack([rows[m][k] for m, k in basis])
        expected = direct_fit(rows[row.target][row.target_layer], z, masks, 1e-3 if row.alpha_choice == "fixed"
                              else "validation")
        for column in ("r2_train", "r2_test", "alpha"):
            assert abs(getattr(row, column) - expected[column]) < 1e-8, (row, column)
        assert row.basis_dims == z.shape[1]
    partial, _, _, _ = swept_files(tmp_path / "partial", np.random.default_rng(23), drop={"mz": [5]})
    table = sim.group_layer_fits(partial, ["mx", "my", "mz"], settings[:1], lmd.DEFAULT_ALPHA_GRID, 5, 5)
    assert (table["joint_covariance"] == "pairwise_complete").all()


@pytest.mark.unit
def test_layer_sweep_of_word_units_needs_the_stored_token_layers(tmp_path):
    rows = factories.token_table([3, 2], lambda e, w: 1, lambda e: "train")
    path = factories.write_tokens(tmp_path / "t.parquet", {2: np.ones((len(rows), 4))}, rows, model="mt", n_layers=4)
    assert sim.swept_model("mt", str(path), "word").source.layers == (2,)  # every stored token layer
    with pytest.raises(WorkflowInputError, match=r"layers \[2\] only.*\[3\].*extraction.token_layers"):
        sim.swept_model("mt", str(path), "word", [-1])
    with pytest.raises(WorkflowInputError, match=r"layer_sweep.measures \['cka', 'knn'\]"):
        sim.check_sweep_measures(["cka", "knn"])


# ------------------------------------------------------------------------------- mutual kNN
def brute_force_knn(x, k):
    """Each row's k nearest other rows by cosine similarity: numpy, float64, every pair (platonic-rep's rule)."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = xn @ xn.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1)[:, :k]


def near_ties(x, k, resolution=1e-7):
    """Units whose k-th and (k+1)-th nearest cosines differ by less than `resolution` (float32 cannot order them)."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = xn @ xn.T
    np.fill_diagonal(similarity, -np.inf)
    top = -np.sort(-similarity, axis=1)[:, k - 1:k + 1]
    return int(np.sum(top[:, 0] - top[:, 1] < resolution))


def brute_force_mutual_knn(x, y, k):
    a, b = brute_force_knn(x, k), brute_force_knn(y, k)
    return np.mean([len(set(a[i]) & set(b[i])) / k for i in range(len(x))])


@pytest.mark.unit
def test_mutual_knn_equals_the_brute_force_score():
    rng = np.random.default_rng(12)
    x, y = latent_models(rng, 80, [6, 9], latent=3, noise=1.0)
    found = sim.knn_indices(x, 7)
    assert [set(row) for row in found] == [set(row) for row in brute_force_knn(x, 7)]
    assert sim.mutual_knn_score(found, sim.knn_indices(y, 7)) == brute_force_mutual_knn(x, y, 7)
    assert sim.direct_mutual_knn(x, y, 7) == brute_force_mutual_knn(x, y, 7)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))  # a rotation and a scaling keep every neighbourhood
    assert sim.mutual_knn_score(found, sim.knn_indices(2.5 * x @ q, 7)) == 1.0
    duplicated = np.vstack([x, x[:1]])  # a duplicate may outrank the row itself: still k other rows
    assert all(i not in row for i, row in enumerate(sim.knn_indices(duplicated, 3)))
    with pytest.raises(ValueError, match="1 <= k < n"):
        sim.knn_indices(x[:5], 5)


@pytest.mark.unit
def test_mutual_knn_of_a_sweep_on_capped_units_equals_the_brute_force_score(tmp_path):
    """Through the pooled files: the units both models have, capped at 120 by the seeded hash (the same units
    for any pair), every layer pair's score equals the brute force on those units' vectors."""
    rng = np.random.default_rng(13)
    path_x, path_y, xs, ys = sweep_models(tmp_path, rng)
    x, y = sim.swept_model("mx", path_x, "example", [1, -1]), sim.swept_model("my", path_y, "example")
    table = sim.mutual_knn_table(x, y, "example", k=5, max_units=120, seed=3)
    common = np.setdiff1d(np.arange(300), [4, 50, 51, 7, 199])
    sample = sim.sample_keys(common, 120, 3)
    assert sample.size == 120 and np.array_equal(sample, sim.sample_keys(common[::-1], 120, 3))
    picked = np.searchsorted(common, sample)
    assert len(table) == 2 * 3
    for row in table.itertuples():
        expected = brute_force_mutual_knn(xs[row.layer_a][picked], ys[row.layer_b][picked], 5)
        assert row.value == expected, (row.layer_a, row.layer_b)
        assert (row.n_units, row.kept_a, row.cut, row.measure) == (120, 5, 120.0, "mutual_knn")


@pytest.mark.unit
def test_word_units_across_two_tokenizers_sweep_and_mutual_knn_equal_the_direct_computation(tmp_path):
    """Two token files that split the same words differently (one token per word against 1-3 tokens, and a
    word only one model has), two stored layers each: the words are aligned by (example_id, word_id) and each word
    is the mean of its tokens; every layer pair's sweep measures equal the direct computation on those word
    vectors to 1e-8, and the mutual kNN score the brute force exactly."""
    rng = np.random.default_rng(14)
    words = [12, 9, 15, 11]
    split_of = lambda e: "test" if e == 3 else "train"  # noqa: E731
    rows_a = factories.token_table(words, lambda e, w: 1, split_of)
    rows_b = factories.token_table(words, lambda e, w: 1 + (e + w) % 3, split_of)
    rows_b = rows_b[~((rows_b["example_id"] == 1) & (rows_b["word_id"] == 4))]  # a word model b never saw
    vectors_a = {layer: rng.normal(size=(len(rows_a), 6)) + layer for layer in (0, 1)}
    vectors_b = {layer: rng.normal(size=(len(rows_b), 10)) - layer for layer in (0, 2)}
    path_a = factories.write_tokens(tmp_path / "a.parquet", vectors_a, rows_a, model="wa", n_layers=2,
                                    row_group_size=13)
    path_b = factories.write_tokens(tmp_path / "b.parquet", vectors_b, rows_b, model="wb", n_layers=3,
                                    row_group_size=17)

    def word_means(rows, vectors):
        frame = pd.DataFrame(vectors.astype(np.float32).astype(np.float64))
        keep = rows["word_id"].to_numpy() >= 0
        return frame[keep].groupby([rows["example_id"].to_numpy()[keep], rows["word_id"].to_numpy()[keep]]).mean()

    a = {layer: word_means(rows_a, v) for layer, v in vectors_a.items()}
    b = {layer: word_means(rows_b, v) for layer, v in vectors_b.items()}
    shared = a[0].index.intersection(b[0].index)
    assert len(shared) == sum(words) - 1
    a, b = ({layer: m.loc[shared].to_numpy() for layer, m in side.items()} for side in (a, b))
    x, y = sim.swept_model("wa", str(path_a), "word"), sim.swept_model("wb", str(path_b), "word")
    assert (x.source.layers, y.source.layers) == ((0, 1), (0, 2))  # every stored token layer
    parts, counts = sim.compute_sweep_moments(x, y, "word", block_rows=10, validation_fraction=0.6)
    assert (counts.matched, counts.only_a, counts.only_b) == (len(shared), 1, 0)
    # the words of an example (cut across row groups) count it once, in one part: 3 train reviews (2 of them in the
    # validation part at this fraction and seed), 1 test review
    assert (parts["fit"].groups, parts["valid"].groups, parts["test"].groups) == (1, 2, 1)
    assert parts["test"].n == words[3] and parts["fit"].n > 0 and parts["valid"].n > 0
    sim.save_sweep(tmp_path / "sweep.npz", x, y, parts, {})
    moments = sim.sweep_table(sim.SweepFile.load(tmp_path / "sweep.npz"), ["cka", "cka_debiased", "procrustes"],
                              0.99, TOLERANCE)
    assert len(moments) == 2 * 2 * 3
    for row in moments.itertuples():
        assert abs(row.value - direct_measures(a[row.layer_a], b[row.layer_b])[row.measure][0]) < 1e-8, row
    assert sorted(set(moments["depth_b"])) == [0.0, 1.0]  # layers 0 and 2 of a 3-layer model
    table = sim.mutual_knn_table(x, y, "word", k=4, max_units=None, seed=0)
    assert table["value"].tolist() == [brute_force_mutual_knn(a[i], b[j], 4) for i in (0, 1) for j in (0, 2)]
    assert (table["n_units"] == len(shared)).all() and table["cut"].isna().all()


# ------------------------------------------------------------------------- workflow, end to end
from tests.conftest import SWEEP_SECTION, copy_run, lmd_config, pending_jobs, run_workflow  # noqa: E402

SIM_OUT = "results/analysis/similarity/toy/word/t-1_b-1"


def word_vectors(workdir, model, layer):
    """Each word's vector (the mean of its tokens) indexed by (example_id, word_id), from the token file."""
    import pyarrow.parquet as pq

    from lmcompare import hidden_states, paths

    table = pq.read_table(workdir / paths.tokens_path("toy", model))
    frame = table.select(["example_id", "word_id"]).to_pandas()
    vecs = hidden_states.vectors(table, hidden_states.token_column(layer)).astype(np.float64)
    words = frame["word_id"].to_numpy() >= 0
    return pd.DataFrame(vecs[words]).groupby([frame["example_id"].to_numpy()[words],
                                              frame["word_id"].to_numpy()[words]]).mean()


@pytest.mark.workflow
def test_workflow_table_matches_the_token_files_and_a_new_measure_reruns_only_the_join(
        lmd_run, tiny_models, tiny_corpus, tmp_path):
    workdir, _ = lmd_run
    table = pd.read_csv(workdir / SIM_OUT / "similarity.csv")
    bert, roberta = word_vectors(workdir, "tiny-bert", 2), word_vectors(workdir, "tiny-roberta", 3)
    shared = bert.index.intersection(roberta.index)  # the words both tokenizers cover, train and test
    x, y = bert.loc[shared].to_numpy(), roberta.loc[shared].to_numpy()
    expected = direct_measures(x, y)
    assert table["measure"].tolist() == list(sim.MEASURES)
    for row in table.itertuples():
        value, kept_x, kept_y = expected[row.measure]
        assert abs(row.value - value) < 1e-8, row.measure
        assert (row.kept_a, row.kept_b) == (kept_x, kept_y), row.measure
        assert (row.dataset, row.unit, row.model_a, row.model_b) == ("toy", "word", "tiny-bert", "tiny-roberta")
        assert (row.n_units, row.dims_a, row.dims_b, row.layer_a, row.layer_b) == (len(shared), 32, 48, 2, 3)
        assert (row.cut == 0.99) if row.measure == "svcca" else (
            row.cut == TOLERANCE if row.measure in ("cca_mean", "cca_mean_squared", "pwcca") else np.isnan(row.cut))
    figures = workdir / "results/figures/similarity/toy/word/t-1_b-1"
    assert all((figures / f"{m}.{ext}").stat().st_size > 1000 for m in sim.MEASURES for ext in ("png", "svg"))
    log = (workdir / "results/logs/similarity/toy/word/t-1_b-1.log").read_text()
    assert "1 pair files in, 7 rows out" in log and f"on {len(shared)} units" in log
    assert (workdir / "results/benchmarks/similarity/toy/word/t-1_b-1.tsv").exists()

    # a run of one measure, then the others added (and a measure added to the layer sweep): only the similarity jobs
    # and the sweep's per-pair measure jobs and join are scheduled (no pair pass, no fit, no sweep pass, no kNN)
    scratch = copy_run(workdir, tmp_path / "measures")
    run_workflow(scratch, lmd_config(tiny_models, tiny_corpus, similarity={"measures": ["cka"]}))
    assert pd.read_csv(scratch / SIM_OUT / "similarity.csv")["measure"].tolist() == ["cka"]
    # mutual kNN in the single-layer table: from the vectors of the target layers (the kNN rule of the layer
    # selection [-1]), equal to the brute force on the word vectors both tokenizers cover, but for units whose k-th
    # and (k+1)-th cosines tie within float32's resolution (faiss's inner products are float32): measured here, 3 of
    # 717 words differ (e.g. cosines 0.99999671 and 0.99999669); 9 units have such a tie within 1e-7, each can move
    # the score by 1 / (k n)
    run_workflow(scratch, lmd_config(tiny_models, tiny_corpus, similarity={"measures": ["mutual_knn", "cka"]}))
    knn = pd.read_csv(scratch / SIM_OUT / "similarity.csv")
    assert knn["measure"].tolist() == ["mutual_knn", "cka"]
    row = knn.iloc[0]
    ties = near_ties(x, 3) + near_ties(y, 3)
    assert abs(row.value - brute_force_mutual_knn(x, y, 3)) <= ties / (3 * len(x)) + 1e-12
    assert (row.n_units, row.kept_a, row.cut) == (len(shared), 3, 10000)
    assert (scratch / "results/analysis/similarity/toy/word/sweep/l-1/knn/tiny-bert/tiny-roberta.csv").exists()
    sweep = SWEEP_SECTION["layer_sweep"]
    config = lmd_config(tiny_models, tiny_corpus,
                        similarity={"layer_sweep": {**sweep, "measures": [*sweep["measures"], "procrustes"]}})
    (scratch / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    jobs = pending_jobs(scratch)
    assert jobs and {rule for rule, _ in jobs} == {"similarity", "similarity_sweep_pair", "similarity_sweep"}, jobs
    assert {out for _, out in jobs if out.endswith("similarity.csv")} == {
        f"results/analysis/similarity/toy/{unit}/t-1_b-1/similarity.csv" for unit in ("example", "word")}
    assert {out for rule, out in jobs if rule == "similarity_sweep_pair" and out.endswith(".csv")} == {
        "results/analysis/similarity/toy/example/sweep/all/pairs/tiny-bert/tiny-roberta.csv"}


def pooled_rows(workdir):
    """The shared run's pooled mean vectors per model and layer (float64) and each file's (example_id, split)."""
    import pyarrow.parquet as pq

    from lmcompare import hidden_states, paths

    states = {m: hidden_states.load_hidden_states(workdir / paths.pooled_path("toy", m))
              for m in ("tiny-bert", "tiny-roberta")}
    rows = {m: {layer: s["mean", layer].astype(np.float64) for layer in range(s.n_layers)} for m, s in states.items()}
    keys = {m: pq.read_table(s.path, columns=["example_id", "split"]).to_pandas() for m, s in states.items()}
    return rows, keys


@pytest.mark.workflow
def test_workflow_layer_sweep_matches_the_pooled_files(lmd_run):
    """The shared run's layer sweep (example units, every layer: tiny-bert 3 x 32, tiny-roberta 4 x 48; cka and
    mutual_knn, conftest.SWEEP_SECTION): every value of every layer pair equals the direct computation on the pooled
    files' rows (mutual kNN: the brute force on every example, fewer than knn_max_units); the best layers, the
    figures. (A new sweep measure reruns no pass: test_workflow_table_matches_the_token_files_and_a_new_measure_...)"""
    measures = SWEEP_SECTION["layer_sweep"]["measures"]

    workdir, _ = lmd_run
    sweep = workdir / "results/analysis/similarity/toy/example/sweep/all"
    table = pd.read_csv(sweep / "sweep.csv")
    rows, _ = pooled_rows(workdir)
    assert table["measure"].unique().tolist() == measures
    assert len(table) == 3 * 4 * len(measures)
    for row in table.itertuples():
        x, y = rows["tiny-bert"][row.layer_a], rows["tiny-roberta"][row.layer_b]
        expected = brute_force_mutual_knn(x, y, 3) if row.measure == "mutual_knn" else \
            direct_measures(x, y)[row.measure][0]
        assert abs(row.value - expected) < 1e-8, (row.measure, row.layer_a, row.layer_b)
        assert (row.dataset, row.unit, row.model_a, row.model_b, row.n_units) == ("toy", "example", "tiny-bert",
                                                                                  "tiny-roberta", len(x))
        assert (row.depth_a, row.depth_b) == pytest.approx((row.layer_a / 2, row.layer_b / 3), abs=1e-9)
    best = pd.read_csv(sweep / "best_layers.csv")
    assert len(best) == len(measures) * (3 + 4)
    figures = workdir / "results/figures/similarity/toy/example/sweep/all"
    assert all((figures / f"tiny-bert/tiny-roberta/{m}.png").stat().st_size > 1000 for m in measures)
    assert all((figures / f"best_layer_{m}.svg").stat().st_size > 1000 for m in measures)
    log = (workdir / "results/logs/similarity/sweep/moments/toy/example/all/tiny-bert/tiny-roberta.log").read_text()
    assert "MB of statistics (3 parts: fit, valid, test)" in log and f"units: {len(x)} aligned" in log


@pytest.mark.workflow
def test_workflow_r2_of_every_layer_pair_matches_the_pooled_files_and_the_decomposition(lmd_run):
    """The shared run's layer-sweep R² (both alphas of LMD_SECTION): every layer pair, both directions, equals
    scored_fit on the pooled files' rows split as the pair files split them, to 1e-8; the last layers' cell equals the
    decomposition's pairwise R² of the same units, the group R² at the last layer its group R²; figures and logs."""
    workdir, _ = lmd_run
    sweep = workdir / "results/analysis/similarity/toy/example/sweep/all"
    fits = pd.read_csv(sweep / "r2.csv")
    rows, keys = pooled_rows(workdir)
    assert keys["tiny-bert"].equals(keys["tiny-roberta"])  # the same examples in the same order
    ids, split = keys["tiny-bert"]["example_id"].to_numpy(), keys["tiny-bert"]["split"].to_numpy()
    masks = split_rows(ids, split, 0.2)
    assert len(fits) == 2 * 2 * 3 * 4 and set(fits["alpha_setting"]) == {"paper_alpha-1e-06", "paper_alpha-validation"}
    for row in fits.itertuples():
        expected = direct_fit(rows[row.target][row.target_layer], rows[row.basis][row.basis_layer], masks,
                              1e-6 if row.alpha_choice == "fixed" else "validation")
        assert abs(row.r2_test - expected["r2_test"]) < 1e-8 and row.alpha == pytest.approx(expected["alpha"]), row
    decomposition = workdir / "results/analysis/decomposition/toy/example/t-1_b-1/paper"
    group = pd.read_csv(sweep / "group_r2.csv")
    assert len(group) == 2 * (3 + 4) and (group["joint_covariance"] == "from_pairs").all()
    for tag in ("alpha-1e-06", "alpha-validation"):
        pairwise = pd.read_csv(decomposition / tag / "pairwise.csv")
        for target, basis, last, basis_last in (("tiny-bert", "tiny-roberta", 2, 3), ("tiny-roberta", "tiny-bert", 3, 2)):
            cell = fits[(fits["alpha_setting"] == f"paper_{tag}") & (fits["target"] == target)
                        & (fits["target_layer"] == last) & (fits["basis_layer"] == basis_last)].iloc[0]
            reference = pairwise[(pairwise["model"] == target) & (pairwise["basis_model"] == basis)].iloc[0]
            assert abs(cell.r2_test - reference.r2_test) < 1e-8 and cell.n_test == reference.n_test
            top = group[(group["alpha_setting"] == f"paper_{tag}") & (group["target"] == target)
                        & (group["target_layer"] == last)].iloc[0]
            assert abs(top.r2_test - reference.r2_test) < 1e-8  # two models: the group basis is the other model
            assert str(top.basis_layers) == str(basis_last)
    best = pd.read_csv(sweep / "r2_best_layers.csv")
    assert len(best) == 2 * (3 + 4)
    figures = workdir / "results/figures/similarity/toy/example/sweep/all"
    for tag in ("alpha-1e-06", "alpha-validation"):
        assert (figures / f"tiny-bert/tiny-roberta/r2_paper_{tag}.png").stat().st_size > 1000
        assert all((figures / f"{kind}r2_paper_{tag}.svg").stat().st_size > 1000 for kind in ("group_", "best_layer_"))
    log = (workdir / "results/logs/similarity/sweep/fits/toy/example/all/tiny-bert/tiny-roberta.log").read_text()
    assert "3 x 4 layers, both directions, 2 settings" in log and "48 fits" in log
