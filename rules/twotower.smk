# The twotower stage: its rules are added by the issue that builds it.
validate(config["twotower"], "../schemas/twotower.schema.yaml")
