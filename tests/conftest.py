"""Shared fixtures: tiny models with real tokenizers built on the spot, a tiny labelled corpus, one extracted
workdir, and a helper that runs the workflow on a config in a temporary folder.

- `tiny_models`: {"bert": WordPiece BERT (hidden 32, 2 layers), "roberta": byte-level BPE RoBERTa (hidden 48,
  3 layers), "gpt2": byte-level BPE GPT-2 (hidden 40, 2 layers)} as folders that load offline.
- `tiny_corpus`: a labelled CSV (two classes with class-specific words, a few hard cases) and its texts.
- `extracted_workdir`: a finished run of `tiny_config(tiny_models, tiny_corpus)` (tiny-bert and tiny-roberta
  materialised, the toy dataset prepared, their hidden states extracted, no analysis). Never run in it: copy it
  with `copy_workdir(extracted_workdir, target)` and run there; Snakemake sees what it holds as up to date when
  the copy's config keeps the models, the dataset and the extraction settings.
- `lmd_run`: (workdir, config) of a finished decomposition and similarity run (`lmd_config`: tiny-bert and
  tiny-roberta, example and word units) on a copy of `extracted_workdir`, built once per test run: read it or copy
  it (`copy_run`), never run in it.
- `run_workflow(workdir, config, *targets, extra=[...])`: runs Snakemake with that config in `workdir`.

The three session fixtures are built once per test run, not once per xdist worker: in a folder the workers
share (`shared_root`), the first worker to need one builds it under a file lock and the other waits for it.
Their paths are the same for both workers, so the workflow's parameters (a model's local path, the dataset's
file) are too, and a copy of the extracted workdir is up to date in either worker.
"""
# First: the local hub (tests/hub.py) points HF_ENDPOINT/HF_HOME at it before any Hugging Face client is imported.
from tests.hub import hub  # noqa: F401  (the session fixture `hub`)

import contextlib
import fcntl
import os
import re
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

POSITIVE = "great wonderful excellent delicious lovely fresh tasty perfect happy superb".split()
NEGATIVE = "awful terrible stale bland broken sad horrible rotten poor soggy".split()
NEUTRAL = ("the a this product coffee tea box price it was and but i my we bought ordered arrived "
           "taste flavor package shipping amazon store week".split())


def make_corpus_texts(n: int = 80, seed: int = 0):
    """Texts and labels: each text mixes neutral words with words of its class (a learnable, noisy task)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for index in range(n):
        label = "great" if index % 2 == 0 else "other"
        own = POSITIVE if label == "great" else NEGATIVE
        other = NEGATIVE if label == "great" else POSITIVE
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(5, 14))]
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(own))
        if rng.random() < 0.15:
            words.insert(rng.randrange(len(words) + 1), rng.choice(other))
        text = " ".join(words)
        if index % 7 == 0:
            text = text.capitalize() + "! It's great-ish, isn't it?"
        texts.append(text)
        labels.append(label)
    return texts, labels


def _wordpiece_vocabulary(texts, size: int, special) -> dict:
    """A WordPiece vocabulary built deterministically: the special tokens, every character and its `##` piece, the
    more frequent half of the corpus's words whole (ties alphabetical) and the other half as a first-half piece and
    a `##` second-half piece (so that they split into two tokens, or more where a piece is taken), up to `size`.
    (The `tokenizers` trainer breaks ties between equally frequent merges by a per-process random hash order, so a
    trained vocabulary differed from run to run, and with it what the tiny model learns in a few steps.)"""
    import collections
    import unicodedata

    words = collections.Counter()
    for text in texts:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        words.update(re.findall(r"\w+|[^\w\s]", text))
    chars = sorted({c for word in words for c in word})
    vocab = list(special) + chars + [f"##{c}" for c in chars]
    ranked = [w for w, _ in sorted(words.items(), key=lambda item: (-item[1], item[0])) if len(w) > 1]
    whole, split = ranked[:len(ranked) // 2], ranked[len(ranked) // 2:]
    pieces = [p for w in split for p in (w[:len(w) // 2], "##" + w[len(w) // 2:])]
    vocab += [t for t in dict.fromkeys(whole + pieces) if t not in vocab]
    return {token: index for index, token in enumerate(vocab[:size])}


def _wordpiece_tokenizer(texts):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(_wordpiece_vocabulary(texts, 200, special), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def _bytelevel_tokenizer(texts, roberta_style: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] if roberta_style else ["<|endoftext|>"]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=special,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if roberta_style:
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                          ("<s>", tok.token_to_id("<s>")), trim_offsets=True)
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                       pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>")
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")


def build_tiny_models(root: Path, texts) -> dict:
    """Save three tiny, randomly initialised (seeded) models with their tokenizers under root."""
    import torch
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model, RobertaConfig, RobertaModel

    folders = {}
    torch.manual_seed(0)
    bert_tok = _wordpiece_tokenizer(texts)
    bert = BertModel(BertConfig(vocab_size=len(bert_tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=37, max_position_embeddings=64, pad_token_id=bert_tok.pad_token_id))
    folders["bert"] = root / "tiny-bert"
    bert.save_pretrained(folders["bert"])
    bert_tok.save_pretrained(folders["bert"])

    torch.manual_seed(1)
    rob_tok = _bytelevel_tokenizer(texts, roberta_style=True)
    roberta = RobertaModel(RobertaConfig(vocab_size=len(rob_tok), hidden_size=48, num_hidden_layers=3,
                                         num_attention_heads=4, intermediate_size=61, max_position_embeddings=66,
                                         pad_token_id=rob_tok.pad_token_id, bos_token_id=rob_tok.bos_token_id,
                                         eos_token_id=rob_tok.eos_token_id, type_vocab_size=1))
    folders["roberta"] = root / "tiny-roberta"
    roberta.save_pretrained(folders["roberta"])
    rob_tok.save_pretrained(folders["roberta"])

    torch.manual_seed(2)
    gpt_tok = _bytelevel_tokenizer(texts, roberta_style=False)
    gpt2 = GPT2Model(GPT2Config(vocab_size=len(gpt_tok), n_embd=40, n_layer=2, n_head=2, n_positions=64,
                                bos_token_id=gpt_tok.bos_token_id, eos_token_id=gpt_tok.eos_token_id))
    folders["gpt2"] = root / "tiny-gpt2"
    gpt2.save_pretrained(folders["gpt2"])
    gpt_tok.save_pretrained(folders["gpt2"])
    return folders


KINDS = ("unit", "workflow")  # the markers registered in pyproject.toml


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """Each test says what it is: exactly one of the markers `unit` and `workflow` (on the test or as its module's
    `pytestmark`), else its module fails to collect (an error under xdist too, before `-m` deselects anything)."""
    report = yield
    if report.passed and isinstance(collector, (pytest.Module, pytest.Class)):
        wrong = [f"{item.name} ({', '.join(kinds) or 'no marker'})" for item in report.result
                 if isinstance(item, pytest.Function)
                 and len(kinds := [kind for kind in KINDS if item.get_closest_marker(kind)]) != 1]
        if wrong:
            report.outcome, report.result = "failed", []
            report.longrepr = (f"{collector.nodeid}: every test needs exactly one of the markers @pytest.mark.unit "
                               "(plain function tests) or @pytest.mark.workflow (runs Snakemake), on the test or as "
                               "`pytestmark` of its module; these do not:\n  " + "\n  ".join(wrong))
    return report


# Test files by their measured wall time (`--durations`, docs/performance.md), longest first. The README's command
# hands whole files to the xdist workers in collection order (`--dist loadfile`); starting the longest first
# leaves short files to fill the end instead of one long file running alone. Files not listed keep their
# alphabetical order after these. Only the order changes: every test still runs.
LONGEST_FIRST = ("test_own_run.py", "test_cluster.py", "test_reliability.py", "test_geometry.py",
                 "test_paper_configs.py", "test_twotower.py", "test_zoo.py", "test_decomposition.py", "test_compression.py", "test_variability.py",
                 "test_hub.py", "test_extraction_resume.py", "test_library_code_rerun.py", "test_workflow_spine.py",
                 "test_similarity.py", "test_figures.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: within a file, the file's order


def shared_root(tmp_path_factory) -> Path:
    """A folder of this test run that every xdist worker sees: the parent of the workers' own base folders
    (pytest-of-<user>/pytest-<n>/, one per run); the run's base folder without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(tmp_path_factory, name: str, build) -> Path:
    """shared_root/name, made by `build(folder)` in the first process of the run that asks for it; the others
    wait on the lock and reuse it. A build that failed (no .done marker) is removed and tried again."""
    root = shared_root(tmp_path_factory)
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not done.exists():
                if folder.exists():
                    shutil.rmtree(folder)
                folder.mkdir()
                build(folder)
                done.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folder


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """(csv path, texts, labels): 80 labelled texts, some punctuation-heavy."""
    import pandas as pd

    texts, labels = make_corpus_texts()
    folder = built_once(tmp_path_factory, "corpus", lambda folder: pd.DataFrame(
        {"text": texts, "label": labels}).to_csv(folder / "reviews.csv", index=False))
    return folder / "reviews.csv", texts, labels


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tiny_corpus):
    _, texts, _ = tiny_corpus
    folder = built_once(tmp_path_factory, "models", lambda folder: build_tiny_models(folder, texts))
    return {name: folder / f"tiny-{name}" for name in ("bert", "roberta", "gpt2")}


@pytest.fixture(scope="session")
def extracted_workdir(tmp_path_factory, tiny_models, tiny_corpus):
    """The finished run of tiny_config(tiny_models, tiny_corpus), built once per test run: copy it, never run in it."""
    return built_once(tmp_path_factory, "extracted",
                      lambda folder: run_workflow(folder, tiny_config(tiny_models, tiny_corpus)))


def copy_workdir(source, target) -> Path:
    """A copy of a finished workdir that Snakemake sees as it saw the original: files with their mtimes, the
    .snakemake records (parameters, code, inputs of each output) and the config. `target` may exist."""
    target = Path(target)
    shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(target / ".snakemake" / "locks")
    return target


ANALYSES = ("decomposition", "similarity", "variability", "compression", "geometry", "twotower")


def tiny_config(tiny_models, tiny_corpus, models=("bert", "roberta"), **sections) -> dict:
    """A workflow config over tiny models (local sources) and the tiny corpus; extra sections merged in. The
    analyses not given are switched off (their schema default, `enabled: null`, would run every one of them)."""
    config = {
        "models": [{"name": f"tiny-{name}", "source": "local", "path": str(tiny_models[name])} for name in models],
        "datasets": [{"name": "toy", "source": "file", "path": str(tiny_corpus[0]), "text_column": "text",
                      "label_column": "label", "test_fraction": 0.25, "seed": 0}],
        "extraction": {"max_length": 32, "batch_tokens": 256, "sort_window": 32, "token_layers": [-1]},
        "resources": {"threads": 1},
    }
    for key in ANALYSES:
        config[key] = {"enabled": False}
    for key, value in sections.items():
        config[key] = value
    return config


# Small, fast settings of each analysis for the tests that run several analyses together (the report, the
# cluster): here, so that no test module imports another's constants (each stage's own tests keep their own).
TINY_SECTIONS = {
    "decomposition": {"enabled": True, "units": ["example", "word"], "modes": ["paper"],
                      "alpha": [1e-6, "validation"], "min_train_units": 5, "min_test_units": 5},
    "variability": {"enabled": True, "poolings": ["mean"], "datasets": ["toy"], "tolerance": 0.05,
                    "robustness": {"imbalanced_keep": 0.3, "subsample_fraction": 0.25, "seed": 0},
                    "probe": {"max_train_examples": None, "seed": 0}},
    "geometry": {"enabled": True, "max_points": None, "regression": {"top_k": 2},
                 "quantizer": {"M": 4, "nbits": 8, "small_cloud": "shrink", "lsq_train_iters": 3}},
    "twotower": {"enabled": True, "dataset": "toy", "tokenizer_model": "tiny-bert", "vocabulary": "corpus",
                 "window": 16, "n_layer": 1, "n_embd": 16, "n_head": 2, "seeds": [0, 1], "steps": 40,
                 "batch_size": 4, "learning_rate": 3e-3, "warmup_steps": 5, "eval_every": 20, "eval_max_windows": 8,
                 "checkpoint_every": 20, "measure_steps": [], "min_count": 3, "top_k": 5,
                 "control_permutations": 20, "device": "cpu",
                 "head": {"steps": 20, "batch_size": 4, "learning_rate": 3e-3}},
}


# The decomposition's (and the similarity measures') tiny run, shared by tests/test_decomposition.py and
# tests/test_similarity.py.
LMD_SECTION = {"enabled": True, "units": ["example", "word"], "modes": ["paper"], "alpha": [1e-6, "validation"],
               "min_train_units": 5, "min_test_units": 5}
# The similarity stage's layer sweep in the same run: example units, every layer (tiny-bert 3, tiny-roberta 4), one
# moment-based measure and mutual kNN (k = 3 on the toy corpus's 80 examples): few figures, for the suite's time.
SWEEP_SECTION = {"layer_sweep": {"enabled": True, "units": ["example"], "measures": ["cka", "mutual_knn"]}, "knn_k": 3}
CHUNKS = {"name": "chunks16", "source": "chunks", "base": "toy", "tokenizer_model": "tiny-bert", "chunk_tokens": 16}


def lmd_config(tiny_models, tiny_corpus, models=("bert", "roberta"), chunks=False, section=None, similarity=None):
    """The decomposition (LMD_SECTION updated with `section`) and the similarity measures with the layer sweep
    (SWEEP_SECTION, updated with `similarity`) on the tiny models; the summary figure (another stage) left out."""
    similarity = {"enabled": True, **SWEEP_SECTION, **(similarity or {})}
    if not similarity["enabled"]:
        similarity.pop("layer_sweep")
    config = tiny_config(tiny_models, tiny_corpus, models=models, decomposition={**LMD_SECTION, **(section or {})},
                         similarity=similarity, figures={"enabled": False})
    if chunks:
        config["datasets"].append(dict(CHUNKS))
    return config


@pytest.fixture(scope="session")
def lmd_run(tmp_path_factory, tiny_models, tiny_corpus, extracted_workdir):
    """A WordPiece BERT (32 dims) and a byte-level BPE RoBERTa (48 dims), example and word units, decomposition and
    similarity (on a copy of the session's extracted workdir), built once per test run: read or copy, never run in it."""
    config = lmd_config(tiny_models, tiny_corpus)

    def build(folder):
        copy_workdir(extracted_workdir, folder)
        run_workflow(folder, config)

    return built_once(tmp_path_factory, "lmd", build), config


def copy_run(workdir, target) -> Path:
    """A copy of a finished run without its config.yaml (the test writes its own)."""
    shutil.copytree(workdir, target, symlinks=True)
    (Path(target) / "config.yaml").unlink()
    return Path(target)


def run_workflow(workdir, config: dict | None, *targets, extra=(), check=True, timeout=900, env=None):
    """Run Snakemake on the project's Snakefile in `workdir` with `config` (written to workdir/config.yaml);
    `env` replaces the environment (default: this one with PYTHONHASHSEED=0)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    # targets before the options: `--quiet` takes optional values and would swallow them
    command = [SNAKEMAKE, "-s", str(PROJECT / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(workdir / "config.yaml"), "--cores", "2", *targets, *extra]
    env = dict(os.environ, PYTHONHASHSEED="0") if env is None else env
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return result


def pending_jobs(workdir, *targets) -> list[tuple[str, str]]:
    """(rule, output) of every job a run would execute now, from `snakemake --summary` (nothing is run)."""
    result = run_workflow(workdir, None, *targets, extra=["--summary", "--quiet"])
    jobs = []
    for line in result.stdout.splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) >= 6 and fields[5].strip() in ("update pending", "missing"):
            jobs.append((fields[2], fields[0]))
    return jobs


@pytest.fixture
def workflow_runner():
    return run_workflow
