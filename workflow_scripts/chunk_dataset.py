"""The LMD paper's text unit as a derived dataset: a base dataset re-cut into chunks of T reference tokens.

As in the authors' code (Zhang, EMNLP 2022): the texts are tokenized by one reference tokenizer without special
tokens, concatenated, cut into chunks of exactly T tokens (the remainder is dropped), and every chunk is decoded
back to text (special tokens skipped). Every model then reads that text with its own tokenizer. We do this per
split (train texts make train chunks, test texts make test chunks), so no chunk straddles the two splits.

Output: results/data/{dataset}.parquet in the dataset contract (see docs/ARCHITECTURE.md), unlabelled.
"""

import logging

import numpy as np
import pandas as pd

from workflow_scripts import storage
from workflow_scripts.prepare_dataset import stratified_subsample, word_offsets, write_dataset
from workflow_scripts.storage import WorkflowInputError

LOG = logging.getLogger("workflow")


def cut_chunks(token_lists, chunk_tokens: int) -> tuple[list[list[int]], int]:
    """Concatenate token-id lists and cut them into full chunks of chunk_tokens; returns chunks and the remainder."""
    if chunk_tokens < 1:
        raise WorkflowInputError(f"chunk_tokens must be at least 1, got {chunk_tokens}.")
    flat = np.fromiter((t for ids in token_lists for t in ids), dtype=np.int64)
    full = len(flat) // chunk_tokens
    chunks = flat[: full * chunk_tokens].reshape(full, chunk_tokens).tolist() if full else []
    return chunks, len(flat) - full * chunk_tokens


def build_chunks(base: pd.DataFrame, tokenizer, chunk_tokens: int, entry: dict) -> tuple[pd.DataFrame, dict]:
    """The chunk dataset frame from a base dataset frame (ordered by example_id) and a tokenizer."""
    name = entry["name"]
    base = base.sort_values("example_id")
    texts, splits, counts = [], [], {"base_examples": len(base)}
    for split in ("train", "test"):
        members = base.loc[base["split"] == split, "text"].astype(str).tolist()
        ids = tokenizer(members, add_special_tokens=False)["input_ids"] if members else []
        chunks, remainder = cut_chunks(ids, chunk_tokens)
        decoded = tokenizer.batch_decode(chunks, skip_special_tokens=True) if chunks else []
        kept = [text for text in decoded if text.strip()]
        counts[f"{split}_tokens"] = int(sum(len(i) for i in ids))
        counts[f"{split}_chunks"] = len(kept)
        counts[f"{split}_remainder_tokens_dropped"] = int(remainder)
        counts[f"{split}_empty_chunks_dropped"] = len(decoded) - len(kept)
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
                f"{entry['base']!r}; lower chunk_tokens or use a larger base dataset."
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
    # Decoding and re-encoding is not always the identity: report how many chunks the reference tokenizer
    # itself no longer reads as exactly T tokens.
    lengths = np.array([len(i) for i in tokenizer(frame["text"].tolist(), add_special_tokens=False)["input_ids"]])
    counts.update(rows_out=len(frame), train=int((frame["split"] == "train").sum()),
                  test=int((frame["split"] == "test").sum()), retokenized_not_T=int((lengths != chunk_tokens).sum()),
                  retokenized_min=int(lengths.min()), retokenized_max=int(lengths.max()))
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


def main(snakemake) -> None:
    with storage.job_logging(snakemake):
        entry = dict(snakemake.params.entry)
        chunk_tokens = int(entry["chunk_tokens"])
        LOG.info("chunks of %d tokens of %r from dataset %r", chunk_tokens, entry["tokenizer_model"], entry["base"])
        base = storage.read_dataset(snakemake.input.base)
        tokenizer = load_tokenizer(snakemake.input.tokenizer, entry["tokenizer_model"])
        frame, counts = build_chunks(base, tokenizer, chunk_tokens, entry)
        write_dataset(frame, snakemake.output.dataset, {
            "name": entry["name"], "source": "chunks", "base": entry["base"], "tokenizer_model": entry["tokenizer_model"],
            "chunk_tokens": chunk_tokens, "counts": counts, "code_version": storage.CODE_VERSION,
        })
        LOG.info("chunks: %s", counts)
        max_length = snakemake.params.max_length
        if max_length != chunk_tokens:
            LOG.warning(
                "extraction.max_length is %d but chunk_tokens is %d: the paper truncates every model's input at T "
                "(special tokens included); set extraction.max_length: %d to match it", max_length, chunk_tokens,
                chunk_tokens,
            )


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
