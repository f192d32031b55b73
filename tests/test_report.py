"""Every analysis on the tiny models, then `snakemake --report`: every expected figure exists, is a valid image of
non-trivial size, and the report embeds every figure with its caption."""
import json
import re
from pathlib import Path

import pytest

from tests.conftest import pending_jobs, run_workflow, tiny_config
from tests.test_decomposition import LMD_SECTION
from tests.test_geometry import GEOMETRY_TEST_SECTION
from tests.test_twotower import TINY_STAGE
from tests.test_variability import VARIABILITY_SECTION

PROJECT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def every_analysis_config(tiny_models, tiny_corpus):
    config = tiny_config(
        tiny_models, tiny_corpus, models=("bert", "roberta"),
        decomposition={**LMD_SECTION, "units": ["word"]},
        variability=VARIABILITY_SECTION,
        compression={"enabled": True},
        geometry={**GEOMETRY_TEST_SECTION},
        twotower={**TINY_STAGE, "seeds": [0]},
        figures={"enabled": True},
    )
    config["models"] += [
        {"name": "tiny-bert-p05", "source": "perturb", "base": "tiny-bert", "alpha": 0.5, "seed": 0},
        {"name": "tiny-bert-ft", "source": "finetune", "base": "tiny-bert", "dataset": "toy", "epochs": 2,
         "learning_rate": 1e-3, "batch_size": 8, "max_length": 32, "seed": 0},
    ]
    return config


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_models, tiny_corpus):
    workdir = tmp_path_factory.mktemp("report")
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


def test_adding_a_model_redraws_the_joins_and_nothing_upstream(full_run, tiny_models, tmp_path):
    import shutil

    workdir, config = full_run
    grown = dict(config, models=config["models"] + [
        {"name": "tiny-gpt2", "source": "local", "path": str(tiny_models["gpt2"])}])
    scratch = tmp_path / "grown"
    shutil.copytree(workdir, scratch, symlinks=True)
    run_workflow(scratch, grown, extra=["-n"])
    jobs = pending_jobs(scratch)
    for rule, output in jobs:
        # every job is the new model's own work (alone or in a pair with an old model) or a join across models;
        # nothing that belongs to the old models alone
        if "tiny-gpt2" in output:
            continue
        for model in ("tiny-bert", "tiny-roberta", "tiny-bert-p05", "tiny-bert-ft"):
            assert f"/{model}/" not in output and not output.endswith(f"/{model}") and \
                not output.endswith(f"/{model}.csv"), (rule, output)
    assert any(rule == "summary_figure" for rule, _ in jobs)
