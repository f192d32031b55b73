"""What the figures say: the summary page's panels name the table each drew and show its numbers; a table an
enabled analysis was to write and is missing (or lacks a column) stops the summary; the per-analysis figures draw
the values of the tables they are given (read back from the matplotlib artists, not from file sizes)."""
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import PROJECT, SNAKEMAKE, tiny_config
from lmcompare import plotting
from lmcompare.errors import WorkflowInputError
from lmcompare.report.summary import draw_summary

PROVENANCE = pd.DataFrame({"model": ["m1", "m2"], "source": ["local", "local"], "origin": ["/a", "/b"]})


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures handed to plotting.save_figure, in order (nothing is written)."""
    import matplotlib.pyplot as plt

    captured = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, paths: captured.append(fig))
    yield captured
    for fig in captured:
        plt.close(fig)


def _tables(root: Path) -> dict:
    """One aggregated table per analysis, with the columns and path layout the analyses write."""
    root = root / "results/analysis"
    frames = {
        "decomposition": (root / "decomposition/toy/alpha-validation/group.csv",
                          pd.DataFrame({"model": ["m1", "m2", "m3"], "r2_test": [0.61, 0.23, 0.47]})),
        "variability_layers": (root / "variability/toy/mean/layers.csv",
                               pd.DataFrame({"model": ["m1"] * 3 + ["m2"] * 3, "layer": [0, 1, 2] * 2,
                                             "nu": [3.0, 1.5, 2.0, 5.0, 4.0, 0.5]})),
        "variability_selection": (root / "variability/toy/mean/selection.csv",
                                  pd.DataFrame({"model": ["m1", "m2"], "recommended_layer": [1, 2]})),
        "compression": (root / "compression/toy/cls/summary.csv",
                        pd.DataFrame({"model": ["m1", "m2"], "full_accuracy": [0.9, 0.8],
                                      "pca_k1_accuracy": [0.6, 0.55], "best_dim_accuracy": [0.7, 0.65],
                                      "k_star": [4, np.nan], "k_star_n_test": [120, 120]})),
        "geometry": (root / "geometry/toy/regression.csv",
                     pd.DataFrame({"measure": ["vrm", "eee", "isoscore"], "r2": [0.81, 0.12, np.nan],
                                   "pearson_r": [0.9, -0.35, np.nan], "n": [4, 4, 4],
                                   "note": [None, None, "constant"]})),
        "twotower": (root / "twotower/toy/m1/consistency.csv",
                     pd.DataFrame({"comparison": ["split_half", "split_half", "between_seeds"],
                                   "measure": ["pearson", "spearman", "pearson"], "value": [0.42, 0.40, 0.2],
                                   "seed": [0, 0, np.nan], "step": [np.nan] * 3, "other_step": [np.nan] * 3,
                                   "null_q95": [0.05, 0.05, np.nan]})),
    }
    inputs = {}
    for key, (path, frame) in frames.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        inputs[key] = [str(path)]
    return inputs


@pytest.mark.unit
def test_each_summary_panel_names_its_table_and_draws_its_numbers(tmp_path, figures):
    inputs = _tables(tmp_path)
    drawn = draw_summary(inputs, PROVENANCE, ["toy"], ["unused.png"])
    (fig,) = figures
    axes = fig.axes
    for panel, key in [("decomposition", "decomposition"), ("variability", "variability_layers"),
                       ("compression", "compression"), ("geometry", "geometry"), ("twotower", "twotower")]:
        assert drawn[panel]["table"] == inputs[key][0]
    source = {ax: ax.get_title(loc="left") for ax in axes}
    # decomposition: one bar per model, sorted, its width the model's r2_test; the title names the table and mean
    group = pd.read_csv(inputs["decomposition"][0]).sort_values("r2_test")
    ax = axes[0]
    assert [p.get_width() for p in ax.patches] == pytest.approx(group["r2_test"].tolist())
    assert [t.get_text() for t in ax.get_yticklabels()] == group["model"].tolist()
    assert "decomposition/toy/alpha-validation/group.csv" in source[ax]
    assert f"mean {group['r2_test'].mean():.3f}" in source[ax]
    # variability: one curve per model, the table's nu by relative depth; the star at the selection's layer
    layers = pd.read_csv(inputs["variability_layers"][0])
    ax = axes[1]
    curves = [line for line in ax.lines if line.get_marker() != "*"]
    stars = [line for line in ax.lines if line.get_marker() == "*"]
    for line, (model, part) in zip(curves, layers.groupby("model")):
        assert line.get_label() == model
        np.testing.assert_allclose(line.get_ydata(), part.sort_values("layer")["nu"])
        np.testing.assert_allclose(line.get_xdata(), part["layer"] / part["layer"].max())
    assert [float(s.get_ydata()[0]) for s in stars] == [1.5, 0.5]
    assert drawn["variability"]["recommended"] == {"m1": 1, "m2": 2}
    assert drawn["variability"]["selection_table"] == inputs["variability_selection"][0]
    assert "variability/toy/mean/layers.csv" in source[ax]
    # compression: bars are the three accuracy columns, model by model; k* labels from the table
    summary = pd.read_csv(inputs["compression"][0])
    ax = axes[2]
    heights = [p.get_height() for p in ax.patches]
    expected = summary[["full_accuracy", "pca_k1_accuracy", "best_dim_accuracy"]].to_numpy().T.ravel()
    np.testing.assert_allclose(heights, expected)
    assert [t.get_text() for t in ax.texts] == ["k*=4\nn=120", "k*=–\nn=120"]
    assert "compression/toy/cls/summary.csv" in source[ax]
    # geometry: the fitted measures only, best first from the top; R² widths and signed r labels
    ax = axes[3]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["eee", "vrm"]
    assert [p.get_width() for p in ax.patches] == pytest.approx([0.12, 0.81])
    assert [t.get_text() for t in ax.texts] == ["r=-0.35", "r=+0.90"]
    assert "geometry/toy/regression.csv" in source[ax]
    # two-tower: the Pearson rows only, with the control where the row has one
    ax = axes[4]
    assert [p.get_width() for p in ax.patches] == pytest.approx([0.42, 0.2])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["split_half seed 0", "between_seeds"]
    assert "twotower/toy/m1/consistency.csv" in source[ax]


@pytest.mark.unit
def test_a_disabled_analysis_gets_a_note_decided_by_the_inputs_not_by_files(tmp_path, figures):
    inputs = _tables(tmp_path)
    inputs["geometry"] = []  # the rule was given no geometry table: geometry is disabled ...
    drawn = draw_summary(inputs, PROVENANCE, ["toy"], ["unused.png"])
    assert drawn["geometry"]["table"] is None and "not enabled" in drawn["geometry"]["note"]
    assert all(drawn[p]["table"] for p in ("decomposition", "variability", "compression", "twotower"))
    # ... even though a geometry table lies on disk (a stale one from an earlier run)
    assert Path(tmp_path / "results/analysis/geometry/toy/regression.csv").exists()


@pytest.mark.unit
@pytest.mark.parametrize("panel", ["decomposition", "variability_layers", "variability_selection", "compression",
                                   "geometry", "twotower"])
def test_a_missing_table_of_an_enabled_analysis_stops_the_summary(panel, tmp_path, figures):
    inputs = _tables(tmp_path)
    Path(inputs[panel][0]).unlink()
    with pytest.raises(WorkflowInputError, match=rf"is missing.*{re.escape('snakemake ' + inputs[panel][0])}"):
        draw_summary(inputs, PROVENANCE, ["toy"], ["unused.png"])


@pytest.mark.unit
@pytest.mark.parametrize("panel,column", [("decomposition", "r2_test"), ("variability_layers", "nu"),
                                          ("variability_selection", "recommended_layer"),
                                          ("compression", "full_accuracy"), ("geometry", "r2"),
                                          ("twotower", "value")])
def test_a_renamed_column_stops_the_summary_naming_the_table_and_column(panel, column, tmp_path, figures):
    inputs = _tables(tmp_path)
    path = Path(inputs[panel][0])
    pd.read_csv(path).rename(columns={column: column + "_renamed"}).to_csv(path, index=False)
    with pytest.raises(WorkflowInputError, match=rf"{re.escape(str(path))} has no column\(s\) {column}"):
        draw_summary(inputs, PROVENANCE, ["toy"], ["unused.png"])


def _summary_inputs(snakefile: Path, workdir: Path) -> list[str]:
    """The input files of the summary_figure job as a dry run plans it (nothing runs)."""
    command = [SNAKEMAKE, "-s", str(snakefile), "--directory", str(workdir), "--configfile",
               str(workdir / "config.yaml"), "--cores", "1", "results/figures/summary.png", "--dry-run"]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    match = re.search(r"rule summary_figure:\n\s+input: ([^\n]+)", result.stdout)
    assert match, result.stdout[-3000:]
    return sorted(match.group(1).split(", "))


@pytest.mark.workflow
def test_the_summary_tables_do_not_depend_on_the_order_of_the_includes(tiny_models, tiny_corpus, tmp_path):
    """With rules/report.smk read first, before the analyses that add their tables, the summary job is given
    the same tables as with the Snakefile's order."""
    import yaml

    config = tiny_config(tiny_models, tiny_corpus, decomposition={"enabled": True},
                         variability={"enabled": True}, figures={"enabled": True})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    copy = tmp_path / "project"  # the workflow's files, with only the order of the includes changed
    for part in ("rules", "schemas", "workflow_scripts", "report", "envs"):  # the library is installed
        shutil.copytree(PROJECT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    text = (PROJECT / "Snakefile").read_text()
    text = text.replace('include: "rules/report.smk"\n', "")
    text = text.replace('include: "rules/common.smk"\n', 'include: "rules/common.smk"\ninclude: "rules/report.smk"\n')
    assert text.index("rules/report.smk") < text.index("rules/decomposition.smk")
    reordered = copy / "Snakefile"
    reordered.write_text(text)
    original = _summary_inputs(PROJECT / "Snakefile", tmp_path)
    assert any(p.endswith("/group.csv") for p in original) and any(p.endswith("/layers.csv") for p in original)
    assert _summary_inputs(reordered, tmp_path) == original


# ------------------------------------------------------------------------------- per-analysis figures
@pytest.mark.unit
def test_decomposition_figures_draw_the_group_table_and_the_pairwise_matrix(figures):
    from lmcompare.decomposition import plot_group, plot_pairwise

    group = pd.DataFrame({"model": ["a", "b", "c"], "r2_train": [0.9, 0.8, 0.7], "r2_test": [0.6, 0.5, 0.65]})
    plot_group(group, "group", ["unused.png"])
    ax = figures[-1].axes[0]
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, group["r2_train"].tolist() + group["r2_test"].tolist())
    assert ax.lines[0].get_ydata()[0] == pytest.approx(group["r2_test"].mean())
    matrix = pd.DataFrame([[np.nan, 0.3, 0.4], [0.5, np.nan, 0.6], [0.7, 0.8, np.nan]], index=list("abc"),
                          columns=list("abc"))
    plot_pairwise(matrix, "pairwise", ["unused.png"])
    image = figures[-1].axes[0].images[0].get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(image), np.isnan(matrix.to_numpy()))
    np.testing.assert_allclose(image.filled(np.nan), matrix.to_numpy())
    assert [t.get_text() for t in figures[-1].axes[0].texts] == [f"{v:.2f}" for v in matrix.stack().dropna()]


@pytest.mark.unit
def test_geometry_r2_figure_draws_every_measure_of_the_table():
    import matplotlib.pyplot as plt

    from lmcompare.geometry import r2_figure

    table = pd.DataFrame({"measure": ["vrm", "eee", "iso"], "r2": [0.7, 0.2, np.nan],
                          "pearson_r": [-0.84, 0.45, np.nan], "n": [5, 5, 2], "r_ci_low": [-0.99, -0.3, np.nan],
                          "r_ci_high": [-0.5, 0.9, np.nan], "confidence": 0.95, "p_holm": [0.04, 0.6, np.nan]})
    fig = r2_figure(table, dataset="toy", score_name="accuracy")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["iso", "eee", "vrm"]
    # per fitted measure (bottom up): its bootstrap interval as a bar, then r as a dot, at the measure's row
    lines = [([float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()]) for line in ax.lines]
    assert ([-0.3, 0.9], [1, 1]) in lines and ([0.45], [1]) in lines
    assert ([-0.99, -0.5], [2, 2]) in lines and ([-0.84], [2]) in lines
    assert [t.get_text() for t in ax.texts] == ["no fit (n=2)", "R²=0.20, Holm p=0.6, n=5", "R²=0.70, Holm p=0.04, n=5"]
    assert "95% bootstrap interval" in ax.get_xlabel()
    plt.close(fig)


@pytest.mark.unit
def test_variability_figure_draws_nu_and_accuracy_of_each_model(figures):
    from lmcompare.variability import plot_variability

    nu = pd.DataFrame({"model": ["a"] * 3 + ["b"] * 3, "layer": [0, 1, 2] * 2, "subset": "full",
                       "nu": [4.0, 2.0, 3.0, 6.0, 5.0, 1.0]})
    probes = pd.DataFrame({"model": ["a"] * 3 + ["b"] * 3, "layer": [0, 1, 2] * 2,
                           "accuracy": [0.5, 0.8, 0.7, 0.5, 0.6, 0.9], "ci_low": 0.4, "ci_high": 0.95})
    selection = pd.DataFrame({"model": ["a", "b"], "recommended_layer": [1, 2], "nu_recommended": [2.0, 1.0],
                              "spearman_rho": [-0.5, -1.0], "tolerance": 0.01, "max_noise_fraction": np.nan})
    plot_variability(nu, probes, selection, dataset="toy", pooling="mean", paths=["unused.png"])
    top, bottom = figures[-1].axes[:2]
    curves = [line for line in top.lines if line.get_marker() != "*"]
    np.testing.assert_allclose(curves[0].get_ydata(), [4.0, 2.0, 3.0])
    np.testing.assert_allclose(curves[1].get_ydata(), [6.0, 5.0, 1.0])
    stars = [(float(line.get_xdata()[0]), float(line.get_ydata()[0])) for line in top.lines
             if line.get_marker() == "*"]
    assert stars == [(1.0, 2.0), (2.0, 1.0)]
    accuracy = [line for line in bottom.lines if line.get_marker() != "*"]
    np.testing.assert_allclose(accuracy[0].get_ydata(), [0.5, 0.8, 0.7])
    np.testing.assert_allclose(accuracy[1].get_ydata(), [0.5, 0.6, 0.9])


@pytest.mark.unit
def test_compression_curves_draw_the_pca_accuracies_and_the_smallest_k(figures):
    from lmcompare.compression import plot_curves

    curves = pd.DataFrame({"model": ["a"] * 3, "kind": "pca", "k": [1, 2, 4], "accuracy": [0.55, 0.7, 0.8],
                           "ci_low": 0.4, "ci_high": 0.9, "accuracy_diff": [-0.26, -0.11, -0.01],
                           "diff_ci_low": [-0.4, -0.2, -0.08], "diff_ci_high": [-0.1, -0.02, 0.06],
                           "worse_than_full": [True, True, False]})
    summary = pd.DataFrame({"model": ["a"], "full_accuracy": [0.81], "k_star": [4], "k_star_n_test": [120],
                            "k_star_accuracy": [0.8], "majority_accuracy": [0.5], "alpha": [0.05],
                            "full_beats_majority": [True], "full_vs_majority_mcnemar_p": [0.001]})
    plot_curves(curves, summary, [], dataset="toy", view="cls", paths=["unused.png"])
    ax = figures[-1].axes[0]
    lines = {line.get_marker(): line for line in ax.lines if line.get_marker() in ("o", "*")}
    np.testing.assert_allclose(lines["o"].get_xdata(), [1, 2, 4])
    np.testing.assert_allclose(lines["o"].get_ydata(), [0.55, 0.7, 0.8])
    assert (float(lines["*"].get_xdata()[0]), float(lines["*"].get_ydata()[0])) == (4.0, 0.8)
    levels = sorted(float(line.get_ydata()[0]) for line in ax.lines if line.get_marker() not in ("o", "*"))
    assert levels == [0.5, 0.81]


@pytest.mark.unit
def test_twotower_split_half_figure_draws_the_halves_and_names_the_consistency_row():
    import matplotlib.pyplot as plt

    from lmcompare.twotower.figures import plot_split_half

    types = pd.DataFrame({"seed": [0, 0, 0], "in_split_half": [True, True, False],
                          "preference_half1": [0.1, -0.4, 2.0], "preference_half2": [0.2, -0.3, 9.0]})
    consistency = pd.DataFrame({"comparison": ["split_half"], "seed": [0], "measure": ["pearson"], "value": [0.37],
                                "n_types": [2], "null_q95": [0.11], "p_value": [0.004]})
    fig = plot_split_half(types, consistency, "split halves")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), [[0.1, 0.2], [-0.4, -0.3]])
    assert ax.get_title() == "seed 0: Pearson r = 0.37, 2 types\ncontrol 95% quantile 0.11, p = 0.004"
    plt.close(fig)


@pytest.mark.unit
def test_twotower_summary_bars_are_one_per_row_with_the_control_where_measured():
    """Split halves at two checkpoints of one seed used to share a label, so their bars were drawn on top of each other."""
    from lmcompare.report.summary import twotower_consistency_bars

    table = pd.DataFrame({
        "comparison": ["split_half", "split_half", "split_half", "checkpoint", "seed"],
        "seed": [0, 0, 0, 0, 0], "step": [300, 600, 600, 300, np.nan], "other_step": [np.nan, np.nan, np.nan, 600, np.nan],
        "measure": ["pearson", "pearson", "spearman", "pearson", "abs_pearson"],
        "value": [0.65, 0.71, 0.68, 0.29, 0.08], "null_q95": [0.34, 0.34, 0.26, np.nan, np.nan],
    })
    bars = twotower_consistency_bars(table)
    assert list(bars["label"]) == ["split_half seed 0 step 300", "split_half seed 0 step 600",
                                   "checkpoint seed 0 step 300 vs 600"]
    assert list(bars["value"]) == [0.65, 0.71, 0.29]
    np.testing.assert_array_equal(bars["control_q95"].to_numpy(), [0.34, 0.34, np.nan])
