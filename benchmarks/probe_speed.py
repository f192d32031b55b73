"""The shared linear probe (lmcompare.probe.linear_probe: Newton on scikit-learn's objective) side by side, in one
run, with the probe it replaced (`old_probe`: scikit-learn's lbfgs LogisticRegression per C and fold, as
probe.py had it up to commit c63ad19) and scikit-learn's LogisticRegressionCV (same C grid, same folds,
accuracy scoring, lbfgs). Numbers in docs/performance.md, "The probe".

    nice .venv/bin/python benchmarks/probe_speed.py [--rows 5000] [--test 1000] [--dim 768] [--threads 1]
        [--hidden /work/cmp/results/hidden/reviews] [--skip-large] [--skip-real]

1. large: `rows` train x `dim` (default 5,000 x 768) and `test` test examples, binary and 3 classes. The vectors
   are real-based synthetic: Gaussian draws with the mean and within-class covariance of a real layer (the last
   mean-pooled layer of `--base-model` in `--hidden`: its 600 reviews, centred, times N(0, I/600) weights, so
   the covariance is the real one, rank 599), plus an isotropic floor of 2 % of the mean variance (the full
   rank a larger sample would have); classes: class 0 at the real mean, class 1 shifted by half the real
   (great - other) mean difference, class 2 by three times the mean of 20 random centred rows. Without the
   hidden-states folder: Gaussian classes with a power-law spectrum (variance j^-1.5).
2. real: every pooled.parquet under `--hidden` (the default models on the default dataset), every layer, mean and
   first pooling, the library's reader (HiddenStates.labelled_layer, train -> test split): the new probe's
   accuracy and chosen C against the old probe's and LogisticRegressionCV's.

All contenders run under the same BLAS and OpenMP thread limit (threadpoolctl, `--threads`; the new probe runs
its own BLAS calls on one thread whatever the limit, for bit-identical results); wall seconds
(time.perf_counter) and CPU seconds of the process (time.process_time) per contender.
"""
import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lmcompare.probe import C_GRID, _standardise, linear_probe  # noqa: E402


def old_probe(train_x, train_y, test_x, test_y, *, seed=0, c_grid=C_GRID, folds=3, max_iter=1000):
    """probe.linear_probe as it was before (commit c63ad19): lbfgs per C and fold, then a refit. Returns
    (accuracy, C)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    train_x = np.asarray(train_x, dtype=np.float64)
    test_x = np.asarray(test_x, dtype=np.float64)
    if train_x.ndim == 1:
        train_x, test_x = train_x[:, None], test_x[:, None]
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    train_x, test_x = _standardise(train_x, test_x)
    smallest_class = int(np.bincount(np.unique(train_y, return_inverse=True)[1]).min())
    n_folds = max(2, min(folds, smallest_class))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if len(c_grid) > 1 and smallest_class >= 2:
            splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
            scores = [cross_val_score(LogisticRegression(C=c, max_iter=max_iter), train_x, train_y,
                                      cv=splitter).mean() for c in c_grid]
            best_c = float(c_grid[int(np.argmax(scores))])
        else:
            best_c = float(c_grid[len(c_grid) // 2])
        model = LogisticRegression(C=best_c, max_iter=max_iter).fit(train_x, train_y)
    return float(np.mean(model.predict(test_x) == test_y)), best_c


def sklearn_cv_probe(train_x, train_y, test_x, test_y, *, seed=0, c_grid=C_GRID, folds=3, max_iter=1000):
    """LogisticRegressionCV on the same standardised split, grid and folds (accuracy scoring; refit at the best C).
    Returns (accuracy, C)."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    train_x, test_x = _standardise(np.asarray(train_x, dtype=np.float64), np.asarray(test_x, dtype=np.float64))
    smallest_class = int(np.bincount(np.unique(train_y, return_inverse=True)[1]).min())
    splitter = StratifiedKFold(n_splits=max(2, min(folds, smallest_class)), shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LogisticRegressionCV(Cs=list(c_grid), cv=splitter, scoring="accuracy", max_iter=max_iter)
        model.fit(train_x, train_y)
    return float(np.mean(model.predict(test_x) == np.asarray(test_y))), float(np.ravel(model.C_)[0])


def new_probe(train_x, train_y, test_x, test_y, **kw):
    result = linear_probe(train_x, train_y, test_x, test_y, **kw)
    return result.accuracy, result.C


CONTENDERS = {"old": old_probe, "new": new_probe, "LogisticRegressionCV": sklearn_cv_probe}


def timed(function, *args, **kw):
    wall, cpu = time.perf_counter(), time.process_time()
    out = function(*args, **kw)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def large_case(rows, test, dim, classes, hidden, base_model, seed=0):
    rng = np.random.default_rng(seed)
    n = rows + test
    y = rng.permutation(np.arange(n) % classes)
    path = Path(hidden) / base_model / "pooled.parquet" if hidden else None
    if path is not None and path.exists():
        from lmcompare.hidden_states import HiddenStates

        view = HiddenStates(path).labelled_layer(-1, "mean")
        real = view.x.astype(np.float64)[:, :dim]
        centred = real - real.mean(axis=0)
        shifts = [np.zeros(real.shape[1]), 0.5 * (real[view.y == 0].mean(0) - real[view.y == 1].mean(0))]
        shifts += [3 * centred[rng.choice(len(real), 20)].mean(0) for _ in range(classes - 2)]
        weights = rng.standard_normal((n, len(real))) / np.sqrt(len(real))
        floor = np.sqrt(0.02 * centred.var(axis=0).mean())
        x = real.mean(0) + weights @ centred + np.array(shifts)[y] + floor * rng.standard_normal((n, real.shape[1]))
        what = f"real-based ({base_model} last layer, mean pooling, covariance + 2 % floor)"
    else:
        spectrum = np.arange(1, dim + 1) ** -1.5
        basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        means = rng.standard_normal((classes, dim)) * np.sqrt(spectrum) * 0.3
        x = ((rng.standard_normal((n, dim)) * np.sqrt(spectrum) + means[y]) @ basis.T)
        what = "Gaussian, power-law spectrum"
    return x[:rows].astype(np.float32), y[:rows], x[rows:].astype(np.float32), y[rows:], what


def run_large(args):
    print(f"## large: {args.rows} train x {args.dim}, {args.test} test; BLAS threads {args.threads}")
    for classes in (2, 3):
        train_x, train_y, test_x, test_y, what = large_case(args.rows, args.test, args.dim, classes, args.hidden,
                                                            args.base_model)
        print(f"### {classes} classes; vectors: {what}")
        rows = {}
        for name, function in CONTENDERS.items():
            (accuracy, c), wall, cpu = timed(function, train_x, train_y, test_x, test_y, seed=0)
            rows[name] = (accuracy, c, wall, cpu)
        repeat, wall, cpu = timed(new_probe, train_x, train_y, test_x, test_y, seed=0)
        for name, (accuracy, c, wall, cpu) in rows.items():
            print(f"{name:>22}: wall {wall:7.2f} s  cpu {cpu:7.2f} s  accuracy {accuracy:.4f}  C {c:g}")
        for name in ("old", "LogisticRegressionCV"):
            print(f"{'new vs ' + name:>22}: speed-up wall {rows[name][2] / rows['new'][2]:.1f}x, cpu "
                  f"{rows[name][3] / rows['new'][3]:.1f}x; accuracy difference "
                  f"{100 * (rows['new'][0] - rows[name][0]):+.2f} points")
        print(f"{'new, second run':>22}: identical {repeat == rows['new'][:2]}")


def run_real(args):
    from lmcompare.hidden_states import HiddenStates

    paths = sorted(Path(args.hidden).glob("*/pooled.parquet"))
    print(f"## real: {len(paths)} models under {args.hidden}, every layer, mean and first pooling; "
          f"BLAS threads {args.threads}")
    deltas = {name: [] for name in CONTENDERS if name != "new"}
    c_differs = {name: 0 for name in deltas}
    seconds = {name: [0.0, 0.0] for name in CONTENDERS}
    views = 0
    for path in paths:
        states = HiddenStates(path)
        for pooling in ("mean", "first"):
            for layer in range(states.n_layers):
                split = states.labelled_layer(layer, pooling).train_test()
                out = {}
                for name, function in CONTENDERS.items():
                    out[name], wall, cpu = timed(function, *split, seed=0)
                    seconds[name][0] += wall
                    seconds[name][1] += cpu
                views += 1
                for name in deltas:
                    deltas[name].append(100 * (out["new"][0] - out[name][0]))
                    c_differs[name] += out["new"][1] != out[name][1]
                if args.verbose:
                    print(f"  {path.parent.name} {pooling} {layer}: " +
                          ", ".join(f"{k} {a:.4f} C={c:g}" for k, (a, c) in out.items()))
    n_test = len(split[3])
    print(f"{views} views (train {len(split[1])}, test {n_test}: one test example = {100 / n_test:.2f} points)")
    for name in CONTENDERS:
        print(f"{name:>22}: wall {seconds[name][0]:7.1f} s  cpu {seconds[name][1]:7.1f} s")
    for name, values in deltas.items():
        values = np.array(values)
        print(f"{'new vs ' + name:>22}: speed-up wall {seconds[name][0] / seconds['new'][0]:.1f}x, cpu "
              f"{seconds[name][1] / seconds['new'][1]:.1f}x; max |accuracy difference| "
              f"{np.abs(values).max():.2f} points, mean {values.mean():+.3f}, views differing "
              f"{int((values != 0).sum())} of {views}; chosen C differs in {c_differs[name]} of {views}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", default="/work/cmp/results/hidden/reviews")
    parser.add_argument("--base-model", default="mpnet")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    import platform

    import sklearn.linear_model  # noqa: F401  (loads scikit-learn's OpenMP runtime before the limit: held too)
    from threadpoolctl import threadpool_limits

    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {platform.processor() or platform.machine()}, "
          f"numpy {np.__version__}")
    with threadpool_limits(limits=args.threads):
        if not args.skip_large:
            run_large(args)
        if not args.skip_real:
            run_real(args)


if __name__ == "__main__":
    main()
