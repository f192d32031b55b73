# Language Model Decomposition (LMD): group and pairwise ridge R² of every model from the others, from streamed
# moments cached per model pair. See docs/decomposition.md.
validate_section("decomposition")

from lmcompare.decomposition import alpha_tag, layers_tag, model_pairs, UNITS, MODES, MOMENTS_FORMAT, VALIDATION

LMD = config["decomposition"]
LMD_DIR = "results/analysis/decomposition"
LMD_FIG_DIR = "results/figures/decomposition"
LMD_LAYERS = layers_tag(LMD["target_layer"], LMD["basis_layer"])
# Each alpha choice (a fixed number, or 'validation') is a path component: both can be produced in one run and
# changing one leaves the other's tables alone.
LMD_ALPHAS = [alpha_tag(a) for a in (LMD["alpha"] if isinstance(LMD["alpha"], list) else [LMD["alpha"]])]
if len(set(LMD_ALPHAS)) != len(LMD_ALPHAS):
    raise WorkflowInputError(f"config: decomposition.alpha lists the same alpha twice: {LMD['alpha']}.")
if LMD["enabled"] and alpha_tag(VALIDATION) in LMD_ALPHAS and not LMD["alpha_grid"]:
    raise WorkflowInputError(
        "config: decomposition.alpha holds 'validation' but decomposition.alpha_grid is empty; list the alphas to try "
        "(the default is 1e-6, 1e-5, ..., 1e4) or use a fixed alpha."
    )


LMD_MODELS = selected_names("decomposition.models", MODEL_NAMES, "configured models", enabled=LMD["enabled"])
LMD_DATASETS = selected_names("decomposition.datasets", DATASET_NAMES, "configured datasets", enabled=LMD["enabled"])
if LMD["enabled"] and len(LMD_MODELS) < 2:
    raise WorkflowInputError(
        f"config: decomposition needs at least two models, got {LMD_MODELS}; configure another model or list two "
        f"or more in decomposition.models (or set decomposition.enabled: false)."
    )


def lmd_jobs():
    """(dataset, unit) combinations to run: the 'chunk' unit only on chunks datasets."""
    jobs = []
    for dataset in LMD_DATASETS:
        for unit in LMD["units"]:
            if unit == "chunk" and DATASETS[dataset]["source"] != "chunks":
                continue
            jobs.append((dataset, unit))
    if LMD["enabled"] and "chunk" in LMD["units"] and not any(unit == "chunk" for _, unit in jobs):
        raise WorkflowInputError(
            "config: decomposition.units holds 'chunk', which runs on chunks datasets, but none is selected: add a "
            "dataset with source: chunks (base, tokenizer_model, chunk_tokens) or remove 'chunk' from the units."
        )
    return jobs


def lmd_targets():
    targets = []
    for dataset, unit in lmd_jobs():
        for mode in LMD["modes"]:
            for alpha in LMD_ALPHAS:
                stem = f"{dataset}/{unit}/{LMD_LAYERS}/{mode}/{alpha}"
                targets += [f"{LMD_DIR}/{stem}/{name}" for name in ("group.csv", "pairwise.csv", "pairwise_matrix.csv")]
                targets += [f"{LMD_FIG_DIR}/{stem}/{name}.{ext}" for name in ("pairwise_r2", "group_r2")
                            for ext in ("png", "svg")]
    return targets


def _lmd_layers(wildcards):
    target, basis = wildcards.layers[1:].split("_b")
    return int(target), int(basis)


def _lmd_hidden_path(dataset, unit, model):
    """The hidden-state file a unit reads: pooled vectors for 'example', per-token vectors otherwise."""
    return paths.pooled_path(dataset, model) if unit == "example" else paths.tokens_path(dataset, model)


def _lmd_hidden_file(model_wildcard):
    return lambda wc: _lmd_hidden_path(wc.dataset, wc.unit, getattr(wc, model_wildcard))


def _lmd_pair_files(wildcards):
    return [
        f"{LMD_DIR}/{wildcards.dataset}/{wildcards.unit}/{wildcards.layers}/moments/{a}/{b}.npz"
        for a, b in model_pairs(LMD_MODELS)
    ]


def _lmd_fit_mem_mb():
    """The fit holds the joint covariance of all models per split plus a few basis-sized copies."""
    if LMD["mem_mb"]:
        return LMD["mem_mb"]
    views = 1 if LMD["target_layer"] == LMD["basis_layer"] else 2
    dims = 768 * len(LMD_MODELS) * views
    # the validation choice also holds the fit and valid parts' joint matrices and an eigendecomposition
    return lambda wc: int(1000 + (6 if wc.alpha != alpha_tag(VALIDATION) else 12) * dims * dims * 8 / 1e6)


# One file per unordered model pair (canonical order: by name): adding a model adds only its pairs.
rule decomposition_moments:
    input:
        a=_lmd_hidden_file("model_a"),
        b=_lmd_hidden_file("model_b"),
    output:
        moments=LMD_DIR + "/{dataset}/{unit}/{layers}/moments/{model_a}/{model_b}.npz",
    wildcard_constraints:
        model_a=name_regex(MODEL_NAMES),
        model_b=name_regex(MODEL_NAMES),
        unit="|".join(UNITS),
        layers=r"t-?\d+_b-?\d+",
    params:
        code=library_code("decomposition_moments"),
        target_layer=lambda wc: _lmd_layers(wc)[0],
        basis_layer=lambda wc: _lmd_layers(wc)[1],
        pooling=lambda wc: LMD["example_pooling"] if wc.unit == "example" else None,
        chunk_tokens=lambda wc: DATASETS[wc.dataset].get("chunk_tokens") if wc.unit == "chunk" else None,
        validation_fraction=LMD["validation_fraction"],
        validation_seed=LMD["validation_seed"],
        format=MOMENTS_FORMAT,  # a new file format changes the params: old files are recomputed
    log:
        "results/logs/decomposition/moments/{dataset}/{unit}/{layers}/{model_a}/{model_b}.log",
    benchmark:
        "results/benchmarks/decomposition/moments/{dataset}/{unit}/{layers}/{model_a}/{model_b}.tsv"
    threads: RES["threads"]
    resources:
        mem_mb=LMD["mem_mb_moments"],
        runtime=LMD["runtime_minutes"],
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/decomposition_moments.py"


rule decomposition_fit:
    input:
        moments=_lmd_pair_files,
        # read only when the pairs aligned different units (then the group fits use the units all models have)
        hidden=lambda wc: [_lmd_hidden_path(wc.dataset, wc.unit, model) for model in LMD_MODELS],
    output:
        group=LMD_DIR + "/{dataset}/{unit}/{layers}/{mode}/{alpha}/group.csv",
        pairwise=LMD_DIR + "/{dataset}/{unit}/{layers}/{mode}/{alpha}/pairwise.csv",
        matrix=LMD_DIR + "/{dataset}/{unit}/{layers}/{mode}/{alpha}/pairwise_matrix.csv",
    wildcard_constraints:
        unit="|".join(UNITS),
        layers=r"t-?\d+_b-?\d+",
        mode="|".join(MODES),
        alpha=r"alpha-(validation|[0-9][0-9.e+-]*)",
    params:
        code=library_code("decomposition_fit"),
        models=LMD_MODELS,
        pairs=model_pairs(LMD_MODELS),
        alpha_grid=lambda wc: LMD["alpha_grid"] if wc.alpha == alpha_tag(VALIDATION) else None,
        min_train_units=LMD["min_train_units"],
        min_test_units=LMD["min_test_units"],
    log:
        "results/logs/decomposition/fit/{dataset}/{unit}/{layers}/{mode}/{alpha}.log",
    benchmark:
        "results/benchmarks/decomposition/fit/{dataset}/{unit}/{layers}/{mode}/{alpha}.tsv"
    threads: RES["threads"]
    resources:
        mem_mb=_lmd_fit_mem_mb(),
        runtime=LMD["runtime_minutes"],
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/decomposition_fit.py"


rule decomposition_figures:
    input:
        group=LMD_DIR + "/{dataset}/{unit}/{layers}/{mode}/{alpha}/group.csv",
        matrix=LMD_DIR + "/{dataset}/{unit}/{layers}/{mode}/{alpha}/pairwise_matrix.csv",
    output:
        heatmap_png=report(
            LMD_FIG_DIR + "/{dataset}/{unit}/{layers}/{mode}/{alpha}/pairwise_r2.png",
            caption="../report/decomposition_pairwise.rst",
            category="Decomposition",
            subcategory="{dataset} / {unit} units / {mode} / {alpha}",
            labels={"figure": "pairwise test R²", "layers": "{layers}"},
        ),
        heatmap_svg=LMD_FIG_DIR + "/{dataset}/{unit}/{layers}/{mode}/{alpha}/pairwise_r2.svg",
        group_png=report(
            LMD_FIG_DIR + "/{dataset}/{unit}/{layers}/{mode}/{alpha}/group_r2.png",
            caption="../report/decomposition_group.rst",
            category="Decomposition",
            subcategory="{dataset} / {unit} units / {mode} / {alpha}",
            labels={"figure": "group R²", "layers": "{layers}"},
        ),
        group_svg=LMD_FIG_DIR + "/{dataset}/{unit}/{layers}/{mode}/{alpha}/group_r2.svg",
    wildcard_constraints:
        unit="|".join(UNITS),
        layers=r"t-?\d+_b-?\d+",
        mode="|".join(MODES),
        alpha=r"alpha-(validation|[0-9][0-9.e+-]*)",
    params:
        code=library_code("decomposition_figures"),
    log:
        "results/logs/decomposition/figures/{dataset}/{unit}/{layers}/{mode}/{alpha}.log",
    threads: 1
    resources:
        **light_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/decomposition_figures.py"


def decomposition_targets():
    """The decomposition tables and figures of every (dataset, unit, mode, alpha) (none when disabled)."""
    return lmd_targets() if LMD["enabled"] else []
