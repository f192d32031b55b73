"""Print the summary numbers of docs/decomposition.md's "paper's α and validated α" section from a run's tables.

    .venv/bin/python benchmarks/decomposition_default_summary.py [--results results] [--compare OTHER_RESULTS]
    .venv/bin/python benchmarks/decomposition_default_summary.py --results RESULTS --effective-sample [--dataset reviews] [--config config.yaml]

Reads results/analysis/decomposition/{dataset}/{unit}/{layers}/{mode}/alpha-*/{group,pairwise}.csv of every
(dataset, unit, layers, mode) that has both a fixed-α and an `alpha-validation` folder (the default config
writes both) and prints: the group table (fixed-α train/test R², chosen α, validation R², validated train/test R²),
the pairwise test-R² range, mean and negative count at the fixed α, the chosen-α counts, the validated pairwise
range and mean, and the largest |validation R² − test R²| of the group fits. With --compare, also the largest
absolute difference of every numeric column of the fixed-α tables between the two runs.

With --effective-sample (reads the run's word-level hidden states and model weights, not its tables; about
1 GB of memory and a few minutes on 2 cores): per model the train words, the train reviews and the
between-review share of the train variance (streamed, as the tables' `between_example_share`), the old and new
`underdetermined` flag of every group fit, the group test R² at α = 1e-6 (mode paper) for the dataset's split by
review, for a random split of the words, and within reviews (each review's mean removed from its words, split by
review), and the relative Frobenius distance of every derived model's encoder weight matrices from its base.
"""
import argparse
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd


def fmt_alpha(value: float) -> str:
    exponent = math.log10(value) if value > 0 else float("nan")
    return f"1e{int(round(exponent))}" if value > 0 and abs(exponent - round(exponent)) < 1e-9 else repr(value)


def summarise(stem: Path, fixed: Path, validated: Path) -> None:
    group_fixed = pd.read_csv(fixed / "group.csv")
    group_valid = pd.read_csv(validated / "group.csv")
    pair_fixed = pd.read_csv(fixed / "pairwise.csv")
    pair_valid = pd.read_csv(validated / "pairwise.csv")
    print(f"== {stem}  ({fixed.name} vs {validated.name})")
    row = group_valid.iloc[0]
    print(f"units: {int(row.n_train):,} train ({int(row.n_train) - int(row.n_valid):,} fit + {int(row.n_valid):,} "
          f"valid), {int(row.n_test):,} test; {len(group_fixed)} models")
    merged = group_fixed.merge(group_valid, on="model", suffixes=("_fixed", "_valid"))
    print("| target | fixed: R² train / test | validation: chosen α | R² valid | R² train / test |")
    for r in merged.itertuples():
        print(f"| {r.model} | {r.r2_train_fixed:.3f} / {r.r2_test_fixed:.3f} | {fmt_alpha(r.alpha_valid)} | "
              f"{r.r2_valid_valid:.3f} | {r.r2_train_valid:.3f} / {r.r2_test_valid:.3f} |")
    print(f"mean group R² (test): fixed {group_fixed.r2_test.mean():.3f}, validated {group_valid.r2_test.mean():.3f}")
    gap = (group_valid.r2_valid - group_valid.r2_test).abs()
    print(f"group fits, largest |R² valid − R² test|: {gap.max():.3f} ({group_valid.model[gap.idxmax()]})")

    test = pair_fixed.r2_test
    print(f"pairwise ({len(pair_fixed)} ordered pairs), fixed α = {fmt_alpha(pair_fixed.alpha.iloc[0])}: test R² "
          f"{test.min():.2f} .. {test.max():.2f}, mean {test.mean():.2f}, {int((test < 0).sum())} negative; "
          f"train units per fit {int(pair_fixed.n_train.min()):,}..{int(pair_fixed.n_train.max()):,}, "
          f"basis dims {int(pair_fixed.basis_dims.min())}..{int(pair_fixed.basis_dims.max())}")
    counts = Counter(pair_valid.alpha)
    print("pairwise, validated: chosen α " + ", ".join(f"{fmt_alpha(a)} ×{n}" for a, n in sorted(counts.items()))
          + f"; test R² {pair_valid.r2_test.min():.2f} .. {pair_valid.r2_test.max():.2f}, "
          f"mean {pair_valid.r2_test.mean():.2f}, {int((pair_valid.r2_test < 0).sum())} negative")
    both = pair_fixed.merge(pair_valid, on=["model", "basis_model"], suffixes=("_fixed", "_valid"))
    models = list(group_fixed.model)
    if len(models) >= 2:
        a, b = models[0], models[1]
        cells = both[((both.model == a) & (both.basis_model == b)) | ((both.model == b) & (both.basis_model == a))]
        for r in cells.itertuples():
            print(f"  {r.model} from {r.basis_model}: test R² fixed {r.r2_test_fixed:.2f}, validated {r.r2_test_valid:.2f}")
    print()


def compare(results: Path, other: Path) -> None:
    """Largest absolute difference of the numeric columns of every fixed-α table present in both runs."""
    root = results / "analysis/decomposition"
    for table in sorted(root.glob("*/*/*/*/alpha-*/*.csv")):
        if "validation" in table.parent.name:
            continue
        twin = other / table.relative_to(results)
        if not twin.exists():
            print(f"{table.relative_to(root)}: not in {other}")
            continue
        mine, theirs = pd.read_csv(table), pd.read_csv(twin)
        numeric = [c for c in mine.columns if pd.api.types.is_float_dtype(mine[c]) and c in theirs.columns]
        if mine.shape != theirs.shape:
            print(f"{table.relative_to(root)}: shapes differ {mine.shape} vs {theirs.shape}")
            continue
        diff = max(float((mine[c] - theirs[c]).abs().max()) for c in numeric) if numeric else 0.0
        print(f"{table.relative_to(root)}: largest absolute difference {diff:.1e}")


def _word_units(results: Path, dataset: str, models: list, layer: int = -1) -> tuple:
    """Word units of every model (float32), aligned on the words all models hold: (keys, split codes, {model: X})."""
    from lmcompare import decomposition as lmd
    from lmcompare import hidden_states

    units = {}
    for model in models:
        path = results / "hidden" / dataset / model / "tokens.parquet"
        meta = hidden_states.read_hidden_metadata(path)
        view = lmd.ModelLayers(model, str(path), (hidden_states.resolve_layer(layer, int(meta["n_layers"])),),
                            int(meta["hidden_size"]))
        parts = list(lmd.iter_units(view, "word"))
        units[model] = (np.concatenate([k for k, _, _ in parts]), np.concatenate([c for _, c, _ in parts]),
                        np.vstack([v.astype(np.float32) for _, _, v in parts]))
    common = units[models[0]][0]
    for keys, _, _ in units.values():
        common = np.intersect1d(common, keys, assume_unique=True)
    out = {}
    codes = None
    for model, (keys, split, vecs) in units.items():
        index = np.searchsorted(keys, common)
        out[model] = vecs[index]
        codes = split[index] if codes is None else codes
    return common, codes, out


def _joint_moments(blocks: dict, members: np.ndarray, models: list):
    from lmcompare import decomposition as lmd

    dim = sum(blocks[m].shape[1] for m in models)
    moments = lmd.Moments(dim)
    rows = np.flatnonzero(members)
    for start in range(0, rows.size, 4096):
        take = rows[start:start + 4096]
        moments.update(np.hstack([blocks[m][take].astype(np.float64) for m in models]))
    return moments


def _group_r2(blocks: dict, train: np.ndarray, test: np.ndarray, models: list, alpha: float = 1e-6) -> dict:
    """Group test R² of every target at a fixed alpha (mode paper) for one train / test cut of the units."""
    from lmcompare import decomposition as lmd

    joint = {name: _joint_moments(blocks, mask, models) for name, mask in (("train", train), ("test", test))}
    offsets = np.cumsum([0] + [blocks[m].shape[1] for m in models])
    span = {m: np.arange(offsets[i], offsets[i + 1]) for i, m in enumerate(models)}
    result = {}
    for target in models:
        iu = span[target]
        iz = np.concatenate([span[m] for m in models if m != target])
        stats = {}
        for name, mom in joint.items():
            cov = mom.comoment / mom.n
            stats[name] = lmd.SplitStats(mom.n, mom.mean[iu], mom.mean[iz], float(np.trace(cov[np.ix_(iu, iu)])),
                                         cov[np.ix_(iu, iz)], cov[np.ix_(iz, iz)])
        fit = lmd.fit_ridge(stats["train"], alpha, "paper", what=target)
        result[target] = lmd.r_squared(fit, stats["test"])[0]
    return result


def _encoder_distances(results: Path, config_path: Path) -> None:
    """||W_p - W_base|| / ||W_base|| (Frobenius, over the tensors the perturbation replaces, and over the 2-D
    encoder matrices alone) for every perturbed model of the config: from its materialised folder when the run
    has it, else rebuilt in memory from the base with the rule's own function (perturb_model.perturb_)."""
    import copy

    import torch
    import yaml
    from transformers import AutoModel

    from lmcompare.models.perturb import model_seed, perturb_, perturbed_parameter_names

    entries = [e for e in yaml.safe_load(config_path.read_text())["models"] if e.get("source") == "perturb"]
    bases = {}
    for entry in entries:
        base_dir = results / "models" / entry["base"]
        if entry["base"] not in bases:
            bases[entry["base"]] = AutoModel.from_pretrained(base_dir, local_files_only=True).eval()
        base = bases[entry["base"]]
        folder = results / "models" / entry["name"]
        seed, _ = model_seed(entry["name"], entry.get("seed"))  # the perturbation rule's seed for this entry
        if (folder / "config.json").exists():
            derived, how = AutoModel.from_pretrained(folder, local_files_only=True), "materialised"
        else:
            derived = copy.deepcopy(base)
            perturb_(derived, float(entry["alpha"]), seed, entry.get("tensors", "encoder_weights"))
            how = "rebuilt in memory"
        names = set(perturbed_parameter_names(base))
        ours, theirs = dict(derived.named_parameters()), dict(base.named_parameters())
        for label, keep in (("perturbed tensors", lambda n: n in names),
                            ("2-D encoder matrices", lambda n: n in names and theirs[n].ndim == 2)):
            chosen = [n for n in theirs if keep(n)]
            with torch.no_grad():
                diff = sum(float(((ours[n].double() - theirs[n].double()) ** 2).sum()) for n in chosen)
                ref = sum(float((theirs[n].double() ** 2).sum()) for n in chosen)
            print(f"{entry['name']} ({how}, alpha {entry['alpha']}, seed {seed}) vs {entry['base']}: "
                  f"{label} ({len(chosen)}) differ by {100 * (diff / ref) ** 0.5:.0f} % (relative Frobenius norm)")


def effective_sample(results: Path, dataset: str, config_path: Path) -> None:
    from lmcompare import decomposition as lmd

    groups = sorted((results / "analysis/decomposition" / dataset / "word").glob("*/paper/alpha-*/group.csv"))
    if groups:
        models = list(pd.read_csv(groups[0]).model)
    else:  # the tables are not there yet: every model whose word-level hidden states are
        models = sorted(p.parent.name for p in (results / "hidden" / dataset).glob("*/tokens.parquet"))
    if not models:
        raise SystemExit(f"no model with word-level hidden states of {dataset!r} under {results}")
    keys, codes, blocks = _word_units(results, dataset, models)
    examples = keys >> lmd.WORD_BITS
    train, test = codes == 0, codes == 1
    print(f"== {dataset}, word units of {len(models)} models: {keys.size:,} words aligned; train {train.sum():,} words "
          f"of {np.unique(examples[train]).size} reviews, test {test.sum():,} words of {np.unique(examples[test]).size}")
    print("| model | dims | between-review share of the train variance |")
    for model in models:
        acc = lmd.BetweenExamples(blocks[model].shape[1])
        acc.update(examples[train], blocks[model][train])
        acc.finish()
        x = blocks[model][train].astype(np.float64)
        share = acc.between.sum() / ((x - x.mean(0)) ** 2).sum()
        print(f"| {model} | {blocks[model].shape[1]} | {share:.3f} |")
    n_reviews = np.unique(examples[train]).size
    if len(models) < 2:
        print("(one model only: no fits)")
        _encoder_distances(results, config_path)
        return
    print("| target | basis dims | underdetermined (units only) | underdetermined (units and reviews) |")
    for model in models:
        dims = sum(blocks[m].shape[1] for m in models if m != model)
        print(f"| {model} | {dims} | {int(train.sum()) <= dims} | {lmd.is_underdetermined(int(train.sum()), n_reviews, dims)} |")
    by_review = _group_r2(blocks, train, test, models)
    # a random split of the words (splitmix64 hash of the word key), same test share as the review split
    random_test = lmd.validation_mask(keys, float(test.mean()), seed=7)
    by_word = _group_r2(blocks, ~random_test, random_test, models)
    centred = {}
    for model in models:
        x = blocks[model].astype(np.float64)
        starts = np.flatnonzero(np.r_[True, examples[1:] != examples[:-1]])
        counts = np.diff(np.r_[starts, examples.size])
        means = np.add.reduceat(x, starts, axis=0) / counts[:, None]
        centred[model] = (x - np.repeat(means, counts, axis=0)).astype(np.float32)
    within = _group_r2(centred, train, test, models)
    print(f"group test R² at alpha 1e-6 (mode paper; random word split: {random_test.sum():,} test words)")
    print("| target | split by review | random word split | within reviews (review means removed) |")
    for model in models:
        print(f"| {model} | {by_review[model]:.3f} | {by_word[model]:.3f} | {within[model]:.3f} |")
    print(f"| mean | {np.mean(list(by_review.values())):.3f} | {np.mean(list(by_word.values())):.3f} | "
          f"{np.mean(list(within.values())):.3f} |")
    _encoder_distances(results, config_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--compare", type=Path, default=None, help="another run's results folder")
    parser.add_argument("--effective-sample", action="store_true", help="the word units' effective sample size")
    parser.add_argument("--dataset", default="reviews")
    parser.add_argument("--config", type=Path, default=Path("config.yaml"), help="the run's config (perturbed models)")
    args = parser.parse_args()
    if args.effective_sample:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=2):
            effective_sample(args.results, args.dataset, args.config)
        return
    root = args.results / "analysis/decomposition"
    stems = sorted({p.parent.parent for p in root.glob("*/*/*/*/alpha-*/group.csv")})
    if not stems:
        raise SystemExit(f"no decomposition tables under {root}: run the default workflow first")
    for stem in stems:
        fixed = sorted(p for p in stem.glob("alpha-*") if p.name != "alpha-validation" and (p / "group.csv").exists())
        validated = stem / "alpha-validation"
        if not fixed or not (validated / "group.csv").exists():
            print(f"== {stem}: needs both a fixed-α and an alpha-validation folder; skipped\n")
            continue
        for folder in fixed:
            summarise(stem.relative_to(root), folder, validated)
    if args.compare:
        compare(args.results, args.compare)


if __name__ == "__main__":
    main()
