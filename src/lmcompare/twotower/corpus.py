"""The two-tower corpus: a dataset's train and test split as token streams, the model vocabulary, the batches.

Documents are tokenised and joined by a separator into one stream per split (`build_corpus`); the model's output
classes are every tokenizer id (`full`, the paper's) or the ids seen in training plus one class for the rest
(`corpus`). `save_corpus`/`load_corpus` keep it as .npz; `random_windows` draws a training step's batch and
`eval_windows` cuts a stream into consecutive windows that predict every token once. `write_corpus` is what rule
twotower_corpus does.
"""

import json
import logging
import math
from dataclasses import dataclass, field

import numpy as np

from lmcompare import files
from lmcompare.errors import WorkflowInputError

LOG = logging.getLogger("workflow")

UNSEEN = -1  # original id recorded for the compact vocabulary's "unseen in training" class


@dataclass
class Corpus:
    """Token ids of a dataset's train and test split, each one stream of documents joined by a separator.

    `*_ids` index the model vocabulary (`vocab_ids` maps model index -> tokenizer id; in the `full`
    vocabulary it is the identity). `test_example` holds, per test token, the example_id of its document
    (a separator belongs to the document it ends).
    """

    train_ids: np.ndarray
    test_ids: np.ndarray
    test_example: np.ndarray
    vocab_ids: np.ndarray
    separator_id: int | None
    info: dict = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return int(len(self.vocab_ids))


def resolve_separator(tokenizer, separator: str | None, where: str) -> int | None:
    """The tokenizer id that joins documents. 'auto': eos, else sep; a token string; None: no separator."""
    if separator is None:
        return None
    if separator == "auto":
        for attr in ("eos_token", "sep_token"):
            token = getattr(tokenizer, attr, None)
            if token is not None:
                return int(tokenizer.convert_tokens_to_ids(token))
        raise WorkflowInputError(
            f"{where}: the tokenizer has neither an eos_token nor a sep_token, so twotower.separator_token 'auto' "
            f"cannot join documents. Set twotower.separator_token to a token of this vocabulary, or null to "
            f"concatenate documents without a separator."
        )
    vocab = tokenizer.get_vocab()
    if separator not in vocab:
        raise WorkflowInputError(
            f"{where}: the configured twotower.separator_token {separator!r} is not in this tokenizer's vocabulary "
            f"(its special tokens: {sorted(set(map(str, tokenizer.all_special_tokens)))}). Set it to one of them, "
            f"'auto', or null."
        )
    return int(vocab[separator])


def join_documents(docs: list[list[int]], example_ids, separator_id: int | None):
    """Concatenate tokenised documents, a separator after each; also return each token's example id."""
    pieces, owners = [], []
    for ids, example in zip(docs, example_ids):
        ids = list(ids) + ([separator_id] if separator_id is not None else [])
        pieces.append(np.asarray(ids, dtype=np.int64))
        owners.append(np.full(len(ids), int(example), dtype=np.int64))
    if not pieces:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(pieces), np.concatenate(owners)


def compact_vocabulary(train_ids: np.ndarray, test_ids: np.ndarray, tokenizer_size: int, mode: str):
    """Map tokenizer ids onto the model's output classes.

    full   (paper): every tokenizer id is a class (identity map).
    corpus (ours, faster on a small corpus): the ids seen in the train split, plus one class for every id
           not seen in training (original id UNSEEN); the softmax then runs over |train types| + 1 classes.
    Returns (train, test, vocab_ids) with train/test re-indexed.
    """
    if mode == "full":
        return train_ids, test_ids, np.arange(tokenizer_size, dtype=np.int64)
    if mode != "corpus":
        raise ValueError(f"vocabulary mode must be 'full' or 'corpus', got {mode!r}")
    seen = np.unique(train_ids)
    vocab_ids = np.concatenate([seen, [UNSEEN]]).astype(np.int64)
    lookup = np.full(max(tokenizer_size, int(max(train_ids.max(initial=0), test_ids.max(initial=0))) + 1),
                     len(seen), dtype=np.int64)
    lookup[seen] = np.arange(len(seen))
    return lookup[train_ids], lookup[test_ids], vocab_ids


def build_corpus(frame, tokenizer, *, window: int, separator: str | None, vocabulary: str,
                 where: str = "dataset", max_train_tokens: int | None = None) -> Corpus:
    """Tokenise the train and test split of a dataset frame (columns example_id, text, split)."""
    missing = {"example_id", "text", "split"} - set(frame.columns)
    if missing:
        raise WorkflowInputError(f"{where} lacks the column(s) {sorted(missing)}; rerun prepare_dataset.")
    separator_id = resolve_separator(tokenizer, separator, where)
    frame = frame.sort_values("example_id")
    streams = {}
    for split in ("train", "test"):
        part = frame[(frame["split"] == split) & frame["text"].notna()]
        texts = part["text"].astype(str).tolist()
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        streams[split] = join_documents(encoded, part["example_id"].to_numpy(), separator_id)
    train, _ = streams["train"]
    test, test_example = streams["test"]
    if max_train_tokens is not None and len(train) > max_train_tokens:
        train = train[:max_train_tokens]
    for split, ids in (("train", train), ("test", test)):
        if len(ids) < window + 1:
            raise WorkflowInputError(
                f"{where}: the {split} split holds {len(ids)} tokens, fewer than one window of "
                f"twotower.window + 1 = {window + 1} tokens. Lower twotower.window, or use a larger dataset "
                f"(max_examples) with enough {split} text."
            )
    tokenizer_size = len(tokenizer)
    train_c, test_c, vocab_ids = compact_vocabulary(train, test, tokenizer_size, vocabulary)
    info = {
        "train_tokens": int(len(train)), "test_tokens": int(len(test)),
        "train_types": int(len(np.unique(train))), "test_types": int(len(np.unique(test))),
        "test_tokens_unseen_in_train": int(np.isin(test, np.unique(train), invert=True).sum()),
        "tokenizer_size": int(tokenizer_size), "model_vocab_size": int(len(vocab_ids)),
        "vocabulary": vocabulary, "separator_id": separator_id, "window": int(window),
        "n_train_documents": int((frame["split"] == "train").sum()),
        "n_test_documents": int((frame["split"] == "test").sum()),
    }
    return Corpus(train_c, test_c, test_example, vocab_ids, separator_id, info)


def save_corpus(corpus: Corpus, path) -> None:
    with files.atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, train_ids=corpus.train_ids, test_ids=corpus.test_ids,
                     test_example=corpus.test_example, vocab_ids=corpus.vocab_ids,
                     separator_id=np.int64(-1 if corpus.separator_id is None else corpus.separator_id),
                     info=np.frombuffer(json.dumps(corpus.info).encode(), dtype=np.uint8))


def load_corpus(path) -> Corpus:
    try:
        data = np.load(path)
        sep = int(data["separator_id"])
        return Corpus(data["train_ids"], data["test_ids"], data["test_example"], data["vocab_ids"],
                      None if sep < 0 else sep, json.loads(bytes(data["info"]).decode()))
    except (OSError, KeyError, ValueError) as err:
        raise WorkflowInputError(f"{path} is not a readable two-tower corpus ({err}); delete it and rerun.") from err


def random_windows(ids: np.ndarray, window: int, batch_size: int, seed: int, step: int):
    """The batch of step `step`: `batch_size` windows of window+1 tokens at random offsets.

    Drawn from a generator seeded by (seed, step) so that a resumed run sees exactly the batches an
    uninterrupted run would have seen, with no generator state to save.
    """
    rng = np.random.default_rng([int(seed), int(step)])
    starts = rng.integers(0, len(ids) - window, size=batch_size)
    return np.stack([ids[s:s + window + 1] for s in starts])


def eval_windows(ids: np.ndarray, window: int, max_windows: int | None = None):
    """Consecutive windows of window+1 tokens with stride `window`: every token after the first is a target
    exactly once. The last window is padded; returns (windows, target_mask, target_index) where
    target_index[i, j] is the stream position of the target windows[i, j+1]."""
    n_targets = len(ids) - 1
    n_windows = max(1, math.ceil(n_targets / window))
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    windows = np.zeros((n_windows, window + 1), dtype=np.int64)
    mask = np.zeros((n_windows, window), dtype=bool)
    index = np.full((n_windows, window), -1, dtype=np.int64)
    for w in range(n_windows):
        chunk = ids[w * window: w * window + window + 1]
        windows[w, :len(chunk)] = chunk
        mask[w, :len(chunk) - 1] = True
        index[w, :len(chunk) - 1] = np.arange(w * window + 1, w * window + len(chunk))
    return windows, mask, index


def write_corpus(dataset_path, model_dir, settings: dict, corpus_path, info_path, *, where: str) -> Corpus:
    """Rule twotower_corpus: tokenise the dataset with the model's tokenizer (`settings`: the twotower section's
    window, separator_token, vocabulary, max_train_tokens); write the corpus (.npz) and its counts (.json)."""
    from lmcompare.models.loading import load_tokenizer

    frame = files.read_dataset(dataset_path)
    tokenizer = load_tokenizer(model_dir)
    corpus = build_corpus(frame, tokenizer, window=settings["window"], separator=settings["separator_token"],
                          vocabulary=settings["vocabulary"], where=where,
                          max_train_tokens=settings["max_train_tokens"])
    LOG.info("corpus: %s", corpus.info)
    save_corpus(corpus, corpus_path)
    files.write_json(corpus.info, info_path)
    return corpus
