# The variability stage: its rules are added by the issue that builds it.
validate(config["variability"], "../schemas/variability.schema.yaml")
