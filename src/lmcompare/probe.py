"""The one linear-probe protocol shared by every analysis that reports a downstream accuracy.

Protocol (fixed, seeded, train split only for every choice):
- features standardised with the train split's mean and standard deviation (a constant feature becomes 0);
- L2-regularised logistic regression, scikit-learn's objective exactly: with C the inverse regularisation,
      minimise  F(W, b) = C * sum_i log_loss(y_i, softmax(W x_i + b)) + 1/2 * ||W||^2     (b unpenalised),
  binary labels as scikit-learn's binary model (one weight vector w, logit w.x + b, penalty 1/2 ||w||^2),
  three or more classes as its multinomial model (one weight vector per class, penalty 1/2 ||W||_F^2);
- C chosen from `C_GRID` by stratified k-fold cross-validation on the train split (scikit-learn's StratifiedKFold,
  shuffled with `seed`; k = min(folds, smallest class), at least 2; mean fold accuracy, the first best C of the
  grid on ties; no search when the grid has one value or a class has a single example: the grid's middle value);
- refit on the whole train split with that C; accuracy on the test split with a Wilson 95% interval.

The solver (`fit_logistic`), which replaced scikit-learn's lbfgs (same objective, so the same optimum; only the
convergence error differs): damped Newton with the exact Hessian and Armijo backtracking, in float64.
- The objective is strictly convex, so its one optimum does not depend on the solver or the starting point.
- Multinomial: the loss does not change when one vector is added to every class's weights, and the penalty is
  smallest when they sum to zero, so the optimum has sum_k W_k = 0; the fit works in that (K - 1)-dimensional
  subspace (W = V U^T, U an orthonormal basis of the sum-zero vectors, ||W|| = ||V||), which is exact and makes
  the Hessian (K - 1)(d + 1) square. The intercepts, unpenalised and defined up to a common shift, are reported
  with zero sum (as W); predictions are unaffected.
- More features than examples: the optimal weights lie in the row space of the training matrix (the loss
  gradient does and the penalty adds nothing outside it), so the fit works in an orthonormal basis of that row
  space (a QR factorisation, once per fit), which is exact.
- The Hessian's products are taken in float32 (the objective and gradient in float64: the Hessian only steers
  the step), and its Cholesky factorisation is kept for further (chord) steps while they cut the gradient fast
  enough; see `_newton`.
- The cross-validation solves each fold along the C grid from the strongest regularisation to the weakest, each C
  started from the previous one's solution and factorisation; the final refit starts from the folds' mean
  solution at the chosen C.
- Stopping (changed from lbfgs's default tol=1e-4): max |gradient of F| <= 1e-8 * C * n, i.e. the gradient of
  scikit-learn's scaled objective (mean log-loss + ||W||^2 / (2 C n)) below 1e-8 in every coordinate, 10^4 times
  tighter than lbfgs's stopping test. `max_iter` now counts Newton and chord steps (at most 1000, as before; a
  fit takes about 3-30).
- Deterministic: no randomness, and the BLAS and LAPACK calls run on one thread inside the probe (OpenBLAS's
  float32 products and factorisations give other bits on two threads), so the results are bit-identical
  across runs and across BLAS thread settings (tested with 1 and 2 threads).
"""

from dataclasses import asdict, dataclass

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve
from threadpoolctl import ThreadpoolController

# The solver runs its BLAS and LAPACK calls (numpy's and scipy's OpenBLAS, both loaded by now) on one thread:
# OpenBLAS's float32 products, Cholesky and QR give different bits on one thread and on two, and the probe's
# results are not to depend on the thread setting (tested). One thread also avoids OpenBLAS's slow multi-threaded
# small factorisations on a loaded machine (measured: a 1538-square Cholesky 0.1 s on one thread, 1 s on two).
_BLAS = ThreadpoolController()


def _one_blas_thread():
    return _BLAS.limit(limits=1, user_api="blas")

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
TOL = 1e-8
KEEP = (0.25, 0.9)  # chord steps while max |gradient| falls to this fraction: small Hessians, large ones


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float
    ci_low: float
    ci_high: float
    n_train: int
    n_test: int
    n_features: int
    C: float

    def as_dict(self) -> dict:
        return asdict(self)


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def _standardise(train_x: np.ndarray, test_x: np.ndarray):
    mean = train_x.mean(axis=0)
    std = train_x.std(axis=0)
    std[std == 0] = 1.0
    return (train_x - mean) / std, (test_x - mean) / std


def _class_basis(n_classes: int) -> np.ndarray:
    """U (n_classes x m): the class logits are (reduced logits) @ U.T. Binary: U = [[0], [1]] (scikit-learn's
    binary model, class 0's logit fixed at 0); more classes: an orthonormal basis of the sum-zero vectors."""
    if n_classes == 2:
        return np.array([[0.0], [1.0]])
    basis = np.zeros((n_classes, n_classes - 1))
    for j in range(1, n_classes):  # Helmert contrasts, normalised
        basis[:j, j - 1] = 1.0
        basis[j, j - 1] = -float(j)
        basis[:, j - 1] /= np.sqrt(j * (j + 1))
    return basis


@dataclass(frozen=True)
class LogisticFit:
    """A fitted model: coef (n_classes x d, or 1 x d for binary as scikit-learn), intercept, classes."""
    coef: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray
    objective: float
    n_iter: int

    def decision(self, x) -> np.ndarray:
        """Class logits (n x n_classes); binary: [0, w.x + b]."""
        x = np.asarray(x, dtype=np.float64)
        z = x @ self.coef.T + self.intercept
        return np.hstack([np.zeros((len(x), 1)), z]) if len(self.classes) == 2 else z

    def predict_proba(self, x) -> np.ndarray:
        z = self.decision(x)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x) -> np.ndarray:
        return self.classes[self.decision(x).argmax(axis=1)]


class _Problem:
    """The objective of one C-independent training set: reduced features [X Q, 1], one-hot labels, U."""

    def __init__(self, x: np.ndarray, codes: np.ndarray, n_classes: int):
        n, d = x.shape
        self.d = d
        self.rowspace = None
        if d > n:  # the optimum's weights lie in the row space of x: work in an orthonormal basis of it
            q, _ = np.linalg.qr(x.T)  # d x n
            self.rowspace = q
            x = x @ q
        self.x = np.hstack([x, np.ones((n, 1))])
        self.n, self.p = self.x.shape
        self.basis = _class_basis(n_classes)
        self.m = self.basis.shape[1]
        self.onehot = np.zeros((n, n_classes))
        self.onehot[np.arange(n), codes] = 1.0
        self.penalty = np.ones((self.p, 1))
        self.penalty[-1] = 0.0  # intercept unpenalised
        self.x32t = None

    def to_full(self, theta: np.ndarray) -> np.ndarray:
        """(d + 1) x m parameters in the original features."""
        if self.rowspace is None:
            return theta
        return np.vstack([self.rowspace @ theta[:-1], theta[-1:]])

    def from_full(self, theta: np.ndarray) -> np.ndarray:
        if self.rowspace is None:
            return theta
        return np.vstack([self.rowspace.T @ theta[:-1], theta[-1:]])

    def loss(self, theta: np.ndarray, C: float):
        """Objective, class probabilities at theta."""
        logits = (self.x @ theta) @ self.basis.T
        top = logits.max(axis=1, keepdims=True)
        shifted = logits - top
        expd = np.exp(shifted)
        total = expd.sum(axis=1, keepdims=True)
        log_loss = np.sum(np.log(total[:, 0]) - (shifted * self.onehot).sum(axis=1))
        value = C * log_loss + 0.5 * float(np.sum(self.penalty * theta * theta))
        return value, expd / total

    def gradient(self, theta, proba, C):
        return C * (self.x.T @ ((proba - self.onehot) @ self.basis)) + self.penalty * theta

    def curvature(self, proba) -> np.ndarray:
        """The C-independent part A of the Hessian H = C A + diag(penalty), in vec order (class block j, then
        feature): block (j, l) = x^T diag(S_jl) x with S_jl,i = (U^T (diag p_i - p_i p_i^T) U)_jl. Products in
        float32 (the Hessian only steers the step; the objective and the gradient are float64, so the optimum
        is unaffected), in 256-column tiles of each symmetric block's upper triangle: the upper triangle of A is
        set and so is every off-diagonal block (what the upper Cholesky factorisation reads)."""
        if self.x32t is None:
            self.x32t = np.ascontiguousarray(self.x.T, dtype=np.float32)  # p x n
        x32 = self.x32t.T
        pu = proba @ self.basis  # n x m
        weights = np.einsum("ik,kj,kl->ijl", proba, self.basis, self.basis) - pu[:, :, None] * pu[:, None, :]
        weights = weights.astype(np.float32)
        p, m = self.p, self.m
        edges = list(range(0, p, 256)) + [p]
        tiles = list(zip(edges[:-1], edges[1:]))
        a = np.zeros((m * p, m * p))
        for j in range(m):
            for l in range(j, m):
                scaled = self.x32t * weights[:, j, l]
                block = np.zeros((p, p), dtype=np.float32)
                for t, (r0, r1) in enumerate(tiles):
                    for c0, c1 in tiles[t:]:
                        block[r0:r1, c0:c1] = scaled[r0:r1] @ x32[:, c0:c1]
                if j != l:
                    block = np.triu(block) + np.triu(block, 1).T
                a[j * p:(j + 1) * p, l * p:(l + 1) * p] = block
        return a


def _newton(problem: _Problem, C: float, theta: np.ndarray, *, tol: float, max_iter: int, curvature=None):
    """Damped Newton from theta until max |gradient| <= tol * C * n.

    The Hessian's factorisation is kept for the next step while a full step cut max |gradient| to at most 0.9
    of its value (0.25 when m (d + 1) < 256, where a Hessian is cheap) (a chord step: the gradient is exact, so the optimum is not changed, only the rate), and
    recomputed otherwise, or when the kept one gives no descent. `curvature`: `problem.curvature` at (or near)
    theta for the first factorisation (the C path: the last one of the previous C). Returns (theta, objective,
    iterations, the last curvature)."""
    value, proba = problem.loss(theta, C)
    threshold = tol * C * problem.n
    diagonal = np.tile(problem.penalty[:, 0], problem.m)
    iterations, factor, fresh, keep, previous = 0, None, False, False, None
    cut = KEEP[problem.m * problem.p >= 256]  # a Hessian costs about m p / 2 gradients: keep large ones longer
    while iterations < max_iter:
        grad = problem.gradient(theta, proba, C)
        largest = float(np.abs(grad).max())
        if not largest > threshold:
            break
        if previous is not None:
            keep = keep and largest <= cut * previous
        previous = largest
        iterations += 1
        g = grad.T.ravel()
        for _ in range(2):
            if factor is None or not keep:
                if curvature is None or factor is not None or iterations > 1:
                    curvature, fresh = problem.curvature(proba), True
                h = C * curvature
                h[np.diag_indices_from(h)] += diagonal
                try:
                    factor = cho_factor(h, lower=False, check_finite=False)
                except (LinAlgError, ValueError):  # numerically singular (extreme separation): a ridge
                    h[np.diag_indices_from(h)] += 1e-10 * max(1.0, float(np.trace(h)) / len(h))
                    factor = cho_factor(h, lower=False, check_finite=False)
            step = -cho_solve(factor, g, check_finite=False)
            slope = float(g @ step)
            direction = step.reshape(problem.m, problem.p).T
            t, accepted = 1.0, False
            if slope < 0:
                for _ in range(60):  # Armijo backtracking
                    candidate = theta + t * direction
                    new_value, new_proba = problem.loss(candidate, C)
                    if new_value <= value + 1e-4 * t * slope:
                        accepted = True
                        break
                    t *= 0.5
            if accepted or fresh:
                break
            keep = False  # a kept factorisation failed: recompute once
        if not accepted:
            break  # no decrease left at working precision
        theta, value, proba = candidate, new_value, new_proba
        keep, fresh = t == 1.0, False
    return theta, value, iterations, curvature


def _codes(y: np.ndarray):
    classes, codes = np.unique(y, return_inverse=True)
    return classes, codes.reshape(-1)


def fit_logistic(x, y, C: float, *, classes=None, start=None, tol: float = TOL, max_iter: int = 1000) -> LogisticFit:
    """Minimise C * sum log-loss + 1/2 ||W||^2 (intercept unpenalised) on x (n x d, used as given: standardise
    first), scikit-learn's LogisticRegression(C=C) objective (binary or multinomial). `classes`: all labels
    (default: those in y); `start`: a previous fit's (coef, intercept) to start from."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    y = np.asarray(y)
    classes = np.unique(y) if classes is None else np.asarray(classes)
    codes = np.searchsorted(classes, y)
    if len(classes) < 2:
        raise ValueError("logistic regression needs at least two classes")
    with _one_blas_thread():
        problem = _Problem(x, codes, len(classes))
        theta = np.zeros((problem.p, problem.m)) if start is None else problem.from_full(_theta_of(start, problem))
        theta, value, iterations, _ = _newton(problem, float(C), theta, tol=tol, max_iter=max_iter)
    return _as_fit(problem.to_full(theta), problem.basis, classes, value, iterations)


def _theta_of(start, problem) -> np.ndarray:
    """(coef, intercept) of a LogisticFit back to the (d + 1) x m parameters."""
    coef, intercept = start
    full = np.vstack([np.asarray(coef, dtype=np.float64).T, np.asarray(intercept, dtype=np.float64)[None, :]])
    return full if problem.m == 1 else full @ problem.basis


def _as_fit(theta, basis, classes, value, iterations) -> LogisticFit:
    if len(classes) == 2:
        coef, intercept = theta[:-1].T.copy(), theta[-1].copy()
    else:
        coef, intercept = (theta[:-1] @ basis.T).T, theta[-1] @ basis.T
    return LogisticFit(coef=coef, intercept=intercept, classes=classes, objective=float(value), n_iter=iterations)


def _path(x, codes, n_classes, c_values, *, tol, max_iter):
    """The fits of one training set along c_values (in the given order), each started from the previous one."""
    problem = _Problem(x, codes, n_classes)
    theta = np.zeros((problem.p, problem.m))
    fits, curvature = [], None
    for c in c_values:
        theta, _, _, curvature = _newton(problem, float(c), theta, tol=tol, max_iter=max_iter, curvature=curvature)
        fits.append(problem.to_full(theta))
    return fits


def probe_outcomes(train_x, train_y, test_x, test_y, *, seed: int = 0, c_grid=C_GRID, folds: int = 3,
                   max_iter: int = 1000) -> tuple[ProbeResult, np.ndarray]:
    """`linear_probe`'s result and, per test example, whether the probe classified it correctly."""
    with _one_blas_thread():
        return _probe_outcomes(train_x, train_y, test_x, test_y, seed=seed, c_grid=c_grid, folds=folds,
                               max_iter=max_iter)


def _probe_outcomes(train_x, train_y, test_x, test_y, *, seed, c_grid, folds, max_iter):
    from sklearn.model_selection import StratifiedKFold

    train_x = np.asarray(train_x, dtype=np.float64)
    test_x = np.asarray(test_x, dtype=np.float64)
    if train_x.ndim == 1:
        train_x, test_x = train_x[:, None], test_x[:, None]
    train_y = np.asarray(train_y)
    test_y = np.asarray(test_y)
    classes, codes = _codes(train_y)
    if len(classes) < 2:
        raise ValueError("the probe's train split holds a single class; it needs at least two")
    train_x, test_x = _standardise(train_x, test_x)
    smallest_class = int(np.bincount(codes).min())
    n_folds = max(2, min(folds, smallest_class))
    k = len(classes)
    start = None
    if len(c_grid) > 1 and smallest_class >= 2:
        order = sorted(range(len(c_grid)), key=lambda i: float(c_grid[i]))  # strongest regularisation first
        ordered = [float(c_grid[i]) for i in order]
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        scores = np.zeros(len(c_grid))
        solutions = np.zeros((len(c_grid), train_x.shape[1] + 1, 1 if k == 2 else k - 1))
        basis = _class_basis(k)
        for fit_rows, score_rows in splitter.split(train_x, train_y):
            fits = _path(train_x[fit_rows], codes[fit_rows], k, ordered, tol=TOL, max_iter=max_iter)
            for i, theta in zip(order, fits):
                fitted = _as_fit(theta, basis, classes, np.nan, 0)
                scores[i] += np.mean(fitted.predict(train_x[score_rows]) == train_y[score_rows])
                solutions[i] += theta
        best = int(np.argmax(scores / n_folds))  # the first of equal scores, in grid order
        best_c = float(c_grid[best])
        mean_theta = solutions[best] / n_folds
        start = _as_fit(mean_theta, basis, classes, np.nan, 0)
        start = (start.coef, start.intercept)
    else:
        best_c = float(c_grid[len(c_grid) // 2])
    model = fit_logistic(train_x, train_y, best_c, classes=classes, start=start, max_iter=max_iter)
    correct = model.predict(test_x) == test_y
    hits = int(correct.sum())
    low, high = wilson_interval(hits, len(test_y))
    result = ProbeResult(
        accuracy=hits / len(test_y) if len(test_y) else float("nan"),
        ci_low=low, ci_high=high, n_train=len(train_y), n_test=len(test_y),
        n_features=train_x.shape[1], C=best_c,
    )
    return result, correct


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                 seed: int = 0, c_grid=C_GRID, folds: int = 3, max_iter: int = 1000) -> ProbeResult:
    """Fit the shared probe on train, report test accuracy with a Wilson 95% interval."""
    return probe_outcomes(train_x, train_y, test_x, test_y, seed=seed, c_grid=c_grid, folds=folds,
                          max_iter=max_iter)[0]
