"""The on-disk format of a weight-only quantized model, and how to read it back.

A quantized model folder is a normal Hugging Face folder (``config.json``, tokenizer files,
``generation_config.json``) plus ``tunesmith_quant.json``; its ``quantized.safetensors`` holds, for
every quantized Linear weight ``X.weight``:

* ``X.weight.qdata``: the integers. int8 ``[out, in]`` for ``int8``; for ``int4-*`` two 4-bit
  values per byte, uint8 ``[out, in // 2]`` (see `pack_int4`);
* ``X.weight.scale``: fp32, ``[out]`` for int8 (per output channel), ``[out, in // group_size]``
  for int4 (per group of `group_size` consecutive input channels);
* ``X.weight.awq_scale`` (``int4-awq`` only): fp32 ``[in]``, the per-input-channel scale s.

Every other tensor (embeddings, norms, biases, lm_head unless tied) is stored unchanged in fp32;
a tensor tied to another one (SmolLM2's lm_head) is stored once, under the name kept by the model.

The quantization is symmetric and has no zero point. The weight the integers stand for is

    int8:            W[o, i] = q[o, i] * scale[o]
    int4-rtn:        W[o, i] = q[o, i] * scale[o, i // group_size]
    int4-awq:        W[o, i] = q[o, i] * scale[o, i // group_size] / s[i]

i.e. for AWQ the integers quantize W·diag(s) and the effective weight is Q(W·diag(s))·diag(s)^-1.

``tunesmith_quant.json`` holds ``{format_version, method, bits, group_size, symmetric: true,
quantized: [weight names], skipped: {name: reason}, tied: {...}, calibration: {...}}``.

A low layer: imports only torch, safetensors, tunesmith.errors and tunesmith.io (transformers is
imported inside `load_quantized_model`, the one function that builds a model).

Plain ``transformers.from_pretrained`` does NOT understand this folder (it would find no
``X.weight`` and initialise those weights at random); load it with `load_quantized_model`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .io import atomic_dir, write_json

FORMAT_VERSION = 1
QUANT_FILE = "tunesmith_quant.json"
WEIGHTS_FILE = "quantized.safetensors"  # not model.safetensors: plain transformers must refuse the folder, not random-init it
METHODS = ("int8", "int4-rtn", "int4-awq")
BITS = {"int8": 8, "int4-rtn": 4, "int4-awq": 4}

QDATA, SCALE, AWQ_SCALE = ".qdata", ".scale", ".awq_scale"

# Files of a source model folder that are never copied into a quantized folder (the weights are
# written anew; `.complete` marks tunesmith's GGUF cache).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_NOT_COPIED = {"model.safetensors.index.json", "pytorch_model.bin.index.json", ".complete", QUANT_FILE}


# ---------------------------------------------------------------------------------------------
# int4 packing and dequantization
# ---------------------------------------------------------------------------------------------


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 ``[out, in]`` with values in -8..7 -> uint8 ``[out, in // 2]``.

    Input channel 2j goes in the low nibble of byte j, channel 2j+1 in the high nibble, each as a
    4-bit two's complement value (so -1 is 0xF). `in` must be even.
    """
    if q.dim() != 2 or q.shape[1] % 2:
        raise ValueError(f"pack_int4 needs a 2-D tensor with an even number of columns, got {tuple(q.shape)}")
    if q.numel() and (int(q.min()) < -8 or int(q.max()) > 7):
        raise ValueError("pack_int4: values must lie in -8..7")
    nib = (q.to(torch.int16) & 0xF).to(torch.uint8)
    return (nib[:, 0::2] | (nib[:, 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 ``[out, in // 2]`` -> int8 ``[out, in]`` in -8..7 (the inverse of `pack_int4`)."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"unpack_int4 needs a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    p = packed.to(torch.int16)
    nib = torch.stack([p & 0xF, (p >> 4) & 0xF], dim=-1).reshape(packed.shape[0], -1)
    return torch.where(nib >= 8, nib - 16, nib).to(torch.int8)


def dequantize(qdata: torch.Tensor, scale: torch.Tensor, method: str, group_size: int | None = None,
               awq_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The fp32 weight that `qdata` and `scale` (and, for int4-awq, `awq_scale`) stand for."""
    if method == "int8":
        return qdata.to(torch.float32) * scale.to(torch.float32).view(-1, 1)
    if method not in ("int4-rtn", "int4-awq"):
        raise ValueError(f"unknown quantization method '{method}': use one of {', '.join(METHODS)}")
    q = unpack_int4(qdata) if qdata.dtype == torch.uint8 else qdata
    out, cols = q.shape
    if not group_size or cols % group_size or scale.shape != (out, cols // group_size):
        raise ValueError(f"scale {tuple(scale.shape)} does not fit a [{out}, {cols}] weight in groups of "
                         f"{group_size}")
    w = (q.to(torch.float32).view(out, -1, group_size) * scale.to(torch.float32).unsqueeze(-1)).view(out, cols)
    if method == "int4-awq":
        if awq_scale is None:
            raise ValueError("int4-awq needs awq_scale")
        w = w / awq_scale.to(torch.float32).view(1, -1)
    return w


# ---------------------------------------------------------------------------------------------
# The quantizers of one weight (export.quantize and train.quantbase share them)
# ---------------------------------------------------------------------------------------------


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (q int8 [out, in] in -127..127, scale fp32 [out])."""
    w = w.detach().to(torch.float32)
    scale = w.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row: q = 0
    q = torch.round(w / scale.view(-1, 1)).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(w: torch.Tensor, group_size: int, group_max: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric group-wise int4 round-to-nearest: (q int8 [out, in] in -7..7, scale fp32 [out, in/group]).

    group_max: the clipping value per (out, group) (default: the group's max |w|, i.e. no clipping).
    """
    w = w.detach().to(torch.float32)
    out, cols = w.shape
    if group_size <= 0 or cols % group_size:
        raise ValueError(f"in_features {cols} is not a multiple of group_size {group_size}")
    g = w.view(out, cols // group_size, group_size)
    gmax = g.abs().amax(dim=-1) if group_max is None else group_max.to(torch.float32)
    scale = gmax / 7.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group: q = 0
    q = torch.round(g / scale.unsqueeze(-1)).clamp_(-7, 7).to(torch.int8).view(out, cols)
    return q, scale


def quantize_int4_asym(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric group-wise int4 (GGUF's Q4_1 layout, train.base_quant int4): per (out, group) a scale and
    the group's minimum, W = q * scale + low with q in 0..15, so both ends of each group are on the grid.

    Returns (packed uint8 [out, in // 2] as `pack_uint4`, scale [out, in / group], low [out, in / group]);
    scale and low are fp16 (as in Q4_1; rounded so that the grid still covers the group, see `_fp16_grid`)
    unless fp16 cannot hold them, then fp32. No weight is more than half a step off. A weight that was
    itself dequantized from Q4_1 with the same group size comes back bit for bit (`dequantize_int4_asym`
    computes q * scale + low in fp32 in that order, as gguf's dequantizer does).
    """
    w = w.detach().to(torch.float32)
    out, cols = w.shape
    if group_size <= 0 or group_size % 2 or cols % group_size:
        raise ValueError(f"in_features {cols} is not a multiple of the (even) group_size {group_size}")
    g = w.view(out, cols // group_size, group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scale, low = (hi - lo) / 15.0, lo
    half = _fp16_grid(lo, hi)
    if half is not None:
        scale, low = half  # q is computed against the stored (fp16) values
    s = scale.to(torch.float32)
    s = torch.where(s > 0, s, torch.ones_like(s))  # a constant group: q = 0, W = low
    q = torch.round((g - low.to(torch.float32).unsqueeze(-1)) / s.unsqueeze(-1)).clamp_(0, 15)
    return pack_uint4(q.to(torch.uint8).view(out, cols)), scale, low


def _fp16_grid(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """fp16 (scale, low) whose grid low + 15 * scale still covers [lo, hi] (each rounded to nearest, then moved
    one fp16 step outwards where rounding cut an end off), so no weight is more than half a step off; None
    when fp16 cannot hold them (out of range, or a scale that underflows)."""
    inf = torch.full(lo.shape, float("inf"), dtype=torch.float16)
    low = lo.to(torch.float16)
    low = torch.where(low.to(torch.float32) > lo, torch.nextafter(low, -inf), low)
    scale = ((hi - low.to(torch.float32)) / 15.0).to(torch.float16)
    top = scale.to(torch.float32) * 15.0 + low.to(torch.float32)  # what dequantization gives q = 15
    scale = torch.where(top < hi, torch.nextafter(scale, inf), scale)
    ok = torch.isfinite(low).all() and torch.isfinite(scale).all() and ((scale > 0) | (hi == lo)).all()
    return (scale, low) if bool(ok) else None


def pack_uint4(q: torch.Tensor) -> torch.Tensor:
    """uint8 ``[out, in]`` with values in 0..15 -> uint8 ``[out, in // 2]``: channel 2j in the low nibble of
    byte j, channel 2j+1 in the high nibble."""
    if q.dim() != 2 or q.shape[1] % 2 or q.dtype != torch.uint8:
        raise ValueError(f"pack_uint4 needs a 2-D uint8 tensor with an even number of columns, got "
                         f"{q.dtype} {tuple(q.shape)}")
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def dequantize_int4_asym(packed: torch.Tensor, scale: torch.Tensor, low: torch.Tensor, group_size: int
                         ) -> torch.Tensor:
    """The fp32 weight [out, in] of `quantize_int4_asym`'s (packed, scale, low).

    Unpacks in uint8 and scales in place: about 0.3 ms for a 1536 x 576 weight on 2 cores (15x the
    symmetric path's int16 / where / cat), which matters because training dequantizes every layer twice per
    micro-batch."""
    out = packed.shape[0]
    q = torch.stack([packed & 0xF, packed >> 4], dim=-1)  # [out, in // 2, 2] uint8
    w = q.view(out, -1, group_size).to(torch.float32)  # [out, groups, group_size]
    w.mul_(scale.to(torch.float32).unsqueeze(-1)).add_(low.to(torch.float32).unsqueeze(-1))
    return w.view(out, -1)


# ---------------------------------------------------------------------------------------------
# Reading and writing a folder
# ---------------------------------------------------------------------------------------------


def is_quantized_dir(path: str | Path) -> bool:
    """True when `path` is a folder written by `write_quantized` (it holds tunesmith_quant.json)."""
    p = Path(path)
    return p.is_dir() and (p / QUANT_FILE).is_file()


def read_info(path: str | Path) -> dict[str, Any]:
    """The folder's tunesmith_quant.json, checked (format version, method)."""
    f = Path(path) / QUANT_FILE
    try:
        info = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{f}: not a readable quantization description ({exc})") from None
    version = info.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(f"{f}: format_version {version!r} is not supported (this tunesmith reads "
                        f"{FORMAT_VERSION}); re-export the model with this version")
    if info.get("method") not in METHODS:
        raise UserError(f"{f}: unknown method {info.get('method')!r}; expected one of {', '.join(METHODS)}")
    return info


def load_dequantized_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict of plain fp32 tensors, info) of a quantized folder.

    Quantized weights come back dequantized under their own names (``X.weight``); every other
    tensor as stored. Tied tensors stored once come back once (the model ties them again).
    """
    from safetensors import safe_open

    path = Path(path)
    info = read_info(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"quantized model folder {path} has no {WEIGHTS_FILE}")
    method, group = info["method"], info.get("group_size")
    with safe_open(str(weights), framework="pt") as f:
        names = set(f.keys())
        raw = {n: f.get_tensor(n) for n in names}
    quantized = {n[: -len(QDATA)] for n in names if n.endswith(QDATA)}
    listed = set(info.get("quantized", []))
    if quantized != listed:
        raise UserError(f"{path}: {WEIGHTS_FILE} and {QUANT_FILE} disagree on the quantized weights "
                        f"(only in the weights: {sorted(quantized - listed)[:3]}, only in the description: "
                        f"{sorted(listed - quantized)[:3]}); the folder is damaged, export it again")
    state: dict[str, torch.Tensor] = {}
    for name in sorted(quantized):
        try:
            awq = raw.pop(name + AWQ_SCALE) if method == "int4-awq" else None
            state[name] = dequantize(raw.pop(name + QDATA), raw.pop(name + SCALE), method, group, awq)
        except (KeyError, ValueError) as exc:
            raise UserError(f"{path}: quantized weight {name} is incomplete or malformed ({exc})") from None
    stray = [n for n in raw if n.endswith((QDATA, SCALE, AWQ_SCALE))]
    if stray:
        raise UserError(f"{path}: stray quantization tensors {stray[:3]}; the folder is damaged")
    for name, t in raw.items():
        state[name] = t.to(torch.float32) if t.is_floating_point() else t
    return state, info


def write_quantized(out_dir: str | Path, tensors: dict[str, torch.Tensor], info: dict[str, Any],
                    copy_from: str | Path | None = None) -> Path:
    """Write a quantized model folder atomically (a stop at any moment leaves no complete-looking
    folder): `tensors` to quantized.safetensors, `info` to tunesmith_quant.json and, from `copy_from`
    (the source model folder), every file but its weights (config, tokenizer, generation config).
    """
    from safetensors.torch import save_file

    method = info.get("method")
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}")
    info = {"format_version": FORMAT_VERSION, "bits": BITS[method], "symmetric": True, **info}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        if copy_from is not None:
            for f in sorted(Path(copy_from).iterdir()):
                if f.is_file() and f.name not in _NOT_COPIED and not f.name.endswith(_WEIGHT_SUFFIXES):
                    shutil.copy2(f, tmp / f.name)
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE),
                  metadata={"format": "pt", "tunesmith_quant": method})
        write_json(tmp / QUANT_FILE, info)  # last: the description marks a folder as quantized
    return out_dir


# ---------------------------------------------------------------------------------------------
# Building the model (the call tunesmith.models.load_model makes for a quantized folder)
# ---------------------------------------------------------------------------------------------


def load_quantized_model(path: str | Path, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    """A transformers causal LM holding the weights a quantized folder represents (dequantized,
    in `dtype`), with SDPA attention, its generation config, tied embeddings tied, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    path = Path(path)
    state, info = load_dequantized_state(path)
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        from contextlib import nullcontext as no_init_weights
    with no_init_weights():  # every weight is overwritten below; skip the random init
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa",
                                                 trust_remote_code=trust_remote_code)
    model = model.to(torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise UserError(f"{path}: weights {unexpected[:3]} do not belong to a {config.model_type} model; "
                        "the folder's config.json and weights disagree")
    model.tie_weights()
    # A weight still missing after tying would be left uninitialised: refuse rather than guess.
    params = dict(model.named_parameters(remove_duplicate=False))
    tied_ok = {n for n in missing if n in params and any(
        params[n] is params[m] for m in state if m in params)}
    really_missing = [n for n in missing if n not in tied_ok]
    if really_missing:
        raise UserError(f"{path}: weights {really_missing[:3]} are missing from {WEIGHTS_FILE}; the folder "
                        "is damaged, export it again")
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(path))
    model = model.to(dtype)
    model.eval()
    model.tunesmith_quant = info  # what the weights went through (shown by callers that care)
    return model
