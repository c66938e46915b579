"""GGUF export: metadata, tensor layout, tokenizer, and logits of the file read back by transformers.

A tiny random Llama with SmolLM2's vocabulary (49152) and the real SmolLM2 tokenizer is exported;
transformers' own GGUF loader (which dequantizes and undoes llama.cpp's Q/K permutation) reads it
back, so a wrong permutation, name or type shows up as wrong logits. Real llama.cpp runs are in
test_gguf_llamacpp.py (slow).

Measured on this model and these 3 sequences (75 positions; random init, logits up to ~1.4 in
magnitude), max |logit diff| / max |logit| and top-1 changes: f32 0 (bit-exact), 0/75; f16 3.6e-4,
0/75; q8_0 6.5e-3 (abs 8.6e-3), 1/75; q4_0 7.4e-2 (abs 9.7e-2), 2/75. The bounds in TOLERANCE leave
headroom over those numbers.
"""

from __future__ import annotations

import copy
import json
import re

import gguf
import numpy as np
import pytest
import torch

from conftest import tiny_llama
from tunesmith.errors import UserError
from tunesmith.export import gguf as gguf_export
from tunesmith.export.gguf import GGUF_TYPES, llama3_rope_factors, write_gguf
from tunesmith.export.gguf_vocab import build_vocab, detect_pre_tokenizer

SMOL_VOCAB = 49152
# bound on max|diff| / max|ref logit| and on the share of positions whose argmax differs
TOLERANCE = {"f32": (1e-5, 0.0), "f16": (2e-3, 0.0), "q8_0": (3e-2, 0.05), "q4_0": (2.5e-1, 0.25)}
QUIET = lambda *a: None  # noqa: E731


@pytest.fixture(scope="module")
def cached_reader():
    """Parse each GGUF file once. transformers parses a file 2-3 times per load (config, tensors,
    tokenizer) and parsing SmolLM2's 49k tokens + 49k merges takes seconds; the reader is read-only."""
    cache: dict[str, gguf.GGUFReader] = {}
    real = gguf.GGUFReader

    def reader(path, mode="r"):
        key = str(path)
        if key not in cache:
            cache[key] = real(path, mode)
        return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf, "GGUFReader", reader)
        yield reader


@pytest.fixture(scope="module")
def source(tmp_path_factory, smol_tokenizer):
    """A tiny random Llama (hidden 64, 2 layers, 4 heads, 2 kv heads, tied) with SmolLM2's tokenizer."""
    model = tiny_llama(seed=0, vocab=SMOL_VOCAB, tie=True).eval()
    folder = tmp_path_factory.mktemp("src")
    model.save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def exported(source, tmp_path_factory):
    """Each GGUF type, in its own folder (as transformers' gguf_file loading wants)."""
    out = {}
    for qtype in GGUF_TYPES:
        path = tmp_path_factory.mktemp(qtype) / "model.gguf"
        out[qtype] = (path, write_gguf(source[0], path, qtype, log=QUIET))
    return out


def _sequences(tokenizer) -> list[list[int]]:
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Sort these numbers: 5, 3, 9, 1"}],
                                         tokenize=False, add_generation_prompt=True)
    texts = [chat, "The quick brown fox jumps over the lazy dog. 12345", "  def f(x):\n\treturn x * 2\n"]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_metadata_and_tensors_f32(exported, source, smol_tokenizer, cached_reader):
    path, result = exported["f32"]
    reader = gguf.GGUFReader(path)

    def field(key):
        return reader.fields[key].contents()

    assert field("general.architecture") == "llama"
    assert field("llama.block_count") == 2
    assert field("llama.attention.head_count") == 4
    assert field("llama.attention.head_count_kv") == 2
    assert field("llama.embedding_length") == 64
    assert field("llama.feed_forward_length") == 128
    assert field("llama.context_length") == 256
    assert field("llama.rope.dimension_count") == 16
    assert field("llama.vocab_size") == SMOL_VOCAB
    assert field("general.file_type") == gguf.LlamaFileType.ALL_F32
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "smollm"
    assert len(field("tokenizer.ggml.tokens")) == SMOL_VOCAB
    assert field("tokenizer.ggml.bos_token_id") == smol_tokenizer.bos_token_id
    assert field("tokenizer.ggml.eos_token_id") == smol_tokenizer.eos_token_id
    assert not field("tokenizer.ggml.add_bos_token")  # SmolLM2's tokenizer adds no BOS
    assert field("tokenizer.chat_template") == smol_tokenizer.chat_template
    types = field("tokenizer.ggml.token_type")
    im_end = smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert types[im_end] == gguf.TokenType.CONTROL and types[300] == gguf.TokenType.NORMAL

    names = {t.name for t in reader.tensors}
    per_layer = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                 "ffn_down"}
    expected = {"token_embd.weight", "output_norm.weight"} | {f"blk.{i}.{s}.weight" for i in range(2)
                                                              for s in per_layer}
    assert names == expected  # tied embeddings: no output.weight
    assert result["tensors"] == len(expected) and result["quantized"] == 0
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in reader.tensors)
    # Q/K rows are permuted per head; V is stored as is
    src = source[1].model.layers[0].self_attn
    q = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight").data
    v = next(t for t in reader.tensors if t.name == "blk.0.attn_v.weight").data
    assert np.array_equal(v, src.v_proj.weight.detach().numpy())
    assert not np.array_equal(q, src.q_proj.weight.detach().numpy())
    assert np.array_equal(q, gguf_export.permute_qk(src.q_proj.weight.detach().numpy(), 4))


@pytest.mark.parametrize("qtype", GGUF_TYPES)
def test_logits_read_back_by_transformers(qtype, exported, source, smol_tokenizer, cached_reader):
    from transformers import AutoModelForCausalLM

    path, result = exported[qtype]
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    assert loaded.config.tie_word_embeddings
    worst, flips, positions = 0.0, 0, 0
    with torch.no_grad():
        for ids in _sequences(smol_tokenizer):
            x = torch.tensor([ids])
            ref, got = source[1](x).logits[0], loaded(x).logits[0]
            worst = max(worst, ((got - ref).abs().max() / ref.abs().max()).item())
            flips += int((got.argmax(-1) != ref.argmax(-1)).sum())
            positions += len(ids)
    rel_bound, flip_bound = TOLERANCE[qtype]
    assert worst <= rel_bound, f"{qtype}: max |logit diff| / max |logit| = {worst:.2e} > {rel_bound}"
    assert flips <= flip_bound * positions, f"{qtype}: top-1 differs at {flips}/{positions} positions"
    if qtype in ("q8_0", "q4_0"):
        assert result["quantized"] == 15 and not result["fallback_f16"]
        assert sorted(result["kept_f32"]) == sorted(n for n in result["types"] if n.endswith("_norm.weight"))
        # tied token_embd: Q8_0 in both (llama-quantize would use Q6_K/Q8_0 for q4_0; see write_gguf)
        assert result["types"]["token_embd.weight"] == "Q8_0"
        assert result["types"]["blk.0.attn_q.weight"] == qtype.upper()


def test_tokenizer_from_gguf_matches(exported, smol_tokenizer, cached_reader):
    from transformers import AutoTokenizer

    path, _ = exported["f32"]
    loaded = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Reverse the words: alpha beta 42 gamma!"},
                {"role": "assistant", "content": "gamma! 42 beta alpha"},
                {"role": "user", "content": "Now uppercase: héllo wörld\n\tdone"}]
    text = smol_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert loaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == text
    want = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert loaded(text, add_special_tokens=False)["input_ids"] == want
    assert loaded(text)["input_ids"] == smol_tokenizer(text)["input_ids"]


def test_quantized_rows_not_multiple_of_block_fall_back_to_f16(tmp_path, smol_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=SMOL_VOCAB, hidden_size=64, intermediate_size=48, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "src")
    smol_tokenizer.save_pretrained(tmp_path / "src")
    result = write_gguf(tmp_path / "src", tmp_path / "m.gguf", "q4_0", log=QUIET)
    assert result["fallback_f16"] == ["blk.0.ffn_down.weight"]  # rows of 48: not a multiple of 32
    assert result["types"]["blk.0.ffn_down.weight"] == "F16"
    assert result["types"]["blk.0.ffn_up.weight"] == "Q4_0"
    assert result["types"]["token_embd.weight"] == "Q4_0"  # untied: only the output matrix gets more bits
    assert result["types"]["output.weight"] == "Q8_0"
    assert result["tensors"] == 12 and result["quantized"] == 8  # 6 layer matrices, token_embd, output


def test_unsupported_architecture_names_it(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32)).save_pretrained(tmp_path)
    with pytest.raises(UserError, match=r"GPT2LMHeadModel.*supported: LlamaForCausalLM"):
        write_gguf(tmp_path, tmp_path / "out.gguf", "f16", log=QUIET)
    assert not (tmp_path / "out.gguf").exists()


def test_missing_inputs_name_the_path(tmp_path):
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "nope"))):
        write_gguf(tmp_path / "nope", tmp_path / "o.gguf", log=QUIET)
    with pytest.raises(UserError, match="no config.json"):
        write_gguf(tmp_path, tmp_path / "o.gguf", log=QUIET)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(UserError, match=re.escape(f"{tmp_path} has no *.safetensors")):
        write_gguf(tmp_path, tmp_path / "o.gguf", log=QUIET)
    with pytest.raises(UserError, match="q5_k"):
        write_gguf(tmp_path, tmp_path / "o.gguf", "q5_k", log=QUIET)


def test_error_midway_leaves_no_file(source, tmp_path, monkeypatch):
    calls = []
    real = gguf_export._convert

    def failing(t, data):
        calls.append(t.name)
        if len(calls) == 5:
            raise KeyboardInterrupt  # an interrupt, not only an Exception, must clean up
        return real(t, data)

    monkeypatch.setattr(gguf_export, "_convert", failing)
    out = tmp_path / "out" / "model.gguf"
    with pytest.raises(KeyboardInterrupt):
        write_gguf(source[0], out, "f16", log=QUIET)
    assert len(calls) == 5
    assert list(out.parent.iterdir()) == []  # neither the file nor its temporary


def test_unknown_pre_tokenizer_is_refused(smol_tokenizer):
    from tokenizers import pre_tokenizers

    assert detect_pre_tokenizer(smol_tokenizer) == "smollm"
    other = copy.deepcopy(smol_tokenizer)
    other.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    with pytest.raises(UserError, match="pre-tokenizer this exporter does not know"):
        build_vocab(other, {}, SMOL_VOCAB)
    assert build_vocab(other, {}, SMOL_VOCAB, pre_tokenizer="gpt-2").pre == "gpt-2"


def test_llama3_rope_factors_match_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = LlamaConfig(hidden_size=2048, num_attention_heads=32, max_position_embeddings=131072, rope_parameters=rope)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    dim = 64
    plain = 1.0 / (500000.0 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    factors = llama3_rope_factors(500000.0, dim, rope)
    assert factors.shape == (dim // 2,)
    np.testing.assert_allclose(plain.numpy() / factors, scaled.double().numpy(), rtol=1e-5)


@pytest.mark.slow
def test_bundled_f32_export_equals_llamacpps_own_file(tmp_path):
    """The bundled safetensors came from llama.cpp's own GGUF (dequantized by transformers); exporting
    them to f32 must give back every tensor of that file exactly, Q/K permutation and names included,
    and the same tokenizer keys. Loads the bundled model: run under flock -x /tmp/tunesmith-cpu.lock."""
    from tunesmith.models import local_model_dir, resolve_model

    bundled = resolve_model(None)
    original = gguf.GGUFReader(f"{bundled.path}/{bundled.gguf_file}")
    result = write_gguf(local_model_dir(None, log=QUIET), tmp_path / "m.gguf", "f32", log=QUIET)
    mine = gguf.GGUFReader(result["path"])
    theirs = {t.name: t for t in original.tensors}
    assert sorted(t.name for t in mine.tensors) == sorted(theirs)
    for t in mine.tensors:
        ref = gguf.dequantize(theirs[t.name].data, theirs[t.name].tensor_type)
        assert np.array_equal(np.asarray(t.data), ref), t.name
    for key in ("tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
                "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template",
                "llama.context_length", "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon",
                "llama.attention.head_count_kv", "llama.rope.dimension_count", "llama.vocab_size"):
        assert mine.fields[key].contents() == original.fields[key].contents(), key
