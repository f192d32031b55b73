"""Which token's vector the pooled file's `layer_LL_first` columns hold: the model's summary token.

The column kind keeps its historical name `first`, but what it holds depends on the architecture:

| summary token | what `layer_LL_first` holds | default for |
| --- | --- | --- |
| `cls` | the tokenizer's classification token (`cls_token_id`), wherever the tokenizer puts it: position 0 for BERT, RoBERTa, ALBERT, DistilBERT, ELECTRA, DeBERTa, Longformer, XLM-R; the last position for XLNet (`... <sep> <cls>`) | every model type not listed as a decoder |
| `last` | the last token of the input (the last non-pad token: decoders see the whole text only there) | decoders (`DECODER_MODEL_TYPES`: gpt2, gpt_neox, llama, opt, ...) |
| `first` | position 0, whatever token stands there (the behaviour before the summary token was chosen per model) | never; a per-model choice |

`models[].summary_token` (auto | cls | last | first) overrides the default per model. The choice is recorded in the
pooled file's metadata (`summary_token`: rule, token, token id, where it stands, why it was chosen), and per example
the position of the token (in the numbering of tokens.parquet's `position`) in the column `summary_position`.
A model without a classification token (or whose tokenizer does not add it) under `cls` is an error naming the fix.
"""

from dataclasses import asdict, dataclass

from lmcompare.errors import WorkflowInputError

SUMMARY_TOKENS = ("auto", "cls", "last", "first")

# Decoder-only (causal) model types: their first token attends to itself only, the last to the whole input.
DECODER_MODEL_TYPES = frozenset({
    "gpt2", "gpt_neo", "gpt_neox", "gpt_neox_japanese", "gptj", "gpt_bigcode", "openai-gpt", "ctrl", "codegen",
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi", "phi3", "gemma", "gemma2",
    "gemma3_text", "opt", "bloom", "falcon", "mpt", "olmo", "olmo2", "stablelm", "starcoder2", "persimmon",
    "cohere", "xglm", "biogpt", "rwkv", "mamba", "mamba2", "jamba", "granite", "smollm3",
})

# Model types whose absolute positions count from the pad index (create_position_ids_from_input_ids):
# position of the k-th real token (k = 1, 2, ...) = pad_token_id + k, of a pad token = pad_token_id.
PADDING_INDEX_POSITION_TYPES = frozenset({
    "roberta", "xlm-roberta", "xlm-roberta-xl", "longformer", "camembert", "mpnet", "data2vec-text",
    "roberta-prelayernorm", "xmod", "ibert",
})
# Model types without absolute position ids (relative attention only): padding on either side leaves them unchanged.
RELATIVE_POSITION_TYPES = frozenset({"xlnet", "t5", "mt5", "umt5", "longt5", "transfo-xl"})


@dataclass(frozen=True)
class SummaryToken:
    rule: str  # cls | last | first
    token: str | None  # the classification token's text (cls), else None
    token_id: int | None
    where: str  # cls: 'start' / 'end' / 'position k' in the tokenizer's template; last: 'last'; first: 'position 0'
    source: str  # why this rule: the default for the model type, or the model's summary_token setting

    def metadata(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        what = {"cls": f"the classification token {self.token!r} (id {self.token_id}, at the {self.where} of "
                       f"each input)" if self.where in ("start", "end") else
                f"the classification token {self.token!r} (id {self.token_id}, {self.where})",
                "last": "the last token of each input", "first": "the token at position 0"}[self.rule]
        return f"{what}; {self.source}"


def default_rule(model_type: str) -> str:
    """The summary token a model type gets under summary_token: auto."""
    return "last" if model_type in DECODER_MODEL_TYPES else "cls"


def choose_summary_token(model_type: str, tokenizer, requested: str = "auto", *, model_name: str = "model",
                         setting: str = "models[].summary_token") -> SummaryToken:
    """The summary-token rule of a model: `requested` (auto | cls | last | first), auto resolved by model type.
    Under cls, the tokenizer must have a cls_token that it adds to an input (checked on a probe text)."""
    if requested not in SUMMARY_TOKENS:
        raise WorkflowInputError(f"model {model_name!r}: summary_token {requested!r} is not one of "
                                 f"{list(SUMMARY_TOKENS)}; fix {setting}.")
    if requested == "auto":
        rule = default_rule(model_type)
        source = (f"the default for model_type {model_type!r} (" +
                  ("a decoder: its last token has seen the whole input" if rule == "last" else
                   "not a decoder: its classification token") + f"; {setting} overrides it)")
    else:
        rule, source = requested, f"set by {setting}: {requested}"
    if rule == "last":
        return SummaryToken("last", None, None, "last", source)
    if rule == "first":
        return SummaryToken("first", None, None, "position 0", source)
    fix = (f"set {setting} to last (the last token, as for decoders) or first (position 0) for model "
           f"{model_name!r}")
    cls_id = getattr(tokenizer, "cls_token_id", None)
    if cls_id is None:
        raise WorkflowInputError(
            f"model {model_name!r} (model_type {model_type!r}): its tokenizer has no classification token "
            f"(cls_token), so the pooled `first` vectors (summary_token cls, {source}) have no token to take; "
            f"{fix}.")
    probe = tokenizer("a b c", return_special_tokens_mask=True)
    ids = probe["input_ids"]
    found = _cls_positions(ids, probe["special_tokens_mask"], cls_id)
    if not found:
        raise WorkflowInputError(
            f"model {model_name!r} (model_type {model_type!r}): its tokenizer has the classification token "
            f"{tokenizer.cls_token!r} but does not add it to an input (its tokenizer.json has no post-processor "
            f"template, e.g. a tokenizer built or saved bare), so the pooled `first` vectors (summary_token cls, "
            f"{source}) have no token to take; add the template to the tokenizer, or {fix}.")
    position = found[-1] if found[-1] == len(ids) - 1 and found[0] != 0 else found[0]
    where = "start" if position == 0 else "end" if position == len(ids) - 1 else f"position {position}"
    return SummaryToken("cls", tokenizer.cls_token, int(cls_id), where, source)


def _cls_positions(input_ids, special, cls_id) -> list[int]:
    """The positions of an input's special tokens that are the classification token."""
    return [position for position, (token, sp) in enumerate(zip(input_ids, special)) if sp and token == cls_id]


def summary_position(summary: SummaryToken, input_ids, special, *, model_name: str = "model",
                     example_id=None) -> int:
    """The position (0-based, in the unpadded input) of an example's summary token."""
    if summary.rule == "last":
        return len(input_ids) - 1
    if summary.rule == "first":
        return 0
    found = _cls_positions(input_ids, special, summary.token_id)
    if not found:
        raise WorkflowInputError(
            f"model {model_name!r}: example_id {example_id} has no classification token {summary.token!r} in its "
            f"input (summary_token cls); set models[].summary_token to last or first for this model.")
    return found[-1] if summary.where == "end" else found[0]


def position_ids(model_type: str, mask, pad_token_id):
    """Position ids (B, T) that give each real token of a padded batch the position it has in its input alone,
    for a model of `model_type` (left padding shifts the real tokens; right padding leaves them where they are).
    None for models without absolute position ids (RELATIVE_POSITION_TYPES)."""
    import torch

    if model_type in RELATIVE_POSITION_TYPES:
        return None
    count = torch.cumsum(mask, dim=1) * mask  # 1, 2, ... on real tokens, 0 on pads
    if model_type in PADDING_INDEX_POSITION_TYPES:
        padding_idx = 1 if pad_token_id is None else int(pad_token_id)
        return count + padding_idx
    return (count - 1).clamp(min=0)


def configured_summary_token(models: list[dict], name: str) -> str:
    """A configured model's summary_token: its own, else (a perturb or finetune model) its base's, else auto."""
    by_name = {entry["name"]: entry for entry in models}
    seen = set()
    while name in by_name and name not in seen:
        seen.add(name)
        entry = by_name[name]
        if entry.get("summary_token") not in (None, "auto"):
            return entry["summary_token"]
        name = entry.get("base") if entry.get("source") in ("perturb", "finetune") else None
    return "auto"
