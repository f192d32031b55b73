"""The LMD paper's text unit as a derived dataset: a base dataset re-cut into chunks of T reference tokens.

`chunking: release` (default) builds the chunks as the released tool does (haozhg/lmd, PyPI nlp.lmd 0.2.0,
`lmd/cli.py` `gen_sequence`, which follows transformers' run_mlm.py): per split, the texts are shuffled
(`datasets.Dataset.shuffle(seed=42)`: `np.random.default_rng(42).permutation`), each text is tokenised by the
reference tokenizer *with* its special tokens ([CLS] text [SEP] for BERT), the token lists are concatenated per
batch of 1000 texts (`Dataset.map(batched=True)`) and cut into chunks of T tokens, the remainder of each batch is
dropped (a batch with fewer than T tokens in all gives one shorter chunk), and every chunk is decoded with
`skip_special_tokens=True`: the special tokens occupy chunk positions and vanish from the text, so a chunk that
spans text boundaries holds fewer than T text tokens.
`chunking: text_tokens` (ours, the earlier behaviour of this rule): texts in example order, tokenised without
special tokens, concatenated over the whole split, one remainder per split dropped; every chunk then holds
exactly T text tokens.

Splits: `chunk_split: base` (default) keeps each base example's split (train texts make train chunks, test
texts make test chunks; no chunk straddles the two). `chunk_split: release` cuts the base's rows as the release
cuts a corpus without a validation split: by position (example_id order) before shuffling, the first 5 % are
the release's validation rows (not used here: the fit and the test R² never read them; counted in the log),
the next 5 % test and the rest train (`train[:5%]`, `train[5%:10%]`, `train[10%:]` with datasets' rounding).

Every model then reads the chunk texts with its own tokenizer; the extraction of a chunks dataset truncates at
T tokens, special tokens included, as the release does (rules/extract.smk sets max_length = chunk_tokens).

Output: results/data/{dataset}.parquet in the dataset contract (see docs/ARCHITECTURE.md), unlabelled.
"""

import logging

import numpy as np
import pandas as pd

import lmcompare

from lmcompare import files
from lmcompare.data.prepare import stratified_subsample, word_offsets, write_dataset
from lmcompare.errors import WorkflowInputError

LOG = logging.getLogger("workflow")

CHUNKINGS = ("release", "text_tokens")
CHUNK_SPLITS = ("base", "release")
RELEASE_BATCH_TEXTS = 1000  # datasets.Dataset.map(batched=True) default batch size
RELEASE_SHUFFLE_SEED = 42  # nlp.lmd 0.2.0 --seed
RELEASE_VALIDATION_PERCENT = 5  # --val-split-percentage
RELEASE_TEST_PERCENT = 5  # --test-split-percentage


def cut_chunks(token_lists, chunk_tokens: int) -> tuple[list[list[int]], int]:
    """Concatenate token-id lists and cut them into full chunks of chunk_tokens; returns chunks and the remainder."""
    if chunk_tokens < 1:
        raise WorkflowInputError(f"chunk_tokens must be at least 1, got {chunk_tokens}.")
    flat = np.fromiter((t for ids in token_lists for t in ids), dtype=np.int64)
    full = len(flat) // chunk_tokens
    chunks = flat[: full * chunk_tokens].reshape(full, chunk_tokens).tolist() if full else []
    return chunks, len(flat) - full * chunk_tokens


def release_chunks(token_lists, chunk_tokens: int, batch_texts: int = RELEASE_BATCH_TEXTS) -> tuple[list[list[int]], int]:
    """The release's group_texts per batch of `batch_texts` token lists: returns the chunks and the tokens dropped.

    Per batch: concatenate; if the batch holds at least T tokens, cut it into full chunks of T and drop the
    remainder; otherwise the whole batch is one chunk shorter than T (as run_mlm.py's group_texts does).
    """
    if chunk_tokens < 1:
        raise WorkflowInputError(f"chunk_tokens must be at least 1, got {chunk_tokens}.")
    chunks, dropped = [], 0
    for start in range(0, len(token_lists), batch_texts):
        flat = [t for ids in token_lists[start:start + batch_texts] for t in ids]
        if len(flat) >= chunk_tokens:
            full = len(flat) // chunk_tokens * chunk_tokens
            dropped += len(flat) - full
            chunks.extend(flat[i:i + chunk_tokens] for i in range(0, full, chunk_tokens))
        elif flat:
            chunks.append(flat)
    return chunks, dropped


def release_split(n_rows: int) -> np.ndarray:
    """The release's split of a corpus without a validation split, by position: 'validation' / 'test' / 'train'.

    datasets' percent slices with rounding 'closest': boundary = int(round(percent * n / 100)).
    """
    first = int(round(RELEASE_VALIDATION_PERCENT * n_rows / 100.0))
    second = int(round((RELEASE_VALIDATION_PERCENT + RELEASE_TEST_PERCENT) * n_rows / 100.0))
    split = np.full(n_rows, "train", dtype=object)
    split[:first] = "validation"
    split[first:second] = "test"
    return split


def shuffled(texts: list, seed) -> list:
    """datasets.Dataset.shuffle(seed): rows in the order np.random.default_rng(seed).permutation(n)."""
    if seed is None or len(texts) == 0:
        return list(texts)
    order = np.random.default_rng(int(seed)).permutation(len(texts))
    return [texts[i] for i in order]


def build_chunks(base: pd.DataFrame, tokenizer, chunk_tokens: int, entry: dict) -> tuple[pd.DataFrame, dict]:
    """The chunk dataset frame from a base dataset frame (ordered by example_id) and a tokenizer."""
    name = entry["name"]
    chunking = entry.get("chunking") or "release"
    chunk_split = entry.get("chunk_split") or "base"
    if chunking not in CHUNKINGS:
        raise WorkflowInputError(f"dataset {name!r}: chunking {chunking!r} is not one of {CHUNKINGS}.")
    if chunk_split not in CHUNK_SPLITS:
        raise WorkflowInputError(f"dataset {name!r}: chunk_split {chunk_split!r} is not one of {CHUNK_SPLITS}.")
    seed = entry.get("shuffle_seed", RELEASE_SHUFFLE_SEED) if chunking == "release" else None
    base = base.sort_values("example_id")
    split_of = release_split(len(base)) if chunk_split == "release" else base["split"].to_numpy(dtype=object)
    texts, splits = [], []
    counts = {"base_examples": len(base), "chunking": chunking, "chunk_split": chunk_split, "shuffle_seed": seed}
    if chunk_split == "release":
        counts["release_validation_rows_unused"] = int((split_of == "validation").sum())
    for split in ("train", "test"):
        members = shuffled(base.loc[split_of == split, "text"].astype(str).tolist(), seed)
        if chunking == "release":
            ids = tokenizer(members)["input_ids"] if members else []  # with the special tokens, as the release
            chunks, remainder = release_chunks(ids, chunk_tokens)
        else:
            ids = tokenizer(members, add_special_tokens=False)["input_ids"] if members else []
            chunks, remainder = cut_chunks(ids, chunk_tokens)
        decoded = tokenizer.batch_decode(chunks, skip_special_tokens=True) if chunks else []
        kept = [text for text in decoded if text.strip()]
        counts[f"{split}_tokens"] = int(sum(len(i) for i in ids))
        counts[f"{split}_chunks"] = len(kept)
        counts[f"{split}_remainder_tokens_dropped"] = int(remainder)
        counts[f"{split}_empty_chunks_dropped"] = len(decoded) - len(kept)
        counts[f"{split}_short_chunks"] = int(sum(len(c) < chunk_tokens for c in chunks))
        texts.extend(kept)
        splits.extend([split] * len(kept))
    splits = np.asarray(splits, dtype=object)
    if not texts:
        raise WorkflowInputError(
            f"dataset {name!r}: the base dataset {entry['base']!r} holds {counts['train_tokens'] + counts['test_tokens']} "
            f"tokens of {entry['tokenizer_model']!r}, fewer than one chunk of {chunk_tokens}; lower chunk_tokens or "
            f"use a larger base dataset."
        )
    for split in ("train", "test"):
        if not (splits == split).any():
            raise WorkflowInputError(
                f"dataset {name!r}: no {split} chunk of {chunk_tokens} tokens could be cut from the {split} split of "
                f"{entry['base']!r} (chunk_split: {chunk_split}); lower chunk_tokens or use a larger base dataset."
            )
    keep = np.arange(len(texts))
    if entry.get("max_examples"):
        keep = stratified_subsample(splits, entry["max_examples"], entry.get("seed", 0))
    frame = pd.DataFrame({
        "example_id": np.arange(len(keep), dtype=np.int64),
        "text": [texts[i] for i in keep],
        "label": [None] * len(keep),
        "split": splits[keep].astype(str),
    })
    offsets = [word_offsets(text) for text in frame["text"]]
    frame["word_starts"] = [s for s, _ in offsets]
    frame["word_ends"] = [e for _, e in offsets]
    # What each model's extraction will see: the reference tokenizer's re-encoding of the chunk text with its
    # special tokens; the extraction truncates at T (chunk_tokens), as the release does.
    lengths = np.array([len(i) for i in tokenizer(frame["text"].tolist())["input_ids"]])
    counts.update(rows_out=len(frame), train=int((frame["split"] == "train").sum()),
                  test=int((frame["split"] == "test").sum()), reencoded_longer_than_T=int((lengths > chunk_tokens).sum()),
                  reencoded_min=int(lengths.min()), reencoded_max=int(lengths.max()))
    return frame, counts


def load_tokenizer(model_folder: str, model_name: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise WorkflowInputError(
            f"the tokenizer of model {model_name!r} ({model_folder}) does not load ({err}); it is the chunks "
            f"dataset's tokenizer_model: re-materialise the model or pick another tokenizer_model."
        ) from err
    tokenizer.model_max_length = 1 << 60  # we tokenize whole texts on purpose; no length warning
    return tokenizer


def prepare_chunk_dataset(entry: dict, base_path, tokenizer_folder, out_path) -> dict:
    """The prepare_chunk_dataset job: the `chunks` dataset `entry` (chunk_tokens tokens of its tokenizer model's
    tokenizer, cut from the base dataset at `base_path`) written to `out_path`; returns the counts."""
    chunk_tokens = int(entry["chunk_tokens"])
    LOG.info("chunks of %d tokens of %r from dataset %r (chunking %s, split %s)", chunk_tokens,
             entry["tokenizer_model"], entry["base"], entry.get("chunking") or "release",
             entry.get("chunk_split") or "base")
    base = files.read_dataset(base_path)
    tokenizer = load_tokenizer(tokenizer_folder, entry["tokenizer_model"])
    frame, counts = build_chunks(base, tokenizer, chunk_tokens, entry)
    write_dataset(frame, out_path, {
        "name": entry["name"], "source": "chunks", "base": entry["base"], "tokenizer_model": entry["tokenizer_model"],
        "chunk_tokens": chunk_tokens, "chunking": counts["chunking"], "chunk_split": counts["chunk_split"],
        "counts": counts, "code_version": lmcompare.__version__,
    })
    LOG.info("chunks: %s", counts)
    LOG.info("%d of %d chunks re-encode to more than %d tokens with the special tokens: the extraction of this "
             "dataset truncates every model's input at %d tokens (special tokens included), as the release does",
             counts["reencoded_longer_than_T"], counts["rows_out"], chunk_tokens, chunk_tokens)
    return counts
