"""Perturbed models, a model source (`source: perturb` in config `models`): the family of graded quality of
Marbut et al. (arXiv:2406.12159): every encoder weight W <- (1 - a) W + a N(0, 1), seeded.

Which tensors ("every encoder weight", the authors' model_perturb.py): the parameters of the base model's
`encoder` sub-module whose name ends in `weight`: the attention and feed-forward matrices and the LayerNorm
gains of every layer (for BERT exactly `encoder.*weight`, as in the authors' code). Biases, embeddings
(word, position, token type and their LayerNorm) and the pooler are left as they are. A model without an
`encoder` sub-module (GPT-2, DistilBERT, ...) uses its stack of transformer layers (the largest ModuleList of
the base model) as the encoder. `tensors: encoder_parameters` (geometry.perturb_tensors) also perturbs the
encoder's biases, a named extension.

Noise: one torch.Generator seeded with `seed`, drawn in the model's parameter order, in float32; a = 0 leaves
every value unchanged (1·W + 0·N = W exactly), a = 1 replaces the weights by pure N(0, 1) noise.
Each model draws its own noise, as the authors do: without an explicit `seed` in its entry the seed is derived
from the model's name (`derived_seed`: the first 4 bytes of sha256("perturb:" + name)), so two perturbed models
never share one noise tensor by accident (a shared seed makes a family one line in weight space). The seed and
where it came from are in provenance.json (`seed`, `seed_source`).
The folder is written into a temporary sibling and renamed, so results/models/{model} is always complete.
"""

import logging
import shutil
import time
from pathlib import Path

from lmcompare.models import loading as model_loading
from lmcompare import files, paths
from lmcompare.errors import WorkflowInputError

LOG = logging.getLogger("workflow")

TENSOR_MODES = ("encoder_weights", "encoder_parameters")
# the README describes the base; .snakemake_timestamp is Snakemake's marker of a directory output, not a model file
SKIPPED_FILES = {model_loading.PROVENANCE_FILE, "README.md", ".gitattributes", ".snakemake_timestamp"}


def derived_seed(name: str) -> int:
    """The seed of a perturbed model without an explicit one: the first 4 bytes (big-endian) of
    sha256("perturb:" + name), an integer in [0, 2**32). Stable across runs, machines and Python versions."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"perturb:{name}".encode()).digest()[:4], "big")


def model_seed(name: str, seed: int | None) -> tuple[int, str]:
    """(seed, seed_source) of one perturbed model: the entry's explicit seed, else the one derived from its name."""
    if seed is not None:
        return int(seed), "config"
    return derived_seed(name), "derived from the model name"


def family_entries(family: dict, models: dict) -> list[dict]:
    """The members of geometry.family ({base, alphas, replicates}): for every alpha, `replicates` perturbed
    models of `base` named '{base}-p{alpha:g}-r{i}' (i = 1..replicates), each with the seed derived from its name.
    `models` are the configured model entries by name (the base must be one; no member may reuse a name)."""
    base = family.get("base")
    alphas = list(family.get("alphas") or [])
    replicates = int(family.get("replicates", 0))
    if base is None or not alphas or replicates == 0:
        return []
    if base not in models:
        raise WorkflowInputError(
            f"config: geometry.family.base {base!r} is not a configured model name ({sorted(models)}); name one of "
            f"the models, or set geometry.family.base: null for no family."
        )
    if len(set(alphas)) != len(alphas):
        raise WorkflowInputError(f"config: geometry.family.alphas lists a value twice: {alphas}.")
    entries = []
    for alpha in alphas:
        for replicate in range(1, replicates + 1):
            name = f"{base}-p{alpha:g}-r{replicate}"
            if name in models:
                raise WorkflowInputError(
                    f"config: geometry.family member {name!r} has the name of a configured model; rename that "
                    f"model (the family names its members '<base>-p<alpha>-r<replicate>')."
                )
            entries.append({"name": name, "source": "perturb", "base": base, "alpha": float(alpha), "seed": None,
                            "replicate": replicate})
    return entries


def encoder_module(model):
    """(dotted prefix, module) of the encoder of a transformers model: base_model.encoder, else the largest
    ModuleList (the layer stack) of the base model."""
    import torch

    base = model.base_model
    prefix = model.base_model_prefix if base is not model else ""
    encoder = getattr(base, "encoder", None)
    if isinstance(encoder, torch.nn.Module) and any(True for _ in encoder.parameters()):
        return _join(prefix, "encoder"), encoder
    best, best_size = None, 0
    for name, module in base.named_modules():
        if isinstance(module, torch.nn.ModuleList):
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = (_join(prefix, name), module), size
    if best is None:
        raise WorkflowInputError(
            f"{type(model).__name__} has no 'encoder' sub-module and no layer stack (ModuleList): perturbation "
            f"does not know which tensors are its encoder weights. Perturb a transformer encoder model."
        )
    return best


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def perturbed_parameter_names(model, tensors: str = "encoder_weights") -> list[str]:
    """Full parameter names (as in model.named_parameters()) that the perturbation replaces, in model order."""
    if tensors not in TENSOR_MODES:
        raise WorkflowInputError(f"geometry.perturb_tensors must be one of {TENSOR_MODES}, got {tensors!r}.")
    prefix, module = encoder_module(model)
    inside = {_join(prefix, name) for name, _ in module.named_parameters()}
    names = []
    for name, _ in model.named_parameters():
        if name not in inside:
            continue
        if tensors == "encoder_weights" and not name.endswith("weight"):
            continue
        names.append(name)
    return names


def perturb_(model, alpha: float, seed: int, tensors: str = "encoder_weights") -> list[str]:
    """In place: W <- (1 - alpha) W + alpha N(0, 1) on the chosen encoder tensors. Returns their names."""
    import torch

    if not 0.0 <= alpha <= 1.0:
        raise WorkflowInputError(f"perturbation alpha must be in [0, 1], got {alpha}.")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    names = perturbed_parameter_names(model, tensors)
    chosen = set(names)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name not in chosen:
                continue
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            mixed = (1.0 - alpha) * param.detach().float().cpu() + alpha * noise
            param.copy_(mixed.to(param.dtype))
    return names


def copy_support_files(base_dir, target_dir) -> list[str]:
    """Copy the base folder's top-level non-weight files (config, tokenizer, ...) into the new folder."""
    copied = []
    for path in sorted(Path(base_dir).iterdir()):
        if not path.is_file() or path.name in SKIPPED_FILES or path.suffix in paths.WEIGHT_SUFFIXES:
            continue
        if path.name.endswith(".index.json"):  # sharded-weight index of the base: save_pretrained writes its own
            continue
        shutil.copy2(path, Path(target_dir) / path.name)
        copied.append(path.name)
    return copied


def perturb_model_folder(base_dir, out_dir, *, alpha: float, seed: int, base_name: str, tensors: str = "encoder_weights",
                         trust_remote_code: bool = False, seed_source: str = "config", family: str | None = None) -> dict:
    """Write results/models/{model}: base weights perturbed, tokenizer and config copied, provenance.json."""
    import torch

    started = time.perf_counter()
    out_dir = Path(out_dir)
    if not (Path(base_dir) / "config.json").exists():
        raise WorkflowInputError(
            f"base model folder {base_dir} of perturbed model {out_dir.name!r} has no config.json: materialise the "
            f"base model {base_name!r} first (it must be a configured model)."
        )
    model = model_loading.load_model(base_dir, dtype=torch.float32, trust_remote_code=trust_remote_code)
    base_sha = model_loading.read_provenance(base_dir).get("weights_sha256") if (
        Path(base_dir) / model_loading.PROVENANCE_FILE).exists() else model_loading.weights_sha256(base_dir)
    names = perturb_(model, alpha, seed, tensors)
    n_values = sum(p.numel() for n, p in model.named_parameters() if n in set(names))
    n_total = sum(p.numel() for p in model.parameters())
    LOG.info("perturbed %d tensors (%d of %d parameters, %.1f%%) of %s with alpha=%g seed=%d (%s; %s)",
             len(names), n_values, n_total, 100.0 * n_values / n_total, base_name, alpha, seed, seed_source, tensors)
    with files.atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        copied = copy_support_files(base_dir, tmp)
        model.save_pretrained(tmp, safe_serialization=True)
        record = model_loading.write_provenance(tmp, {
            "source": "perturb",
            "revision": None,
            "name": out_dir.name,
            "architecture": type(model).__name__,
            "model_type": model.config.model_type,
            "base": base_name,
            "base_weights_sha256": base_sha,
            "alpha": float(alpha),
            "seed": int(seed),
            "seed_source": seed_source,
            "geometry_family": family,
            "formula": "W <- (1 - alpha) * W + alpha * N(0, 1)",
            "tensors": tensors,
            "perturbed_tensors": names,
            "n_perturbed_values": int(n_values),
            "n_parameters": int(n_total),
            "copied_files": copied,
            "environment": model_loading.environment_summary(),
        })
    LOG.info("wrote %s (weights sha256 %s) in %.1f s", out_dir, record["weights_sha256"][:12],
             time.perf_counter() - started)
    return record
