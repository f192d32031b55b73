# The decomposition stage: its rules are added by the issue that builds it.
validate(config["decomposition"], "../schemas/decomposition.schema.yaml")
