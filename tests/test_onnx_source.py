"""`source: onnx`: a DistilBERT exported to ONNX (float, and int8-quantised in the QDQ layout of onnxruntime's
static quantiser) converts back into a Hugging Face folder whose hidden states equal the original model's (float)
or those of the original model carrying the dequantised weights s (q - z) (int8)."""
import numpy as np
import pytest

pytestmark = pytest.mark.unit

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from tests.conftest import _wordpiece_tokenizer, make_corpus_texts  # noqa: E402
from lmcompare.models.onnx import compare_with_onnx, convert, dequantise  # noqa: E402
from lmcompare.errors import WorkflowInputError  # noqa: E402


def _tiny_tagger(folder):
    from transformers import DistilBertConfig, DistilBertForTokenClassification

    texts, _ = make_corpus_texts(40)
    tokenizer = _wordpiece_tokenizer(texts)
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=len(tokenizer), dim=16, n_layers=2, n_heads=4, hidden_dim=24,
                              max_position_embeddings=32, num_labels=3, pad_token_id=tokenizer.pad_token_id)
    model = DistilBertForTokenClassification(config).eval()
    with torch.no_grad():  # non-zero biases and norms, so that none is shared by the exporter by chance
        for name, param in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    ids = torch.tensor([tokenizer("the coffee was great")["input_ids"]])
    torch.onnx.export(model, (ids, torch.ones_like(ids)), str(folder / "model.onnx"), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_axes={"input_ids": {0: "b", 1: "t"}, "attention_mask": {0: "b", 1: "t"}})
    return model, tokenizer, texts


def _quantise_qdq(src, dst, per_channel=False):
    """int8 weights as onnxruntime's QDQ format stores them: q, scale, zero point -> DequantizeLinear -> consumer."""
    from onnx import helper, numpy_helper

    proto = onnx.load(str(src))
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    weight_inputs = {n.input[1] for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits}
    weight_inputs |= {n.input[0] for n in graph.node if n.op_type == "Gather" and n.input[0] in inits
                      and numpy_helper.to_array(inits[n.input[0]]).ndim == 2}
    expected = {}
    new_nodes = []
    for name in sorted(weight_inputs):
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        axis = 1
        if per_channel and name.startswith("onnx::MatMul"):
            scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
            zero = np.zeros(scale.shape, dtype=np.int8)
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        else:
            scale = np.float32((w.max() - w.min()) / 255)
            zero = np.int8(np.clip(np.round(-128 - w.min() / scale), -128, 127))
            q = np.clip(np.round(w / scale) + zero, -128, 127).astype(np.int8)
        graph.initializer.remove(inits[name])
        graph.initializer.extend([numpy_helper.from_array(q, name + "_quantized"),
                                  numpy_helper.from_array(np.asarray(scale), name + "_scale"),
                                  numpy_helper.from_array(np.asarray(zero), name + "_zero_point")])
        new_nodes.append(helper.make_node("DequantizeLinear", [name + "_quantized", name + "_scale",
                                                               name + "_zero_point"], [name + "_dq"],
                                          name=name + "_DequantizeLinear", axis=axis))
        expected[name] = (q.astype(np.float32) - np.asarray(zero, np.float32)) * np.asarray(scale, np.float32)
        for node in graph.node:
            for i, value in enumerate(node.input):
                if value == name:
                    node.input[i] = name + "_dq"
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + nodes)
    proto.opset_import[0].version = 19  # the reference evaluator implements DequantizeLinear from 19 on
    onnx.save(proto, str(dst))
    return expected


def _hidden(model, tokenizer, texts):
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                     output_hidden_states=True).hidden_states


def test_float_export_converts_to_the_same_model(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    original, tokenizer, texts = _tiny_tagger(tmp_path / "src")
    info = convert(tmp_path / "src" / "model.onnx", tmp_path / "src" / "tokenizer.json", tmp_path / "out")
    converted = AutoModel.from_pretrained(tmp_path / "out").eval()
    loaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert loaded_tokenizer.is_fast and loaded_tokenizer(texts[0])["input_ids"] == tokenizer(texts[0])["input_ids"]
    assert (converted.config.n_layers, converted.config.dim, converted.config.n_heads,
            converted.config.hidden_dim) == (2, 16, 4, 24)
    assert info["quantised_tensors"] == 0 and info["dropped_tensors"] == ["classifier.bias", "classifier.weight"]
    for ours, theirs in zip(_hidden(converted, tokenizer, texts[:6]), _hidden(original.distilbert, tokenizer, texts[:6])):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5)
    check = compare_with_onnx(tmp_path / "src" / "model.onnx", tmp_path / "out", texts[:3])
    assert check["argmax_agreement"] == 1.0 and check["logit_correlation"] > 1 - 1e-6


@pytest.mark.parametrize("per_channel", [False, True])
def test_int8_export_converts_to_the_dequantised_weights(tmp_path, per_channel):
    from transformers import AutoModel

    original, tokenizer, texts = _tiny_tagger(tmp_path / "src")
    expected = _quantise_qdq(tmp_path / "src" / "model.onnx", tmp_path / "src" / "q.onnx", per_channel)
    info = convert(tmp_path / "src" / "q.onnx", tmp_path / "src" / "tokenizer.json", tmp_path / "out")
    assert info["quantised_tensors"] == len(expected) and info["weight_dtype"] == "int8 (dequantised)"
    assert (info["per_channel_tensors"] > 0) == per_channel
    converted = AutoModel.from_pretrained(tmp_path / "out").eval()
    # the reference: the original model with each quantised weight replaced by s (q - z), matched by value
    # (a MatMul stores W^T; quantisation moves a weight by at most half a step, far less than 1 % of its range)
    reference = original.distilbert
    replaced = 0
    with torch.no_grad():
        for name, param in reference.named_parameters():
            for value in expected.values():
                for candidate in (value, value.T):
                    if candidate.shape == tuple(param.shape) and np.allclose(candidate, param.numpy(),
                                                                             atol=np.abs(value).max() / 100):
                        param.copy_(torch.from_numpy(np.ascontiguousarray(candidate)))
                        replaced += 1
    assert replaced == len(expected) - 1  # every quantised weight but the classifier head's
    for name, param in converted.state_dict().items():
        np.testing.assert_allclose(param.numpy(), reference.state_dict()[name].numpy(), atol=1e-7, err_msg=name)
    for ours, theirs in zip(_hidden(converted, tokenizer, texts[:4]), _hidden(reference, tokenizer, texts[:4])):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5)


def test_dequantise_matches_the_onnx_reference_evaluator():
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    q = rng.integers(-128, 128, size=(5, 3)).astype(np.int8)
    for scale, zero, axis in [(np.float32(0.02), np.int8(3), 1),
                              (np.array([0.1, 0.2, 0.3], np.float32), np.array([1, -2, 0], np.int8), 1),
                              (rng.random(5).astype(np.float32), np.zeros(5, np.int8), 0)]:
        node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=axis)
        graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(q, "q"), numpy_helper.from_array(np.asarray(scale), "s"),
                                   numpy_helper.from_array(np.asarray(zero), "z")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
        reference = ReferenceEvaluator(model).run(None, {})[0]
        np.testing.assert_allclose(dequantise(q, scale, zero, axis), reference, rtol=1e-7)


def test_an_onnx_file_of_another_architecture_is_refused(tmp_path):
    """A BERT export (node names /bert/..., parameters bert.*) is not taken for a DistilBERT."""
    from onnx import TensorProto, helper, numpy_helper

    texts, _ = make_corpus_texts(20)
    _wordpiece_tokenizer(texts).backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    table = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    node = helper.make_node("Gather", ["bert.embeddings.word_embeddings.weight", "input_ids"], ["h"],
                            name="/bert/embeddings/word_embeddings/Gather")
    graph = helper.make_graph([node], "bert", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, None)],
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(table, "bert.embeddings.word_embeddings.weight")])
    onnx.save(helper.make_model(graph), str(tmp_path / "bert.onnx"))
    with pytest.raises(WorkflowInputError, match="only DistilBERT exports"):
        convert(tmp_path / "bert.onnx", tmp_path / "tokenizer.json", tmp_path / "out")


def test_materialise_an_onnx_source_records_its_provenance(tmp_path):
    import hashlib

    from lmcompare.models.materialise import materialise

    _tiny_tagger(tmp_path / "src")
    entry = {"name": "tagger", "source": "onnx", "path": str(tmp_path / "src" / "model.onnx"),
             "tokenizer": "tokenizer.json"}
    record = materialise(entry, tmp_path / "models" / "tagger")
    assert record["architecture"] == "DistilBertModel" and record["tokenizer"] == "TokenizersBackend"
    assert record["onnx_sha256"] == hashlib.sha256((tmp_path / "src" / "model.onnx").read_bytes()).hexdigest()
    with pytest.raises(WorkflowInputError, match="no ONNX file"):
        materialise({**entry, "name": "missing", "path": str(tmp_path / "nope.onnx")}, tmp_path / "models" / "m")
