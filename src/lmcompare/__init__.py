"""lmcompare: language models compared from the inside.

The library behind the workflow: every stage's maths and I/O, importable without Snakemake.

    import lmcompare
    states = lmcompare.load_hidden_states("results/hidden/reviews/minilm/pooled.parquet")
    x = states["mean", -1]              # the last layer's mean-pooled vectors, (n_examples, hidden_size)

Subpackages, one per stage: models, data, extraction, hidden_states (the one reader), decomposition, variability,
compression, geometry, twotower, report. `import lmcompare` is light: the API below is imported on first use.
"""

__version__ = "0.1.0"

from lmcompare.exports import lazy_exports

# name -> the module that defines it (lmcompare/exports.py); imported on first use, so that `import lmcompare` (the
# rule files do) stays light
_API = {
    "load_hidden_states": "hidden_states",
    "HiddenStates": "hidden_states",
    "WorkflowInputError": "errors",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
