"""Loading and saving model folders: offline loading with the best attention kernel, provenance, checksums.

Used by extraction and by every rule that derives a model (perturbation, fine-tuning).
"""

import hashlib
import logging
import os
from pathlib import Path

from lmcompare.errors import WorkflowInputError
from lmcompare.files import read_json, update_digest, write_json
from lmcompare.paths import weight_files

LOG = logging.getLogger("workflow")

PROVENANCE_FILE = "provenance.json"

def weights_sha256(folder) -> str:
    """sha256 over the model's weight files (name and content, in name order)."""
    files = weight_files(folder)
    if not files:
        raise WorkflowInputError(
            f"model folder {folder} holds no weight file (*.safetensors or *.bin); the model source is "
            f"incomplete: check its path or re-download it."
        )
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        update_digest(digest, path)
    return digest.hexdigest()


def write_provenance(folder, info: dict) -> dict:
    """Write provenance.json into a model folder (adds the weight checksum)."""
    record = dict(info)
    record["weights_sha256"] = weights_sha256(folder)
    write_json(record, Path(folder) / PROVENANCE_FILE)
    return record


def read_provenance(folder) -> dict:
    path = Path(folder) / PROVENANCE_FILE
    if not path.exists():
        raise WorkflowInputError(f"{path} is missing: {folder} was not materialised by this workflow; rerun it.")
    return read_json(path)


def pick_device(requested: str = "auto"):
    import torch

    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            LOG.warning("device 'cuda' requested but no GPU is visible; running on the CPU")
            return torch.device("cpu")
        return torch.device("cuda")
    return torch.device("cpu")


# What `compute_dtype: auto` runs on a GPU: float32 with TF32 off, the only precision measured within the tolerance
# of docs/performance.md "GPU precision" (benchmarks/bf16_vs_fp32.py: bf16 moves probe accuracies by 2 test examples
# of 120; tf32, whose hidden-state error is ~16x smaller than bf16's, is not yet measured on the analyses).
AUTO_GPU_PRECISION = "float32"


def pick_dtype(requested: str, device):
    """The torch dtype of the model; `tf32` (and `auto` on a GPU) is float32 with TF32 matrix products enabled."""
    import torch

    if requested == "auto":
        requested = AUTO_GPU_PRECISION if device.type == "cuda" else "float32"
    if requested == "tf32":
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        return torch.float32
    if requested == "float32" and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if requested == "float16" and device.type == "cpu":
        LOG.warning("compute dtype float16 asked for on the CPU; using float32 there")
        return torch.float32
    if requested == "bfloat16" and device.type == "cpu":
        LOG.warning("compute dtype bfloat16 on the CPU: real bf16 arithmetic, but without bf16 instructions it runs "
                    "about 25x slower than float32 (benchmarks/bf16_vs_fp32.py emulates it at float32 speed)")
    return getattr(torch, requested)


def dtype_label(dtype, device) -> str:
    """The precision a forward pass ran in, for the metadata: float32, tf32, float16 or bfloat16."""
    import torch

    if dtype == torch.float32 and device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return str(dtype).replace("torch.", "")


def load_tokenizer(folder):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise WorkflowInputError(
            f"cannot load a tokenizer from {folder} ({err}); the model folder needs tokenizer files "
            f"(tokenizer.json or vocab files)."
        ) from err


def route_transformers_logs() -> None:
    """Send transformers' log records (its load report: "... newly initialized", unexpected keys) through the root
    logger, i.e. into the job's log file as well as stderr, instead of transformers' own stderr-only handler."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()


def load_model(folder, *, auto_class=None, device=None, dtype=None, trust_remote_code: bool = False, **kwargs):
    """Load a model folder offline, with SDPA attention where the architecture supports it (eager otherwise).
    PyTorch pickle weights (.bin) are read with weights_only=True (tensors only: unpickling runs no code); the
    model's own code runs only with trust_remote_code (the model's config switch, recorded in its provenance)."""
    import torch
    from transformers import AutoModel

    route_transformers_logs()
    auto_class = auto_class or AutoModel
    dtype = dtype or torch.float32
    common = dict(local_files_only=True, dtype=dtype, trust_remote_code=trust_remote_code, weights_only=True, **kwargs)
    if not (Path(folder) / "config.json").exists():
        raise WorkflowInputError(f"{folder} has no config.json: it is not a Hugging Face model folder.")
    try:
        model = auto_class.from_pretrained(folder, attn_implementation="sdpa", **common)
    except (ValueError, ImportError) as err:
        if "sdpa" not in str(err).lower() and "scaled_dot_product" not in str(err).lower():
            raise
        LOG.info("%s does not support SDPA attention; using eager attention", folder)
        model = auto_class.from_pretrained(folder, attn_implementation="eager", **common)
    except OSError as err:
        raise WorkflowInputError(f"cannot load model weights from {folder} ({err}).") from err
    model.eval()
    if device is not None:
        model.to(device)
    return model


def environment_summary() -> dict:
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
        "host_cpus": os.cpu_count(),
    }
