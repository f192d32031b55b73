"""A researcher's own run: a config file with only `models` and `datasets` (two tiny local models, a local CSV with
three classes), passed with --configfile; every analysis and `snakemake --report` on it (every expected figure exists,
is a valid image of non-trivial size, and the report embeds every figure with its caption); a second run from scratch
for determinism; example_id kept through drops; the stratified split; one colour per model across figures."""
import json
import os
import random
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import NEGATIVE, NEUTRAL, POSITIVE, PROJECT, SNAKEMAKE, pending_jobs, run_workflow
from lmcompare import plotting
from lmcompare import paths, runtime
from lmcompare.data.prepare import (MIN_CLASS_EXAMPLES, build_dataset, hashed_split, n_test_rows,
                                              stratified_split)

MIDDLE = "fine okay average decent middling plain usual standard fair ordinary".split()
EMPTY_ROWS = (5, 17)  # source rows whose text is empty / whitespace only
# The two-tower LM's training budget, in a second file: the schema defaults (1000 steps, two seeds, 128-token
# windows) take many minutes on a CPU; no dataset or model name is in it.
BUDGET = {"twotower": {"steps": 20, "seeds": [0], "window": 16, "n_embd": 16, "batch_size": 4, "eval_every": 10,
                       "checkpoint_every": 10, "min_count": 3, "control_permutations": 20,
                       "head": {"steps": 10, "batch_size": 4}}}


def three_class_rows(n=90, seed=0):
    rng = random.Random(seed)
    rows = []
    for index in range(n):
        label = ("pos", "neg", "mid")[index % 3]
        own = {"pos": POSITIVE, "neg": NEGATIVE, "mid": MIDDLE}[label]
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(5, 11))] + [rng.choice(own) for _ in range(2)]
        rng.shuffle(words)
        rows.append({"body": " ".join(words), "klass": label})
    for index, text in zip(EMPTY_ROWS, ("   ", "")):
        rows[index]["body"] = text
    return rows


def own_config(models: dict, csv: Path) -> dict:
    return {"models": [{"name": "bert-a", "source": "local", "path": str(models["bert"])},
                       {"name": "roberta-b", "source": "local", "path": str(models["roberta"])}],
            "datasets": [{"name": "mine", "source": "file", "path": str(csv), "text_column": "body",
                          "label_column": "klass"}]}


def snakemake(workdir: Path, configfiles, *extra, check=True):
    """The README's command line (`--cores 2 --workflow-profile profiles/local`, default threads per job, the
    environment as it is: no PYTHONHASHSEED) with the user's config files."""
    command = [SNAKEMAKE, "-s", str(PROJECT / "Snakefile"), "--directory", str(workdir), "--cores", "2",
               "--workflow-profile", str(PROJECT / "profiles/local"), "--configfile", *map(str, configfiles), *extra]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONHASHSEED"}
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=2400, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}")
    return result


@pytest.fixture(scope="module")
def own_files(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("own")
    csv = root / "mine.csv"
    pd.DataFrame(three_class_rows()).to_csv(csv, index=False)
    (root / "my.yaml").write_text(yaml.safe_dump(own_config(tiny_models, csv), sort_keys=False))
    (root / "budget.yaml").write_text(yaml.safe_dump(BUDGET, sort_keys=False))
    return root, csv


@pytest.fixture(scope="module")
def own_run(own_files):
    root, csv = own_files
    workdir = root / "run"
    workdir.mkdir()
    files = [root / "my.yaml", root / "budget.yaml"]
    snakemake(workdir, files)
    report = snakemake(workdir, files, "--report", "results/report.html")
    return workdir, csv, report


@pytest.mark.workflow
def test_own_config_runs_every_analysis_and_the_report(own_run):
    workdir, _, _ = own_run
    used = yaml.safe_load((workdir / "results/report/config_used.yaml").read_text())
    for section in ("decomposition", "similarity", "variability", "compression", "geometry", "twotower", "figures"):
        assert used[section]["enabled"] is True, section
    # nothing of the shipped default: no name of its datasets or models anywhere in the effective config
    shipped = yaml.safe_load((PROJECT / "config.yaml").read_text())
    shipped_names = {e["name"] for e in shipped["models"] + shipped["datasets"]}
    text = (workdir / "results/report/config_used.yaml").read_text()
    assert not [name for name in shipped_names | {"reviews", "minilm"} if re.search(rf"\b{re.escape(name)}\b", text)]
    assert [d["name"] for d in used["datasets"]] == ["mine"] and used["twotower"]["dataset"] is None
    results = workdir / "results"
    for table in ("analysis/variability/mine/mean/selection.csv", "analysis/compression/mine/first_layer-1/summary.csv",
                  "analysis/geometry/mine/regression.csv", "analysis/twotower/mine/bert-a/consistency.csv",
                  "analysis/similarity/mine/example/t-1_b-1/similarity.csv",
                  "figures/summary.png", "report/models.csv"):
        assert (results / table).exists(), table
    assert list(results.glob("analysis/decomposition/mine/**/group.csv"))
    selection = pd.read_csv(results / "analysis/variability/mine/mean/selection.csv")
    assert sorted(selection["model"]) == ["bert-a", "roberta-b"]
    html = (results / "report.html")
    assert html.exists() and html.stat().st_size > 10_000


@pytest.mark.workflow
def test_a_second_run_as_a_user_runs_it_gives_byte_identical_files(own_files, own_run):
    """Determinism as a user runs the workflow: the same command line from scratch in another folder; every analysis
    (decomposition, similarity, variability, compression, geometry with FAISS k-means and quantizer training on two OpenMP
    threads, two-tower training on two torch threads), the dataset and the hidden states byte for byte. The one
    exception: the two-tower histories' `elapsed_s` column (wall time), compared with that column left out; the
    tolerance documented in docs/reliability.md is zero otherwise."""
    root, _ = own_files
    first = own_run[0]
    second = root / "second"
    second.mkdir()
    snakemake(second, [root / "my.yaml", root / "budget.yaml"])
    tables = sorted(p.relative_to(first).as_posix() for p in (first / "results/analysis").rglob("*.csv"))
    assert {Path(t).parts[2] for t in tables} == {"decomposition", "similarity", "variability", "compression",
                                                  "geometry", "twotower"}
    assert len(tables) == 34, tables  # decomposition 3, similarity 1, variability 7, compression 10, geometry 7, two-tower 6
    hidden = [paths.pooled_path("mine", m) for m in ("bert-a", "roberta-b")]
    hidden += [paths.tokens_path("mine", m) for m in ("bert-a", "roberta-b")]
    timed = [t for t in tables if t.endswith("history.csv")]
    differ = [relative for relative in (paths.dataset_path("mine"), *hidden, *tables) if relative not in timed
              and (first / relative).read_bytes() != (second / relative).read_bytes()]
    assert not differ, f"not byte-identical between two runs: {differ}"
    for relative in timed:
        a, b = (pd.read_csv(run / relative) for run in (first, second))
        assert "elapsed_s" in a and a.drop(columns="elapsed_s").equals(b.drop(columns="elapsed_s")), relative


@pytest.mark.workflow
def test_dropped_rows_keep_the_other_ids_and_are_listed(own_run):
    workdir, csv, _ = own_run
    source = pd.read_csv(csv, keep_default_na=False)
    dataset = pd.read_parquet(workdir / paths.dataset_path("mine"))
    kept = [i for i in range(len(source)) if i not in EMPTY_ROWS]
    assert dataset["example_id"].tolist() == kept
    # each id is the source row: its text and label
    assert dataset["text"].tolist() == source.loc[kept, "body"].tolist()
    assert dataset["label"].tolist() == source.loc[kept, "klass"].tolist()
    dropped = pd.read_csv(workdir / "results/data/mine.dropped.csv")
    assert dropped["example_id"].tolist() == list(EMPTY_ROWS)
    assert set(dropped["reason"]) == {"empty or whitespace-only text"}
    log = (workdir / "results/logs/prepare_dataset/mine.log").read_text()
    assert "empty texts dropped 2" in log and "mine.dropped.csv" in log
    # every consumer joins by these ids: the hidden states carry exactly the dataset's ids
    pooled = pd.read_parquet(workdir / paths.pooled_path("mine", "bert-a"), columns=["example_id"])
    assert pooled["example_id"].tolist() == kept


@pytest.mark.workflow
def test_run_split_is_stratified(own_run):
    workdir, _, _ = own_run
    dataset = pd.read_parquet(workdir / paths.dataset_path("mine"))
    counts = dataset.groupby(["label", "split"]).size().unstack()
    for label, row in counts.iterrows():
        n = int(row.sum())
        assert row["test"] == n_test_rows(n, 0.2) == round(n * 0.2), (label, row.to_dict())


# ------------------------------------------------------------------------------- the report of the own run
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def report_entries(workdir) -> dict:
    """The report's registered results: path -> {filename, caption, ...} (the JSON the HTML page is built from)."""
    html = (workdir / "results/report.html").read_text()
    start = re.search(r'<script id="results">\s*var results = ', html).end()
    entries, _ = json.JSONDecoder().raw_decode(html[start:])
    return entries


@pytest.mark.workflow
def test_every_analysis_draws_valid_figures(own_run):
    import matplotlib.image

    workdir, _, _ = own_run
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
def test_every_summary_panel_is_drawn_from_a_table_of_the_run(own_run):
    """Every analysis is enabled here, so no panel may show a note: the job's log names the table of each."""
    workdir, _, _ = own_run
    log = (workdir / "results/logs/summary_figure.log").read_text()
    drawn = dict(re.findall(r"panel (\w+): drawn from (\S+)", log))
    assert set(drawn) == {"decomposition", "variability", "compression", "geometry", "twotower"}, log
    for panel, table in drawn.items():
        assert table.startswith(f"results/analysis/{panel}/") and (workdir / table).exists()
    assert drawn["decomposition"].endswith("/group.csv") and drawn["geometry"].endswith("/regression.csv")


@pytest.mark.workflow
def test_the_report_embeds_every_figure_with_its_caption(own_run):
    workdir, _, _ = own_run
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
OWN_MODELS = ("bert-a", "roberta-b")


def scratch_copy(own_files, own_run, tmp_path) -> tuple[Path, dict]:
    """A copy of the finished own run (mtimes and .snakemake records kept) to change without touching the fixture,
    and the run's configuration as one dict (the two files merged), which `run_workflow` writes into the copy."""
    import shutil

    root, _ = own_files
    scratch = tmp_path / "scratch"
    shutil.copytree(own_run[0], scratch, symlinks=True)
    config = {**yaml.safe_load((root / "my.yaml").read_text()), **yaml.safe_load((root / "budget.yaml").read_text())}
    (scratch / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return scratch, config


@pytest.mark.workflow
def test_adding_a_model_redraws_the_joins_and_nothing_upstream(own_files, own_run, tiny_models, tmp_path):
    scratch, config = scratch_copy(own_files, own_run, tmp_path)
    assert pending_jobs(scratch) == []  # the merged config is the run's: nothing to do
    grown = dict(config, models=config["models"] + [
        {"name": "tiny-gpt2", "source": "local", "path": str(tiny_models["gpt2"])}])
    run_workflow(scratch, grown, extra=["-n"])
    jobs = pending_jobs(scratch)
    for rule, output in jobs:
        # every job is the new model's own work (alone or in a pair with an old model) or a join across models;
        # nothing that belongs to the old models alone
        if "tiny-gpt2" in output:
            continue
        assert rule not in PER_MODEL_RULES, (rule, output)
        for model in OWN_MODELS:
            assert f"/{model}/" not in output and not output.endswith(f"/{model}") and \
                not output.endswith(f"/{model}.csv"), (rule, output)
    rules = {rule for rule, _ in jobs}
    # the joins of every analysis enabled here take the new model in, and the report's model table and page follow
    joins = {"decomposition_fit", "decomposition_figures", "similarity", "variability_summary", "compression_dataset",
             "geometry_regression", "geometry_figures", "model_provenance", "summary_figure"}
    assert joins <= rules, f"joins not redone: {sorted(joins - rules)}"
    outputs = {output for _, output in jobs}
    assert {"results/analysis/geometry/mine/regression.csv", "results/report/models.csv",
            "results/figures/summary.png"} <= outputs
    # and the new model's own work is there
    assert {"materialise_model", "extract_hidden_states"} <= rules


@pytest.mark.workflow
def test_provenance_table_has_a_row_per_model_with_source_origin_and_sha256(own_files, own_run):
    """Local sources here; the derivation column of perturbed and fine-tuned models is checked on the geometry
    and compression runs (test_geometry.py, test_compression.py)."""
    from lmcompare.models.loading import weights_sha256

    workdir = own_run[0]
    config = yaml.safe_load((own_files[0] / "my.yaml").read_text())
    table = pd.read_csv(workdir / "results/report/models.csv", dtype=str, keep_default_na=False)
    assert list(table.columns) == ["model", "source", "origin", "revision", "architecture", "weights_sha256",
                                   "derivation"]
    assert list(table["model"]) == [entry["name"] for entry in config["models"]]
    for entry, row in zip(config["models"], table.itertuples()):
        assert row.source == entry["source"] == "local", row
        # the recorded hash is the hash of the weights in the folder, recomputed here
        assert row.weights_sha256 == weights_sha256(workdir / "results/models" / entry["name"]), row
        assert Path(row.origin) == Path(entry["path"]).resolve() and row.derivation == "", row
    assert set(table["architecture"]) == {"BertModel", "RobertaModel"}


@pytest.mark.workflow
def test_the_summary_is_redrawn_when_and_only_when_its_tables_change(own_files, own_run, tmp_path):
    import os

    scratch, config = scratch_copy(own_files, own_run, tmp_path)
    # a config edit that changes no table (a scheduler request): only the record of the config is rewritten
    edited = dict(config, resources={"mem_mb_base": 2345})
    (scratch / "config.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
    assert {rule for rule, _ in pending_jobs(scratch)} == {"effective_config"}
    # tables rewritten with the same bytes (a rerun of the provenance rule, say) are newer but unchanged
    later = (scratch / "results/figures/summary.png").stat().st_mtime + 60
    selection = scratch / "results/analysis/variability/mine/mean/selection.csv"
    for path in (scratch / "results/report/models.csv", selection):
        os.utime(path, (later, later))
    assert "summary_figure" not in {rule for rule, _ in pending_jobs(scratch)}
    # a changed table redraws the page
    table = pd.read_csv(selection)
    table["model"] = table["model"] + "-changed"
    table.to_csv(selection, index=False)
    os.utime(selection, (later + 60, later + 60))
    assert "summary_figure" in {rule for rule, _ in pending_jobs(scratch)}


# ---------------------------------------------------------------------------------------- the split, directly
@pytest.mark.unit
def test_stratified_split_gives_each_class_its_share_and_is_seeded():
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 7 + ["d"] * 3 + [None] * 10
    rng = np.random.default_rng(1)
    labels = list(rng.permutation(np.array(labels, dtype=object)))
    splits = stratified_split(labels, 0.2, seed=4)
    frame = pd.DataFrame({"label": [str(x) for x in labels], "split": splits})
    test = frame[frame["split"] == "test"].groupby("label").size().to_dict()
    # round(n x 0.2), clipped to >= MIN_CLASS_EXAMPLES per split for n >= 4, >= 1 for 2-3 rows
    assert test == {"a": 10, "b": 6, "c": 2, "d": 1, "None": 2}
    assert MIN_CLASS_EXAMPLES == 2
    np.testing.assert_array_equal(splits, stratified_split(labels, 0.2, seed=4))
    assert not np.array_equal(splits, stratified_split(labels, 0.2, seed=5))


@pytest.mark.unit
def test_hashed_split_is_kept_as_an_option():
    raw = pd.DataFrame({"text": [f"text {i}" for i in range(200)], "label": ["x", "y", "z", "w"] * 50})
    entry = {"name": "d", "text_column": "text", "label_column": "label", "test_fraction": 0.25, "seed": 2}
    hashed, counts = build_dataset(raw, {**entry, "split_method": "hashed"})
    assert hashed["split"].tolist() == hashed_split(200, 0.25, 2).tolist() and counts["split_from"] == "hashed"
    stratified, counts = build_dataset(raw, entry)  # the default
    assert counts["split_from"] == "stratified by label"
    assert (stratified[stratified["split"] == "test"].groupby("label").size() == 12).all()  # round(50 x 0.25)


@pytest.mark.unit
def test_subsample_keeps_source_ids_and_class_shares():
    raw = pd.DataFrame({"text": [f"text {i}" if i % 9 else " " for i in range(300)], "label": ["p", "q", "r"] * 100})
    entry = {"name": "d", "text_column": "text", "label_column": "label", "test_fraction": 0.2, "seed": 0,
             "max_examples": 90}
    frame, counts = build_dataset(raw, entry)
    assert len(frame) == 90 and counts["empty_texts_dropped"] == 34
    assert frame["example_id"].is_monotonic_increasing and not (frame["example_id"] % 9 == 0).any()
    assert (frame["text"] == [f"text {i}" for i in frame["example_id"]]).all()
    # the subsample keeps the split proportions of the 266 kept rows (the split: stratified by label)
    kept_split, _ = build_dataset(raw, {**entry, "max_examples": None})
    share = (kept_split["split"] == "test").mean()
    assert abs((frame["split"] == "test").mean() - share) < 1 / 90 + 1e-9


# ------------------------------------------------------------------------------------------ start-up checks
def _entry(config, kind="datasets"):
    return config[kind][0]


START_UP_CASES = {
    "model folder missing": (lambda c, root: _entry(c, "models").update(path=str(root / "nowhere")),
                             "models[0].path", "does not exist", "nowhere"),
    "model folder without config.json": (lambda c, root: _entry(c, "models").update(path=str(root / "not-a-model")),
                                         "models[0].path", "no config.json", "not-a-model"),
    "dataset file missing": (lambda c, root: _entry(c).update(path=str(root / "gone.csv")),
                             "datasets[0].path", "does not exist", "gone.csv"),
    "text column missing": (lambda c, root: _entry(c).update(text_column="review"),
                            "datasets[0].text_column", "no column 'review'", "mine.csv"),
    "label column missing": (lambda c, root: _entry(c).update(label_column="stars"),
                             "datasets[0].label_column", "no column 'stars'", "mine.csv"),
    "too few examples of a class": (lambda c, root: _entry(c).update(path=str(root / "rare.csv")),
                                    "datasets[0].label_column", "fewer than 2 examples", "rare.csv"),
}


@pytest.mark.workflow
@pytest.mark.parametrize("case", list(START_UP_CASES))
def test_each_start_up_check_stops_before_any_job(case, own_files, tiny_models, tmp_path):
    root, csv = own_files
    mutate, key, problem, path_part = START_UP_CASES[case]
    rows = three_class_rows(30) + [{"body": "a lone example", "klass": "rare"}]
    pd.DataFrame(rows).to_csv(root / "rare.csv", index=False)
    (root / "not-a-model").mkdir(exist_ok=True)
    (root / "not-a-model" / "weights.txt").write_text("not a model")
    config = own_config(tiny_models, csv)
    mutate(config, root)
    (tmp_path / "mine-bad.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(tmp_path, [tmp_path / "mine-bad.yaml"], "-n", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert problem in output and path_part in output, output[-3000:]
    assert key in output and "mine-bad.yaml" in output and "fix" in output, output[-3000:]
    assert not (tmp_path / "results").exists()


@pytest.mark.workflow
def test_a_schema_error_names_the_users_file(own_files, tiny_models, tmp_path):
    root, csv = own_files
    config = own_config(tiny_models, csv)
    config["geometry"] = {"max_points": "many"}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(tmp_path, [tmp_path / "mine.yaml"], "-n", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "geometry.max_points" in output and "mine.yaml" in output, output[-3000:]
    assert "config.yaml" not in output.replace("config.schema.yaml", "").replace("geometry.schema.yaml", "")


# ------------------------------------------------------------------------------------------------ colours
@pytest.mark.unit
def test_a_model_has_one_colour_in_every_figure(monkeypatch):
    from lmcompare import compression

    monkeypatch.setattr(plotting, "_MODEL_INDEX", {})
    configured = ["base", "tuned", "other", "fourth"]
    # the summary figure takes the configured list; a per-analysis figure its subset's configured indices
    plotting.use_model_order(configured)
    summary = {m: plotting.model_style(m, i)[0] for i, m in enumerate(sorted(configured))}
    plotting._MODEL_INDEX.clear()
    plotting.use_model_order({m: configured.index(m) for m in ("other", "fourth")})
    subset = compression._colours(["fourth", "other"])
    assert subset == {"fourth": summary["fourth"], "other": summary["other"]}
    assert subset["fourth"] == plotting.colour(3) and subset["other"] == plotting.colour(2)


# ------------------------------------------------------------------------------------------- small things
@pytest.mark.unit
def test_batches_bound_the_padding_of_short_texts():
    from lmcompare.extraction.extract import MIN_LENGTH_RATIO, plan_batches

    lengths = [int(x) for x in np.clip(np.random.default_rng(0).lognormal(2.7, 0.5, 512).astype(int) + 2, 3, 128)]
    batches = plan_batches(lengths, 8192)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert longest * len(batch) <= 8192 and min(lengths[i] for i in batch) >= MIN_LENGTH_RATIO * longest
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded / sum(lengths) - 1 <= 1 / MIN_LENGTH_RATIO - 1


@pytest.mark.unit
def test_spearman_p_is_the_exact_permutation_p_at_a_perfect_ranking():
    import itertools
    import math

    from scipy.stats import spearmanr

    from lmcompare.variability import spearman

    x, y = np.arange(6.0), np.array([0.1, 0.3, 0.35, 0.5, 0.8, 0.9])
    rho, p, n = spearman(x, y)
    # brute force over all 6! orderings: the share with |rho| >= 1
    extreme = sum(abs(spearmanr(x, perm).statistic) >= 1 - 1e-12 for perm in itertools.permutations(y))
    assert rho == 1.0 and n == 6 and p == pytest.approx(extreme / math.factorial(6)) and p > 0
    noisy = spearman(x, np.array([0.1, 0.5, 0.3, 0.2, 0.8, 0.9]))
    assert noisy[1] == pytest.approx(spearmanr(x, [0.1, 0.5, 0.3, 0.2, 0.8, 0.9]).pvalue)


@pytest.mark.workflow
def test_perturbed_model_provenance_names_its_architecture_and_only_model_files(tiny_models, tmp_path):
    import shutil

    from lmcompare.models.perturb import perturb_model_folder

    base = tmp_path / "base"
    shutil.copytree(tiny_models["bert"], base)
    (base / ".snakemake_timestamp").write_text("")
    record = perturb_model_folder(base, tmp_path / "out", alpha=0.1, seed=0, base_name="base")
    assert record["architecture"] == "BertModel" and record["model_type"] == "bert"
    assert ".snakemake_timestamp" not in record["copied_files"] and "config.json" in record["copied_files"]


@pytest.mark.unit
def test_the_transformers_load_report_reaches_the_job_log(tiny_models, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from lmcompare.models.loading import load_model

    log = tmp_path / "job.log"
    with runtime.job_logging(log):
        load_model(tiny_models["bert"], auto_class=AutoModelForSequenceClassification, num_labels=3)
    text = log.read_text()
    assert "LOAD REPORT" in text and "classifier" in text, text[-2000:]
