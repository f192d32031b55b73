"""Turn an ONNX export of a DistilBERT model (float or int8 QDQ-quantised) back into a Hugging Face model folder.

An ONNX file exported from a Hugging Face model by torch.onnx.export keeps the module path in every node name
(`/distilbert/transformer/layer.0/attention/q_lin/MatMul`) and stores a Linear layer as a MatMul with the
transposed weight W^T, the bias as a named float initializer. A statically quantised file (onnxruntime
`quantize_static`, QDQ format) stores each weight as an int8 initializer `q` with a scale `s` and zero point `z`
feeding a DequantizeLinear node: the weight is s (q - z), per tensor or per channel (`axis`). `onnx_state_dict`
reads every weight that way, names it by the module path of the node that consumes it and transposes MatMul
weights back: a DistilBertModel state dict. The activations' QuantizeLinear/DequantizeLinear pairs are dropped:
the converted model runs the dequantised weights in float32 (what the ONNX graph computes up to the rounding of
its activations to 8 bits; `compare_with_onnx` measures how close the two are).

Used by materialise_model.py for `source: onnx` models; tests/test_onnx_source.py builds small ONNX files.
"""

import logging
import re
from pathlib import Path

import numpy as np

from lmcompare.errors import WorkflowInputError
from lmcompare.files import file_sha256

LOG = logging.getLogger("workflow")
ROOT_PREFIX = "distilbert."


def _attribute(node, name, default=None):
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def dequantise(q: np.ndarray, scale: np.ndarray, zero_point, axis: int = 1) -> np.ndarray:
    """ONNX DequantizeLinear: (q - zero_point) * scale, per tensor or per channel along `axis` (float32)."""
    values = q.astype(np.float32)
    scale = np.asarray(scale, dtype=np.float32)
    zero = np.zeros_like(scale) if zero_point is None else np.asarray(zero_point).astype(np.float32)
    if scale.ndim == 1 and scale.size > 1:  # per channel
        shape = [1] * values.ndim
        shape[axis % values.ndim] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (values - zero) * scale


def module_path(node_name: str) -> str:
    """'/distilbert/transformer/layer.0/ffn/lin1/MatMul' -> 'distilbert.transformer.layer.0.ffn.lin1'."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) < 2:
        raise WorkflowInputError(f"ONNX node {node_name!r} has no module path in its name; the file was not "
                                 f"exported by torch.onnx.export from a Hugging Face model.")
    return ".".join(parts[:-1])


def onnx_state_dict(model_proto) -> tuple[dict, dict]:
    """{parameter name: float32 array} of the exported model, and facts about the file (quantisation, counts)."""
    from onnx import numpy_helper

    graph = model_proto.graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weights = {}  # tensor name (an initializer or a DequantizeLinear output) -> float32 value
    quantised = 0
    per_channel = 0
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in initializers:
            q = initializers[node.input[0]]
            scale = initializers[node.input[1]]
            zero = initializers[node.input[2]] if len(node.input) > 2 and node.input[2] else None
            weights[node.output[0]] = dequantise(q, scale, zero, _attribute(node, "axis", 1))
            quantised += 1
            per_channel += int(np.asarray(scale).size > 1)
    state = {}
    named = dict(initializers)
    for node in graph.node:  # the exporter shares equal initializers and names the copies through Identity nodes
        if node.op_type == "Identity" and node.input[0] in initializers:
            named[node.output[0]] = initializers[node.input[0]]
    for name, value in named.items():  # float parameters kept under their module names (biases, norms)
        if value.dtype.kind == "f" and re.search(r"\.(weight|bias)$", name):
            state[name] = value.astype(np.float32)
    for node in graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2:
            weight = weights.get(node.input[1], named.get(node.input[1]))
            if weight is not None and weight.ndim == 2:
                state[module_path(node.name) + ".weight"] = np.ascontiguousarray(weight.T.astype(np.float32))
        elif node.op_type == "Gather" and node.input[0] in weights:
            state[module_path(node.name) + ".weight"] = weights[node.input[0]]
    facts = {"quantised_tensors": quantised, "per_channel_tensors": per_channel,
             "weight_dtype": "int8 (dequantised)" if quantised else "float32", "tensors": len(state)}
    return state, facts


def _head_dim(graph, prefix: str) -> int | None:
    """Attention head size from the query/key scaling constants of the first layer (d^-1/4 each, or 1/sqrt(d))."""
    from onnx import numpy_helper

    constants = {}
    for node in graph.node:
        if node.op_type == "Constant":
            value = _attribute(node, "value")
            if value is not None:
                constants[node.output[0]] = numpy_helper.to_array(value)
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    scalars = {**constants, **{k: v for k, v in initializers.items() if v.size == 1}}
    muls, divs = [], []
    for node in graph.node:
        if not node.name.startswith(prefix) or node.op_type not in ("Mul", "Div"):
            continue
        values = [float(np.asarray(scalars[i]).ravel()[0]) for i in node.input if i in scalars
                  and np.asarray(scalars[i]).size == 1]
        if values:
            (muls if node.op_type == "Mul" else divs).append(values[0])
    if len(muls) == 2 and np.isclose(muls[0], muls[1]) and muls[0] < 1:
        return int(round(muls[0] ** -4))
    if len(muls) == 1 and muls[0] < 1:
        return int(round(muls[0] ** -2))
    if len(divs) == 1 and divs[0] > 1:
        return int(round(divs[0] ** 2))
    return None


def distilbert_config(state: dict, model_proto):
    """A DistilBertConfig with the sizes read off the weights and the graph (heads, GELU, LayerNorm epsilon)."""
    from transformers import DistilBertConfig

    graph = model_proto.graph
    try:
        vocab, dim = state[ROOT_PREFIX + "embeddings.word_embeddings.weight"].shape
        positions = state[ROOT_PREFIX + "embeddings.position_embeddings.weight"].shape[0]
        hidden = state[ROOT_PREFIX + "transformer.layer.0.ffn.lin1.weight"].shape[0]
    except KeyError as err:
        raise WorkflowInputError(
            f"the ONNX file holds no DistilBERT parameter {err.args[0]!r}: only DistilBERT exports "
            f"(node names /distilbert/...) are converted. Found e.g. {sorted(state)[:5]}."
        ) from err
    layers = sorted({int(m.group(1)) for k in state for m in [re.match(r"distilbert\.transformer\.layer\.(\d+)\.", k)]
                     if m})
    head_dim = _head_dim(graph, "/distilbert/transformer/layer.0/attention/")
    if not head_dim or dim % head_dim:
        raise WorkflowInputError("cannot read the attention head size off the ONNX graph (no q/k scaling constant "
                                 "in layer 0); the file is not a DistilBERT export this converter knows.")
    epsilons = [_attribute(n, "epsilon", 1e-5) for n in graph.node if n.op_type == "LayerNormalization"]
    activation = "gelu" if any(n.op_type == "Erf" for n in graph.node) else "gelu_new" if any(
        n.op_type == "Tanh" for n in graph.node) else None
    if activation is None or not epsilons:
        raise WorkflowInputError("the ONNX graph has no Erf/Tanh (GELU) or no LayerNormalization node: not a "
                                 "DistilBERT export (an older opset that spells LayerNorm out is not supported).")
    return DistilBertConfig(vocab_size=int(vocab), dim=int(dim), n_layers=len(layers), n_heads=int(dim // head_dim),
                            hidden_dim=int(hidden), max_position_embeddings=int(positions), activation=activation,
                            sinusoidal_pos_embds=False, architectures=["DistilBertModel"],
                            layer_norm_eps=float(epsilons[0]))


def convert(onnx_path, tokenizer_path, target) -> dict:
    """Write a DistilBertModel folder (safetensors, config, fast tokenizer) into `target`; returns provenance."""
    import onnx
    import torch
    from transformers import DistilBertModel

    onnx_path, tokenizer_path, target = Path(onnx_path), Path(tokenizer_path), Path(target)
    try:
        model_proto = onnx.load(str(onnx_path))
    except Exception as err:  # onnx raises DecodeError and others
        raise WorkflowInputError(f"{onnx_path} is not a readable ONNX file ({err}).") from err
    state, facts = onnx_state_dict(model_proto)
    config = distilbert_config(state, model_proto)
    ours = {k[len(ROOT_PREFIX):]: torch.from_numpy(v) for k, v in state.items() if k.startswith(ROOT_PREFIX)}
    dropped = sorted(k for k in state if not k.startswith(ROOT_PREFIX))
    model = DistilBertModel(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(ours)), sorted(set(ours) - expected)
    if missing or unexpected:
        raise WorkflowInputError(f"{onnx_path}: the ONNX weights do not fill a DistilBertModel (missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]}).")
    model.load_state_dict(ours, strict=True)
    for name, tensor in model.state_dict().items():
        if tensor.shape != ours[name].shape:
            raise WorkflowInputError(f"{onnx_path}: {name} has shape {tuple(ours[name].shape)}, expected "
                                     f"{tuple(tensor.shape)}.")
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    if not tokenizer_path.exists():
        raise WorkflowInputError(f"no tokenizer file {tokenizer_path} next to the ONNX file; set the entry's "
                                 f"`tokenizer` to the tokenizer.json the model was exported with.")
    tokenizer_from_file(tokenizer_path, config.max_position_embeddings).save_pretrained(target)
    LOG.info("converted %s: %d layers, width %d, %d heads, vocabulary %d, %s weights; dropped %s",
             onnx_path.name, config.n_layers, config.dim, config.n_heads, config.vocab_size, facts["weight_dtype"],
             dropped)
    return {"onnx_file": str(onnx_path), "onnx_sha256": file_sha256(onnx_path), "onnx_producer":
            f"{model_proto.producer_name} {model_proto.producer_version}".strip(),
            "tokenizer_file": str(tokenizer_path), "dropped_tensors": dropped, **facts}


def tokenizer_from_file(tokenizer_path, model_max_length: int = 512):
    """A fast tokenizer from a BERT-style tokenizer.json ([CLS] ... [SEP], [PAD], [UNK], [MASK])."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_path), unk_token="[UNK]", sep_token="[SEP]",
                                   pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
                                   model_max_length=model_max_length)


def compare_with_onnx(onnx_path, folder, texts, head_prefix: str = "classifier") -> dict:
    """Run the ONNX graph (onnx's reference evaluator) and the converted model + the ONNX file's own head on texts:
    the correlation of the logits and the agreement of their argmax per token (1.0 for a float export; below for
    int8 files, whose activations the ONNX graph also rounds)."""
    import onnx
    import torch
    from onnx.reference import ReferenceEvaluator
    from transformers import AutoModel, AutoTokenizer

    model_proto = onnx.load(str(onnx_path))
    state, _ = onnx_state_dict(model_proto)
    head = [k for k in state if k.startswith(head_prefix + ".")]
    if not head:
        return {"compared": False, "reason": f"no {head_prefix}.* head in the ONNX file"}
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    for opset in model_proto.opset_import:
        # onnx's evaluator implements DequantizeLinear from opset 19 on; 17 -> 19 changes nothing these graphs use
        if opset.domain in ("", "ai.onnx") and opset.version < 19:
            opset.version = 19
    evaluator = ReferenceEvaluator(model_proto)
    inputs = {i.name for i in model_proto.graph.input}
    ours, theirs = [], []
    for text in texts:
        encoded = tokenizer(text, return_tensors="np", truncation=True, max_length=64)
        feed = {"input_ids": encoded["input_ids"].astype(np.int64),
                "attention_mask": encoded["attention_mask"].astype(np.int64)}
        theirs.append(evaluator.run(None, {k: v for k, v in feed.items() if k in inputs})[0][0])
        with torch.no_grad():
            hidden = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state[0].numpy()
        ours.append(hidden @ state[head_prefix + ".weight"].T + state[head_prefix + ".bias"])
    ours, theirs = np.concatenate(ours), np.concatenate(theirs)
    return {"compared": True, "tokens": int(len(ours)),
            "logit_correlation": float(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]),
            "argmax_agreement": float(np.mean(ours.argmax(1) == theirs.argmax(1)))}
