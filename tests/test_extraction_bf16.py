"""Mean pooling under bf16, the GPU's compute dtype, checked on the CPU: the count of non-special tokens must not be
taken in bf16 (which holds integers exactly only up to 256), so inputs longer than 256 tokens keep their scale."""
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from lmcompare.extraction import extract as extract_hidden_states
from lmcompare import hidden_states
from lmcompare.extraction.extract import ExtractionSettings, extract, mean_pool
from lmcompare.data.prepare import build_dataset, write_dataset

pytestmark = pytest.mark.unit


def test_mean_pool_of_bf16_states_longer_than_256_tokens_equals_a_float64_mean():
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(3, 600, 16, generator=generator).to(torch.bfloat16)
    content = torch.zeros(3, 600, dtype=torch.long)
    content[0, 1:302] = 1   # 301 content tokens: bf16 rounds 301 to 300
    content[1, 1:512] = 1   # 511 -> 512 in bf16
    content[2, 3:260] = 1   # 257 -> 256 in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = mean_pool(states, content)
    assert pooled.dtype == torch.float32
    for row in range(3):
        keep = content[row].bool()
        reference = states[row][keep].to(torch.float64).mean(0).numpy()
        np.testing.assert_allclose(pooled[row].numpy(), reference, rtol=1e-5, atol=1e-6)


def test_extraction_in_bf16_keeps_the_scale_of_a_long_input(tiny_models, tiny_corpus, tmp_path, monkeypatch):
    """The whole extraction path with the model run in bf16 (forced on the CPU, as on a GPU) and a 400-token text:
    the stored mean equals the float64 mean of the same bf16 hidden states."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from lmcompare.models.loading import load_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["bert"])
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=37, max_position_embeddings=512,
                                 pad_token_id=tokenizer.pad_token_id))
    folder = tmp_path / "long-bert"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    words = " ".join(tiny_corpus[1][:40]).split()

    def text_with_content_tokens(low):
        """The shortest prefix of the corpus with an odd number (> low) of non-special tokens."""
        for n in range(len(words)):
            text = " ".join(words[:n])
            count = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            if count > low and count % 2 == 1:
                return text
        raise AssertionError("the corpus is too short")

    texts = [text_with_content_tokens(256), text_with_content_tokens(330)]
    raw = pd.DataFrame({"text": texts, "label": ["great", "other"]})
    frame, _ = build_dataset(raw, {"name": "long", "text_column": "text", "label_column": "label",
                                   "test_fraction": 0.5, "seed": 0})
    dataset = tmp_path / "long.parquet"
    write_dataset(frame, dataset, {"name": "long"})
    monkeypatch.setattr(extract_hidden_states, "pick_dtype", lambda requested, device: torch.bfloat16)
    settings = ExtractionSettings(max_length=400, batch_tokens=400, sort_window=2, token_layers=(-1,),
                                  compute_dtype="bfloat16", device="cpu")
    pooled_path, tokens_path = tmp_path / "pooled.parquet", tmp_path / "tokens.parquet"
    extract(folder, dataset, pooled_path, tokens_path, settings, model_name="m", dataset_name="long", progress=False)
    pooled = pq.read_table(pooled_path)
    assert hidden_states.read_hidden_metadata(pooled_path)["compute_dtype"] == "bfloat16"
    reference_model = load_model(folder, dtype=torch.bfloat16)
    for row, text in enumerate(frame["text"]):
        enc = tokenizer(text, truncation=True, max_length=400, return_tensors="pt", return_special_tokens_mask=True)
        special = enc.pop("special_tokens_mask")[0].bool()
        n_content = int((~special).sum())
        assert float(torch.tensor(n_content, dtype=torch.bfloat16)) != n_content  # a count bf16 cannot hold
        with torch.no_grad():
            hidden = reference_model(**enc, output_hidden_states=True).hidden_states
        index = pooled.column("example_id").to_pylist().index(int(frame["example_id"].iloc[row]))
        for layer in range(len(hidden)):
            mean = hidden_states.vectors(pooled.slice(index, 1), hidden_states.pooled_column(layer, "mean"))[0]
            reference = hidden[layer][0][~special].to(torch.float64).mean(0).numpy()
            np.testing.assert_allclose(mean, reference, rtol=1e-4, atol=1e-4)
