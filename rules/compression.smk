# The compression stage: its rules are added by the issue that builds it.
validate(config["compression"], "../schemas/compression.schema.yaml")
