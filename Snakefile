# Language models, compared from the inside: materialise models, prepare datasets, extract every
# layer's hidden states to Parquet, run the five analyses, draw the figures across models.
import os
import sys

from snakemake.utils import min_version, validate

min_version("9.0")

# The workflow_scripts package must be importable by every job (locally and on cluster nodes).
sys.path.insert(0, workflow.basedir)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [workflow.basedir] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


configfile: "config.yaml"


report: "report/workflow.rst"


from workflow_scripts.config_checks import check_config, check_schema

check_schema(config, os.path.join(workflow.basedir, "schemas/config.schema.yaml"))
validate(config, "schemas/config.schema.yaml")  # fills in the defaults
check_config(config)

# Targets of `rule all`: every included rule file appends what it wants built.
ALL_TARGETS = []


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/data.smk"
include: "rules/extract.smk"
include: "rules/decomposition.smk"
include: "rules/variability.smk"
include: "rules/compression.smk"
include: "rules/geometry.smk"
include: "rules/twotower.smk"
include: "rules/figures.smk"


rule all:
    default_target: True
    input:
        ALL_TARGETS,
