"""Which rows each ν and probe uses: a file's labels as class codes of one split, the robustness subsets
(imbalanced, subsampled) and the probe's stratified subsample."""

import numpy as np

from lmcompare import hidden_states
from lmcompare.errors import WorkflowInputError
from lmcompare.hidden_states import HiddenStates

SPLITS = ("train", "test", "all")
SUBSETS = ("full", "imbalanced", "subsample")


def read_labels(pooled_path, pooling: str = "mean") -> "pandas.DataFrame":  # noqa: F821
    """The labels of every row of a pooled file, in file order: `HiddenStates(pooled_path).labels(pooling)`."""
    return HiddenStates(pooled_path).labels(pooling)


def class_codes(frame, *, dataset: str, split: str, small_classes: str = "fail", min_class_examples: int = 2):
    """Integer class codes per row (-1 = not used) for the rows of `split` that carry a label.

    Returns (codes (n_rows,), class_names (C,), dropped {name: count}). Raises WorkflowInputError on an
    unlabelled dataset, a split without labelled rows, a single class, or a class below `min_class_examples`
    (unless small_classes == 'drop', which drops such classes and reports them).
    """
    if split not in SPLITS:
        raise WorkflowInputError(f"variability.split must be one of {SPLITS}, got {split!r}; fix the config file.")
    labelled, names = hidden_states.labelled_examples(frame, dataset)
    if split != "all":
        labelled = labelled[labelled["split"] == split]
    if labelled.empty:
        raise WorkflowInputError(
            f"dataset {dataset!r} has no labelled examples in split {split!r}; set variability.split in "
            f"the config file to a split that has labels (train, test or all)."
        )
    counts = labelled["label_code"].value_counts().sort_index()
    small = {names[code]: int(n) for code, n in counts.items() if n < min_class_examples}
    if small and small_classes != "drop":
        listing = ", ".join(f"{name!r}: {n}" for name, n in sorted(small.items()))
        raise WorkflowInputError(
            f"dataset {dataset!r}, split {split!r}: class(es) with fewer than {min_class_examples} examples "
            f"({listing}); a class covariance needs at least 2. Add examples, or set "
            f"variability.small_classes: drop in the config file to leave such classes out."
        )
    kept_codes = sorted(code for code, n in counts.items() if n >= min_class_examples)
    if len(kept_codes) < 2:
        raise WorkflowInputError(
            f"dataset {dataset!r}, split {split!r} has {len(kept_codes)} usable class(es) "
            f"({[names[c] for c in kept_codes]}); ν needs at least two classes with {min_class_examples}+ examples "
            f"each. Use a dataset with two or more classes, or another variability.split."
        )
    remap = {old: new for new, old in enumerate(kept_codes)}
    codes = np.full(len(frame), -1, dtype=np.int64)
    positions = frame.index.get_indexer(labelled.index)
    mapped = labelled["label_code"].map(remap)
    ok = mapped.notna().to_numpy()
    codes[positions[ok]] = mapped[ok].astype(np.int64).to_numpy()
    return codes, [names[c] for c in kept_codes], small


def take_rows(rng, indices: np.ndarray, k: int) -> np.ndarray:
    """k of `indices` drawn without replacement and sorted; all of them, as given, when k >= len(indices)."""
    return np.sort(rng.choice(indices, size=k, replace=False)) if k < len(indices) else indices


def subset_masks(codes: np.ndarray, *, imbalanced_keep: float, subsample_fraction: float, seed: int,
                 min_examples: int = 2) -> dict[str, np.ndarray]:
    """Boolean row masks of the subsets ν is computed on (rows with code -1 are never used).

    full: every usable row. imbalanced: the largest class (ties: lowest code) keeps all its rows, every other
    class keeps round(imbalanced_keep · n_y) rows. subsample: every class keeps round(subsample_fraction · n_y)
    rows (stratified). Both draw without replacement with `seed` and keep at least `min_examples` per class.
    """
    rng = np.random.default_rng(seed)
    full = codes >= 0
    n_classes = int(codes.max()) + 1 if full.any() else 0
    by_class = [np.flatnonzero(codes == c) for c in range(n_classes)]
    sizes = np.array([len(rows) for rows in by_class])
    largest = int(np.argmax(sizes)) if n_classes else -1
    imbalanced = np.zeros_like(full)
    subsample = np.zeros_like(full)
    for code, rows in enumerate(by_class):
        keep = len(rows) if code == largest else max(min_examples, int(round(imbalanced_keep * len(rows))))
        imbalanced[take_rows(rng, rows, min(keep, len(rows)))] = True
    for code, rows in enumerate(by_class):
        keep = max(min_examples, int(round(subsample_fraction * len(rows))))
        subsample[take_rows(rng, rows, min(keep, len(rows)))] = True
    return {"full": full, "imbalanced": imbalanced, "subsample": subsample}


def stratified_subsample(codes: np.ndarray, max_n: int | None, seed: int) -> np.ndarray:
    """Indices of at most max_n rows, class proportions kept (every class keeps at least one row), sorted."""
    indices = np.arange(len(codes))
    if max_n is None or len(codes) <= max_n:
        return indices
    rng = np.random.default_rng(seed)
    fraction = max_n / len(codes)
    chosen = [take_rows(rng, indices[codes == c], max(1, int(round(fraction * (codes == c).sum()))))
              for c in np.unique(codes)]
    return np.sort(np.concatenate(chosen))
