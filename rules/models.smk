# Materialise every model from an external source (hub / local / package / archive) into results/models/{model}.
# Derived models (perturb, finetune) are produced by rules in geometry.smk and compression.smk.


rule materialise_model:
    output:
        model=directory("results/models/{model}"),
    wildcard_constraints:
        model=name_regex(models_of_source(*EXTERNAL_SOURCES)),
    params:
        entry=lambda wc: MODELS[wc.model],
    log:
        "results/logs/materialise_model/{model}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=lambda wc: 120 if MODELS[wc.model]["source"] == "hub" else 30,
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/materialise_model.py"
