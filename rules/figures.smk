# The figures stage: its rules are added by the issue that builds it.
validate(config["figures"], "../schemas/figures.schema.yaml")
