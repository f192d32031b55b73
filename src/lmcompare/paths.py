"""Where each stage's files live under the working directory (the contracts of docs/ARCHITECTURE.md).

Imported by the rule files at parse time: standard library only.
"""

import os
import re
from pathlib import Path


def model_dir(model: str) -> str:
    return f"results/models/{model}"


def dataset_path(dataset: str) -> str:
    return f"results/data/{dataset}.parquet"


def pooled_path(dataset: str, model: str) -> str:
    return f"results/hidden/{dataset}/{model}/pooled.parquet"


def tokens_path(dataset: str, model: str) -> str:
    return f"results/hidden/{dataset}/{model}/tokens.parquet"


HIDDEN_PATH = re.compile(r"(?:^|/)results/hidden/(?P<dataset>[^/]+)/(?P<model>[^/]+)/(?:pooled|tokens)\.parquet$")


def hidden_path_owner(path: str | os.PathLike) -> tuple[str, str] | None:
    """(dataset, model) of a path laid out as pooled_path / tokens_path lay it out; None for any other path."""
    match = HIDDEN_PATH.search(Path(path).as_posix())
    return (match["dataset"], match["model"]) if match else None


# Files that hold a model's weights, in any format transformers reads (the provenance hash covers exactly these).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """A model folder's weight files, in name order (none when the folder does not exist yet)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
