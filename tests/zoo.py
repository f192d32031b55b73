"""The papers' model zoo and corpora, tiny, under their real hub ids: served by the tests' local hub (tests/hub.py
registers every repository here in MODEL_REPOS / DATASET_REPOS), so that the configs in configs/ run unchanged.

Models: the LMD paper's 12, the variability paper's roberta-large, the geometry paper's BERT-small and GPT-2 (the
decoder). Each is a random model of its real architecture (hidden 32, 2 to 4 layers, a few ten thousand
parameters) with a tokenizer of its real family and class (tests/tokenizer_families.py: WordPiece uncased and
cased, byte-level BPE, sentencepiece-style Unigram), saved with safetensors weights and a tokenizer.json. Position
tables hold 130 positions (+2 for the RoBERTa family), so that the LMD config's T = 128 chunks fit.

Datasets: `Salesforce/wikitext` (config wikitext-103-raw-v1: train / validation / test Parquet files with one
`text` column of lines, headings and blank lines as in WikiText) and `nyu-mll/glue` (configs sst2 and cola:
`sentence`, a ClassLabel `label`, `idx`; train and validation), each with a README whose YAML header declares its
configs, as the hub's Parquet conversions do.
"""
import json
import random
from pathlib import Path

from tests.tokenizer_families import ARCHITECTURES, TOKENIZERS, build_model

POSITIONS = 130  # T = 128 chunks with two special tokens
_LONG = {"max_position_embeddings": POSITIONS}
_LONG_ROBERTA = {"max_position_embeddings": POSITIONS + 2}  # RoBERTa's positions start after the padding index
_BASE = {"num_hidden_layers": 3}  # base-size models one layer deeper than the distilled ones, large and small deeper still

# repo id -> (the model name the configs give it, architecture, tokenizer, configuration changes)
ZOO = {
    # the LMD paper's 12 (Zhang 2022), under the ids the hub serves them at today (the short legacy ids such as
    # bert-base-uncased redirect there)
    "google-bert/bert-base-uncased": ("bert-base-uncased", "bert", "bert", dict(_LONG, **_BASE)),
    "FacebookAI/xlm-roberta-base": ("xlm-roberta-base", "xlm-roberta", "xlm-roberta", dict(_LONG_ROBERTA, **_BASE)),
    "google-bert/bert-base-multilingual-cased": ("bert-base-multilingual-cased", "bert", "bert-cased", dict(_LONG, **_BASE)),
    "allenai/longformer-base-4096": ("longformer-base-4096", "longformer", "longformer", _LONG_ROBERTA),
    "microsoft/deberta-base": ("deberta-base", "deberta", "deberta", _LONG),
    "distilbert/distilbert-base-multilingual-cased": ("distilbert-base-multilingual-cased", "distilbert",
                                                       "distilbert-cased", _LONG),
    "FacebookAI/roberta-base": ("roberta-base", "roberta", "roberta", dict(_LONG_ROBERTA, **_BASE)),
    "xlnet/xlnet-base-cased": ("xlnet-base-cased", "xlnet", "xlnet", {"n_layer": 3}),
    "google/electra-base-discriminator": ("electra-base-discriminator", "electra", "electra", _LONG),
    "distilbert/distilroberta-base": ("distilroberta-base", "roberta", "roberta", _LONG_ROBERTA),
    "distilbert/distilbert-base-uncased": ("distilbert-base-uncased", "distilbert", "distilbert", _LONG),
    "albert/albert-base-v2": ("albert-base-v2", "albert", "albert", _LONG),
    # the variability paper's model (Xie 2022), the geometry paper's base (Marbut 2024: BERT-small, L-4 H-512),
    # and a decoder (its summary token is its last)
    "FacebookAI/roberta-large": ("roberta-large", "roberta", "roberta", dict(_LONG_ROBERTA, num_hidden_layers=4)),
    "google/bert_uncased_L-4_H-512_A-8": ("bert-small", "bert", "bert", dict(_LONG, num_hidden_layers=4)),
    "openai-community/gpt2": ("gpt2", "gpt2", "gpt2", {"n_positions": POSITIONS}),
}
LMD_MODELS = list(ZOO)[:12]


def build_zoo_model(folder, repo: str, seed: int) -> None:
    """The tiny stand-in of `repo` (ZOO) saved into `folder`: safetensors weights, config, tokenizer files."""
    _, architecture, tokenizer_name, changes = ZOO[repo]
    tokenizer = TOKENIZERS[tokenizer_name]()
    build_model(architecture, tokenizer, seed=seed, **changes).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# ------------------------------------------------------------------------------------------------ corpora
TOPICS = ("the river", "a small town", "the old castle", "the railway line", "the cathedral", "the football club",
          "the island", "the battle", "the novel", "the album", "the storm", "the bridge")
VERBS = ("was built in", "was destroyed in", "was described in", "opened in", "was renamed in", "became famous in",
         "was recorded in", "was first mentioned in")
TAILS = ("after a long dispute", "by the local council", "during the war", "with the support of the king",
         "despite strong protests", "and remained in use", "according to later sources", "for the first time")


def wikitext_lines(n: int, seed: int) -> list[str]:
    """WikiText-like lines: ` = Heading = ` lines, blank lines and paragraphs of a few sentences (raw text,
    with WikiText's spaced punctuation)."""
    rng = random.Random(seed)
    lines = []
    while len(lines) < n:
        topic = rng.choice(TOPICS)
        lines += ["", f" = {topic.title()} = ", ""]
        for _ in range(rng.randint(2, 5)):
            sentences = [f"{rng.choice(TOPICS).capitalize()} {rng.choice(VERBS)} {rng.randint(1700, 2020)} "
                         f"{rng.choice(TAILS)} ." for _ in range(rng.randint(1, 4))]
            lines.append(" " + " ".join(sentences) + " ")
    return lines[:n]


POSITIVE = "great wonderful excellent delightful moving superb charming funny clever fresh".split()
NEGATIVE = "awful terrible dull boring broken sad tedious stale poor clumsy".split()
FILLER = "the a this film movie story plot acting it was and but i my we with its of".split()
GRAMMATICAL = ["the cat sat on the mat", "she reads a book", "they left early", "he gave her a pen",
               "we saw the film", "the dog chased a ball", "it rained all day", "you can stay here"]


def sst2_rows(n: int, seed: int):
    """Sentences with a sentiment word or two among filler words; label 1 = positive."""
    rng = random.Random(seed)
    texts, labels = [], []
    for index in range(n):
        label = index % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 9))]
        words += [rng.choice(POSITIVE if label else NEGATIVE) for _ in range(rng.randint(1, 2))]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def cola_rows(n: int, seed: int):
    """Grammatical sentences (1) and the same words shuffled (0)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for index in range(n):
        words = rng.choice(GRAMMATICAL).split()
        label = index % 2
        if not label:
            while len(words) > 1 and " ".join(words) in GRAMMATICAL:
                rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def _parquet_dataset_repo(folder, configs: dict, card: str) -> None:
    """configs: {config: {split: datasets.Dataset}}; README header declaring them."""
    header = ["---", "configs:"]
    for config, splits in configs.items():
        header += [f"- config_name: {config}", "  data_files:"]
        (folder / config).mkdir(parents=True, exist_ok=True)
        for split, part in splits.items():
            path = f"{config}/{split}-00000-of-00001.parquet"
            part.to_parquet(str(folder / path))
            header += [f"  - split: {split}", f"    path: {path}"]
    (folder / "README.md").write_text("\n".join(header + ["---", card, ""]))


def wikitext_repo(folder, _tiny_models=None):
    import datasets

    from tests.hub import make_git_repo

    def write(f):
        sizes = {"train": 260, "validation": 30, "test": 110}  # about 50 and 20 chunks of 128 tokens
        splits = {split: datasets.Dataset.from_dict({"text": wikitext_lines(n, seed)})
                  for seed, (split, n) in enumerate(sizes.items())}
        _parquet_dataset_repo(f, {"wikitext-103-raw-v1": splits}, "A tiny WikiText-like stand-in for the lmcompare tests.")
    make_git_repo(folder, write)


def glue_repo(folder, _tiny_models=None):
    import datasets

    from tests.hub import make_git_repo

    names = {"sst2": ["negative", "positive"], "cola": ["unacceptable", "acceptable"]}
    rows = {"sst2": sst2_rows, "cola": cola_rows}

    def write(f):
        configs = {}
        for config, label_names in names.items():
            features = datasets.Features({"sentence": datasets.Value("string"),
                                          "label": datasets.ClassLabel(names=label_names),
                                          "idx": datasets.Value("int32")})
            configs[config] = {}
            for seed, (split, n) in enumerate((("train", 72), ("validation", 32))):
                texts, labels = rows[config](n, seed)
                configs[config][split] = datasets.Dataset.from_dict(
                    {"sentence": texts, "label": labels, "idx": list(range(n))}, features=features)
        _parquet_dataset_repo(f, configs, "A tiny GLUE-like stand-in (sst2, cola) for the lmcompare tests.")
    make_git_repo(folder, write)


def zoo_model_repos() -> dict:
    """repo id -> builder(folder, tiny_models) for tests/hub.py."""
    from tests.hub import make_git_repo

    def builder(repo, seed):
        def build(folder, _tiny_models=None):
            make_git_repo(folder, lambda f: build_zoo_model(f, repo, seed))
        return build
    return {repo: builder(repo, seed) for seed, repo in enumerate(ZOO)}


DATASET_REPOS = {"Salesforce/wikitext": wikitext_repo, "nyu-mll/glue": glue_repo}
assert {entry[1] for entry in ZOO.values()} <= set(ARCHITECTURES)


# ---------------------------------------------------------------------------------- running the configs/
def run_config(workdir: Path, *configfiles: Path, targets=()):
    """The README's command line with the config file(s), in `workdir`; the environment as it is (the hub's)."""
    import os
    import subprocess

    from tests.conftest import PROJECT, SNAKEMAKE

    workdir.mkdir(parents=True, exist_ok=True)
    command = [SNAKEMAKE, "-s", str(PROJECT / "Snakefile"), "--directory", str(workdir), "--cores", "2", *targets,
               "--workflow-profile", str(PROJECT / "profiles/local"), "--configfile", *map(str, configfiles)]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=1800, env=dict(os.environ))
    if result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return result


def config_of(name: str) -> dict:
    """configs/<name>.yaml as a dict."""
    import yaml

    from tests.conftest import PROJECT

    return yaml.safe_load((PROJECT / "configs" / f"{name}.yaml").read_text())


def check_hub_models(workdir: Path, hub, config: dict) -> None:
    """Every model came from the hub at the commit its branch named, as safetensors."""
    from lmcompare import paths

    for entry in config["models"]:
        provenance = json.loads((workdir / paths.model_dir(entry["name"]) / "provenance.json").read_text())
        assert provenance["repo_id"] == entry["repo_id"] and provenance["revision_requested"] == "main"
        assert provenance["revision"] == hub.sha(entry["repo_id"]), entry["name"]
        assert provenance["weights_format"] == "safetensors" and provenance["trust_remote_code"] is False


def check_hub_dataset(workdir: Path, hub, entry: dict) -> dict:
    """The dataset was read from the hub at the commit its branch named; its Parquet metadata."""
    import pyarrow.parquet as pq

    from lmcompare import paths

    meta = json.loads(pq.read_schema(workdir / paths.dataset_path(entry["name"])).metadata[b"dataset"])
    assert meta["source_details"]["revision"] == hub.sha(entry["id"], "main", kind="datasets"), entry["name"]
    return meta


def planned_jobs(workdir: Path, *configfiles: Path) -> dict:
    """rule -> number of jobs a dry run of the config plans (nothing runs)."""
    import os
    import subprocess

    from tests.conftest import PROJECT, SNAKEMAKE

    command = [SNAKEMAKE, "-s", str(PROJECT / "Snakefile"), "--directory", str(workdir), "--cores", "2", "-n",
               "--configfile", *map(str, configfiles)]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stats = result.stdout.split("Job stats:")[1].split("total")[0]
    return {fields[0]: int(fields[1]) for fields in map(str.split, stats.splitlines()) if len(fields) == 2
            and fields[1].isdigit()}
