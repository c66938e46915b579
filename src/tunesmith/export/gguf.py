"""Export a Hugging Face Llama-layout model folder to one GGUF file that llama.cpp runs.

What llama.cpp's `llama` architecture expects, and what this writes (after llama.cpp's own
`convert_hf_to_gguf.py`, class LlamaModel; the code here is ours):

* metadata `llama.*`: context/embedding/feed-forward length, block count, head counts, RoPE base
  and dimension count, RMS-norm epsilon, vocab size; `general.file_type`; the tokenizer keys
  (`gguf_vocab`);
* tensors `token_embd`, `blk.N.{attn_norm,attn_q,attn_k,attn_v,attn_output,ffn_norm,ffn_gate,
  ffn_up,ffn_down}`, `output_norm`, and `output` only when the embeddings are not tied;
* Q and K projections with their rows permuted per head: Hugging Face's RoPE rotates the two
  halves of each head (`rotate_half`), ggml's normal-mode RoPE rotates adjacent pairs, so each
  head's rows are reordered from [first half; second half] to interleaved pairs.

Tensors are streamed: shapes come from the safetensors headers, so the tensor table is written
first and each tensor is then loaded, converted and written one at a time (memory stays near one
tensor, whatever the model size). The file is written under a temporary name next to `out_path`
and renamed into place only when complete.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..errors import UserError
from .gguf_vocab import add_vocab, load_vocab

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")  # identical tensor layout in llama.cpp

_T = gguf.GGMLQuantizationType
_FILE_TYPE = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}
_QUANT = {"q8_0": _T.Q8_0, "q4_0": _T.Q4_0}

_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
          "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_REQUIRED_LAYER = ("attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                   "ffn_down")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on a clean exit it replaces `path`, on an error
    (or an interrupt) it is removed, so `path` is never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder each head's rows from Hugging Face's half-split RoPE layout to ggml's pairwise one."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(theta: float, dim: int, params: dict[str, Any]) -> np.ndarray:
    """Llama 3.1 RoPE: per-frequency divisors, written as the `rope_freqs` tensor (as llama.cpp does)."""
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    factor = params.get("factor", 8.0)
    low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    old_ctx = params.get("original_max_position_embeddings", 8192)
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


@dataclass
class _Tensor:
    name: str                       # GGUF name
    shape: tuple[int, ...]          # numpy order (rows, cols)
    ggml: gguf.GGMLQuantizationType
    source: str | None = None       # Hugging Face name (None: `data` is given)
    heads: int | None = None        # permute Q/K rows over this many heads
    data: np.ndarray | None = None
    fallback: bool = False          # wanted quantized, row length not a multiple of the block size

    @property
    def nbytes(self) -> int:
        if self.ggml in (_T.F32, _T.F16):
            return int(np.prod(self.shape)) * (4 if self.ggml == _T.F32 else 2)
        return int(np.prod(gguf.quant_shape_to_byte_shape(self.shape, self.ggml)))


def _read_config(model_dir: Path) -> dict[str, Any]:
    if not model_dir.is_dir():
        raise UserError(f"model folder {model_dir} does not exist (GGUF export reads a Hugging Face model folder)")
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{model_dir} has no config.json; GGUF export needs a Hugging Face model folder")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{cfg_path}: not valid JSON ({exc})") from None
    archs = config.get("architectures") or [f"(model_type {config.get('model_type')!r})"]
    if archs[0] not in SUPPORTED_ARCHITECTURES:
        raise UserError(f"{cfg_path}: architecture {archs[0]} cannot be exported to GGUF; supported: "
                        f"{', '.join(SUPPORTED_ARCHITECTURES)} (written as llama.cpp's 'llama' architecture)")
    return config


def _index_weights(model_dir: Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """Hugging Face tensor name -> (safetensors file, shape), from the file headers only."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        other = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(p.name for p in model_dir.glob("*.pt"))
        hint = f" (found {', '.join(other)}: re-save the model with safe_serialization=True)" if other else ""
        raise UserError(f"{model_dir} has no *.safetensors weights{hint}")
    index = {}
    for f in files:
        with safe_open(f, framework="pt") as st:
            for name in st.keys():
                index[name] = (f, tuple(st.get_slice(name).get_shape()))
    return index


def _tensor_type(name: str, shape: tuple[int, ...], qtype: str, tied: bool) -> tuple[gguf.GGMLQuantizationType, bool]:
    """The GGML type of one tensor, and whether it fell back from quantized to f16."""
    if len(shape) <= 1 or name.endswith("_norm.weight"):  # norms, biases, rope_freqs: llama.cpp keeps them f32
        return _T.F32, False
    if qtype in ("f32", "f16"):  # token_embd included, as llama.cpp's converter does
        return (_T.F32 if qtype == "f32" else _T.F16), False
    target = _QUANT[qtype]
    # q8_0: llama.cpp's converter quantizes token_embd (and output) to Q8_0 like every other matrix.
    # q4_0: llama-quantize gives the output matrix (token_embd too when tied, as it is then the
    # output) Q6_K, or Q8_0 when its rows are not a multiple of 256 (SmolLM2's 576); gguf-py cannot
    # write Q6_K, so we always use Q8_0 there. An untied token_embd stays Q4_0, as in llama-quantize.
    if qtype == "q4_0" and (name == "output.weight" or (tied and name == "token_embd.weight")):
        target = _T.Q8_0
    block = gguf.GGML_QUANT_SIZES[target][0]
    if shape[-1] % block:
        return _T.F16, True
    return target, False


def _plan(config: dict[str, Any], index: dict[str, tuple[Path, tuple[int, ...]]], qtype: str,
          cfg_path: Path) -> list[_Tensor]:
    n_layer = int(config["num_hidden_layers"])
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    tied = bool(config.get("tie_word_embeddings", False))
    found: dict[str, _Tensor] = {}
    unknown = []
    for hf, (_, shape) in index.items():
        if hf.endswith(".rotary_emb.inv_freq") or (tied and hf == "lm_head.weight"):
            continue  # recomputed by llama.cpp / the tied embedding is the output
        name = _GLOBAL.get(hf)
        parts = hf.split(".")
        if name is None and len(parts) >= 5 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
            stem = _LAYER.get(".".join(parts[3:-1]))
            if stem is not None and parts[-1] in ("weight", "bias"):
                name = f"blk.{parts[2]}.{stem}.{parts[-1]}"
        if name is None:
            unknown.append(hf)
            continue
        heads = n_head if ".attn_q." in name else n_kv if ".attn_k." in name else None
        ggml, fallback = _tensor_type(name, shape, qtype, tied)
        found[name] = _Tensor(name, shape, ggml, source=hf, heads=heads, fallback=fallback)
    if unknown:
        raise UserError(f"{cfg_path.parent}: tensors with no place in llama.cpp's llama layout: "
                        f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    required = ["token_embd.weight", "output_norm.weight"] + [f"blk.{i}.{s}.weight" for i in range(n_layer)
                                                              for s in _REQUIRED_LAYER]
    if not tied:
        required.append("output.weight")
    missing = [n for n in required if n not in found]
    if missing:
        raise UserError(f"{cfg_path.parent}: weights missing for {', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''} (config.json: {n_layer} layers, "
                        f"tie_word_embeddings={tied})")
    order = ["token_embd.weight"] + [n for i in range(n_layer) for n in sorted(found) if n.startswith(f"blk.{i}.")]
    order += [n for n in ("output_norm.weight", "output.weight") if n in found]
    return [found[n] for n in order]


def _rope(config: dict[str, Any], cfg_path: Path) -> tuple[float, str, dict[str, Any]]:
    """(rope_theta, rope_type, parameters) from transformers 5's `rope_parameters` or older keys."""
    params = dict(config.get("rope_parameters") or {})
    legacy = config.get("rope_scaling") or {}
    params = {**legacy, **params}
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type not in ("default", "linear", "llama3"):
        raise UserError(f"{cfg_path}: RoPE type {rope_type!r} is not supported by this GGUF export "
                        "(supported: default, linear, llama3)")
    return theta, rope_type, params


def _load(t: _Tensor, index, handles: dict[Path, Any], stack: ExitStack) -> np.ndarray:
    if t.data is not None:
        return t.data
    from safetensors import safe_open
    import torch

    path = index[t.source][0]
    if path not in handles:
        handles[path] = stack.enter_context(safe_open(path, framework="pt"))
    data = handles[path].get_tensor(t.source).to(torch.float32).numpy()
    return permute_qk(data, t.heads) if t.heads else data


def _convert(t: _Tensor, data: np.ndarray) -> np.ndarray:
    if t.ggml == _T.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if t.ggml == _T.F16:
        return np.ascontiguousarray(data, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), t.ggml)


def _head_dim(config: dict[str, Any]) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def _add_metadata(writer, config: dict[str, Any], name: str, qtype: str, vocab_size: int, rope: tuple) -> None:
    """The llama architecture keys llama.cpp reads (sizes, heads, RoPE, norm epsilon, file type)."""
    theta, rope_type, rope_params = rope
    n_head = config["num_attention_heads"]
    head_dim = _head_dim(config)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads") or n_head)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if config.get("head_dim") is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope_params["factor"]))
    writer.add_file_type(_FILE_TYPE[qtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _result(out_path: Path, size: int, qtype: str, tensors: list) -> dict[str, Any]:
    return {"path": str(out_path), "bytes": size, "qtype": qtype, "tensors": len(tensors),
            "quantized": sum(t.ggml in _QUANT.values() for t in tensors),
            "kept_f32": [t.name for t in tensors if t.ggml == _T.F32],
            "fallback_f16": [t.name for t in tensors if t.fallback],
            "types": {t.name: t.ggml.name for t in tensors}}


def write_gguf(model_dir: str | Path, out_path: str | Path, qtype: str = "f16", log=print, *,
               pre_tokenizer: str | None = None) -> dict:
    """Convert a Hugging Face Llama-architecture model folder (config.json, *.safetensors, tokenizer
    files) into one GGUF file, written atomically (temp name in the same folder, then os.replace;
    an error or interrupt leaves no file at out_path).

    qtype: f32 (everything f32), f16 (matrices f16), q8_0 / q4_0 (matrices quantized where their row
    length is a multiple of the block size, else f16, listed under "fallback_f16"); norms and other
    1-D tensors are f32 in every type. pre_tokenizer: llama.cpp's pre-tokenizer name, only to
    override detection for a tokenizer not in gguf_vocab.KNOWN_PRE_TOKENIZERS.

    Returns {"path", "bytes", "qtype", "tensors": n, "quantized": n, "kept_f32": [names...],
    "fallback_f16": [names...], "types": {name: GGML type name}}.
    """
    if qtype not in GGUF_TYPES:
        raise UserError(f"GGUF type {qtype!r} is not one of {', '.join(GGUF_TYPES)}")
    t0 = time.time()
    model_dir, out_path = Path(model_dir).expanduser(), Path(out_path).expanduser()
    if out_path.is_dir():
        raise UserError(f"GGUF output {out_path} is a folder; give a file name such as {out_path / 'model.gguf'}")
    config = _read_config(model_dir)
    cfg_path = model_dir / "config.json"
    index = _index_weights(model_dir)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        if not isinstance(config.get(key), int):
            raise UserError(f"{cfg_path}: '{key}' is missing or not an integer")
    tensors = _plan(config, index, qtype, cfg_path)
    head_dim = _head_dim(config)
    vocab_size = tensors[0].shape[0]
    if config.get("vocab_size", vocab_size) != vocab_size:
        raise UserError(f"{cfg_path}: vocab_size {config['vocab_size']} but the embedding has {vocab_size} rows")
    theta, rope_type, rope_params = _rope(config, cfg_path)
    if rope_type == "llama3":
        tensors.append(_Tensor("rope_freqs.weight", (head_dim // 2,), _T.F32,
                               data=llama3_rope_factors(theta, head_dim, rope_params)))
    if config.get("sliding_window") and config["sliding_window"] < config.get("max_position_embeddings", 0):
        log(f"note: sliding_window={config['sliding_window']} is not applied by llama.cpp's llama architecture")
    vocab = load_vocab(model_dir, config, vocab_size, pre_tokenizer=pre_tokenizer)

    raw_name = config.get("_name_or_path") or config.get("_model_name_or_path") or ""
    name = Path(raw_name).name if raw_name else model_dir.resolve().name
    log(f"GGUF export: {model_dir} ({config['architectures'][0]}, {len(tensors)} tensors) -> {out_path} "
        f"[{qtype}, pre-tokenizer {vocab.pre}]")
    with atomic_path(out_path) as tmp, ExitStack() as stack:
        writer = gguf.GGUFWriter(tmp, "llama")
        stack.callback(writer.close)
        _add_metadata(writer, config, name, qtype, vocab_size, (theta, rope_type, rope_params))
        add_vocab(writer, vocab)
        for t in tensors:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.ggml)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        handles: dict[Path, Any] = {}
        for t in tensors:
            writer.write_tensor_data(_convert(t, _load(t, index, handles, stack)))
        writer.close()
    size = out_path.stat().st_size
    result = _result(out_path, size, qtype, tensors)
    if result["fallback_f16"]:
        log(f"kept f16 (rows not a multiple of the {qtype} block): {', '.join(result['fallback_f16'])}")
    log(f"wrote {out_path} ({size / 1e6:.1f} MB) in {time.time() - t0:.1f}s")
    return result
