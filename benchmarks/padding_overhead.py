"""Padding overhead of extraction's batching (workflow_scripts/extract_hidden_states.plan_batches) on synthetic
length mixes of one 512-example window, with and without the length-ratio bound: padded tokens (batch size x
longest, summed over batches) / real tokens - 1, as the extraction log reports it. Pure arithmetic, no model.

    .venv/bin/python -m benchmarks.padding_overhead
"""
import numpy as np

from lmcompare.extraction.extract import MIN_LENGTH_RATIO, plan_batches


def overhead(lengths, batch_tokens=8192, ratio=MIN_LENGTH_RATIO):
    batches = plan_batches(lengths, batch_tokens, ratio)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return len(batches), padded / sum(lengths) - 1


def main():
    rng = np.random.default_rng(0)
    mixes = {
        "uniform 8-40 tokens": rng.integers(8, 41, 512),
        "short, log-normal (median ~17)": np.clip(rng.lognormal(2.7, 0.5, 512).astype(int) + 2, 3, 128),
        "review-like, log-normal (median ~55)": np.clip(rng.lognormal(4.0, 0.6, 512).astype(int), 5, 128),
    }
    print("| length mix | token budget only: batches, overhead | with ratio bound "
          f"{MIN_LENGTH_RATIO}: batches, overhead |\n| --- | --- | --- |")
    for name, lengths in mixes.items():
        lengths = [int(x) for x in lengths]
        (b0, o0), (b1, o1) = overhead(lengths, ratio=0.0), overhead(lengths)
        print(f"| {name} | {b0}, {100 * o0:.1f} % | {b1}, {100 * o1:.1f} % |")


if __name__ == "__main__":
    main()
