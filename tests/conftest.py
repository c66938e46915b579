"""Shared fixtures: tiny random Llama models for units, the bundled SmolLM2 for integration."""

from __future__ import annotations

import random

import pytest
import torch

from tunesmith.data.chat import IGNORE, TokenizedExample


def tiny_llama(seed: int = 0, vocab: int = 97, tie: bool = True):
    """A 2-layer random Llama (GQA: 4 query heads, 2 key/value heads) in fp32 with SDPA attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=tie, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).float()


@pytest.fixture
def tiny_model():
    return tiny_llama()


def random_samples(n: int, seed: int = 0, vocab: int = 97, lo: int = 6, hi: int = 30) -> list[TokenizedExample]:
    """Samples with a random prompt part (not trained) and a random answer part (trained)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(lo, hi)
        ids = [rng.randrange(vocab) for _ in range(length)]
        cut = rng.randint(2, length - 2)
        out.append(TokenizedExample(ids, [IGNORE] * cut + ids[cut:], "rand", i + 1))
    return out


@pytest.fixture(scope="session")
def smol_tokenizer():
    from tunesmith.models import load_tokenizer

    return load_tokenizer(None, log=lambda *a: None)


@pytest.fixture(scope="session")
def smol_model():
    from tunesmith.models import load_model

    return load_model(None, log=lambda *a: None)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smol_tokenizer):
    """A tiny random Llama with SmolLM2's vocabulary and tokenizer, saved as a model folder."""
    d = tmp_path_factory.mktemp("tiny") / "model"
    model = tiny_llama(seed=5, vocab=len(smol_tokenizer))
    model.config.eos_token_id = smol_tokenizer.eos_token_id
    model.save_pretrained(d)
    smol_tokenizer.save_pretrained(d)
    return d


@pytest.fixture
def adder_recipe(tmp_path, tiny_dir):
    """A function train_yaml -> path of a recipe training the tiny model on 16 'Add i and i' rows into
    tmp_path/run, with `train: {train_yaml}` (a YAML flow mapping's inside)."""
    import json

    def write(train_yaml: str):
        rows = tmp_path / "rows.jsonl"
        rows.write_text("".join(json.dumps({"instruction": f"Add {i} and {i}", "output": str(2 * i)}) + "\n"
                                for i in range(16)))
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"model: {tiny_dir}\ndata:\n  train: [{rows}]\noutput:\n  dir: {tmp_path / 'run'}\n"
                          f"train: {{{train_yaml}}}\n")
        return recipe
    return write
