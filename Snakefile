# Language models, compared from the inside: materialise models, prepare datasets, extract every
# layer's hidden states to Parquet, run the five analyses, draw the figures across models.
import os

from snakemake.utils import min_version, validate

min_version("9.0")

# The maths and I/O are the `lmcompare` library (src/lmcompare, installed into .venv by setup.sh; into the conda
# envs by their post-deploy scripts, envs/*.post-deploy.sh, which read LMCOMPARE_PROJECT); each rule's script in
# workflow_scripts/ is a thin call into it.
os.environ.setdefault("LMCOMPARE_PROJECT", workflow.basedir)
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


# The configuration. A user's file (`--configfile my.yaml`, one or more) stands on its own: the shipped
# config.yaml is the embedded default, read only when no --configfile is given (from the working directory when it
# holds one, else from the project folder), so no dataset or model name of the default leaks into a user's run.
# `--config key=value` overrides either. Keys a file leaves out take their schema defaults (schemas/*.schema.yaml),
# and dataset/model selections left out are derived from the configured names at start-up.
DEFAULT_CONFIGFILE = "config.yaml" if os.path.exists("config.yaml") else os.path.join(workflow.basedir, "config.yaml")
if not workflow.overwrite_configfiles:
    workflow.configfile(DEFAULT_CONFIGFILE)


report: "report/workflow.rst"


from lmcompare.config import check_config, check_local_sources, check_schema, record_config_sources

record_config_sources(
    [str(path) for path in workflow.overwrite_configfiles] or [DEFAULT_CONFIGFILE],
    workflow.config_settings.config,
    default_file=os.path.join(workflow.basedir, "config.yaml"),
)
check_schema(config, os.path.join(workflow.basedir, "schemas/config.schema.yaml"))
validate(config, "schemas/config.schema.yaml")  # fills in the defaults
check_config(config)
# local folders and files, their columns and classes: known before any job runs (also in a dry run); skipped in
# the per-job re-reads of the Snakefile on cluster nodes, where the main process has checked them already
if not workflow.remote_exec:
    check_local_sources(config)

include: "rules/common.smk"
include: "rules/sources.smk"
include: "rules/extract.smk"
include: "rules/decomposition.smk"
include: "rules/similarity.smk"
include: "rules/variability.smk"
include: "rules/compression.smk"
include: "rules/geometry.smk"
include: "rules/twotower.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        final_targets(),
