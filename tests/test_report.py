"""Every analysis on the tiny models, then `snakemake --report`: every expected figure exists, is a valid image of
non-trivial size, and the report embeds every figure with its caption."""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import TINY_SECTIONS, copy_workdir, pending_jobs, run_workflow, tiny_config

PROJECT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def every_analysis_config(tiny_models, tiny_corpus):
    config = tiny_config(
        tiny_models, tiny_corpus, models=("bert", "roberta"),
        decomposition={**TINY_SECTIONS["decomposition"], "units": ["word"]},
        variability=TINY_SECTIONS["variability"],
        compression={"enabled": True},
        geometry={**TINY_SECTIONS["geometry"]},
        twotower={**TINY_SECTIONS["twotower"], "seeds": [0]},
        figures={"enabled": True},
    )
    config["models"] += [
        {"name": "tiny-bert-p05", "source": "perturb", "base": "tiny-bert", "alpha": 0.5, "seed": 0},
        {"name": "tiny-bert-ft", "source": "finetune", "base": "tiny-bert", "dataset": "toy", "epochs": 2,
         "learning_rate": 1e-3, "batch_size": 8, "max_length": 32, "seed": 0},
    ]
    return config


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_models, tiny_corpus, extracted_workdir):
    """Every analysis and the report, on a copy of the session's extracted workdir."""
    workdir = copy_workdir(extracted_workdir, tmp_path_factory.mktemp("report"))
    config = every_analysis_config(tiny_models, tiny_corpus)
    run_workflow(workdir, config)
    run_workflow(workdir, None, extra=["--report", "results/report.html"])
    return workdir, config


def report_entries(workdir) -> dict:
    """The report's registered results: path -> {filename, caption, ...} (the JSON the HTML page is built from)."""
    html = (workdir / "results/report.html").read_text()
    start = re.search(r'<script id="results">\s*var results = ', html).end()
    entries, _ = json.JSONDecoder().raw_decode(html[start:])
    return entries


@pytest.mark.workflow
def test_every_analysis_draws_valid_figures(full_run):
    import matplotlib.image

    workdir, _ = full_run
    figures = sorted((workdir / "results/figures").rglob("*.png"))
    folders = {path.relative_to(workdir / "results/figures").parts[0] for path in figures}
    assert folders >= {"decomposition", "variability", "compression", "geometry", "twotower", "summary.png"}
    for path in figures:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE), f"{path} is not a PNG"
        assert len(data) > 10_000, f"{path} is suspiciously small ({len(data)} bytes)"
        height, width = matplotlib.image.imread(path).shape[:2]
        assert height > 200 and width > 200, path
        assert path.with_suffix(".svg").exists(), f"{path} has no SVG twin"


@pytest.mark.workflow
def test_every_summary_panel_is_drawn_from_a_table_of_the_run(full_run):
    """Every analysis is enabled here, so no panel may show a note: the job's log names the table of each."""
    workdir, _ = full_run
    log = (workdir / "results/logs/summary_figure.log").read_text()
    drawn = dict(re.findall(r"panel (\w+): drawn from (\S+)", log))
    assert set(drawn) == {"decomposition", "variability", "compression", "geometry", "twotower"}, log
    for panel, table in drawn.items():
        assert table.startswith(f"results/analysis/{panel}/") and (workdir / table).exists()
    assert drawn["decomposition"].endswith("/group.csv") and drawn["geometry"].endswith("/regression.csv")


@pytest.mark.workflow
def test_the_report_embeds_every_figure_with_its_caption(full_run):
    workdir, _ = full_run
    entries = report_entries(workdir)
    figures = {str(path.relative_to(workdir)) for path in (workdir / "results/figures").rglob("*.png")}
    assert figures <= set(entries), f"figures missing from the report: {sorted(figures - set(entries))}"
    for path, entry in entries.items():
        caption = re.sub(r"<[^>]+>", "", entry.get("caption") or "")
        assert len(caption) > 80, f"{path} has no real caption in the report"
        assert "{{" not in caption, f"{path}: caption template not rendered"
    assert {"results/report/models.csv", "results/report/config_used.yaml"} <= set(entries)
    html = (workdir / "results/report.html").read_text()
    assert "data:image/png" in html  # self-contained: the figures are embedded


# Rules whose jobs belong to one model (its folder, its hidden states, its per-model analyses).
PER_MODEL_RULES = {"materialise_model", "perturb_model", "finetune_model", "extract_hidden_states", "variability_nu",
                   "variability_probe", "compression_model", "geometry_measures", "geometry_score", "twotower_corpus",
                   "twotower_train", "twotower_measure", "twotower_preference", "twotower_figures"}
OLD_MODELS = ("tiny-bert", "tiny-roberta", "tiny-bert-p05", "tiny-bert-ft")


def scratch_copy(workdir, tmp_path):
    """A copy of the finished run (mtimes and .snakemake records kept) to change without touching the fixture."""
    import shutil

    scratch = tmp_path / "scratch"
    shutil.copytree(workdir, scratch, symlinks=True)
    return scratch


@pytest.mark.workflow
def test_adding_a_model_redraws_the_joins_and_nothing_upstream(full_run, tiny_models, tmp_path):
    workdir, config = full_run
    grown = dict(config, models=config["models"] + [
        {"name": "tiny-gpt2", "source": "local", "path": str(tiny_models["gpt2"])}])
    scratch = scratch_copy(workdir, tmp_path)
    run_workflow(scratch, grown, extra=["-n"])
    jobs = pending_jobs(scratch)
    for rule, output in jobs:
        # every job is the new model's own work (alone or in a pair with an old model) or a join across models;
        # nothing that belongs to the old models alone
        if "tiny-gpt2" in output:
            continue
        assert rule not in PER_MODEL_RULES, (rule, output)
        for model in OLD_MODELS:
            assert f"/{model}/" not in output and not output.endswith(f"/{model}") and \
                not output.endswith(f"/{model}.csv"), (rule, output)
    rules = {rule for rule, _ in jobs}
    # the joins of every analysis enabled here take the new model in, and the report's model table and page follow
    joins = {"decomposition_fit", "decomposition_figures", "variability_summary", "compression_dataset",
             "geometry_regression", "geometry_figures", "model_provenance", "summary_figure"}
    assert joins <= rules, f"joins not redone: {sorted(joins - rules)}"
    outputs = {output for _, output in jobs}
    assert {"results/analysis/geometry/toy/regression.csv", "results/report/models.csv",
            "results/figures/summary.png"} <= outputs
    # and the new model's own work is there
    assert {"materialise_model", "extract_hidden_states"} <= rules


@pytest.mark.workflow
def test_provenance_table_has_a_row_per_model_with_source_revision_and_sha256(full_run):
    workdir, config = full_run
    table = pd.read_csv(workdir / "results/report/models.csv", dtype=str, keep_default_na=False)
    assert list(table.columns) == ["model", "source", "origin", "revision", "architecture", "weights_sha256",
                                   "derivation"]
    assert list(table["model"]) == [entry["name"] for entry in config["models"]]
    for entry, row in zip(config["models"], table.itertuples()):
        assert row.source == entry["source"], row
        assert re.fullmatch(r"[0-9a-f]{64}", row.weights_sha256), row
        recorded = json.loads((workdir / "results/models" / entry["name"] / "provenance.json").read_text())
        assert row.weights_sha256 == recorded["weights_sha256"], row
        assert row.origin, row
        if entry["source"] in ("perturb", "finetune"):
            assert "base=tiny-bert" in row.derivation, row
        else:
            assert Path(row.origin) == Path(entry["path"]).resolve() and row.derivation == "", row


@pytest.mark.workflow
def test_the_summary_is_redrawn_when_and_only_when_its_tables_change(full_run, tmp_path):
    import os

    workdir, config = full_run
    scratch = scratch_copy(workdir, tmp_path)
    # a config edit that changes no table (a scheduler request): only the record of the config is rewritten
    edited = dict(config, resources={**config["resources"], "mem_mb_base": 2345})
    (scratch / "config.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
    assert {rule for rule, _ in pending_jobs(scratch)} == {"effective_config"}
    # tables rewritten with the same bytes (a rerun of the provenance rule, say) are newer but unchanged
    later = (scratch / "results/figures/summary.png").stat().st_mtime + 60
    regression = scratch / "results/analysis/geometry/toy/regression.csv"
    for path in (scratch / "results/report/models.csv", regression):
        os.utime(path, (later, later))
    assert "summary_figure" not in {rule for rule, _ in pending_jobs(scratch)}
    # a changed table redraws the page
    table = pd.read_csv(regression)
    table["r2"] = table["r2"] / 2
    table.to_csv(regression, index=False)
    os.utime(regression, (later + 60, later + 60))
    assert "summary_figure" in {rule for rule, _ in pending_jobs(scratch)}


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
