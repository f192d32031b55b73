"""Extract every layer's hidden states of one model on one dataset, streamed to Parquet.

pooled.parquet: one row per example; per layer the summary token's vector (column kind `first`: the classification
token wherever the tokenizer puts it, or the last token for decoders; extraction/pooling.py) and the mean over
non-special tokens.
tokens.parquet: one row per token for the configured layers, with the dataset word each token belongs to.

Examples are processed in windows of `sort_window`: inside a window they are sorted by length and packed into
batches under a token budget (dynamic padding); each window is written as one row group in example order.
Memory is bounded by the window, never by the corpus.
"""

import dataclasses
import inspect
import logging
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import lmcompare

from lmcompare import files, hidden_states
from lmcompare.extraction.checks import check_float16_range
from lmcompare.extraction.partial import PartialWindows, partial_dir, resume_description
from lmcompare.extraction.pooling import RELATIVE_POSITION_TYPES, choose_summary_token, position_ids, summary_position
from lmcompare.models.loading import (dtype_label, environment_summary, load_model, load_tokenizer,
                                            pick_device, pick_dtype, read_provenance)
from lmcompare.errors import WorkflowInputError

LOG = logging.getLogger("workflow")
# Token row groups hold at most this many tokens, so that readers of tokens.parquet need little memory
# (16,384 tokens x 768 dims x 4 bytes = 50 MB) whatever the sort window.
TOKEN_ROW_GROUP_ROWS = 16384
DATASET_COLUMNS = ["example_id", "text", "label", "split", "word_starts", "word_ends"]


@dataclass
class ExtractionSettings:
    max_length: int = 128
    batch_tokens: int = 8192
    sort_window: int = 1024
    token_layers: tuple = (-1,)
    store_dtype: str = "float32"
    compute_dtype: str = "float32"
    device: str = "auto"
    nonfinite: str = "fail"
    summary_token: str = "auto"  # per model (models[].summary_token): auto | cls | last | first (extraction/pooling.py)
    padding_side: str = "right"  # right | left: where forward_batch pads a batch (results are the same; tested)
    truncation_note: str = ""  # set for datasets whose truncation is the protocol (chunks datasets)

    @classmethod
    def from_config(cls, section: dict) -> "ExtractionSettings":
        known = {k: v for k, v in section.items() if k in cls.__dataclass_fields__}
        known["token_layers"] = tuple(known.get("token_layers", (-1,)))
        return cls(**known)


@dataclass
class ExtractionCounts:
    examples: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    truncated: int = 0
    nonfinite_dropped: int = 0
    batches: int = 0
    forward_seconds: float = 0.0
    nonfinite_ids: list = field(default_factory=list)

    def record(self) -> dict:
        """What a window's commit record keeps (its forward time counts for the job that ran it only)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "forward_seconds"}

    def add(self, values: dict) -> None:
        """Add a window's counts (its `record()`, read back from a commit record, or all of its fields)."""
        for name in self.__dataclass_fields__.keys() & values.keys():
            setattr(self, name, getattr(self, name) + values[name])


# ------------------------------------------------------------------------------------ tokenisation
def tokenize_window(tokenizer, texts, max_length):
    """Token ids, special-token masks and character offsets per text (no padding), plus truncation flags."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, return_offsets_mapping=True,
                        return_special_tokens_mask=True, return_attention_mask=False,
                        return_token_type_ids=False)
    truncated = []
    for ids, offsets, special, text in zip(encoded["input_ids"], encoded["offset_mapping"],
                                           encoded["special_tokens_mask"], texts):
        last_end = max((end for (start, end), sp in zip(offsets, special) if not sp), default=0)
        truncated.append(len(ids) >= max_length and last_end < len(text.rstrip()))
    return encoded["input_ids"], encoded["special_tokens_mask"], encoded["offset_mapping"], truncated


def word_ids_for_tokens(offsets, special, text, word_starts, word_ends) -> np.ndarray:
    """Map each token onto the dataset word holding its first non-space character (-1: special or no word)."""
    starts = np.asarray(word_starts, dtype=np.int64)
    ends = np.asarray(word_ends, dtype=np.int64)
    result = np.full(len(offsets), -1, dtype=np.int32)
    for position, ((start, end), is_special) in enumerate(zip(offsets, special)):
        if is_special or end <= start:
            continue
        while start < end and text[start].isspace():
            start += 1
        if start >= end:
            continue
        word = int(np.searchsorted(starts, start, side="right")) - 1
        if word >= 0 and start < ends[word]:
            result[position] = word
    return result


MIN_LENGTH_RATIO = 0.8  # a batch's shortest example is at least this fraction of its longest (padding bound)


def plan_batches(lengths, batch_tokens: int, min_length_ratio: float = MIN_LENGTH_RATIO) -> list[list[int]]:
    """Indices sorted by length (longest first), packed so that batch size x longest length <= batch_tokens and
    every example of a batch is at least `min_length_ratio` x the batch's longest: at most 25 % padding per example
    at 0.8. (The token budget alone let one batch hold a whole window of short texts, e.g. 372 texts of 4-30
    tokens: 78 % padding on a log-normal length mix, 11 % with the bound; benchmarks/padding_overhead.py)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, current, longest = [], [], 0
    for index in order:
        candidate = max(longest, lengths[index])
        if current and (candidate * (len(current) + 1) > batch_tokens
                        or lengths[index] < min_length_ratio * longest):
            batches.append(current)
            current, candidate = [], lengths[index]
        current.append(index)
        longest = candidate
    if current:
        batches.append(current)
    return batches


# ---------------------------------------------------------------------------------------- forward
PADDING_SIDES = ("right", "left")


def accepts_position_ids(model) -> bool:
    return "position_ids" in inspect.signature(model.forward).parameters


def check_padding_side(model, padding_side: str, model_name: str = "model") -> None:
    """Left padding shifts the real tokens of the shorter inputs: it is exact only where the model takes position
    ids (forward_batch passes each token's position in its input alone) or has no absolute positions."""
    if padding_side not in PADDING_SIDES:
        raise WorkflowInputError(f"padding_side {padding_side!r} is not one of {list(PADDING_SIDES)}.")
    model_type = model.config.model_type
    if padding_side == "left" and not accepts_position_ids(model) and model_type not in RELATIVE_POSITION_TYPES:
        raise WorkflowInputError(
            f"model {model_name!r} ({type(model).__name__}, model_type {model_type!r}) takes no position ids, so "
            f"left padding would shift the positions of its shorter inputs; pad on the right (padding_side: right).")


def forward_batch(model, input_ids, pad_id, device, padding_side: str = "right"):
    """Padded forward pass; returns the tuple of hidden states (n_layers, each (B, T, d)) and the mask (B, T).

    Right padding (the default) puts each input at positions 0..n-1 of its row; left padding puts it at the end of
    its row and passes position ids that give every real token the position it has in its input alone
    (extraction/pooling.position_ids), so that both give the vectors of an unpadded forward pass."""
    import torch

    longest = max(len(ids) for ids in input_ids)
    ids = torch.full((len(input_ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(input_ids), longest), dtype=torch.long)
    for row, seq in enumerate(input_ids):
        start = longest - len(seq) if padding_side == "left" else 0
        ids[row, start: start + len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, start: start + len(seq)] = 1
    extra = {}
    if padding_side == "left":
        check_padding_side(model, padding_side)
        positions = position_ids(model.config.model_type, mask, getattr(model.config, "pad_token_id", None))
        if positions is not None:
            extra["position_ids"] = positions.to(device)
    outputs = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True, **extra)
    hidden = outputs.hidden_states if getattr(outputs, "hidden_states", None) is not None else outputs[-1]
    return hidden, mask


def mean_pool(states, content):
    """Mean of the rows of `states` (B, T, d) where `content` (B, T) is 1, in float32 whatever the dtype of the
    states (bf16/fp16 on a GPU). The count of content tokens is taken in int64 and divided in float32: bf16 holds
    integers exactly only up to 256, so a count in the hidden-state dtype mis-scales longer inputs."""
    import torch

    n_content = content.to(dtype=torch.int64).sum(dim=1, keepdim=True).clamp(min=1).to(torch.float32)
    # a select, not a product with the mask: a pad row's state may be non-finite (a left-padded decoder's pad
    # queries see no key) and 0 x nan is nan
    kept = torch.where(content.bool().unsqueeze(-1), states.to(torch.float32), 0.0)
    return kept.sum(dim=1) / n_content


def encoder_of(model):
    """Encoder-decoder models are read through their encoder."""
    if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        return model.get_encoder()
    return model



# --------------------------------------------------------------------------------------- extraction
def extract(model_dir, dataset_path, pooled_out, tokens_out, settings: ExtractionSettings, *,
            model_name: str, dataset_name: str, progress: bool = True) -> ExtractionCounts:

    started = time.perf_counter()
    try:
        dataset_file = pq.ParquetFile(dataset_path)
    except (OSError, pa.ArrowInvalid) as err:
        raise WorkflowInputError(f"{dataset_path} is not a readable dataset ({err}); rerun prepare_dataset.") from err
    n = dataset_file.metadata.num_rows
    if n == 0:
        raise WorkflowInputError(f"dataset {dataset_name!r} ({dataset_path}) holds no examples; nothing to extract.")
    device = pick_device(settings.device)
    dtype = pick_dtype(settings.compute_dtype, device)
    tokenizer = load_tokenizer(model_dir)
    if not tokenizer.is_fast:
        raise WorkflowInputError(
            f"model {model_name!r}: tokenizer {type(tokenizer).__name__} in {model_dir} gives no character offsets "
            f"(not a fast tokenizer); word alignment needs them. Add a tokenizer.json to the model folder."
        )
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.unk_token_id
    if pad_id is None:
        raise WorkflowInputError(f"model {model_name!r}: its tokenizer has no pad, eos or unk token to pad with.")
    try:
        provenance = read_provenance(model_dir)
    except WorkflowInputError:
        provenance = {}
    # the model's own code runs only where its config switched trust_remote_code on (recorded in its provenance)
    model = encoder_of(load_model(model_dir, device=device, dtype=dtype,
                                  trust_remote_code=bool(provenance.get("trust_remote_code", False))))
    n_layers = model.config.num_hidden_layers + 1
    width = model.config.hidden_size
    summary = choose_summary_token(model.config.model_type, tokenizer, settings.summary_token, model_name=model_name,
                                   setting=f"summary_token of model {model_name!r} (its models[] entry)")
    check_padding_side(model, settings.padding_side, model_name)
    token_layers = sorted({hidden_states.resolve_layer(layer, n_layers, "extraction.token_layers entry")
                           for layer in settings.token_layers})
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is None or max_positions <= 0:  # XLNet: -1, no limit (relative positions)
        max_positions = settings.max_length
    max_length = min(settings.max_length, max_positions - (2 if model.config.model_type in ("roberta", "xlm-roberta",
                                                                                               "longformer", "mpnet")
                                                           else 0))
    if max_length < settings.max_length and settings.truncation_note:
        raise WorkflowInputError(
            f"model {model_name!r} reads at most {max_length} tokens (its position embeddings), fewer than the "
            f"{settings.max_length} tokens of each input of dataset {dataset_name!r} ({settings.truncation_note}); "
            f"use a chunks dataset with chunk_tokens <= {max_length} or leave this model out of it.")
    if max_length < settings.max_length:
        LOG.info("max_length capped at %d by the model's position embeddings", max_length)
    store_type = pa.float16() if settings.store_dtype == "float16" else pa.float32()
    store_np = np.float16 if settings.store_dtype == "float16" else np.float32
    metadata = {
        "model": model_name, "dataset": dataset_name, "n_layers": n_layers, "hidden_size": width,
        "store_dtype": settings.store_dtype, "compute_dtype": dtype_label(dtype, device),
        "max_length": max_length, "token_layers": token_layers, "code_version": lmcompare.__version__,
        "weights_sha256": provenance.get("weights_sha256"), "architecture": type(model).__name__,
        "attn_implementation": getattr(model.config, "_attn_implementation", None), "device": str(device),
        "model_type": model.config.model_type, "summary_token": summary.metadata(),
        "padding_side": settings.padding_side,
    }
    LOG.info("model %s (%s, %d layers incl. embeddings, hidden %d, %s on %s, attention %s); dataset %s: %d examples",
             model_name, metadata["architecture"], n_layers, width, metadata["compute_dtype"], device,
             metadata["attn_implementation"], dataset_name, n)
    LOG.info("pooled `first` vectors: %s", summary.describe())
    LOG.info("environment: %s", environment_summary())

    counts = ExtractionCounts()
    n_windows = math.ceil(n / settings.sort_window)
    pooled_schema = hidden_states.pooled_schema(n_layers, width, store_type, metadata)
    tokens_schema = hidden_states.tokens_schema(token_layers, width, store_type, metadata)
    # Finished windows go to part files in a hidden folder next to the outputs; a rerun after a kill starts at the
    # first unfinished window (extraction/partial.py). Every run assembles the final files from the parts.
    partial = PartialWindows(partial_dir(pooled_out), resume_description(
        settings, metadata, model_dir=model_dir, dataset_path=dataset_path, device=device))
    resumed = partial.open()
    for record in partial.records:
        counts.add(record)
    resumed_tokens = counts.tokens
    if resumed:
        LOG.info("resuming at window %d/%d: windows 1-%d (%d examples, %d tokens) were finished by an earlier run "
                 "of this job (%s) and are not recomputed", resumed + 1, n_windows, resumed, counts.examples,
                 counts.tokens, partial.folder)
    else:
        LOG.info("finished windows are kept in %s until both outputs are written (a rerun after a kill resumes "
                 "there)", partial.folder)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"extract {dataset_name}/{model_name}", unit="ex", file=sys.stderr,
                   mininterval=10, disable=None)
    try:
        # the dataset is streamed too: one window of texts in memory at a time
        windows = dataset_file.iter_batches(batch_size=settings.sort_window, columns=DATASET_COLUMNS)
        for window_index, record_batch in enumerate(windows):
            if window_index < resumed:
                continue
            window, window_counts = record_batch.to_pandas(), ExtractionCounts()
            pooled_batch, tokens_batch = extract_window(
                model, tokenizer, window, settings, window_counts, pad_id=pad_id, device=device, n_layers=n_layers,
                width=width, token_layers=token_layers, max_length=max_length, store_np=store_np,
                store_type=store_type, model_name=model_name, summary=summary)
            partial.write_part("pooled", window_index, pa.Table.from_pydict(pooled_batch, schema=pooled_schema),
                               pooled_schema)
            partial.write_part("tokens", window_index, pa.Table.from_pydict(tokens_batch, schema=tokens_schema),
                               tokens_schema, row_group_size=TOKEN_ROW_GROUP_ROWS)
            partial.commit(window_index, window_counts.record())
            counts.add(dataclasses.asdict(window_counts))
            if bar is not None:
                bar.update(len(window))
            elapsed = time.perf_counter() - started
            LOG.info("window %d/%d: %d examples done, %d tokens, %.0f tokens/s", window_index + 1, n_windows,
                     counts.examples, counts.tokens, (counts.tokens - resumed_tokens) / max(elapsed, 1e-9))
        if counts.examples == 0:
            raise WorkflowInputError(
                f"every example of {dataset_name!r} had non-finite hidden states in {model_name!r}; nothing was kept.")
        # the final files whole from the parts (row counts are in the footers), renamed into place: both or neither
        with files.atomic_path(pooled_out, durable=True) as pooled_tmp, \
                files.atomic_path(tokens_out, durable=True) as tokens_tmp:
            partial.assemble("pooled", pooled_tmp, pooled_schema)
            partial.assemble("tokens", tokens_tmp, tokens_schema)
    except WorkflowInputError:
        partial.remove()  # bad input: a rerun with the same inputs would stop at the same place
        raise
    partial.remove()
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - started
    LOG.info("extracted %d of %d examples (%d tokens, %d truncated at %d tokens, %d dropped as non-finite), "
             "%d batches, padding overhead %.1f%%, forward %.1f s of %.1f s, %.0f tokens/s%s",
             counts.examples, n, counts.tokens, counts.truncated, max_length, counts.nonfinite_dropped,
             counts.batches, 100 * (counts.padded_tokens / max(counts.tokens, 1) - 1), counts.forward_seconds,
             elapsed, (counts.tokens - resumed_tokens) / max(elapsed, 1e-9),
             f" (this job; {resumed} window(s) resumed from an earlier run)" if resumed else "")
    if counts.truncated and settings.truncation_note:
        LOG.info("%d example(s) were truncated at %d tokens: %s", counts.truncated, max_length, settings.truncation_note)
    elif counts.truncated:
        LOG.warning("%d example(s) were longer than %d tokens and were truncated (raise extraction.max_length "
                    "to keep them whole)", counts.truncated, max_length)
    return counts


def extract_window(model, tokenizer, window, settings, counts, *, pad_id, device, n_layers, width, token_layers,
                   max_length, store_np, store_type, model_name, summary):
    """Run one window of examples; returns column dicts for pooled and tokens, in example order."""
    import torch

    texts = window["text"].tolist()
    input_ids, special, offsets, truncated = tokenize_window(tokenizer, texts, max_length)
    m = len(texts)
    first = np.zeros((n_layers, m, width), dtype=store_np)
    mean = np.zeros((n_layers, m, width), dtype=store_np)
    token_vectors = {}
    finite = np.ones(m, dtype=bool)
    lengths = [len(ids) for ids in input_ids]
    example_ids = window["example_id"].to_numpy()
    # the summary token's position in each unpadded input (the numbering of tokens.parquet's `position`)
    positions = np.array([summary_position(summary, input_ids[i], special[i], model_name=model_name,
                                           example_id=int(example_ids[i])) for i in range(m)], dtype=np.int32)
    for batch in plan_batches(lengths, settings.batch_tokens):
        batch_ids = [input_ids[i] for i in batch]
        longest = max(lengths[i] for i in batch)
        # where each input starts in its padded row
        starts = [longest - lengths[i] if settings.padding_side == "left" else 0 for i in batch]
        tic = time.perf_counter()
        # float16 storage: an overflow in the cast is checked after it (check_float16_range), not warned about
        with torch.inference_mode(), np.errstate(over="ignore"):
            hidden, mask = forward_batch(model, batch_ids, pad_id, device, padding_side=settings.padding_side)
            content = mask.clone()
            for row, i in enumerate(batch):
                content[row, starts[row]: starts[row] + lengths[i]] &= \
                    ~torch.tensor(special[i], dtype=torch.bool).to(torch.long)
            content = content.to(device=device)
            rows = torch.arange(len(batch), device=device)
            summary_at = torch.tensor([starts[row] + positions[i] for row, i in enumerate(batch)], device=device)
            valid = mask.to(device=device, dtype=torch.bool)
            for layer, states in enumerate(hidden):
                states = states.float()
                # a non-finite value makes its row's sum non-finite (inf + -inf is nan): one reduction screens every
                # token, 6x cheaper than isfinite().all() (benchmarks/extraction_overhead.py); the exact test runs
                # only where the screen fires, so a finite row whose sum overflows float32 is not flagged
                bad = ~torch.isfinite(states.sum(dim=2)) & valid
                if bad.any():
                    bad &= ~torch.isfinite(states).all(dim=2)
                if bad.any():
                    for row in torch.nonzero(bad.any(dim=1)).flatten().tolist():
                        finite[batch[row]] = False
                first[layer, batch] = states[rows, summary_at, :].cpu().numpy()
                mean[layer, batch] = mean_pool(states, content).cpu().numpy()
                if layer in token_layers:
                    cpu_states = states.cpu().numpy()
                    for row, i in enumerate(batch):
                        token_vectors[(layer, i)] = cpu_states[row, starts[row]: starts[row] + lengths[i]].astype(
                            store_np, copy=False)
        counts.forward_seconds += time.perf_counter() - tic
        counts.batches += 1
        counts.padded_tokens += len(batch) * longest

    if not finite.all():
        bad_ids = window["example_id"].to_numpy()[~finite]
        counts.nonfinite_ids.extend(bad_ids.tolist())
        if settings.nonfinite == "fail":
            raise WorkflowInputError(
                f"model {model_name!r}: non-finite hidden states for {len(bad_ids)} example(s) in this window, the "
                f"first is example_id {int(bad_ids[0])}. Use float32 (extraction.compute_dtype) or set "
                f"extraction.nonfinite: drop to drop and count them."
            )
        LOG.warning("dropping %d example(s) with non-finite hidden states: example_ids %s", len(bad_ids),
                    bad_ids[:20].tolist())
        counts.nonfinite_dropped += len(bad_ids)

    if store_np is np.float16:
        check_float16_range(first, mean, token_vectors, finite, window, settings, counts, model_name)

    keep = np.flatnonzero(finite)
    splits = window["split"].tolist()
    labels = [value if isinstance(value, str) else None for value in window["label"].tolist()]  # null, not NaN
    pooled = {
        "example_id": example_ids[keep], "split": [splits[i] for i in keep], "label": [labels[i] for i in keep],
        "n_tokens": np.array([lengths[i] for i in keep], dtype=np.int32),
        "n_content_tokens": np.array([lengths[i] - sum(special[i]) for i in keep], dtype=np.int32),
        "truncated": np.array([truncated[i] for i in keep], dtype=bool),
        "summary_position": positions[keep],
    }
    for layer in range(n_layers):
        pooled[hidden_states.pooled_column(layer, "first")] = hidden_states.fixed_size_list(first[layer, keep], store_type)
        pooled[hidden_states.pooled_column(layer, "mean")] = hidden_states.fixed_size_list(mean[layer, keep], store_type)

    word_starts, word_ends = window["word_starts"].tolist(), window["word_ends"].tolist()
    rows = {name: [] for name in ("example_id", "split", "position", "token_id", "word_id", "is_special",
                                  "char_start", "char_end")}
    for i in keep:
        length = lengths[i]
        rows["example_id"].append(np.full(length, example_ids[i], dtype=np.int64))
        rows["split"].extend([splits[i]] * length)
        rows["position"].append(np.arange(length, dtype=np.int32))
        rows["token_id"].append(np.asarray(input_ids[i], dtype=np.int32))
        rows["word_id"].append(word_ids_for_tokens(offsets[i], special[i], texts[i], word_starts[i], word_ends[i]))
        rows["is_special"].append(np.asarray(special[i], dtype=bool))
        rows["char_start"].append(np.array([s for s, _ in offsets[i]], dtype=np.int32))
        rows["char_end"].append(np.array([e for _, e in offsets[i]], dtype=np.int32))
    tokens = {name: (values if name == "split" else np.concatenate(values) if values else np.array([]))
              for name, values in rows.items()}
    for layer in token_layers:
        stacked = np.concatenate([token_vectors[(layer, i)] for i in keep]) if len(keep) else \
            np.zeros((0, width), dtype=store_np)
        tokens[hidden_states.token_column(layer)] = hidden_states.fixed_size_list(stacked, store_type)
    counts.examples += len(keep)
    counts.tokens += int(sum(lengths[i] for i in keep))
    counts.truncated += int(sum(truncated[i] for i in keep))
    return pooled, tokens
