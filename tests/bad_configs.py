"""Bad configurations and the message each one gets: the cases of the config tests, and the table in
docs/reliability.md (regenerate it with `.venv/bin/python -m tests.bad_configs`)."""
import copy
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]

# Local paths are relative to the run folder; `write_local_sources` puts them there, so that the start-up checks of
# local sources pass and each case is refused for its own fault only.
BASE = {
    "models": [{"name": "a", "source": "local", "path": "models/a"},
               {"name": "b", "source": "local", "path": "models/b"}],
    "datasets": [{"name": "toy", "source": "file", "path": "data/toy.csv", "label_column": "label"}],
}


def write_local_sources(folder: Path) -> None:
    """The local model folders and data files BASE and the cases name, in a run folder."""
    for name in ("a", "b"):
        (folder / "models" / name).mkdir(parents=True, exist_ok=True)
        (folder / "models" / name / "config.json").write_text("{}")
    (folder / "data").mkdir(exist_ok=True)
    rows = [f"text number {i} about {'good' if i % 2 else 'bad'} things,{'pos' if i % 2 else 'neg'}" for i in range(40)]
    (folder / "data" / "toy.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (folder / "data" / "r.txt").write_text("some raw text\nmore raw text\n")


def _set(path, value):
    def mutate(config):
        target = config
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _append(key, entry):
    return lambda config: config[key].append(entry)


# (what is wrong, mutation, a regular expression the message must match)
CASES = [
    ("unknown top-level key", _set(["modles"], []), r"'modles' was unexpected"),
    ("unknown key in a model entry", _set(["models", 0, "revison"], "main"), r"'revison' was unexpected"),
    ("unknown source kind", _set(["models", 0, "source"], "ftp"), r"'ftp' is not one of"),
    ("wrong type", _set(["extraction"], {"max_length": "long"}), r"'long' is not of type 'integer'"),
    ("value out of range", _set(["extraction"], {"max_length": 2}), r"2 is less than the minimum of 8"),
    ("duplicate model name", _append("models", {"name": "a", "source": "local", "path": "/x"}),
     r"the name 'a' is used twice in 'models'"),
    ("model name that is not a safe file name", _set(["models", 0, "name"], "../escape"),
     r"'../escape' does not match"),
    ("model name with the pair separator", _set(["models", 0, "name"], "a__b"), r"names may not contain '__'"),
    ("source without its required key", lambda c: c["models"][0].pop("path"), r"needs the key\(s\) path"),
    ("hub model without a revision", _set(["models", 0], {"name": "a", "source": "hub", "repo_id": "bert-base-uncased"}),
     r"source 'hub' needs the key\(s\) revision"),
    ("derived model from an unknown base",
     _append("models", {"name": "p", "source": "perturb", "base": "nope", "alpha": 0.1}),
     r"base 'nope' is not a configured model name"),
    ("perturbation weight outside [0, 1]",
     _append("models", {"name": "p", "source": "perturb", "base": "a", "alpha": 1.5}), r"1.5 is greater than the maximum of 1"),
    ("fine-tune on an unlabelled dataset",
     lambda c: (c["datasets"].append({"name": "raw", "source": "file", "path": "data/r.txt"}),
                c["models"].append({"name": "f", "source": "finetune", "base": "a", "dataset": "raw"})),
     r"dataset 'raw' has no label_column; fine-tuning needs labels"),
    ("fine-tune on an unknown dataset",
     _append("models", {"name": "f", "source": "finetune", "base": "a", "dataset": "nope"}),
     r"dataset 'nope' is not a configured dataset name"),
    ("cycle of derived models",
     lambda c: c["models"].extend([{"name": "p", "source": "perturb", "base": "q", "alpha": 0.1},
                                   {"name": "q", "source": "perturb", "base": "p", "alpha": 0.1}]),
     r"derived from itself through a cycle"),
    ("no models at all", _set(["models"], []), r"\[\] should be non-empty"),
    ("unknown model in a compression pair", _set(["compression"], {"pairs": [{"pretrained": "nope", "finetuned": "b"}]}),
     r"compression.pairs\[0\]: pretrained model 'nope' is not a configured model name"),
    ("unknown similarity measure", _set(["similarity"], {"measures": ["cka", "nope"]}), r"'nope' is not one of"),
    ("similarity without the decomposition whose pair files it reads",
     lambda c: c.update(decomposition={"enabled": False}, similarity={"enabled": True}),
     r"similarity.enabled is true but decomposition.enabled is false"),
    ("a layer sweep without the similarity stage",
     _set(["similarity"], {"enabled": False, "layer_sweep": {"enabled": True}}),
     r"similarity.layer_sweep.enabled is true but the similarity stage is off"),
    ("an unknown layer-sweep measure", _set(["similarity"], {"layer_sweep": {"measures": ["knn"]}}),
     r"'knn' is not one of"),
]

# Analysis sections, in the order the Snakefile includes their rule files (each validates its own section).
SECTIONS = ("decomposition", "similarity", "variability", "compression", "geometry", "twotower", "figures")


def bad_config(mutation) -> dict:
    config = copy.deepcopy(BASE)
    mutation(config)
    return config


# Reads the project's Snakefile once per config with Snakemake's API, in one process for all the configs (the
# import of Snakemake is most of the cost): exactly the start-up a `snakemake` command goes through (the schema,
# the semantic checks, every rule file's section checks), stopping before the job graph.
PARSE_SCRIPT = r"""
import json, os, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
snakefile, configs = Path(sys.argv[1]), sys.argv[2:]
found = []
for path in configs:
    os.chdir(Path(path).parent)  # named as a user names it: `--configfile my-config.yaml` in the run folder
    try:
        with SnakemakeApi(OutputSettings()) as api:
            workflow = api.workflow(resource_settings=ResourceSettings(), snakefile=snakefile,
                                    config_settings=ConfigSettings(configfiles=[Path(Path(path).name)]),
                                    workdir=Path(path).parent)
            workflow._workflow  # the Snakefile and its rule files are read here
        found.append(None)
    except Exception as err:
        found.append([type(err).__name__, str(err)])
print("MESSAGES=" + json.dumps(found))
"""


def validation_messages(configs: list) -> list:
    """The message Snakemake stops with at start-up for each config (None when the config is accepted), from the
    project's real Snakefile read by Snakemake, one subprocess for all the configs."""
    import json
    import subprocess
    import sys
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index, config in enumerate(configs):
            path = Path(folder) / f"case{index}" / "my-config.yaml"
            path.parent.mkdir()
            write_local_sources(path.parent)
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            paths.append(str(path))
        result = subprocess.run([sys.executable, "-c", PARSE_SCRIPT, str(PROJECT / "Snakefile"), *paths],
                                capture_output=True, text=True, timeout=600, cwd=folder)
    lines = [line for line in result.stdout.splitlines() if line.startswith("MESSAGES=")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"reading the Snakefile failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    messages = []
    for found in json.loads(lines[0][len("MESSAGES="):]):
        if found is None:
            messages.append(None)
            continue
        kind, text = found
        if kind == "WorkflowInputError":  # the first line says which file; the rest is the message
            text = " ".join(line.strip() for line in text.splitlines()[1:]) or text
        messages.append(text)
    return messages


def validation_message(config: dict) -> str | None:
    """The message the workflow stops with at start-up; None when valid."""
    return validation_messages([config])[0]


if __name__ == "__main__":
    print("| what is wrong | message at start-up (before any job runs) |\n| --- | --- |")
    for (what, _, _), message in zip(CASES, validation_messages([bad_config(m) for _, m, _ in CASES])):
        print(f"| {what} | `{(message or 'accepted').replace('|', '/')}` |")
