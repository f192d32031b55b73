"""Per-token-type tower preference of a two-tower LM, its consistency, and the shuffled-assignment control.

Input: per held-out target token, the log-probability of the true token under each tower's own head
(measure.py, rule twotower_measure). For a token type t seen n_t times,

    mean_k(t)     = (1 / n_t) * sum_{i: token_i = t} log p_k(token_i | context_i)       k in {a, b}
    preference(t) = mean_a(t) - mean_b(t)      (> 0: tower a predicts t better; nats)

for every type with n_t >= min_count. Consistency:
- split half: the held-out documents are split into two disjoint halves (even / odd example_id); the
  preference vectors of the two halves (types with >= min_count occurrences in each half) are compared by
  Pearson r, Spearman rho and the fraction of types whose sign agrees;
- across checkpoints of one run: preference at each measured step vs the final step;
- across seeds (tower identity is arbitrary): |Pearson r| of the preference vectors, Pearson r of |preference|,
  and the Kolmogorov-Smirnov distance between the |preference| distributions.
Control (shuffled assignment): every occurrence's pair (log p_a, log p_b) is swapped with probability 1/2;
this keeps everything except a consistent tower identity. Repeated `permutations` times, it gives the null
distribution of the split-half agreement (one-sided permutation p-value) and a per-type permutation p-value
of |preference|.

`preference_tables` builds rule twotower_preference's tables from the measurements (`read_logprobs`).
"""

import logging

import numpy as np
import pandas as pd

from lmcompare.errors import WorkflowInputError
from lmcompare.twotower.corpus import UNSEEN

LOG = logging.getLogger("workflow")


def type_means(token_id: np.ndarray, logp_a: np.ndarray, logp_b: np.ndarray) -> pd.DataFrame:
    """Per token type: count, mean log p under each tower's head, preference = mean_a - mean_b."""
    token_id = np.asarray(token_id)
    types, inverse, counts = np.unique(token_id, return_inverse=True, return_counts=True)
    sum_a = np.bincount(inverse, weights=np.asarray(logp_a, np.float64), minlength=len(types))
    sum_b = np.bincount(inverse, weights=np.asarray(logp_b, np.float64), minlength=len(types))
    frame = pd.DataFrame({"token_id": types.astype(np.int64), "count": counts.astype(np.int64),
                          "mean_logp_a": sum_a / counts, "mean_logp_b": sum_b / counts})
    frame["preference"] = frame["mean_logp_a"] - frame["mean_logp_b"]
    return frame


def half_of(example_id: np.ndarray) -> np.ndarray:
    """Which half (0/1) of the held-out text a token belongs to: disjoint halves of whole documents."""
    return (np.asarray(example_id) % 2).astype(np.int8)


def _pearson(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _spearman(x, y) -> float:
    from scipy.stats import rankdata

    if len(x) < 3:
        return float("nan")
    return _pearson(rankdata(x), rankdata(y))


def agreement(x: np.ndarray, y: np.ndarray) -> dict:
    """Pearson r, Spearman rho and sign agreement of two preference vectors over the same types."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    nonzero = (x != 0) & (y != 0)
    return {"pearson": _pearson(x, y), "spearman": _spearman(x, y),
            "sign_agreement": float(np.mean(np.sign(x[nonzero]) == np.sign(y[nonzero]))) if nonzero.any()
            else float("nan")}


def _half_sums(type_index, half, diff, n_types):
    """Per (half, type): count and sum of diff."""
    key = half.astype(np.int64) * n_types + type_index
    counts = np.bincount(key, minlength=2 * n_types).reshape(2, n_types)
    sums = np.bincount(key, weights=diff, minlength=2 * n_types).reshape(2, n_types)
    return counts, sums


def split_half(token_id, example_id, logp_a, logp_b, min_count: int) -> tuple[pd.DataFrame, dict]:
    """Preference per type in each half; agreement over types with >= min_count occurrences in both."""
    types, inverse = np.unique(np.asarray(token_id), return_inverse=True)
    diff = np.asarray(logp_a, np.float64) - np.asarray(logp_b, np.float64)
    counts, sums = _half_sums(inverse, half_of(example_id), diff, len(types))
    keep = (counts >= min_count).all(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        prefs = sums / counts
    frame = pd.DataFrame({"token_id": types, "count_half1": counts[0], "count_half2": counts[1],
                          "preference_half1": prefs[0], "preference_half2": prefs[1], "in_split_half": keep})
    result = agreement(prefs[0, keep], prefs[1, keep])
    result["n_types"] = int(keep.sum())
    return frame, result


def shuffled_control(token_id, example_id, logp_a, logp_b, min_count: int, permutations: int,
                     seed: int = 0) -> dict:
    """The shuffled-assignment null: each occurrence's (log p_a, log p_b) swapped with probability 1/2.

    Returns per-permutation split-half agreement (arrays), per-type permutation p-values of |preference|
    (types with >= min_count occurrences overall, aligned with `types`), and one shuffled preference vector
    for plotting.
    """
    rng = np.random.default_rng(seed)
    token_id = np.asarray(token_id)
    types, inverse = np.unique(token_id, return_inverse=True)
    diff = np.asarray(logp_a, np.float64) - np.asarray(logp_b, np.float64)
    half = half_of(example_id)
    counts, _ = _half_sums(inverse, half, diff, len(types))
    keep_half = (counts >= min_count).all(axis=0)
    total = counts.sum(axis=0)
    keep_all = total >= min_count
    observed_pref = np.bincount(inverse, weights=diff, minlength=len(types)) / np.maximum(total, 1)
    null_r, null_rho, null_sign = [], [], []
    exceed = np.zeros(len(types), np.int64)
    example_pref = None
    for _ in range(permutations):
        signs = rng.integers(0, 2, size=len(diff)) * 2 - 1
        flipped = diff * signs
        _, sums = _half_sums(inverse, half, flipped, len(types))
        with np.errstate(invalid="ignore", divide="ignore"):
            prefs = sums / counts
        result = agreement(prefs[0, keep_half], prefs[1, keep_half])
        null_r.append(result["pearson"])
        null_rho.append(result["spearman"])
        null_sign.append(result["sign_agreement"])
        pref_all = sums.sum(axis=0) / np.maximum(total, 1)
        exceed += np.abs(pref_all) >= np.abs(observed_pref) - 1e-12
        if example_pref is None:
            example_pref = pref_all[keep_all]
    p_type = (1 + exceed) / (1 + permutations)
    return {"types": types, "keep_all": keep_all, "p_value_type": p_type,
            "null_pearson": np.asarray(null_r), "null_spearman": np.asarray(null_rho),
            "null_sign_agreement": np.asarray(null_sign),
            "example_preference": example_pref if example_pref is not None else np.zeros(0)}


def permutation_p(observed: float, null: np.ndarray) -> float:
    """One-sided permutation p-value (observed at least as large as the null), with the +1 correction."""
    null = np.asarray(null, float)
    null = null[np.isfinite(null)]
    if not np.isfinite(observed) or len(null) == 0:
        return float("nan")
    return float((1 + np.sum(null >= observed)) / (1 + len(null)))


def swap_invariant_comparison(pref_x: pd.Series, pref_y: pd.Series) -> dict:
    """Compare two runs' preference vectors (indexed by token_id) with measures that do not change when
    either run's towers are swapped (pref -> -pref)."""
    from scipy.stats import ks_2samp

    common = pref_x.index.intersection(pref_y.index)
    x, y = pref_x.loc[common].to_numpy(float), pref_y.loc[common].to_numpy(float)
    r = _pearson(x, y)
    return {"abs_pearson": abs(r) if np.isfinite(r) else float("nan"),
            "pearson_of_abs": _pearson(np.abs(x), np.abs(y)),
            "ks_abs": float(ks_2samp(np.abs(pref_x.to_numpy(float)), np.abs(pref_y.to_numpy(float))).statistic)
            if len(pref_x) and len(pref_y) else float("nan"),
            "n_types": int(len(common))}


def distribution_summary(pref: np.ndarray) -> dict:
    """Shape of a preference distribution, in swap-invariant terms (|preference| quantiles, spread)."""
    pref = np.asarray(pref, float)
    if len(pref) == 0:
        return {"n_types": 0}
    absolute = np.abs(pref)
    out = {"n_types": int(len(pref)), "std": float(pref.std()), "mean_abs": float(absolute.mean()),
           "abs_skewness": float(abs(((pref - pref.mean()) ** 3).mean() / max(pref.std(), 1e-300) ** 3))}
    for q in (0.5, 0.9, 0.99):
        out[f"abs_q{int(q * 100):02d}"] = float(np.quantile(absolute, q))
    return out


def analyse_measurement(frame: pd.DataFrame, *, min_count: int, permutations: int, seed: int = 0):
    """All statistics of one (seed, step) measurement: the type table and the consistency rows."""
    frame = frame[frame["token_id"] != UNSEEN]
    token, example = frame["token_id"].to_numpy(), frame["example_id"].to_numpy()
    la, lb = frame["logp_a"].to_numpy(np.float64), frame["logp_b"].to_numpy(np.float64)
    types = type_means(token, la, lb)
    joint = frame.groupby("token_id")["logp_joint"].mean()
    types["mean_logp_joint"] = types["token_id"].map(joint).to_numpy()
    halves, split = split_half(token, example, la, lb, min_count)
    control = shuffled_control(token, example, la, lb, min_count, permutations, seed=seed)
    types = types.merge(halves, on="token_id", how="left")
    types["p_value"] = control["p_value_type"]
    types = types[types["count"] >= min_count].reset_index(drop=True)
    rows = []
    for measure, null_key in (("pearson", "null_pearson"), ("spearman", "null_spearman"),
                              ("sign_agreement", "null_sign_agreement")):
        null = control[null_key]
        finite = null[np.isfinite(null)]
        rows.append({"comparison": "split_half", "measure": measure, "value": split[measure],
                     "n_types": split["n_types"],
                     "null_mean": float(finite.mean()) if len(finite) else float("nan"),
                     "null_q95": float(np.quantile(finite, 0.95)) if len(finite) else float("nan"),
                     "p_value": permutation_p(split[measure], null)})
    summary = distribution_summary(types["preference"].to_numpy())
    null_summary = distribution_summary(control["example_preference"])
    summary["control_std"] = null_summary.get("std", float("nan"))
    summary["control_mean_abs"] = null_summary.get("mean_abs", float("nan"))
    summary["frac_types_p05"] = float((types["p_value"] < 0.05).mean()) if len(types) else float("nan")
    summary["n_tokens"] = int(len(frame))
    summary["mean_logp_a"] = float(la.mean())
    summary["mean_logp_b"] = float(lb.mean())
    summary["mean_logp_joint"] = float(frame["logp_joint"].mean())
    return types, rows, summary, control


def across_checkpoints(prefs: dict) -> list[dict]:
    """prefs: step -> Series (token_id -> preference) of one run; each step vs the last step."""
    steps = sorted(prefs)
    final = steps[-1]
    rows = []
    for step in steps[:-1]:
        common = prefs[step].index.intersection(prefs[final].index)
        result = agreement(prefs[step].loc[common], prefs[final].loc[common])
        for measure, value in result.items():
            rows.append({"comparison": "checkpoint", "step": step, "other_step": final, "measure": measure,
                         "value": value, "n_types": int(len(common))})
    return rows


def across_seeds(prefs: dict) -> list[dict]:
    """prefs: seed -> Series of the final step; every seed pair, swap-invariant measures."""
    seeds = sorted(prefs)
    rows = []
    for i, x in enumerate(seeds):
        for y in seeds[i + 1:]:
            result = swap_invariant_comparison(prefs[x], prefs[y])
            n = result.pop("n_types")
            for measure, value in result.items():
                rows.append({"comparison": "seed", "seed": x, "other_seed": y, "measure": measure,
                             "value": value, "n_types": n})
    return rows


def token_strings(tokenizer, token_ids) -> list[str]:
    """Readable token strings (the tokenizer's own pieces, e.g. '##ing', 'Ġthe')."""
    out = []
    for t in token_ids:
        t = int(t)
        if t == UNSEEN:
            out.append("<unseen in training>")
        else:
            piece = tokenizer.convert_ids_to_tokens(t)
            out.append(str(piece) if piece is not None else f"<id {t}>")
    return out


def top_tokens(types: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k types most preferred by tower a (largest preference) and by tower b (smallest)."""
    a = types.sort_values(["preference", "token_id"], ascending=[False, True]).head(k)
    a = a[a["preference"] > 0].assign(tower="a")
    b = types.sort_values(["preference", "token_id"], ascending=[True, True]).head(k)
    b = b[b["preference"] < 0].assign(tower="b")
    out = []
    for part in (a, b):
        part = part.copy()
        part["rank"] = np.arange(1, len(part) + 1)
        out.append(part)
    return pd.concat(out, ignore_index=True)


# ============================================================================================ the tables
def read_logprobs(path) -> pd.DataFrame:
    """One twotower_measure output: per held-out target token of one (seed, step), its log-probabilities."""
    try:
        return pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise WorkflowInputError(f"{path} is not a readable two-tower measurement ({err}); delete it and rerun.") from err


def preference_tables(logprob_paths, tokenizer, *, model: str, dataset: str, min_count: int, permutations: int,
                      top_k: int, control_seed: int) -> dict[str, pd.DataFrame]:
    """Rule twotower_preference's tables from every (seed, step) measurement: `preference` (per type),
    `consistency` (split halves, checkpoints, seeds), `distribution` (per measurement) and `top_tokens` (the
    top_k types of each tower at each seed's last step). `model` is the tokenizer model, `dataset` the corpus."""
    type_frames, consistency, summaries, finals, by_seed = [], [], [], {}, {}
    for path in logprob_paths:
        frame = read_logprobs(path)
        seed, step = int(frame["seed"].iloc[0]), int(frame["step"].iloc[0])
        types, rows, summary, _ = analyse_measurement(frame, min_count=min_count, permutations=permutations,
                                                      seed=control_seed)
        LOG.info("seed %d step %d: %d tokens, %d types >= %d; split-half r = %.3f (null q95 %.3f)", seed, step,
                 summary["n_tokens"], len(types), min_count, rows[0]["value"], rows[0]["null_q95"])
        types.insert(0, "seed", seed)
        types.insert(1, "step", step)
        type_frames.append(types)
        consistency += [dict(row, seed=seed, step=step) for row in rows]
        summaries.append(dict(summary, seed=seed, step=step))
        by_seed.setdefault(seed, {})[step] = types.set_index("token_id")["preference"]
    for seed, prefs in by_seed.items():
        consistency += [dict(row, seed=seed) for row in across_checkpoints(prefs)]
        finals[seed] = prefs[max(prefs)]
    consistency += across_seeds(finals)
    all_types = pd.concat(type_frames, ignore_index=True)
    if all_types.empty:
        raise WorkflowInputError(
            f"two-tower preference of {dataset}/{model}: no token type occurs at least twotower.min_count = "
            f"{min_count} times in the held-out text. Lower twotower.min_count or use more test text."
        )
    strings = dict(zip(all_types["token_id"].unique(), token_strings(tokenizer, all_types["token_id"].unique())))
    all_types.insert(3, "token", all_types["token_id"].map(strings))
    all_types.insert(0, "model", model)
    all_types.insert(1, "dataset", dataset)
    consistency = pd.DataFrame(consistency)
    for col in ("seed", "step", "other_seed", "other_step"):
        if col not in consistency:
            consistency[col] = np.nan
    consistency = consistency[["comparison", "seed", "step", "other_seed", "other_step", "measure", "value",
                               "n_types", "null_mean", "null_q95", "p_value"]]
    for col in ("seed", "step", "other_seed", "other_step"):
        consistency[col] = consistency[col].astype("Int64")
    consistency.insert(0, "model", model)
    consistency.insert(1, "dataset", dataset)
    distribution = pd.DataFrame(summaries)
    distribution.insert(0, "model", model)
    distribution.insert(1, "dataset", dataset)
    last_steps = {seed: max(prefs) for seed, prefs in by_seed.items()}
    tops = []
    for seed, step in last_steps.items():
        part = all_types[(all_types["seed"] == seed) & (all_types["step"] == step)]
        tops.append(top_tokens(part, top_k))
    tops = pd.concat(tops, ignore_index=True)[
        ["model", "dataset", "seed", "step", "tower", "rank", "token_id", "token", "count", "mean_logp_a",
         "mean_logp_b", "preference", "p_value"]]
    return {"preference": all_types, "consistency": consistency, "distribution": distribution, "top_tokens": tops}


def join_histories(paths) -> pd.DataFrame:
    """The seeds' loss histories (twotower_train's history.csv) in one table."""
    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)


def final_step_controls(logprob_paths, types: pd.DataFrame, *, min_count: int, control_seed: int) -> dict:
    """seed -> one shuffled-assignment preference vector (shuffled_control's example_preference) of that seed's
    last measured step in `types` (preference.csv rows); measurements of other steps are skipped."""
    controls = {}
    for path in logprob_paths:
        frame = read_logprobs(path)
        seed, step = int(frame["seed"].iloc[0]), int(frame["step"].iloc[0])
        if step != types[types["seed"] == seed]["step"].max():
            continue
        frame = frame[frame["token_id"] != UNSEEN]
        control = shuffled_control(frame["token_id"].to_numpy(), frame["example_id"].to_numpy(),
                                   frame["logp_a"].to_numpy(), frame["logp_b"].to_numpy(), min_count, 1,
                                   seed=control_seed)
        controls[seed] = control["example_preference"]
    return controls
