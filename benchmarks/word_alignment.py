"""Does the word alignment across tokenizers have work to do? Counts on a run's tokens.parquet files.

    .venv/bin/python benchmarks/word_alignment.py [--results results] [--dataset reviews] MODEL_A MODEL_B

Per model: tokens (special ones included), words covered; per pair: words covered by both, words split into a
different number of tokens, words whose tokens cover different characters (first character of the first
token to the end of the last), and words only one model covers (lost to truncation in the other: they drop out of
that pair's decomposition).
"""
import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq


def word_table(path: Path) -> pd.DataFrame:
    tokens = pq.read_table(path, columns=["example_id", "word_id", "char_start", "char_end"]).to_pandas()
    words = tokens[tokens["word_id"] >= 0]
    return words.groupby(["example_id", "word_id"]).agg(n=("word_id", "size"), start=("char_start", "min"),
                                                        end=("char_end", "max")), len(tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs=2)
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--dataset", default="reviews")
    args = parser.parse_args()
    tables = {}
    for model in args.models:
        table, n_tokens = word_table(args.results / "hidden" / args.dataset / model / "tokens.parquet")
        tables[model] = table
        print(f"{model}: {n_tokens} tokens, {len(table)} words covered, {table['n'].mean():.3f} tokens per word")
    a, b = (tables[m] for m in args.models)
    both = a.merge(b, left_index=True, right_index=True, suffixes=("_a", "_b"))
    data = pd.read_parquet(args.results / "data" / f"{args.dataset}.parquet", columns=["example_id", "word_starts",
                                                                                       "word_ends"])
    starts = dict(zip(data["example_id"], data["word_starts"]))
    ends = dict(zip(data["example_id"], data["word_ends"]))
    ids = both.index.to_frame(index=False)
    word_start = np.array([starts[e][w] for e, w in zip(ids["example_id"], ids["word_id"])])
    word_end = np.array([ends[e][w] for e, w in zip(ids["example_id"], ids["word_id"])])
    same_chars = (both["start_a"].to_numpy() == both["start_b"].to_numpy()) & (
        both["end_a"].to_numpy() == both["end_b"].to_numpy())
    on_word = (both["start_a"].to_numpy() >= word_start) & (both["end_a"].to_numpy() <= word_end)
    print(f"words covered by both: {len(both)}; split into a different number of tokens: "
          f"{int((both['n_a'] != both['n_b']).sum())}; covering different characters: {int((~same_chars).sum())} "
          f"(outside their dataset word: {int((~on_word).sum())}); covered by one model only: "
          f"{len(a) - len(both)} ({args.models[0]}), {len(b) - len(both)} ({args.models[1]})")


if __name__ == "__main__":
    main()
