"""Tiny tokenizers of each family the papers' models use, built offline with the transformers 5 tokenizer classes
themselves (so that each brings its own special tokens, post-processor template, offsets and padding side), on
vocabularies trained on the spot with the `tokenizers` library, and tiny random models of each architecture.

Families: WordPiece uncased (BERT, DistilBERT, ELECTRA) and cased; byte-level BPE with `Ġ` (GPT-2, RoBERTa,
Longformer, DeBERTa v1); sentencepiece-style Unigram with Metaspace `▁` (XLNet, ALBERT, XLM-R, DeBERTa v2).

    >>> tokenizer = TOKENIZERS["xlnet"]()        # XLNetTokenizer: ... <sep> <cls>, padding_side left
    >>> model = build_model("xlnet", tokenizer)  # XLNetModel, hidden 32, 2 layers, random weights (seeded)
"""
import functools
import json

# Texts with punctuation, accents and other non-ASCII letters, runs of spaces, contractions, digits.
TEXTS = [
    "The coffee was great, but the box arrived broken!",
    "Café naïve résumé: über straße, déjà vu.",
    "Hi,  it's   fine... isn't it?",
    "i bought 3 boxes (12 oz each) for $9.99 - not bad",
    "Ünïcödé words: señor, garçon, smörgåsbord & naïveté",
    "tea",
    "A much longer review of a product that tastes stale and bland, with soggy biscuits and a sad price tag.",
    "well -- honestly?! it was \"okay\", I guess",
    "Tokyo 東京 and Zürich are cities",
    "x",
    "shipping took a week;   the package was   torn",
    "great wonderful excellent delicious lovely fresh tasty perfect happy superb",
]
CORPUS = TEXTS * 3 + [
    "great wonderful excellent delicious lovely fresh tasty perfect happy superb the a this product coffee tea",
    "awful terrible stale bland broken sad horrible rotten poor soggy box price it was and but i my we",
]


@functools.lru_cache(maxsize=None)
def _wordpiece_vocab(lowercase: bool) -> dict:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    return tok.get_vocab()


@functools.lru_cache(maxsize=None)
def _byte_bpe(special: tuple) -> tuple:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=list(special),
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(merge) for merge in model["merges"]]


@functools.lru_cache(maxsize=None)
def _unigram(special: tuple, unk: str) -> list:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=300, special_tokens=list(special),
                                                            unk_token=unk))
    return [tuple(piece) for piece in json.loads(tok.to_str())["model"]["vocab"]]


def _wordpiece(cls, lowercase=True):
    return cls(vocab=_wordpiece_vocab(lowercase), do_lower_case=lowercase)


def bert():
    from transformers import BertTokenizer
    return _wordpiece(BertTokenizer)


def bert_cased():
    from transformers import BertTokenizer
    return _wordpiece(BertTokenizer, lowercase=False)


def distilbert():
    from transformers import DistilBertTokenizer
    return _wordpiece(DistilBertTokenizer)


def distilbert_cased():
    from transformers import DistilBertTokenizer
    return _wordpiece(DistilBertTokenizer, lowercase=False)


def electra():
    from transformers import ElectraTokenizer
    return _wordpiece(ElectraTokenizer)


def roberta():
    from transformers import RobertaTokenizer
    return RobertaTokenizer(*_byte_bpe(("<s>", "<pad>", "</s>", "<unk>", "<mask>")))


def longformer():
    from transformers import LongformerTokenizer
    return LongformerTokenizer(*_byte_bpe(("<s>", "<pad>", "</s>", "<unk>", "<mask>")))


def gpt2():
    from transformers import GPT2Tokenizer
    return GPT2Tokenizer(*_byte_bpe(("<|endoftext|>",)))


def deberta():
    from transformers import DebertaTokenizer
    return DebertaTokenizer(*_byte_bpe(("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")))


def xlnet():
    from transformers import XLNetTokenizer
    return XLNetTokenizer(vocab=_unigram(("<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>"), "<unk>"))


def albert():
    from transformers import AlbertTokenizer
    return AlbertTokenizer(vocab=_unigram(("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"), "<unk>"))


def xlm_roberta():
    from transformers import XLMRobertaTokenizer
    return XLMRobertaTokenizer(vocab=_unigram(("<s>", "<pad>", "</s>", "<unk>", "<mask>"), "<unk>"))


def deberta_v2():
    from transformers import DebertaV2Tokenizer
    return DebertaV2Tokenizer(vocab=_unigram(("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), "[UNK]"))


TOKENIZERS = {
    "bert": bert, "bert-cased": bert_cased, "distilbert": distilbert, "distilbert-cased": distilbert_cased, "electra": electra, "roberta": roberta,
    "longformer": longformer, "gpt2": gpt2, "deberta": deberta, "xlnet": xlnet, "albert": albert,
    "xlm-roberta": xlm_roberta, "deberta-v2": deberta_v2,
}
FAMILIES = {"wordpiece uncased": "bert", "wordpiece cased": "bert-cased", "byte-level BPE (GPT-2)": "gpt2",
            "byte-level BPE (RoBERTa)": "roberta", "unigram/metaspace (XLNet)": "xlnet",
            "unigram/metaspace (ALBERT)": "albert", "unigram/metaspace (XLM-R)": "xlm-roberta"}

# hidden 32, 2 layers, 2 heads: every architecture's tiny configuration
_COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
               max_position_embeddings=64)
ARCHITECTURES = {
    "bert": dict(_COMMON),
    "roberta": dict(_COMMON, max_position_embeddings=66, type_vocab_size=1),
    "xlm-roberta": dict(_COMMON, max_position_embeddings=66, type_vocab_size=1),
    "longformer": dict(_COMMON, max_position_embeddings=66, type_vocab_size=1, attention_window=[4, 4]),
    "distilbert": dict(dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=64),
    "electra": dict(_COMMON, embedding_size=16),
    "albert": dict(_COMMON, embedding_size=16),
    "deberta": dict(_COMMON),  # v1 defaults: absolute positions, no relative attention
    "deberta-v2": dict(_COMMON, relative_attention=True, position_biased_input=False, max_relative_positions=16,
                       pos_att_type=["p2c", "c2p"], position_buckets=8),
    "xlnet": dict(d_model=32, n_layer=2, n_head=2, d_inner=37),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=2, n_positions=64),
}


def build_model(name: str, tokenizer, seed: int = 0, **changes):
    """A tiny random model of architecture `name` (ARCHITECTURES, updated with `changes`) for `tokenizer`, in eval
    mode."""
    import torch
    from transformers import AutoConfig, AutoModel

    ids = {key: getattr(tokenizer, f"{key}_id") for key in ("pad_token", "bos_token", "eos_token")}
    special = {f"{key}_id": value for key, value in ids.items() if value is not None}
    config = AutoConfig.for_model(name, vocab_size=len(tokenizer), **special, **{**ARCHITECTURES[name], **changes})
    torch.manual_seed(seed)
    return AutoModel.from_config(config).eval()
