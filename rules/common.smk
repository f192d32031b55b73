# Names, paths and resources shared by every rule file.
import os

from lmcompare import paths
from lmcompare.code_digest import code_digest
from lmcompare.config import check_schema, where
from lmcompare.errors import WorkflowInputError


def validate_section(key):
    """Check one analysis section against schemas/<key>.schema.yaml (errors name the key path and the file it came
    from), fill defaults, and decide `enabled: null` (the default) from the configured names (auto_enabled)."""
    schema = os.path.join(workflow.basedir, "schemas", f"{key}.schema.yaml")
    check_schema(config[key], schema, section=key)
    validate(config[key], schema)
    if config[key].get("enabled", True) is None:
        config[key]["enabled"] = auto_enabled(key, config[key])


def auto_enabled(key, section):
    """`enabled: null`: on when what the stage needs is configured (the schema descriptions say what)."""
    if key == "decomposition":
        return len(section.get("models") or MODEL_NAMES) >= 2
    if key == "similarity":
        return config["decomposition"]["enabled"]
    if key in ("variability", "compression"):
        return bool(labelled_datasets())
    if key == "geometry":
        return section["score"]["source"] == "table" or bool(labelled_datasets())
    return True


MODELS = {entry["name"]: entry for entry in config["models"]}
DATASETS = {entry["name"]: entry for entry in config["datasets"]}
MODEL_NAMES = list(MODELS)
DATASET_NAMES = list(DATASETS)
EXTERNAL_SOURCES = ("hub", "local", "package", "archive", "onnx")


def library_code(script):
    """The `code` param of every rule: a digest of the lmcompare modules its script (workflow_scripts/<script>.py)
    imports. Snakemake's code trigger sees only the script; through this param a change of the library code a rule
    runs reruns its jobs (lmcompare/code_digest.py)."""
    return code_digest(os.path.join(workflow.basedir, "workflow_scripts", f"{script}.py"))


def _config_value(key):
    """The config's value at a dotted key ("geometry.regression.models"); None where it is not set."""
    value = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def selected_names(key, known, what, *, enabled=True):
    """The names a section selects with `key` (e.g. "variability.models"), one convention for every section: null
    (the default) selects every name in `known`; a list selects exactly its names (in its order, once each); a
    name not in `known`, or an empty list, is an error naming the key and the file it came from. A disabled section is not checked
    against the configured names (nothing of it runs): its unknown names are dropped."""
    chosen = _config_value(key)
    if chosen is None:
        return list(known)
    if not chosen and enabled:
        raise WorkflowInputError(
            f"config: {key} is an empty list, which would select no {what}; remove it from {where(key)} (or set it "
            f"to null) to select every one of them, or list the names."
        )
    unknown = [name for name in chosen if name not in known]
    if unknown and enabled:
        raise WorkflowInputError(
            f"config: {key} lists {unknown}, which are not {what} ({list(known)}); fix {where(key)} (or remove it: "
            f"the default is every one of them)."
        )
    return [name for name in dict.fromkeys(chosen) if name in known]


def selected_name(key, known, what, *, enabled=True):
    """The one name a section selects with `key` (e.g. "twotower.dataset"): null (the default) selects the first of
    `known`; a name not in `known` is an error naming the key and its file (unless the section is disabled)."""
    chosen = _config_value(key)
    if chosen is None or (chosen not in known and not enabled):
        return known[0]
    if chosen not in known:
        raise WorkflowInputError(
            f"config: {key} is {chosen!r}, which is not {what} ({list(known)}); fix {where(key)} (or remove it: the "
            f"default takes the first configured one)."
        )
    return chosen


def model_index(names):
    """Each model's index in the configured model list: the `model_index` param of a figure rule, so a model has one
    colour in every figure (lmcompare/plotting.py). Adding a model at the end changes no entry."""
    return {name: MODEL_NAMES.index(name) for name in names}


def models_of_source(*sources):
    return [name for name, entry in MODELS.items() if entry["source"] in sources]


def datasets_of_source(*sources):
    return [name for name, entry in DATASETS.items() if entry["source"] in sources]


def labelled_datasets():
    """Datasets with a label column (chunks datasets carry no labels)."""
    return [name for name, entry in DATASETS.items() if entry.get("label_column")]


def name_regex(names):
    """A wildcard constraint matching exactly these names (never matches when empty)."""
    import re

    return "|".join(re.escape(name) for name in names) if names else "(?!x)x"


wildcard_constraints:
    model=name_regex(MODEL_NAMES),
    dataset=name_regex(DATASET_NAMES),


RES = config["resources"]


def gpu_resources():
    """Resources of a rule that runs a model: gpu=1 (and gpu_model) unless switched off in config."""
    if not RES["gpu_rules_use_gpu"]:
        return {}
    resources = {"gpu": 1}
    if RES["gpu_model"]:
        resources["gpu_model"] = RES["gpu_model"]
    return resources


def light_resources():
    return {"mem_mb": RES["mem_mb_base"], "runtime": RES["runtime_minutes_base"]}


def model_weights_mb(model):
    """Rough size of a model's weights for scaling memory and time requests (known after materialising)."""
    files = paths.weight_files(paths.model_dir(model))
    return sum(os.path.getsize(f) for f in files) / 1e6 if files else 500.0


# ------------------------------------------------------------------------------------------------ targets
# Each rule file defines its stage's `*_targets()` (empty when the stage is disabled); they are called when the
# DAG is built, after every file has been read, so no result depends on the order of the include lines.
def analysis_targets():
    """What the enabled stages build: hidden states and every analysis's tables and figures."""
    return (extraction_targets() + decomposition_targets() + similarity_targets() + variability_targets() + compression_targets()
            + geometry_targets() + twotower_targets())


def final_targets():
    """The inputs of `rule all`: the enabled stages' outputs and the report."""
    return analysis_targets() + report_targets()
