# The geometry stage: its rules are added by the issue that builds it.
validate(config["geometry"], "../schemas/geometry.schema.yaml")
