# The twotower stage: two GPT-2 towers sharing embeddings trained as one causal LM
# (He & Toyoizumi, arXiv:2210.07041); per-tower heads on the frozen towers; the per-token-type preference,
# its consistency (split halves, checkpoints, seeds) and the shuffled-assignment control. docs/twotower.md
validate_section("twotower")

TT = config["twotower"]
TT_DIR = "results/analysis/twotower"


TT_DATASET = selected_name("twotower.dataset", DATASET_NAMES, "a configured dataset", enabled=TT["enabled"])
TT_MODEL = selected_name("twotower.tokenizer_model", MODEL_NAMES, "a configured model", enabled=TT["enabled"])
TT_SEEDS = [int(s) for s in TT["seeds"]]
TT_STEPS = sorted({int(s) for s in TT["measure_steps"]} | {int(TT["steps"])})
if max(TT_STEPS) != int(TT["steps"]):
    raise WorkflowInputError(
        f"twotower.measure_steps {TT['measure_steps']} holds steps beyond twotower.steps = {TT['steps']}; "
        f"measured snapshots must come from training: fix {where('twotower.measure_steps')}."
    )
if TT["n_embd"] % TT["n_head"]:
    raise WorkflowInputError(
        f"twotower.n_embd = {TT['n_embd']} is not a multiple of twotower.n_head = {TT['n_head']}; fix "
        f"{where('twotower.n_embd')} or {where('twotower.n_head')}."
    )
TT_RUN = f"{TT_DIR}/{{dataset}}/{{model}}/seed{{seed}}"
TT_FIG = "results/figures/twotower/{dataset}/{model}"
TT_TRAIN_KEYS = ("window", "n_layer", "n_embd", "n_head", "dropout", "steps", "batch_size", "learning_rate",
                 "weight_decay", "warmup_steps", "grad_clip", "freeze_tower", "eval_every", "eval_max_windows",
                 "checkpoint_every", "measure_steps")


def _twotower_heavy_resources():
    return {"mem_mb": TT["memory_mb"], "runtime": TT["runtime_minutes"], **gpu_resources()}


rule twotower_corpus:
    input:
        dataset="results/data/{dataset}.parquet",
        model="results/models/{model}",
    output:
        corpus=f"{TT_DIR}/{{dataset}}/{{model}}/corpus.npz",
        info=f"{TT_DIR}/{{dataset}}/{{model}}/corpus.json",
    params:
        code=library_code("twotower_corpus"),
        twotower={k: TT[k] for k in ("window", "separator_token", "vocabulary", "max_train_tokens")},
    log:
        "results/logs/twotower/corpus/{dataset}/{model}.log",
    threads: 1
    resources:
        **light_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/twotower_corpus.py"


rule twotower_train:
    input:
        corpus=f"{TT_DIR}/{{dataset}}/{{model}}/corpus.npz",
    output:
        snapshots=[f"{TT_RUN}/step{step}.pt" for step in TT_STEPS],
        history=f"{TT_RUN}/history.csv",
    params:
        code=library_code("twotower_train"),
        twotower={k: TT[k] for k in TT_TRAIN_KEYS},
        work_dir=lambda wc: f"{TT_DIR}/{wc.dataset}/{wc.model}/seed{wc.seed}/checkpoints",
        device=TT["device"],
    wildcard_constraints:
        seed=r"\d+",
    log:
        "results/logs/twotower/train/{dataset}/{model}/seed{seed}.log",
    benchmark:
        "results/benchmarks/twotower/train/{dataset}/{model}/seed{seed}.tsv"
    threads: RES["threads"]
    resources:
        **_twotower_heavy_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/twotower_train.py"


rule twotower_measure:
    input:
        corpus=f"{TT_DIR}/{{dataset}}/{{model}}/corpus.npz",
        snapshot=f"{TT_RUN}/step{{step}}.pt",
    output:
        logprobs=f"{TT_RUN}/logprobs_step{{step}}.parquet",
    wildcard_constraints:
        seed=r"\d+",
        step=r"\d+",
    params:
        code=library_code("twotower_measure"),
        twotower={"head": TT["head"]},
        device=TT["device"],
    log:
        "results/logs/twotower/measure/{dataset}/{model}/seed{seed}/step{step}.log",
    benchmark:
        "results/benchmarks/twotower/measure/{dataset}/{model}/seed{seed}/step{step}.tsv"
    threads: RES["threads"]
    resources:
        **_twotower_heavy_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/twotower_measure.py"


rule twotower_preference:
    input:
        model="results/models/{model}",
        logprobs=expand(f"{TT_DIR}/{{{{dataset}}}}/{{{{model}}}}/seed{{seed}}/logprobs_step{{step}}.parquet",
                        seed=TT_SEEDS, step=TT_STEPS),
        histories=expand(f"{TT_DIR}/{{{{dataset}}}}/{{{{model}}}}/seed{{seed}}/history.csv", seed=TT_SEEDS),
    output:
        preference=f"{TT_DIR}/{{dataset}}/{{model}}/preference.csv",
        consistency=f"{TT_DIR}/{{dataset}}/{{model}}/consistency.csv",
        distribution=f"{TT_DIR}/{{dataset}}/{{model}}/distribution.csv",
        top_tokens=f"{TT_DIR}/{{dataset}}/{{model}}/top_tokens.csv",
        history=f"{TT_DIR}/{{dataset}}/{{model}}/history.csv",
    params:
        code=library_code("twotower_preference"),
        twotower={k: TT[k] for k in ("min_count", "top_k", "control_permutations", "control_seed")},
    log:
        "results/logs/twotower/preference/{dataset}/{model}.log",
    threads: 1
    resources:
        **light_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/twotower_preference.py"


rule twotower_figures:
    input:
        preference=f"{TT_DIR}/{{dataset}}/{{model}}/preference.csv",
        consistency=f"{TT_DIR}/{{dataset}}/{{model}}/consistency.csv",
        history=f"{TT_DIR}/{{dataset}}/{{model}}/history.csv",
        logprobs=expand(f"{TT_DIR}/{{{{dataset}}}}/{{{{model}}}}/seed{{seed}}/logprobs_step{{step}}.parquet",
                        seed=TT_SEEDS, step=max(TT_STEPS)),
    output:
        loss_png=report(f"{TT_FIG}/loss.png", caption="../report/twotower_loss.rst", category="Two-tower LM", subcategory="{dataset} / {model}"),
        loss_svg=f"{TT_FIG}/loss.svg",
        distribution_png=report(
            f"{TT_FIG}/preference_distribution.png", caption="../report/twotower_distribution.rst", category="Two-tower LM", subcategory="{dataset} / {model}"
        ),
        distribution_svg=f"{TT_FIG}/preference_distribution.svg",
        split_half_png=report(f"{TT_FIG}/split_half.png", caption="../report/twotower_split_half.rst", category="Two-tower LM", subcategory="{dataset} / {model}"),
        split_half_svg=f"{TT_FIG}/split_half.svg",
    params:
        code=library_code("twotower_figures"),
        twotower={k: TT[k] for k in ("min_count", "control_seed")},
    log:
        "results/logs/twotower/figures/{dataset}/{model}.log",
    threads: 1
    resources:
        **light_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/twotower_figures.py"


def twotower_targets():
    """The two-tower tables and figures (none when disabled)."""
    if not TT["enabled"]:
        return []
    return (
        [
            f"{TT_DIR}/{TT_DATASET}/{TT_MODEL}/{name}.csv"
            for name in ("preference", "consistency", "distribution", "top_tokens", "history")
        ]
        + expand(
            "results/figures/twotower/{dataset}/{model}/{name}.{ext}",
            dataset=TT_DATASET,
            model=TT_MODEL,
            name=("loss", "preference_distribution", "split_half"),
            ext=("png", "svg"),
        )
    )
