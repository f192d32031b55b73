"""Tests of the hidden-state variability stage: the metric against closed forms and a direct
implementation, the streaming, the layer selection, the robustness subsets, bad input, and the rules end to end."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import spearmanr

from lmcompare import hidden_states, paths
from lmcompare import variability as var
from lmcompare.errors import WorkflowInputError
from tests import factories


# ------------------------------------------------------------------------------------------- helpers
def nu_direct(x, y, rtol=None):
    """The card's formula, written out directly on all vectors at once (no streaming, no shortcuts)."""
    x = np.asarray(x, dtype=np.float64)
    classes = np.unique(y)
    covariances = [np.cov(x[y == c].T, bias=True).reshape(x.shape[1], x.shape[1]) for c in classes]
    within = np.mean(covariances, axis=0)
    means = np.array([x[y == c].mean(axis=0) for c in classes])
    centred = means - means.mean(axis=0)
    between = centred.T @ centred / len(classes)
    return float(np.trace(within @ np.linalg.pinv(between, rtol=rtol, hermitian=True)) / len(classes))


def exact_class(rng, mean, cov, n):
    """n samples whose empirical mean and population covariance are exactly `mean` and `cov`."""
    d = len(mean)
    z = rng.standard_normal((n, d))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z.T, bias=True))).T  # empirical covariance = I
    return np.asarray(mean) + z @ np.linalg.cholesky(cov).T


def random_spd(rng, d, scale=1.0):
    a = rng.standard_normal((d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


def write_pooled(path, layers, labels, splits, *, row_group_size=7, extra_meta=None, n_content=None):
    """A pooled.parquet of a synthetic model as the extraction writes it (tests/factories.py), from (n, d) arrays:
    mean vectors x, first-token vectors x with reversed dimensions."""
    return factories.write_pooled(path, layers, labels, splits, model="synthetic", dataset="synthetic",
                                  n_content_tokens=3 if n_content is None else n_content,
                                  row_group_size=row_group_size, metadata=extra_meta)


def gaussian_classes(rng, n_per_class, d, separation, offset=0.0):
    means = rng.standard_normal((len(n_per_class), d)) * separation + offset
    x = np.concatenate([rng.standard_normal((n, d)) + means[c] for c, n in enumerate(n_per_class)])
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    return x, y


# --------------------------------------------------------------------------------------- the metric
@pytest.mark.unit
def test_closed_form_two_classes():
    # means ±a e1, class covariances S1, S2 (exact): Σ_b = a² e1e1ᵀ, pinv = e1e1ᵀ/a², ν = ((S1+S2)/2)_11 / a² / 2
    rng = np.random.default_rng(0)
    d, a = 5, 1.7
    s1, s2 = random_spd(rng, d), random_spd(rng, d, 3.0)
    e1 = np.eye(d)[0]
    x = np.concatenate([exact_class(rng, a * e1, s1, 9), exact_class(rng, -a * e1, s2, 23)])
    y = np.repeat([0, 1], [9, 23])
    expected = ((s1 + s2) / 2)[0, 0] / a**2 / 2
    acc = var.MomentAccumulator(np.array([[9, 23]]), d)
    acc.update(x, y, np.ones((1, len(y)), bool))
    result = acc.result()
    assert result.nu == pytest.approx(expected, rel=1e-10)
    assert result.rank_between == 1 and result.n_classes == 2 and not result.degenerate
    assert result.trace_within == pytest.approx(np.trace((s1 + s2) / 2), rel=1e-10)
    assert result.trace_between == pytest.approx(a**2, rel=1e-10)


@pytest.mark.unit
def test_closed_form_four_classes_unequal_sizes():
    # means ±a e1, ±b e2 (unweighted centre 0): Σ_b = (a²/2) e1e1ᵀ + (b²/2) e2e2ᵀ,
    # ν = (1/4) (2 Σw_11 / a² + 2 Σw_22 / b²). Unequal sizes: a size-weighted Σ_w or centre would differ,
    # and n_y are small: sample (n-1) covariances would differ by n/(n-1).
    rng = np.random.default_rng(1)
    d, a, b = 6, 2.0, 0.5
    e1, e2 = np.eye(d)[0], np.eye(d)[1]
    sizes = [8, 13, 30, 9]
    covs = [random_spd(rng, d, s) for s in (1.0, 0.3, 2.0, 0.7)]
    means = [a * e1, -a * e1, b * e2, -b * e2]
    x = np.concatenate([exact_class(rng, m, c, n) for m, c, n in zip(means, covs, sizes)])
    y = np.repeat(np.arange(4), sizes)
    within = np.mean(covs, axis=0)
    expected = (2 * within[0, 0] / a**2 + 2 * within[1, 1] / b**2) / 4
    acc = var.MomentAccumulator(np.array([sizes]), d)
    acc.update(x, y, np.ones((1, len(y)), bool))
    assert acc.result().nu == pytest.approx(expected, rel=1e-10)
    assert acc.result().rank_between == 2
    assert nu_direct(x, y) == pytest.approx(expected, rel=1e-10)


@pytest.mark.unit
@pytest.mark.parametrize("d,sizes", [(16, [40, 25, 60]), (3, [30, 20, 25, 40, 10]), (1, [5, 9])])
def test_streamed_equals_direct(d, sizes):
    rng = np.random.default_rng(d)
    x, y = gaussian_classes(rng, sizes, d, separation=0.8, offset=50.0)  # large offset: the shift matters
    x = x @ rng.standard_normal((d, d))
    acc = var.MomentAccumulator(np.array([sizes]), d)
    order = rng.permutation(len(y))
    for chunk in np.array_split(order, 9):  # uneven, shuffled row groups
        acc.update(x[chunk], y[chunk], np.ones((1, len(chunk)), bool))
    assert acc.result().nu == pytest.approx(nu_direct(x, y), rel=1e-8)


@pytest.mark.unit
def test_streamed_file_equals_direct(tmp_path):
    rng = np.random.default_rng(7)
    d, sizes = 12, [31, 17, 22]
    layers, y = [], None
    for sep in (0.2, 1.0, 3.0):
        x, y = gaussian_classes(rng, sizes, d, separation=sep, offset=-20.0)
        layers.append(x.astype(np.float32))
    labels = np.array(["neg", "neu", "pos"])[y]
    order = rng.permutation(len(y))
    layers = [x[order] for x in layers]
    labels, y = labels[order], y[order]
    splits = np.where(rng.random(len(y)) < 0.3, "test", "train")
    path = write_pooled(tmp_path / "pooled.parquet", layers, labels, splits, row_group_size=11)
    frame = var.read_labels(path)
    codes, classes, dropped = var.class_codes(frame, dataset="synthetic", split="train")
    assert classes == ["neg", "neu", "pos"] and dropped == {}
    masks = {"full": codes >= 0}
    rows = var.stream_variability(path, codes=codes, masks=masks, pooling="mean", memory_mb=1e-3)
    train = splits == "train"
    for row, x in zip(rows, layers):
        assert row["nu"] == pytest.approx(nu_direct(x[train].astype(np.float64), y[train]), rel=1e-8)
        assert row["n"] == train.sum() and row["dims"] == d
    assert rows[0]["nu"] > rows[1]["nu"] > rows[2]["nu"]
    first = var.stream_variability(path, codes=codes, masks=masks, pooling="first")
    assert first[1]["nu"] == pytest.approx(nu_direct(layers[1][train][:, ::-1].astype(np.float64), y[train]), rel=1e-8)


@pytest.mark.unit
def test_invariances_and_separation():
    rng = np.random.default_rng(3)
    x, y = gaussian_classes(rng, [50, 70, 40], 8, separation=1.0)

    def nu(data):
        acc = var.MomentAccumulator(np.array([[50, 70, 40]]), data.shape[1])
        acc.update(data, y, np.ones((1, len(y)), bool))
        return acc.result().nu

    base = nu(x)
    assert nu(x * 37.5) == pytest.approx(base, rel=1e-9)
    assert nu(x * 1e-3) == pytest.approx(base, rel=1e-9)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    assert nu(x @ q + 5.0) == pytest.approx(base, rel=1e-9)
    # well separated classes: small ν, decreasing with the separation as 1/separation²
    values = []
    for sep in (0.5, 2.0, 8.0, 32.0):
        xs = x.copy()
        means = np.array([xs[y == c].mean(axis=0) for c in range(3)])
        xs += (sep - 1) * means[y]
        values.append(nu(xs))
    assert values == sorted(values, reverse=True)
    assert values[-1] < 1e-2 * values[0]


@pytest.mark.unit
def test_singular_between_and_degenerate_layers():
    rng = np.random.default_rng(4)
    d = 10
    # 3 classes whose means lie on a line: Σ_b has rank 1 (< C - 1); the pseudo-inverse handles it
    direction = rng.standard_normal(d)
    x = np.concatenate([rng.standard_normal((30, d)) + t * direction for t in (-1.0, 0.0, 1.0)])
    y = np.repeat([0, 1, 2], 30)
    x -= np.array([x[y == c].mean(axis=0) for c in range(3)])[y]  # exact means ...
    x += np.array([-1.0, 0.0, 1.0])[y][:, None] * direction   # ... exactly collinear
    acc = var.MomentAccumulator(np.array([[30, 30, 30]]), d)
    acc.update(x, y, np.ones((1, 90), bool))
    result = acc.result()
    assert result.rank_between == 1
    assert np.isfinite(result.nu) and result.nu == pytest.approx(nu_direct(x, y), rel=1e-8)
    # identical vectors for every example (e.g. [CLS] at the embedding layer): ν undefined, not a perfect 0
    const = np.tile(rng.standard_normal(d) * 30, (90, 1))
    acc = var.MomentAccumulator(np.array([[30, 30, 30]]), d)
    acc.update(const, y, np.ones((1, 90), bool))
    assert acc.result().degenerate and np.isnan(acc.result().nu)
    # equal class means with spread: undefined too
    noise = rng.standard_normal((90, d))
    noise -= np.array([noise[y == c].mean(axis=0) for c in range(3)])[y]
    acc = var.MomentAccumulator(np.array([[30, 30, 30]]), d)
    acc.update(noise + 3.0, y, np.ones((1, 90), bool))
    assert acc.result().degenerate


@pytest.mark.unit
def test_between_noise_fraction():
    rng = np.random.default_rng(12)
    d, sizes = 7, [20, 35, 50]
    x, y = gaussian_classes(rng, sizes, d, separation=1.0)
    acc = var.MomentAccumulator(np.array([sizes]), d)
    acc.update(x, y, np.ones((1, len(y)), bool))
    traces = [np.var(x[y == c], axis=0, ddof=1).sum() for c in range(3)]
    means = np.array([x[y == c].mean(axis=0) for c in range(3)])
    between = ((means - means.mean(axis=0)) ** 2).sum() / 3
    expected = (2 / 9) * sum(t / n for t, n in zip(traces, sizes)) / between
    assert acc.result().between_noise_fraction == pytest.approx(expected, rel=1e-9)
    # identical true means: the between-class scatter is all noise (fraction ~1 on average); far apart: ~0
    fractions = []
    for _ in range(30):
        x = rng.standard_normal((300, 40)) * rng.uniform(0.5, 2.0, 40)
        y = np.repeat([0, 1, 2], [50, 100, 150])
        acc = var.MomentAccumulator(np.array([[50, 100, 150]]), 40)
        acc.update(x, y, np.ones((1, 300), bool))
        fractions.append(acc.result().between_noise_fraction)
    assert np.mean(fractions) == pytest.approx(1.0, abs=0.08)
    x, y = gaussian_classes(rng, [100, 100], 40, separation=10.0)
    acc = var.MomentAccumulator(np.array([[100, 100]]), 40)
    acc.update(x, y, np.ones((1, 200), bool))
    assert acc.result().between_noise_fraction < 0.01


# -------------------------------------------------------------------------------- labels and subsets
def labels_frame(labels, splits):
    return pd.DataFrame({"example_id": np.arange(len(labels)), "split": splits, "label": labels})


@pytest.mark.unit
def test_bad_labels_give_clear_messages():
    with pytest.raises(WorkflowInputError, match="has no labels"):
        var.class_codes(labels_frame([None] * 4, ["train"] * 4), dataset="corpus", split="train")
    with pytest.raises(WorkflowInputError, match="1 class"):
        var.class_codes(labels_frame(["a"] * 5, ["train"] * 5), dataset="corpus", split="train")
    frame = labels_frame(["a", "a", "b", "b", "c", "a"], ["train"] * 5 + ["test"])
    with pytest.raises(WorkflowInputError, match=r"'c': 1.*small_classes: drop"):
        var.class_codes(frame, dataset="corpus", split="train")
    codes, classes, dropped = var.class_codes(frame, dataset="corpus", split="train", small_classes="drop")
    assert classes == ["a", "b"] and dropped == {"c": 1}
    assert codes.tolist() == [0, 0, 1, 1, -1, -1]
    with pytest.raises(WorkflowInputError, match="usable class"):
        var.class_codes(labels_frame(["a", "a", "b"], ["train"] * 3), dataset="corpus", split="train",
                        small_classes="drop")
    with pytest.raises(WorkflowInputError, match="no labelled examples in split 'test'"):
        var.class_codes(labels_frame(["a", "b"], ["train"] * 2), dataset="corpus", split="test")
    codes, _, _ = var.class_codes(frame, dataset="corpus", split="all", small_classes="drop")
    assert codes.tolist() == [0, 0, 1, 1, -1, 0]


@pytest.mark.unit
def test_subset_masks():
    codes = np.repeat([0, 1, 2, -1], [40, 100, 60, 5])
    masks = var.subset_masks(codes, imbalanced_keep=0.2, subsample_fraction=0.1, seed=0)
    assert masks["full"].sum() == 200
    count = lambda m: np.bincount(codes[m & (codes >= 0)], minlength=3).tolist()  # noqa: E731
    assert count(masks["imbalanced"]) == [8, 100, 12]
    assert count(masks["subsample"]) == [4, 10, 6]
    assert not (masks["imbalanced"] & (codes < 0)).any() and not (masks["subsample"] & (codes < 0)).any()
    again = var.subset_masks(codes, imbalanced_keep=0.2, subsample_fraction=0.1, seed=0)
    assert all(np.array_equal(masks[k], again[k]) for k in masks)
    other = var.subset_masks(codes, imbalanced_keep=0.2, subsample_fraction=0.1, seed=1)
    assert not np.array_equal(masks["subsample"], other["subsample"])
    tiny = var.subset_masks(np.repeat([0, 1], [3, 12]), imbalanced_keep=0.2, subsample_fraction=0.1, seed=0)
    assert np.bincount(np.repeat([0, 1], [3, 12])[tiny["subsample"]]).tolist() == [2, 2]


@pytest.mark.unit
def test_subsets_streamed_in_one_pass_equal_direct():
    rng = np.random.default_rng(5)
    x, y = gaussian_classes(rng, [80, 50, 30], 6, separation=1.0)
    masks = var.subset_masks(y, imbalanced_keep=0.2, subsample_fraction=0.1, seed=3)
    names = list(masks)
    members = np.stack([masks[k] for k in names])
    counts = np.stack([np.bincount(y[m], minlength=3) for m in members])
    acc = var.MomentAccumulator(counts, 6)
    for chunk in np.array_split(np.arange(len(y)), 4):
        acc.update(x[chunk], y[chunk], members[:, chunk])
    for index, name in enumerate(names):
        m = masks[name]
        assert acc.result(index).nu == pytest.approx(nu_direct(x[m], y[m]), rel=1e-8), name


# ------------------------------------------------------------------------------ selection, robustness
@pytest.mark.unit
def test_select_layers():
    layers = [0, 1, 2, 3, 4, 5]
    nu = [np.nan, 9.0, 2.04, 3.0, 2.0, 2.5]
    assert var.select_layers(layers, nu, 0.0) == (4, 4)
    assert var.select_layers(layers, nu, 0.05) == (4, 2)
    assert var.select_layers(layers, nu, 10.0) == (4, 1)  # undefined layer 0 is never chosen
    assert var.select_layers(layers, [np.nan] * 6, 0.1) == (-1, -1)


@pytest.mark.unit
def test_spearman_and_selection_table():
    nu = pd.DataFrame({"model": "m", "subset": "full", "layer": range(5), "n": 100, "dims": 8,
                       "nu": [5.0, 3.0, 1.0, 1.02, 2.0], "between_noise_fraction": [0.9, 0.5, 0.1, 0.2, 0.3]})
    probe = pd.DataFrame({"model": "m", "layer": range(5), "accuracy": [0.5, 0.6, 0.8, 0.85, 0.7]})
    table = var.selection_table(nu, probe, tolerance=0.05)
    row = table.iloc[0]
    assert (row["argmin_layer"], row["recommended_layer"], row["best_probe_layer"]) == (2, 2, 3)
    assert row["accuracy_recommended"] == 0.8 and row["accuracy_last"] == 0.7
    assert row["between_noise_fraction_recommended"] == 0.1 and np.isnan(row["max_noise_fraction"])
    assert row["eligible_layers"] == 5
    # the noise_guard option: layers 2 and 3 have too noisy a between-class scatter, layer 4 is picked
    guarded = var.selection_table(nu.assign(between_noise_fraction=[0.9, 0.1, 0.6, 0.7, 0.3]), probe,
                                  tolerance=0.05, max_noise_fraction=0.5).iloc[0]
    assert (guarded["argmin_layer"], guarded["recommended_layer"], guarded["eligible_layers"]) == (4, 4, 2)
    assert guarded["spearman_rho"] == pytest.approx(-0.9)
    # ranks of ν: 5 4 1 2 3; of accuracy: 1 2 4 5 3; d = (4, 2, -3, -3, 0), Σd² = 38,
    # rho = 1 - 6 Σd² / (n (n² - 1)) = 1 - 6·38/120 = -0.9
    assert row["spearman_rho"] == pytest.approx(-0.9)
    assert row["spearman_n_layers"] == 5


@pytest.mark.unit
def test_robustness_on_synthetic_layers(tmp_path):
    # layers with increasing class separation, then a plateau: ν falls then flattens; the recommended layer must
    # not move on the imbalanced and the 10% subsample, and their ν stay close to the full data's.
    rng = np.random.default_rng(6)
    d, sizes = 8, [600, 400, 500]
    base, y = gaussian_classes(rng, sizes, d, separation=1.0)
    class_means = np.array([base[y == c].mean(axis=0) for c in range(3)])
    layers = [(base + (s - 1) * class_means[y]).astype(np.float32) for s in (0.3, 1.0, 3.0, 6.0, 6.0)]
    labels = np.array(["x", "y", "z"])[y]
    path = write_pooled(tmp_path / "pooled.parquet", layers, labels, ["train"] * len(y), row_group_size=256)
    frame = var.read_labels(path)
    codes, _, _ = var.class_codes(frame, dataset="synthetic", split="train")
    masks = var.subset_masks(codes, imbalanced_keep=0.2, subsample_fraction=0.1, seed=0)
    rows = pd.DataFrame(var.stream_variability(path, codes=codes, masks=masks))
    rows.insert(0, "model", "synthetic")
    table = var.robustness_table(rows, tolerance=0.1).set_index("subset")
    assert table.loc["full", "recommended_shift"] == 0 and table.loc["full", "median_abs_log_ratio"] == 0
    assert table.loc["full", "recommended_layer"] == 3
    for subset in ("imbalanced", "subsample"):
        assert table.loc[subset, "recommended_shift"] == 0
        assert table.loc[subset, "spearman_vs_full"] > 0.8
        assert table.loc[subset, "median_abs_log_ratio"] < np.log(1.5)
    assert table.loc["subsample", "n"] == 150
    assert (table.loc["imbalanced", "min_class_n"], table.loc["imbalanced", "max_class_n"]) == (80, 600)


# ---------------------------------------------------------------------------------------- bad files
@pytest.mark.unit
def test_non_finite_vector_is_named(tmp_path):
    rng = np.random.default_rng(8)
    x, y = gaussian_classes(rng, [10, 10], 4, separation=1.0)
    x[13, 2] = np.nan
    path = write_pooled(tmp_path / "pooled.parquet", [x.astype(np.float32)], np.array(["a", "b"])[y],
                        ["train"] * 20)
    frame = var.read_labels(path)
    codes, _, _ = var.class_codes(frame, dataset="synthetic", split="train")
    with pytest.raises(WorkflowInputError, match="example_id 13"):
        var.stream_variability(path, codes=codes, masks={"full": codes >= 0},
                               example_ids=frame["example_id"].to_numpy())


@pytest.mark.unit
def test_examples_without_content_tokens_are_left_out_of_mean_pooling(tmp_path):
    rng = np.random.default_rng(11)
    x, y = gaussian_classes(rng, [15, 15], 4, separation=1.0)
    n_content = np.full(30, 4)
    n_content[[3, 20]] = 0
    x[[3, 20]] = 0.0  # what the extraction stores for them
    path = write_pooled(tmp_path / "pooled.parquet", [x.astype(np.float32)], np.array(["a", "b"])[y],
                        ["train"] * 30, n_content=n_content)
    frame = var.read_labels(path, "mean")
    codes, _, _ = var.class_codes(frame, dataset="synthetic", split="train")
    assert (codes[[3, 20]] == -1).all() and (codes >= 0).sum() == 28
    row = var.stream_variability(path, codes=codes, masks={"full": codes >= 0})[0]
    keep = n_content > 0
    assert row["nu"] == pytest.approx(nu_direct(x[keep].astype(np.float32).astype(np.float64), y[keep]), rel=1e-8)
    assert var.read_labels(path, "first")["label"].notna().all()


@pytest.mark.unit
def test_missing_layer_columns_are_named(tmp_path):
    rng = np.random.default_rng(14)
    x = rng.standard_normal((10, 3)).astype(np.float32)
    path = write_pooled(tmp_path / "pooled.parquet", [x], ["a", "b"] * 5, ["train"] * 6 + ["test"] * 4,
                        extra_meta={"n_layers": 2})  # claims a layer the file does not hold
    codes = np.tile([0, 1], 5)
    with pytest.raises(WorkflowInputError, match=r"lacks the columns \['layer_01_mean'\]"):
        var.stream_variability(path, codes=codes, masks={"full": codes >= 0})
    with pytest.raises(WorkflowInputError, match="layer_01_first"):
        var.probe_layers(path, var.read_labels(path), dataset="synthetic", pooling="first")


@pytest.mark.unit
def test_probe_layers_and_missing_test_split(tmp_path):
    rng = np.random.default_rng(9)
    x, y = gaussian_classes(rng, [60, 60], 5, separation=0.0)
    noise, informative = x.copy(), x.copy()
    informative[:, 0] += np.where(y == 1, 3.0, -3.0)
    splits = np.where(np.arange(120) % 4 == 0, "test", "train")
    path = write_pooled(tmp_path / "pooled.parquet", [noise.astype(np.float32), informative.astype(np.float32)],
                        np.array(["a", "b"])[y], splits)
    frame = var.read_labels(path)
    rows = var.probe_layers(path, frame, dataset="synthetic", max_train=60)
    assert rows[0]["n"] == 60 and rows[0]["n_test"] == 30
    assert rows[1]["accuracy"] > 0.9 and rows[0]["accuracy"] < 0.8
    only_train = write_pooled(tmp_path / "train.parquet", [noise.astype(np.float32)], np.array(["a", "b"])[y],
                              ["train"] * 120)
    with pytest.raises(WorkflowInputError, match="needs both splits"):
        var.probe_layers(only_train, var.read_labels(only_train), dataset="synthetic")


@pytest.mark.unit
def test_gather_rows(tmp_path):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((50, 3)).astype(np.float32)
    path = write_pooled(tmp_path / "pooled.parquet", [x], ["a", "b"] * 25, ["train"] * 50, row_group_size=7)
    rows = np.array([0, 6, 7, 8, 20, 49])
    np.testing.assert_array_equal(var.gather_rows(path, hidden_states.pooled_column(0, "mean"), rows), x[rows])
    with pytest.raises(WorkflowInputError, match="beyond"):
        var.gather_rows(path, hidden_states.pooled_column(0, "mean"), np.array([3, 50]))


@pytest.mark.unit
def test_stratified_subsample():
    codes = np.repeat([0, 1], [900, 100])
    keep = var.stratified_subsample(codes, 100, seed=0)
    assert np.bincount(codes[keep]).tolist() == [90, 10]
    assert np.array_equal(var.stratified_subsample(codes, None, seed=0), np.arange(1000))


# ------------------------------------------------------------------------------------- the workflow
from types import SimpleNamespace  # noqa: E402

from tests.conftest import copy_workdir, pending_jobs, run_workflow, tiny_config  # noqa: E402
from lmcompare.probe import linear_probe  # noqa: E402

VARIABILITY_SECTION = {
    "enabled": True, "poolings": ["mean"], "datasets": ["toy"], "tolerance": 0.05,
    "robustness": {"imbalanced_keep": 0.3, "subsample_fraction": 0.25, "seed": 0},
    "probe": {"max_train_examples": None, "seed": 0},
}
NU_PARAMS = dict(split="train", small_classes="fail", min_class_examples=2, pinv_rtol=None,
                 robustness=VARIABILITY_SECTION["robustness"], memory_mb=100)


@pytest.fixture(scope="module")
def variability_run(tmp_path_factory, tiny_models, tiny_corpus, extracted_workdir):
    """The stage through Snakemake on two tiny models with different tokenizers and hidden sizes (on a copy of the
    session's extracted workdir)."""
    workdir = copy_workdir(extracted_workdir, tmp_path_factory.mktemp("variability"))
    # the cross-analysis summary figure is another stage's; it is tested there
    config = tiny_config(tiny_models, tiny_corpus, variability=dict(VARIABILITY_SECTION), figures={"enabled": False})
    result = run_workflow(workdir, config)
    return workdir, config, result


def train_labels(pooled):
    train = pooled.filter(pa.compute.equal(pooled.column("split"), "train"))
    return train, np.unique(train.column("label").to_numpy(zero_copy_only=False), return_inverse=True)[1]


@pytest.mark.workflow
def test_workflow_nu_equals_direct_formula_on_the_extracted_vectors(variability_run, tmp_path):
    workdir, _, _ = variability_run
    for model in ("tiny-bert", "tiny-roberta"):
        path = workdir / paths.pooled_path("toy", model)
        train, y = train_labels(pq.read_table(path))
        meta = hidden_states.read_hidden_metadata(path)
        table = pd.read_csv(workdir / f"results/analysis/variability/toy/mean/{model}/nu.csv")
        assert set(table["subset"]) == set(var.SUBSETS)
        full = table[table["subset"] == "full"].set_index("layer")
        assert list(full.index) == list(range(meta["n_layers"]))
        assert (full["n"] == train.num_rows).all() and (full["dims"] == meta["hidden_size"]).all()
        for layer in full.index:
            x = hidden_states.vectors(train, hidden_states.pooled_column(layer, "mean"), dtype=np.float64)
            assert full.loc[layer, "nu"] == pytest.approx(nu_direct(x, y), rel=1e-8)
        # first-token pooling: at the embedding layer that vector is the same for every example, ν is undefined
        var.run_nu(path, tmp_path / f"{model}.csv", dataset="toy", model=model, pooling="first", **NU_PARAMS)
        first = pd.read_csv(tmp_path / f"{model}.csv")
        first = first[first["subset"] == "full"].set_index("layer")
        assert first.loc[0, "degenerate"] and np.isnan(first.loc[0, "nu"])
        x = hidden_states.vectors(train, hidden_states.pooled_column(1, "first"), dtype=np.float64)
        assert first.loc[1, "nu"] == pytest.approx(nu_direct(x, y), rel=1e-8)


@pytest.mark.workflow
def test_workflow_selection_probe_robustness_and_figures(variability_run):
    workdir, _, _ = variability_run
    root = workdir / "results/analysis/variability/toy/mean"
    layers = pd.read_csv(root / "layers.csv")
    selection = pd.read_csv(root / "selection.csv").set_index("model")
    robustness = pd.read_csv(root / "robustness.csv")
    assert set(selection.index) == {"tiny-bert", "tiny-roberta"}
    for model, group in layers.groupby("model"):
        group = group.sort_values("layer")
        argmin, recommended = var.select_layers(group["layer"], group["nu"], 0.05)
        assert (selection.loc[model, "argmin_layer"], selection.loc[model, "recommended_layer"]) == (argmin, recommended)
        assert group.loc[group["is_recommended"], "layer"].tolist() == [recommended]
        # both numberings: the authors' --last_layer is ours minus one, none for the embedding output (layer 0)
        assert group["authors_last_layer"].isna().tolist() == (group["layer"] == 0).tolist()
        assert (group["authors_last_layer"].dropna() == group["layer"][group["layer"] > 0] - 1).all()
        assert selection.loc[model, "recommended_authors_last_layer"] == recommended - 1 or recommended == 0
        ok = group["nu"].notna()
        undefined = ok.sum() < 3 or group["accuracy"][ok].nunique() < 2  # Spearman reported as NaN
        rho = np.nan if undefined else spearmanr(group["nu"][ok], group["accuracy"][ok]).statistic
        np.testing.assert_allclose(selection.loc[model, "spearman_rho"], rho, equal_nan=True)
        # each layer's accuracy is the shared probe's (tested against scikit-learn in test_probe.py) on that layer's
        # vectors as the public reader gives them: the right file, layer, pooling and splits
        states = hidden_states.load_hidden_states(workdir / paths.pooled_path("toy", model))
        for row in group.itertuples():
            probe = linear_probe(*states.labelled_layer(int(row.layer), "mean").train_test(), seed=0)
            assert row.accuracy == probe.accuracy and row.n_test == probe.n_test, row  # the table keeps 10 digits
            assert (row.ci_low, row.ci_high) == pytest.approx((probe.ci_low, probe.ci_high), rel=1e-9), row
        assert selection.loc[model, "accuracy_best"] == pytest.approx(group["accuracy"].max())
    assert len(robustness) == 6
    full = robustness[robustness["subset"] == "full"]
    assert (full["recommended_shift"] == 0).all() and (full["spearman_vs_full"] == 1).all()
    assert (robustness.loc[robustness["subset"] == "subsample", "n"] < full["n"].min()).all()
    png = workdir / "results/figures/variability/toy_mean.png"
    svg = (workdir / "results/figures/variability/toy_mean.svg").read_text()
    assert png.stat().st_size > 10_000 and "tiny-roberta" in svg and "tiny-bert" in svg
    # the probe column is the shared protocol on the same split
    path = workdir / paths.pooled_path("toy", "tiny-bert")
    frame = var.read_labels(path)
    split = frame["split"].to_numpy()
    y = np.unique(frame["label"], return_inverse=True)[1]
    x = hidden_states.vectors(pq.read_table(path), hidden_states.pooled_column(2, "mean"))
    direct = linear_probe(x[split == "train"], y[split == "train"], x[split == "test"], y[split == "test"], seed=0)
    probe = pd.read_csv(root / "tiny-bert" / "probe.csv").set_index("layer")
    assert probe.loc[2, "accuracy"] == pytest.approx(direct.accuracy) and probe.loc[2, "C"] == direct.C
    log = (workdir / "results/logs/variability/nu/toy/mean/tiny-bert.log").read_text()
    assert "2 classes" in log and "rows streamed" in log and "done in" in log


@pytest.mark.unit
def test_rule_glue_logs_a_clear_message_for_a_single_class(tmp_path, monkeypatch):
    """The rule's script itself (workflow_scripts/variability_nu.py), run with a stand-in for the snakemake object:
    the error reaches the job's log, and no output is left."""
    import runpy

    from tests.conftest import PROJECT

    rng = np.random.default_rng(10)
    path = write_pooled(tmp_path / "pooled.parquet", [rng.standard_normal((12, 4)).astype(np.float32)],
                        ["same"] * 12, ["train"] * 9 + ["test"] * 3)
    class Named(list):  # what Snakemake hands a script: a list whose items are also attributes
        def __init__(self, **items):
            super().__init__(items.values())
            self.__dict__.update(items)

        def items(self):
            return dict(self.__dict__).items()

    job = SimpleNamespace(
        rule="variability_nu", input=Named(pooled=str(path)), output=Named(nu=str(tmp_path / "nu.csv")),
        log=[str(tmp_path / "nu.log")], params=SimpleNamespace(**NU_PARAMS),
        wildcards=Named(dataset="oneclass", model="m", pooling="mean"),
    )
    monkeypatch.syspath_prepend(str(PROJECT / "workflow_scripts"))  # as Snakemake does for a script
    with pytest.raises(WorkflowInputError):
        runpy.run_path(str(PROJECT / "workflow_scripts" / "variability_nu.py"), init_globals={"snakemake": job})
    log = (tmp_path / "nu.log").read_text()
    assert "dataset 'oneclass' has 1 class(es)" in log and not (tmp_path / "nu.csv").exists()


@pytest.mark.workflow
def test_workflow_caching_and_bad_config(variability_run, tmp_path):
    workdir, config, _ = variability_run
    assert pending_jobs(workdir) == []
    # an unknown or unlabelled dataset named in the section: refused when the workflow is read
    bad = {**config, "variability": {**config["variability"], "datasets": ["nosuch"]}}
    result = run_workflow(tmp_path, bad, extra=["-n"], check=False)
    assert result.returncode != 0 and "variability.datasets lists ['nosuch']" in result.stdout + result.stderr
    # a changed tolerance or selection reruns only the light summary, never the streaming or the probes; on a
    # copy (mtimes and .snakemake records kept), so the shared run keeps its config
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, symlinks=True)
    for change in ({"tolerance": 0.5}, {"selection": {"max_noise_fraction": 0.5}}):
        changed = {**config, "variability": {**config["variability"], **change}}
        run_workflow(copy, changed, extra=["-n"])
        assert {rule for rule, _ in pending_jobs(copy)} == {"variability_summary"}, change
