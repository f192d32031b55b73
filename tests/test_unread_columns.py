"""Columns the analyses write that no test read, each against a recomputation with other tools: decomposition's
`mse_test` and `sst_test` (scikit-learn's Ridge on the raw rows), compression's `train_log_loss` (a scikit-learn
pipeline per dimension and the log-loss written out), `single_dim_median_accuracy` and
`best_dims_together_accuracy` (scikit-learn's grid search on the train-ranked dimensions)."""
import numpy as np
import pytest

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("mode", ["paper", "uncentred"])
def test_decomposition_mse_and_sst_equal_sums_of_squares_of_sklearns_ridge(mode):
    from sklearn.linear_model import Ridge

    from lmcompare import decomposition as lmd

    rng = np.random.default_rng(7)
    shared = rng.normal(size=(1500, 4))
    z = shared @ rng.normal(size=(4, 9)) + 0.5 * rng.normal(size=(1500, 9)) + 3.0
    u = shared @ rng.normal(size=(4, 5)) + 0.8 * rng.normal(size=(1500, 5)) - 2.0
    train, test = slice(0, 1000), slice(1000, 1500)
    alpha = 0.05
    stats = [lmd.SplitStats.from_rows(u[s], z[s]) for s in (train, test)]
    _, scores = lmd.fit_and_score(*stats, alpha, mode, "u")
    # paper (nlp.lmd 0.2.0): covariances divided by n_train - 1 (torch.cov), sklearn's penalty multiplies the sum:
    # alpha_sklearn = (n_train - 1) * alpha; uncentred (haozhg/lmd 1eae068): raw moments divided by the basis dims
    # d_z, no intercept: alpha_sklearn = d_z * alpha; it scores about zero (uncentred total)
    scale = 999 if mode == "paper" else z.shape[1]
    reference = Ridge(alpha=alpha * scale, fit_intercept=mode == "paper", solver="cholesky").fit(z[train], u[train])
    residual = u[test] - reference.predict(z[test])
    mse = np.sum(residual**2) / 500
    centre = u[test].mean(axis=0) if mode == "paper" else 0.0
    sst = np.sum((u[test] - centre) ** 2) / 500
    assert scores["mse_test"] == pytest.approx(mse, rel=1e-6)
    assert scores["sst_test"] == pytest.approx(sst, rel=1e-9)
    assert scores["r2_test"] == pytest.approx(1 - mse / sst, rel=1e-6)


def _view(seed=0, n=240, d=6):
    """A compression view: a 3-class label carried, with noise, by dimensions 1 and 4 of very different scales."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, d)) * np.geomspace(0.1, 10, d)
    x[:, 1] += 0.6 * y * 0.1 * 4
    x[:, 4] += 1.5 * (y == 2) * 10 * 0.5
    split = np.where(np.arange(n) < 160, "train", "test")
    return {"x": x, "y": y, "split": split, "classes": ["a", "b", "c"], "layer": 2}


def test_compression_single_dim_columns_and_best_dims_together_against_sklearn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from lmcompare import compression
    from lmcompare.probe import C_GRID

    view = _view()
    # k_values=[1]: the PCA curve is not what is checked here, and each k costs a C search
    _, dims, _, summary = compression.analyse(view, model="m", dataset="ds", pooling="mean", n_best=2, seed=0,
                                              k_values=[1])
    summary = summary.iloc[0]
    train, test = view["split"] == "train", view["split"] == "test"
    accuracies = []
    for j in range(view["x"].shape[1]):  # each dimension alone: scaler fit on train, C = 1
        # converged far below lbfgs's default tol (1e-4), as the probe's Newton solver is (1e-8): the log-loss at
        # the optimum to 1e-6, not lbfgs's convergence error
        pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, tol=1e-10, max_iter=10000))
        pipeline.fit(view["x"][train, j:j + 1], view["y"][train])
        proba = pipeline.predict_proba(view["x"][train, j:j + 1])
        log_loss = -np.mean(np.log(proba[np.arange(train.sum()), view["y"][train]]))
        row = dims[dims["dim"] == j].iloc[0]
        assert row["train_log_loss"] == pytest.approx(log_loss, rel=1e-6)
        accuracy = float(np.mean(pipeline.predict(view["x"][test, j:j + 1]) == view["y"][test]))
        assert row["accuracy"] == accuracy
        accuracies.append(accuracy)
    assert summary["single_dim_median_accuracy"] == float(np.median(accuracies))
    assert summary["single_dim_max_test_accuracy"] == max(accuracies)
    # the two train-ranked dimensions together, through the whole protocol
    top = dims.sort_values("rank")["dim"].to_numpy()[:2]
    assert summary["best_dims"] == ";".join(map(str, top))
    x_train, x_test = view["x"][train][:, top], view["x"][test][:, top]
    scaler = StandardScaler().fit(x_train)
    search = GridSearchCV(LogisticRegression(max_iter=1000), {"C": list(C_GRID)},
                          cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=0))
    search.fit(scaler.transform(x_train), view["y"][train])
    assert summary["best_dims_together_accuracy"] == float(np.mean(search.predict(scaler.transform(x_test))
                                                                    == view["y"][test]))
