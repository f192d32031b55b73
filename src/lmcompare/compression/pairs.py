"""Pretrained and fine-tuned models side by side: the (pretrained, fine-tuned) pairs from config and from the
fine-tuning entries (imported by the rule file: standard library only), and the table of their differences."""

from lmcompare.config import where
from lmcompare.errors import WorkflowInputError


def resolve_pairs(config_pairs, models_config, models: list[str], derive: bool = True) -> list[tuple[str, str]]:
    """(pretrained, fine-tuned) pairs: those declared in config, plus (base, name) of every `source: finetune`
    model when `derive` is on; only pairs whose two models are both analysed; no duplicates, config order."""
    known = {entry["name"]: entry for entry in models_config}
    pairs = []
    for index, pair in enumerate(config_pairs or []):
        for role in ("pretrained", "finetuned"):
            if pair[role] not in known:
                raise WorkflowInputError(
                    f"config: compression.pairs[{index}]: {role} model {pair[role]!r} is not a configured model name; "
                    f"fix {where(f'compression.pairs[{index}].{role}')}: use a name from 'models' ({list(known)}).")
        pairs.append((pair["pretrained"], pair["finetuned"]))
    if derive:
        pairs += [(entry["base"], entry["name"]) for entry in models_config if entry["source"] == "finetune"]
    unique = []
    for pair in pairs:
        if pair not in unique and pair[0] in models and pair[1] in models:
            unique.append(pair)
    return unique


def pairs_table(summary, pairs, provenance: dict | None = None) -> "pandas.DataFrame":  # noqa: F821
    """One row per (pretrained, fine-tuned) pair: both models' headline numbers and the fine-tuned minus
    pretrained differences; the fine-tuning provenance (epochs, lr, final accuracies) when known."""
    import pandas as pd

    provenance = provenance or {}
    by_model = summary.set_index("model")
    measures = ["full_accuracy", "k_star", "k_star_n_test", "pca_k1_accuracy", "best_dim_accuracy",
                "best_dims_together_accuracy", "single_dim_median_accuracy", "single_dim_max_test_accuracy"]
    rows = []
    for pretrained, finetuned in pairs:
        if pretrained not in by_model.index or finetuned not in by_model.index:
            continue
        a, b = by_model.loc[pretrained], by_model.loc[finetuned]
        row = {"dataset": a["dataset"], "layer_pretrained": int(a["layer"]), "layer_finetuned": int(b["layer"]),
               "pooling": a["pooling"], "pretrained": pretrained, "finetuned": finetuned, "dims": int(a["dims"]),
               "n": int(a["n"])}
        for measure in measures:
            row[f"{measure}_pretrained"] = a[measure]
            row[f"{measure}_finetuned"] = b[measure]
            if measure not in ("k_star", "k_star_n_test"):
                row[f"{measure}_gain"] = float(b[measure]) - float(a[measure])
        record = provenance.get(finetuned, {})
        for key in ("dataset", "epochs", "learning_rate", "seed", "train_accuracy", "test_accuracy"):
            row[f"finetune_{key}"] = record.get(key)
        rows.append(row)
    return pd.DataFrame(rows)
