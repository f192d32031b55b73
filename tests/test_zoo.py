"""The papers' model zoo end to end, and the LMD paper's config.

The 15 tiny stand-ins the tests' hub serves under their real ids (tests/zoo.py: the LMD paper's 12 architectures,
roberta-large, BERT-small, GPT-2):

- configs/lmd.yaml, unchanged, through Snakemake: the whole run planned (a dry run); its 12 models materialised from
  the hub at the commit of `main` (in-process, as materialise_model does); WikiText prepared from the hub and cut
  into T = 128 chunks, two models' extractions of the chunks (truncated at T although a second config file sets
  extraction.max_length to 64) and their pair pass, by their rules;
- each of the 15 through every stage, each stage called as its rule's script calls it (the library function, in
  this process): extracted on the GLUE stand-in's SST-2 (prepared from the hub; the pooled vectors checked against
  a direct forward pass of the downloaded model), perturbed, fine-tuned, tokenised into the two-tower LM's corpus
  (the two-tower LM reads nothing else of a model), and its hidden states through variability, compression and
  geometry (measures and score); the decomposition and similarity measures of all 105 pairs;
- the LMD config's analysis on its own chunks: the 12 models extracted at T = 128, the 66 pair passes on the chunk
  unit, the group fits, checked against a direct fit on the chunk vectors.

Why in-process for those stages: the whole LMD config as Snakemake runs it is 99 jobs and 4.5 minutes of this
2-core machine, mostly the import of torch and transformers in each of 12 extraction jobs and the start of 66 pair
jobs; the zoo through every analysis would be 222 jobs. The wiring of each stage into its rules is what the other
workflow tests run, and the variability and geometry configs run whole (tests/test_paper_configs.py)."""
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from tests.zoo import LMD_MODELS, ZOO, check_hub_dataset, check_hub_models, config_of, planned_jobs, run_config
from tests.conftest import PROJECT
from lmcompare import hidden_states, paths
from lmcompare.compression import run_model
from lmcompare.data.prepare import prepare
from lmcompare.decomposition.fit import write_fit_tables
from lmcompare.decomposition.pair_file import write_pair_moments
from lmcompare.extraction.extract import ExtractionSettings, extract
from lmcompare.geometry import measure_tokens, score_model
from lmcompare.models.finetune import run as finetune
from lmcompare.models.loading import load_model, load_tokenizer, read_provenance
from lmcompare.models.materialise import materialise
from lmcompare.models.perturb import perturb_model_folder
from lmcompare.twotower.corpus import write_corpus
from lmcompare.variability import run_nu

pytestmark = pytest.mark.workflow

SST2 = {"name": "sst2", "source": "hub", "id": "nyu-mll/glue", "hub_config": "sst2", "revision": "main",
        "splits": {"train": "train", "validation": "test"}, "text_column": "sentence", "label_column": "label",
        "split_column": None, "test_fraction": 0.2, "seed": 0, "max_examples": None}
EXTRACTION = {"max_length": 32, "batch_tokens": 256, "sort_window": 32, "token_layers": [-1]}
QUANTIZER = {"M": 4, "nbits": 8, "min_points_per_centroid": 39, "small_cloud": "shrink", "lsq_train_iters": 3}
SUMMARY = {"xlnet": ("cls", "end"), "gpt2": ("last", "last")}  # every other architecture: its [CLS] / <s> first


LMD_CONFIG = PROJECT / "configs" / "lmd.yaml"
# the pair whose extractions and pair pass Snakemake runs (XLNet: its <cls> stands last); the rest run in-process
RULE_PAIR = ("bert-base-uncased", "xlnet-base-cased")


@pytest.fixture(scope="module")
def lmd_run(hub, tmp_path_factory):
    """configs/lmd.yaml planned; its 12 models materialised from the hub as materialise_model does (the rule itself
    runs hub models in tests/test_paper_configs.py); then by Snakemake, with a second config file that sets another
    extraction.max_length (64: a chunks dataset must ignore it): WikiText from the hub, its chunks, RULE_PAIR's
    extractions and pair pass. Returns (workdir, planned jobs per rule)."""
    config = config_of("lmd")
    workdir = tmp_path_factory.mktemp("lmd")
    planned = planned_jobs(workdir, LMD_CONFIG)
    for entry in config["models"]:
        materialise(entry, workdir / paths.model_dir(entry["name"]))
    chunked = config["datasets"][1]["name"]
    overlay = workdir / "max-length-64.yaml"
    overlay.write_text("extraction: {max_length: 64}\n")
    run_config(workdir, LMD_CONFIG, overlay, targets=[paths.dataset_path(chunked), rule_pair_file(chunked)])
    return workdir, planned


def rule_pair_file(chunked: str) -> str:
    a, b = RULE_PAIR
    return f"results/analysis/decomposition/{chunked}/chunk/t-1_b-1/moments/{a}/{b}.npz"


@pytest.fixture(scope="module")
def zoo_root(lmd_run):
    """The LMD run's folder with the other zoo models materialised from the hub and SST-2 prepared from it, as
    the rules write them."""
    root = lmd_run[0]
    prepare(SST2, root / paths.dataset_path("sst2"))
    for repo, (name, *_) in ZOO.items():
        if not (root / paths.model_dir(name)).exists():
            materialise({"name": name, "source": "hub", "repo_id": repo, "revision": "main"},
                        root / paths.model_dir(name))
    return root


@pytest.fixture(scope="module")
def zoo_extracted(zoo_root):
    """Every zoo model extracted on SST-2 as the extraction rule calls it: {name: (pooled, tokens)}."""
    files = {}
    for name, *_ in ZOO.values():
        files[name] = zoo_root / paths.pooled_path("sst2", name), zoo_root / paths.tokens_path("sst2", name)
        extract(zoo_root / paths.model_dir(name), zoo_root / paths.dataset_path("sst2"), *files[name],
                ExtractionSettings.from_config(EXTRACTION), model_name=name, dataset_name="sst2")
    return files


def test_the_lmd_config_plans_the_papers_analysis_and_its_hub_jobs_run(hub, lmd_run):
    """configs/lmd.yaml unchanged: the plan has 12 extractions of the T = 128 chunks, 66 pair passes, the fits and
    the similarity table; the 12 models came from the hub at the commit of `main` and WikiText at its commit, the
    chunks were cut as the release cuts them (bert-base-uncased's tokenizer, the base's split), and the extraction
    rule truncated them at T."""
    workdir, planned = lmd_run
    config = config_of("lmd")
    assert [m["repo_id"] for m in config["models"]] == LMD_MODELS
    assert {rule: planned.get(rule) for rule in ("materialise_model", "prepare_dataset", "prepare_chunk_dataset",
                                                 "extract_hidden_states", "decomposition_moments", "decomposition_fit",
                                                 "similarity")} == {
        "materialise_model": 12, "prepare_dataset": 1, "prepare_chunk_dataset": 1, "extract_hidden_states": 12,
        "decomposition_moments": 66, "decomposition_fit": 1, "similarity": 1}, planned
    check_hub_models(workdir, hub, config)
    base, chunked = config["datasets"]
    check_hub_dataset(workdir, hub, base)
    chunks = pq.read_table(workdir / paths.dataset_path(chunked["name"]))
    assert chunks.schema.names == ["example_id", "text", "label", "split", "word_starts", "word_ends"]
    meta = json.loads(chunks.schema.metadata[b"dataset"])
    assert (meta["source"], meta["base"], meta["tokenizer_model"], meta["chunk_tokens"]) == (
        "chunks", "wikitext", "bert-base-uncased", 128)
    assert (meta["chunking"], meta["chunk_split"]) == ("release", "base")
    assert meta["counts"]["train"] >= 40 and meta["counts"]["test"] >= 15, meta["counts"]
    # the extraction rule truncates a chunks dataset at T whatever extraction.max_length says (64) and says why
    for name in RULE_PAIR:
        stored = hidden_states.read_hidden_metadata(workdir / paths.tokens_path(chunked["name"], name))
        assert stored["max_length"] == 128 and stored["summary_token"]["rule"] == "cls", name
    log = (workdir / f"results/logs/extract_hidden_states/{chunked['name']}/{RULE_PAIR[1]}.log").read_text()
    assert "as the LMD release does" in log and "raise extraction.max_length" not in log


def direct_last_layer(model, tokenizer, text, max_length):
    """The model's last layer for one text alone (unpadded), its special-token mask and its input ids."""
    encoded = tokenizer(text, truncation=True, max_length=max_length, return_special_tokens_mask=True)
    with torch.no_grad():
        states = model(input_ids=torch.tensor([encoded["input_ids"]]), output_hidden_states=True).hidden_states
    return states[-1][0].double().numpy(), np.array(encoded["special_tokens_mask"], bool), encoded["input_ids"]


@pytest.mark.parametrize("repo", list(ZOO))
def test_each_zoo_model_from_the_hub_through_every_per_model_stage(hub, zoo_root, zoo_extracted, repo):
    name = ZOO[repo][0]
    folder = zoo_root / paths.model_dir(name)
    record = read_provenance(folder)
    assert (record["repo_id"], record["revision"], record["weights_format"]) == (repo, hub.sha(repo), "safetensors")
    dataset = zoo_root / paths.dataset_path("sst2")
    pooled, tokens = zoo_extracted[name]
    meta = hidden_states.read_hidden_metadata(pooled)
    rule, where = SUMMARY.get(meta["model_type"], ("cls", "start"))
    assert meta["summary_token"]["rule"] == rule, meta["summary_token"]
    # the pooled vectors of two examples against a direct forward pass of each alone
    texts = pq.read_table(dataset, columns=["example_id", "text"]).to_pandas().set_index("example_id")["text"]
    states = hidden_states.load_hidden_states(pooled)
    first, mean = states["first", -1], states["mean", -1]
    order = {example: row for row, example in enumerate(pq.read_table(pooled, columns=["example_id"])
                                                         .column("example_id").to_pylist())}
    model, tokenizer = load_model(folder), load_tokenizer(folder)
    for example in list(texts.index[:2]):
        last, special, ids = direct_last_layer(model, tokenizer, texts[example], EXTRACTION["max_length"])
        if where == "end":
            assert ids[-1] == tokenizer.cls_token_id, ids  # XLNet's <cls> stands last
        summary = 0 if where == "start" else len(ids) - 1
        np.testing.assert_allclose(first[order[example]], last[summary], atol=1e-5, err_msg=name)
        np.testing.assert_allclose(mean[order[example]], last[~special].mean(axis=0), atol=1e-5, err_msg=name)
    # variability, compression, geometry on its files
    analysis = zoo_root / "analysis" / name
    run_nu(pooled, analysis / "nu.csv", dataset="sst2", model=name, pooling="mean", split="train",
           small_classes="fail", min_class_examples=2, pinv_rtol=None,
           robustness={"imbalanced_keep": 0.3, "subsample_fraction": 0.25, "seed": 0}, memory_mb=1000)
    nu = pd.read_csv(analysis / "nu.csv")
    full = nu[nu["subset"] == "full"]
    assert len(full) == meta["n_layers"] and np.isfinite(full["nu"]).all() and (full["nu"] > 0).all()
    run_model(pooled, model=name, dataset="sst2", view="first_layer-1", curve_out=analysis / "curve.csv",
              dims_out=analysis / "dims.csv", best_out=analysis / "best.csv", summary_out=analysis / "summary.csv",
              k_values=[1, 4, 16], folds=2)
    curve = pd.read_csv(analysis / "curve.csv")
    assert curve["accuracy"].between(0, 1).all() and len(pd.read_csv(analysis / "dims.csv")) == meta["hidden_size"]
    measures = measure_tokens(tokens, analysis / "measures.csv", model=name, dataset="sst2", max_points=None,
                              quantizer=QUANTIZER)
    assert np.isfinite(measures.select_dtypes("number").drop(columns=[c for c in measures if "skew" in c],
                                                              errors="ignore")).all().all(), measures.T
    score = score_model(pooled, analysis / "score.csv", model=name, dataset="sst2", folds=3)
    assert 0 <= score["score"] <= 1
    # the two-tower LM's corpus in this model's tokenizer: documents joined by its eos (else sep) token
    corpus = write_corpus(dataset, folder, {"window": 16, "separator_token": "auto", "vocabulary": "corpus",
                                            "max_train_tokens": None}, analysis / "corpus.npz",
                          analysis / "corpus.json", where=name)
    separator = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.sep_token
    assert corpus.info["train_tokens"] > 16 * 8 and corpus.info["separator_id"] == tokenizer.convert_tokens_to_ids(
        separator), corpus.info
    # perturbed (the geometry family) and fine-tuned (the compression pair): both load and differ from the base
    perturbed = zoo_root / "derived" / f"{name}-p0.1"
    perturb_model_folder(folder, perturbed, alpha=0.1, seed=1, base_name=name)
    assert read_provenance(perturbed)["perturbed_tensors"], name
    tuned = zoo_root / "derived" / f"{name}-sst2"
    finetune({"name": f"{name}-sst2", "base": name, "dataset": "sst2", "epochs": 1, "batch_size": 16,
              "max_length": 32, "learning_rate": 1e-3, "seed": 0}, folder, dataset, tuned, device="cpu", threads=1)
    base_weights = dict(model.named_parameters())
    for derived in (perturbed, tuned):
        changed = [k for k, v in load_model(derived).state_dict().items()
                   if k in base_weights and not torch.equal(v, base_weights[k].detach())]
        assert changed, f"{derived.name}: no weight differs from {name}"


def test_the_zoo_decomposes_and_compares_all_105_pairs(zoo_root, zoo_extracted):
    """The 15 models' example units, every pair's moments, the group and pairwise fits
    and the similarity measures, as the decomposition's and the similarity stage's rules compute them."""
    from lmcompare.similarity.table import write_similarity

    names = [entry[0] for entry in ZOO.values()]
    files = {name: zoo_extracted[name][0] for name in names}
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    moments = []
    for a, b in pairs:
        moments.append(zoo_root / "moments" / f"{a}__{b}.npz")
        write_pair_moments(moments[-1], a, files[a], b, files[b], dataset="sst2", unit="example", target_layer=-1,
                           basis_layer=-1, pooling="mean", chunk_tokens=None, validation_fraction=0.2,
                           validation_seed=0)
    out = zoo_root / "fits"
    write_fit_tables(pairs, moments, names, 1e-6, "paper", alpha_grid=None, min_train=5, min_test=5,
                     dataset="sst2", unit="example", group_path=out / "group.csv", pairwise_path=out / "pairwise.csv",
                     matrix_path=out / "matrix.csv")
    group = pd.read_csv(out / "group.csv")
    assert sorted(group["model"]) == sorted(names) and np.isfinite(group["r2_test"]).all()
    assert len(pd.read_csv(out / "pairwise.csv")) == 15 * 14
    write_similarity(pairs, moments, names, ["cka", "procrustes"], svcca_variance=0.99, rank_tolerance=1e-10,
                     dataset="sst2", unit="example", layers="t-1_b-1", table_path=out / "similarity.csv",
                     knn_files=[], figure_paths={m: [out / f"{m}.png", out / f"{m}.svg"] for m in ("cka", "procrustes")})
    similarity = pd.read_csv(out / "similarity.csv")
    assert len(similarity) == 2 * 105 and similarity.loc[similarity["measure"] == "cka", "value"].between(0, 1).all()
    assert json.loads(pq.read_schema(zoo_root / paths.dataset_path("sst2")).metadata[b"dataset"])["source_details"]


def chunk_vectors(tokens, chunk_tokens: int):
    """The chunk unit computed directly from a tokens file: per example_id, the sum of the stored last-layer token
    vectors / T (special tokens included), and the example's split."""
    meta = hidden_states.read_hidden_metadata(tokens)
    column = hidden_states.token_column(hidden_states.resolve_layer(-1, meta["n_layers"]))
    table = pq.read_table(tokens, columns=["example_id", "split", column])
    ids = table.column("example_id").to_numpy()
    sums = pd.DataFrame(hidden_states.vectors(table, column, np.float64)).groupby(ids).sum() / chunk_tokens
    splits = pd.Series(table.column("split").to_numpy()).groupby(ids).first()
    return sums, splits


def test_the_lmd_config_decomposes_its_twelve_models_on_the_chunks(lmd_run):
    """The rest of configs/lmd.yaml, as its rules call the library: the 12 models extracted on the T = 128 chunks
    (with the settings the extraction rule gives a chunks dataset: max_length = T), the 66 pair passes on the chunk
    unit (RULE_PAIR's equal to the one its rule wrote), the group and pairwise fits at the paper's alpha; bert-base-uncased's group R² equals a direct ridge fit on the chunk vectors
    of all twelve (sum of the chunk's stored tokens / T, aligned by example_id)."""
    from lmcompare import decomposition as lmd

    workdir = lmd_run[0]
    config = config_of("lmd")
    chunked = config["datasets"][1]["name"]
    names = [m["name"] for m in config["models"]]
    settings = ExtractionSettings.from_config({**config["extraction"], "max_length": 128})
    for name in names:
        if name in RULE_PAIR:  # extracted by its rule in lmd_run
            continue
        extract(workdir / paths.model_dir(name), workdir / paths.dataset_path(chunked),
                workdir / paths.pooled_path(chunked, name), workdir / paths.tokens_path(chunked, name), settings,
                model_name=name, dataset_name=chunked)
    for name in names:
        stored = hidden_states.read_hidden_metadata(workdir / paths.tokens_path(chunked, name))
        assert stored["max_length"] == 128 and stored["hidden_size"] == 32, name
    tokens = {name: workdir / paths.tokens_path(chunked, name) for name in names}
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    moments = [workdir / "chunk-moments" / f"{a}__{b}.npz" for a, b in pairs]
    for (a, b), path in zip(pairs, moments):
        write_pair_moments(path, a, tokens[a], b, tokens[b], dataset=chunked, unit="chunk", target_layer=-1,
                           basis_layer=-1, pooling=None, chunk_tokens=128, validation_fraction=0.2,
                           validation_seed=0)
    # the rule's pair file (its parameters from the config: unit, T, the validation cut) holds the same numbers
    with np.load(workdir / rule_pair_file(chunked)) as by_rule, np.load(moments[pairs.index(RULE_PAIR)]) as here:
        assert sorted(by_rule.files) == sorted(here.files)
        for key in by_rule.files:
            np.testing.assert_array_equal(by_rule[key], here[key], err_msg=key)
    out = workdir / "chunk-fits"
    write_fit_tables(pairs, moments, names, 1e-6, "paper", alpha_grid=None, min_train=10, min_test=10,
                     dataset=chunked, unit="chunk", group_path=out / "group.csv", pairwise_path=out / "pairwise.csv",
                     matrix_path=out / "matrix.csv")
    group = pd.read_csv(out / "group.csv").set_index("model")
    assert sorted(group.index) == sorted(names) and (group["basis_dims"] == 11 * 32).all()
    assert len(pd.read_csv(out / "pairwise.csv")) == 12 * 11
    vectors = {name: chunk_vectors(tokens[name], 128) for name in names}
    ids = vectors["bert-base-uncased"][0].index
    split = vectors["bert-base-uncased"][1].loc[ids].to_numpy()
    u = vectors["bert-base-uncased"][0].loc[ids].to_numpy()
    z = np.hstack([vectors[name][0].loc[ids].to_numpy() for name in names if name != "bert-base-uncased"])
    train, test = split == "train", split == "test"
    fit = lmd.fit_ridge(lmd.SplitStats.from_rows(u[train], z[train]), alpha=1e-6)
    direct = lmd.r_squared(fit, lmd.SplitStats.from_rows(u[test], z[test]))[0]
    assert group.loc["bert-base-uncased", "r2_test"] == pytest.approx(direct, abs=1e-6)
    assert group.loc["bert-base-uncased", "n_test"] == test.sum()
