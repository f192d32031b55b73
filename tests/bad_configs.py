"""Bad configurations and the message each one gets: the cases of the config tests, and the table in
docs/reliability.md (regenerate it with `.venv/bin/python -m tests.bad_configs`)."""
import copy
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]

BASE = {
    "models": [{"name": "a", "source": "local", "path": "/models/a"},
               {"name": "b", "source": "local", "path": "/models/b"}],
    "datasets": [{"name": "toy", "source": "file", "path": "/data/toy.csv", "label_column": "label"}],
}


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
     lambda c: (c["datasets"].append({"name": "raw", "source": "file", "path": "/r.txt"}),
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
]

# Analysis sections, in the order the Snakefile includes their rule files (each validates its own section).
SECTIONS = ("decomposition", "variability", "compression", "geometry", "twotower", "figures")


def bad_config(mutation) -> dict:
    config = copy.deepcopy(BASE)
    mutation(config)
    return config


def validation_message(config: dict) -> str | None:
    """The message the workflow stops with at start-up (schema, then the semantic checks, then the checks the rule
    files run while they are read: each analysis section against its schema, compression pairs); None when valid."""
    from snakemake.utils import validate

    from workflow_scripts.compression import resolve_pairs
    from workflow_scripts.config_checks import check_config, check_schema, record_config_sources
    from workflow_scripts.storage import WorkflowInputError

    schema = PROJECT / "schemas/config.schema.yaml"
    # as if the user had passed it with --configfile my-config.yaml: the messages name that file
    record_config_sources(["my-config.yaml"], loaded={"my-config.yaml": copy.deepcopy(config)})
    try:
        check_schema(config, schema)
        validate(config, str(schema))
        check_config(config)
        for key in SECTIONS:  # as rules/common.smk validate_section
            if key in config:
                section_schema = PROJECT / "schemas" / f"{key}.schema.yaml"
                check_schema(config[key], section_schema, section=key)
                validate(config[key], str(section_schema))
        if "compression" in config:  # as rules/compression.smk
            section = config["compression"]
            resolve_pairs(section["pairs"], config["models"], list(section["models"] or []) or
                          [entry["name"] for entry in config["models"]], section["derive_pairs"])
    except WorkflowInputError as err:
        return " ".join(line.strip() for line in str(err).splitlines()[1:]) or str(err)
    finally:
        record_config_sources([])
    return None


if __name__ == "__main__":
    print("| what is wrong | message at start-up (before any job runs) |\n| --- | --- |")
    for what, mutation, _ in CASES:
        message = validation_message(bad_config(mutation))
        print(f"| {what} | `{(message or 'accepted').replace('|', '/')}` |")
