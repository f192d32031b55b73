# The one-page summary across analyses, the provenance of every model and the effective config, all registered
# in the report (`snakemake --report results/report.html`). Per-analysis figures are drawn by their own rules.
validate_section("figures")


def analysis_tables(prefix, suffix):
    """Aggregated tables among the enabled analyses' targets (analysis_targets: disabled ones add nothing); the
    panel shows the first: a validation-chosen ridge alpha before the paper's fixed one, then in path order."""
    tables = [t for t in analysis_targets() if t.startswith(prefix) and t.endswith(suffix)]
    return sorted(tables, key=lambda t: ("alpha-validation" not in t, t))


def summary_tables(prefix, suffix):
    """An input function: it calls analysis_targets when the DAG is built, after every rule file has been read, so
    the tables a panel is given do not depend on the order of the `include:` lines in the Snakefile."""
    return lambda wildcards: analysis_tables(prefix, suffix)


SUMMARY_PANELS = {
    "decomposition": summary_tables("results/analysis/decomposition/", "/group.csv"),
    "variability_layers": summary_tables("results/analysis/variability/", "/layers.csv"),
    "variability_selection": summary_tables("results/analysis/variability/", "/selection.csv"),
    "compression": summary_tables("results/analysis/compression/", "/summary.csv"),
    "geometry": summary_tables("results/analysis/geometry/", "/regression.csv"),
    "twotower": summary_tables("results/analysis/twotower/", "/consistency.csv"),
}


# The provenance table and the effective config are rules of their own, so that the summary figure depends on
# nothing but the tables it draws: a config edit that changes no table (a `resources:` request, say) rewrites
# config_used.yaml and redraws nothing; a new model reruns the provenance table, whose content then changes.
rule model_provenance:
    input:
        models=expand("results/models/{model}", model=MODEL_NAMES),
    output:
        provenance=report(
            "results/report/models.csv",
            caption="../report/provenance.rst",
            category="0. Summary",
            labels={"table": "model provenance"},
        ),
    params:
        code=library_code("model_provenance"),
        models=MODEL_NAMES,
    log:
        "results/logs/model_provenance.log",
    threads: 1
    resources:
        **light_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/model_provenance.py"


rule effective_config:
    output:
        config=report(
            "results/report/config_used.yaml",
            caption="../report/config.rst",
            category="0. Summary",
            labels={"file": "effective configuration"},
        ),
    params:
        code=library_code("effective_config"),
        # the whole validated config, `resources` included: this record, and only it, reruns on any config edit
        config=config,
    log:
        "results/logs/effective_config.log",
    threads: 1
    resources:
        **light_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/effective_config.py"


rule summary_figure:
    input:
        # the models panel reads the provenance table (rewritten with the same bytes, it triggers nothing:
        # Snakemake compares the checksum of a small input that is newer than the figure)
        provenance="results/report/models.csv",
        **SUMMARY_PANELS,
    output:
        png=report(
            "results/figures/summary.png",
            caption="../report/summary.rst",
            category="0. Summary",
        ),
        svg="results/figures/summary.svg",
    params:
        code=library_code("summary_figure"),
        # only what the drawing uses (model and dataset names, in the caption too); no config
        models=MODEL_NAMES,
        datasets=DATASET_NAMES,
        panels=list(SUMMARY_PANELS),
    log:
        "results/logs/summary_figure.log",
    threads: 1
    resources:
        **light_resources(),
    conda:
        "../envs/workflow.yaml"
    script:
        "../workflow_scripts/summary_figure.py"


def report_targets():
    """The summary page, the provenance table and the effective config (none when disabled)."""
    if not config["figures"]["enabled"]:
        return []
    return (
        ["results/figures/summary.png", "results/report/models.csv", "results/report/config_used.yaml"]
    )
