"""The Python API the README shows: the analyses run on arrays, without Snakemake."""
import numpy as np
import pytest

from lmcompare import decomposition as lmd
from lmcompare import variability

pytestmark = pytest.mark.unit


def test_variability_of_arrays_is_the_papers_formula():
    """ν = (1/C) tr(Σ_w pinv(Σ_b)), Σ_w the mean of the classes' population covariances, Σ_b that of the class
    means about their mean, written out with numpy's pinv on a case with three classes in 5 dimensions."""
    rng = np.random.default_rng(0)
    y = np.repeat(["a", "b", "c"], [40, 25, 35])
    x = rng.normal(size=(100, 5)) + np.where(y[:, None] == "b", 1.5, 0.0) - np.where(y[:, None] == "c", 0.7, 0.0)
    within = np.mean([np.cov(x[y == c], rowvar=False, bias=True) for c in "abc"], axis=0)
    means = np.array([x[y == c].mean(axis=0) for c in "abc"])
    between = (means - means.mean(axis=0)).T @ (means - means.mean(axis=0)) / 3
    expected = np.trace(within @ np.linalg.pinv(between)) / 3
    result = variability.variability_of(x, y)
    assert result.nu == pytest.approx(expected, rel=1e-10)
    assert result.n_classes == 3 and result.rank_between == 2
    with pytest.raises(ValueError, match="at least two examples"):
        variability.variability_of(x[:41], y[:41])


def test_decomposition_of_arrays_is_least_squares():
    """The README's decomposition lines: with a basis that holds the target exactly, R² on held-out rows is 1; with
    a basis of noise, about 0 or below."""
    rng = np.random.default_rng(1)
    z = rng.normal(size=(600, 8))
    u = z @ rng.normal(size=(8, 3)) + 2.0
    fit = lmd.fit_ridge(lmd.SplitStats.from_rows(u[:400], z[:400]), alpha=1e-6)
    assert lmd.r_squared(fit, lmd.SplitStats.from_rows(u[400:], z[400:]))[0] == pytest.approx(1.0, abs=1e-9)
    noise = rng.normal(size=(600, 8))
    fit = lmd.fit_ridge(lmd.SplitStats.from_rows(u[:400], noise[:400]), alpha=1e-6)
    assert lmd.r_squared(fit, lmd.SplitStats.from_rows(u[400:], noise[400:]))[0] < 0.1


def test_the_rule_files_import_only_the_standard_library():
    """Parsing the workflow (the rule files' imports of the library: paths, tags, checks) loads none of numpy,
    pandas, scipy, pyarrow or torch: the Snakefile is parsed for every job and every dry run."""
    import re
    import subprocess
    import sys

    from tests.conftest import PROJECT

    lines = set()
    for path in [PROJECT / "Snakefile", *sorted((PROJECT / "rules").glob("*.smk"))]:
        lines |= {line.strip() for line in path.read_text().splitlines()
                  if re.match(r"\s*(from lmcompare[\w.]* import|import lmcompare)", line)}
    assert len(lines) >= 5, lines
    heavy = ("numpy", "pandas", "scipy", "pyarrow", "torch", "sklearn", "matplotlib", "transformers")
    code = "\n".join(sorted(lines)) + f"\nimport sys\nprint([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", (result.stdout, sorted(lines))


def test_the_readme_python_block_runs_on_pooled_files(tmp_path, monkeypatch, capsys):
    """The README's Python API lines, verbatim, on two pooled files laid out as the workflow writes them."""
    import re

    from tests.conftest import PROJECT
    from tests.factories import write_pooled

    block = re.search(r"## The Python API.*?```python\n(.*?)```", (PROJECT / "README.md").read_text(), re.S).group(1)
    assert 3 <= len(block.strip().splitlines()) <= 8, block
    rng = np.random.default_rng(2)
    n = 500
    labels = rng.choice(["neg", "pos"], size=n)
    latent = rng.normal(size=(n, 4)) + (labels == "pos")[:, None]
    for model, width in (("minilm", 6), ("mpnet", 8)):
        vectors = latent @ rng.normal(size=(4, width)) + 0.1 * rng.normal(size=(n, width))
        write_pooled(tmp_path / f"results/hidden/reviews/{model}/pooled.parquet", [vectors, vectors], labels,
                     ["train"] * 400 + ["test"] * 100, model=model, dataset="reviews")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    nu, r2 = (float(line) for line in capsys.readouterr().out.split())
    assert 0 < nu < 10 and 0.9 < r2 <= 1.0
