"""A compression view is one pooled vector of one layer: the first token ([CLS]) or the mean over content tokens.
Its name is a path segment ('first_layer-1'); standard library only, the rule file imports it."""

from lmcompare.errors import WorkflowInputError

POOLINGS = ("first", "mean")


def view_name(pooling: str, layer: int) -> str:
    """The path segment naming one pooled vector, e.g. 'first_layer-1' or 'mean_layer6'."""
    if pooling not in POOLINGS:
        raise WorkflowInputError(f"compression: pooling {pooling!r} is not one of {POOLINGS}; fix the config file.")
    return f"{pooling}_layer{int(layer)}"


def parse_view(view: str) -> tuple[str, int]:
    """(pooling, layer) of a view name; the inverse of view_name."""
    pooling, _, layer = view.partition("_layer")
    if pooling not in POOLINGS or not layer.lstrip("-").isdigit():
        raise WorkflowInputError(f"compression: {view!r} is not a view name like 'first_layer-1'.")
    return pooling, int(layer)
