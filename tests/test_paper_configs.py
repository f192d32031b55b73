"""The variability and geometry papers' setups in configs/ run unchanged, as a user runs them (`--configfile
configs/<paper>.yaml`, the README's command line), against the tests' local hub, which serves tiny stand-ins of the
papers' models and corpora under their real ids (tests/zoo.py): roberta-large on two GLUE tasks, the BERT-small
perturbation family on SST-2. Only the geometry config is shortened, by the file the README names
(configs/shortened/geometry.yaml: 2 family members instead of 120, quantizers shrunk to the tiny clouds). The LMD
paper's config is run in tests/test_zoo.py (its 12 models are most of the zoo). So the configs cannot rot: a renamed
key, a model id or dataset config that no longer resolves fails here."""
import subprocess

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import PROJECT, SNAKEMAKE
from tests.zoo import ZOO, check_hub_dataset, check_hub_models, config_of, run_config
from lmcompare import hidden_states, paths

pytestmark = pytest.mark.workflow

CONFIGS = PROJECT / "configs"


def test_the_variability_config_runs_roberta_large_on_two_glue_tasks(hub, tmp_path):
    """The hub model and the hub dataset configs through the workflow's rules (materialise_model, prepare_dataset),
    then ν per layer, the recommended layer and the probe per layer on each task."""
    config = config_of("variability")
    workdir = tmp_path / "variability"
    run_config(workdir, CONFIGS / "variability.yaml")
    check_hub_models(workdir, hub, config)
    log = (workdir / "results/logs/materialise_model/roberta-large.log").read_text()
    assert f"pin `revision: {hub.sha('FacebookAI/roberta-large')}`" in log
    n_layers = hidden_states.read_hidden_metadata(workdir / paths.pooled_path("sst2", "roberta-large"))["n_layers"]
    for entry in config["datasets"]:
        meta = check_hub_dataset(workdir, hub, entry)
        assert (meta["source_details"]["id"], meta["source_details"]["hub_config"]) == ("nyu-mll/glue", entry["hub_config"])
        data = pq.read_table(workdir / paths.dataset_path(entry["name"])).to_pandas()
        assert data["split"].value_counts().to_dict() == {"train": 72, "test": 32} and data["label"].nunique() == 2
        out = workdir / f"results/analysis/variability/{entry['name']}/mean"
        nu = pd.read_csv(out / "roberta-large" / "nu.csv")
        full = nu[nu["subset"] == "full"]
        assert list(full["layer"]) == list(range(n_layers)) and (full["split"] == "train").all()
        assert np.isfinite(full["nu"]).all() and (full["n"] == 72).all()
        selection = pd.read_csv(out / "selection.csv")
        assert list(selection["model"]) == ["roberta-large"] and selection["recommended_layer"].between(0, n_layers - 1).all()
        probe = pd.read_csv(out / "roberta-large" / "probe.csv")
        assert len(probe) == n_layers and (probe["n_test"] == 32).all()
    # token vectors are not stored: the analysis reads the pooled file only
    assert not any(c.startswith("layer_") for c in pq.read_schema(
        workdir / paths.tokens_path("sst2", "roberta-large")).names)


def test_the_geometry_config_runs_the_bert_small_family(hub, tmp_path):
    """geometry.family of the hub's BERT-small: each member with the noise seeded from its name is perturbed,
    extracted (only the token layer geometry reads, by geometry_family_extract), measured, scored and in the
    regression; another analysis switched on covers the configured model, never the family."""
    from lmcompare.models.loading import read_provenance
    from lmcompare.models.perturb import derived_seed

    config = config_of("geometry")
    shortened = CONFIGS / "shortened" / "geometry.yaml"
    workdir = tmp_path / "geometry"
    result = run_config(workdir, CONFIGS / "geometry.yaml", shortened)
    check_hub_models(workdir, hub, config)
    family = yaml.safe_load(shortened.read_text())["geometry"]["family"]
    members = [f"bert-small-p{alpha}-r1" for alpha in family["alphas"]]
    log = result.stdout + result.stderr
    assert "rule geometry_family_extract:" in log
    seeds = []
    for name, alpha in zip(members, family["alphas"]):
        record = read_provenance(workdir / paths.model_dir(name))
        assert record["seed"] == derived_seed(name) and record["seed_source"] == "derived from the model name"
        assert record["alpha"] == alpha and record["geometry_family"] == "geometry.family"
        seeds.append(record["seed"])
        tokens = pq.read_schema(workdir / paths.tokens_path("sst2", name)).names
        assert [c for c in tokens if c.startswith("layer_")] == [hidden_states.token_column(4)]
    assert seeds[0] != seeds[1]
    out = workdir / "results/analysis/geometry/sst2"
    assert set(pd.read_csv(out / "measures.csv")["model"]) == {"bert-small", *members}
    regression = pd.read_csv(out / "regression.csv")
    assert (regression["n"] == 3).all() and regression["p_holm"].notna().any()
    assert (regression.dropna(subset=["r2"])["permutations"] == "exact 6").all()  # 3! pairings
    assert (workdir / "results/figures/summary.png").exists()
    # another analysis enabled: it covers the configured model, never the family
    overlay = tmp_path / "compression.yaml"
    overlay.write_text(yaml.safe_dump({"compression": {"enabled": True}}))
    command = [SNAKEMAKE, "-s", str(PROJECT / "Snakefile"), "--directory", str(workdir), "--configfile",
               str(CONFIGS / "geometry.yaml"), str(shortened), str(overlay), "--summary", "--quiet"]
    summary = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300, check=True).stdout
    pending = [line.split("\t") for line in summary.splitlines()[1:]]
    pending = [(f[2], f[0]) for f in pending if len(f) >= 6 and f[5].strip() in ("update pending", "missing")]
    assert any(rule == "compression_model" for rule, _ in pending), pending
    assert not [job for job in pending if any(m in job[1] for m in members)]


def test_the_configs_name_the_zoo():
    """Every model the three configs name is served by the tests' hub under the same id (and so runs above)."""
    named = {m["repo_id"] for name in ("lmd", "variability", "geometry") for m in config_of(name)["models"]}
    assert named <= set(ZOO)
