"""Weight-only quantization of a (tuned) causal LM: int8, int4 round-to-nearest, int4 AWQ.

Every nn.Linear of the decoder is quantized; the embeddings and the output layer (lm_head, tied to
the embeddings in SmolLM2) stay fp32, as do norms and biases. The folder format is
`tunesmith.qformat`; `qformat.load_quantized_model` reads it back.

Conventions (all symmetric, no zero point):

* int8: per output channel, ``scale[o] = max_i |W[o, i]| / 127``, ``q = clamp(round(W / scale), -127, 127)``;
* int4: per output channel and group of `group_size` consecutive input channels,
  ``scale[o, g] = max |W[o, group g]| / 7``, ``q = clamp(round(W / scale), -7, 7)``. The code -8 is
  never produced (it would make the grid asymmetric); with this scale every unclipped weight is
  within ``scale / 2`` of its dequantized value. `in_features` must be a multiple of `group_size`
  (SmolLM2's 576 and 1536: 32 or 64, not 128); other layers are skipped and reported;
* AWQ (Lin et al. 2023, "Activation-aware Weight Quantization"): per Linear, from calibration
  inputs X, the per-input-channel scale ``s = mean|X|^alpha / sqrt(max * min)`` with alpha on the
  grid 0, 0.05, ..., 0.95; the integers quantize ``W·diag(s)`` and the effective weight is
  ``Q(W·diag(s))·diag(s)^-1``. alpha minimises ``||X W^T - X W'^T||^2`` over the calibration rows;
  alpha = 0 is plain RTN, so on calibration data AWQ is never worse than RTN. Then, as in the
  reference implementation (mit-han-lab/llm-awq, auto_clip.py), a weight-clipping search per
  (output channel, group): the group's max is shrunk by 0%, 5%, ..., 45% and the one with the
  smallest error of that group's partial output is kept; the clipped result is kept only if the
  layer's total output error goes down (so the never-worse-than-RTN guarantee holds). As in the
  reference, q_proj / k_proj are not clipped (attention logits are sensitive to outliers).

Unlike the reference, which searches one scale per block of Linears that share an input (q/k/v,
gate/up) and folds it into the preceding norm, each Linear gets its own scale stored next to it
(``X.weight.awq_scale``): no change to other tensors and a per-layer optimum.

The error ``||X D^T||^2`` (D = W - W') is computed as ``sum((D G) * D)`` with the Gram matrix
``G = X^T X`` in float64: exact for the rows, and cheaper than a matmul over the rows when there
are more rows than input channels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import qformat
from ..errors import UserError
from ..qformat import quantize_int4, quantize_int8  # noqa: F401  (the quantizers of one weight)
from ..ui import progress_bar
from .calibration import (CALIBRATION_SEED, LinearInputs, calibration_summary, collect_activations,  # noqa: F401
                          default_calibration_ids, quantizable_linears)

METHODS = qformat.METHODS
AWQ_GRID = 20  # alpha in 0, 1/20, ..., 19/20
CLIP_GRID = 20  # shrink factors 1 - k/20 ...
CLIP_MAX_SHRINK = 0.5  # ... for k < 0.5 * 20: down to 55% of the group's max
_NO_CLIP = ("q_proj", "k_proj", "query_key_value", "Wqkv", "c_attn")


# ---------------------------------------------------------------------------------------------
# Search and error helpers (the quantizers of one weight live in qformat)
# ---------------------------------------------------------------------------------------------


def _output_error(d: torch.Tensor, gram: torch.Tensor) -> float:
    """||X D^T||^2 from the Gram matrix G = X^T X (float64)."""
    d = d.to(torch.float64)
    return float(((d @ gram) * d).sum())


@dataclass
class AwqResult:
    q: torch.Tensor  # int8 [out, in] in -7..7
    scale: torch.Tensor  # fp32 [out, in/group]
    awq_scale: torch.Tensor  # fp32 [in]
    alpha: float
    clipped: bool
    error: float  # ||X W^T - X W'^T||^2 on the calibration rows
    rtn_error: float  # the same for plain RTN (alpha = 0, no clipping)
    reference: float  # ||X W^T||^2, to make errors relative


def awq_search(w: torch.Tensor, act_mean: torch.Tensor, gram: torch.Tensor, group_size: int,
               n_grid: int = AWQ_GRID, clip: bool = True) -> AwqResult:
    """AWQ for one weight [out, in]: the best scale s over the alpha grid, then (if `clip`) the
    best clipping per (out, group). act_mean: mean |x| per input channel; gram: X^T X (float64)."""
    w = w.detach().to(torch.float32)
    act = act_mean.to(torch.float32).clamp(min=0)
    best: tuple[float, float, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    rtn_error = math.nan
    for i in range(n_grid):
        alpha = i / n_grid
        s = act.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        if alpha == 0:
            s = torch.ones_like(act)  # exactly RTN (the normalisation of all-ones is 1 anyway)
        q, scale = quantize_int4(w * s, group_size)
        w_eff = qformat.dequantize(q, scale, "int4-awq", group_size, s)
        err = _output_error(w - w_eff, gram)
        if alpha == 0:
            rtn_error = err
        if best is None or err < best[0]:
            best = (err, alpha, s, q, scale)
    assert best is not None
    err, alpha, s, q, scale = best
    clipped = False
    if clip:
        q_c, scale_c = _clip_search(w * s, s, gram, group_size)
        err_c = _output_error(w - qformat.dequantize(q_c, scale_c, "int4-awq", group_size, s), gram)
        if err_c < err:
            err, q, scale, clipped = err_c, q_c, scale_c, True
    reference = float((w.to(torch.float64) @ gram * w.to(torch.float64)).sum())
    return AwqResult(q, scale, s, alpha, clipped, err, rtn_error, reference)


def _clip_search(ws: torch.Tensor, s: torch.Tensor, gram: torch.Tensor, group_size: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (out, group) of the scaled weight ws = W·diag(s): the clipping max (a shrink of the
    group's max) that minimises the error of the group's partial output X_g·(W_g - W'_g)^T, with
    the inputs of the scaled weight, X·diag(s)^-1."""
    out, cols = ws.shape
    n_groups = cols // group_size
    inv = (1.0 / s).to(torch.float64)
    gram_s = gram * inv.view(-1, 1) * inv.view(1, -1)  # Gram of X·diag(s)^-1
    idx = torch.arange(cols).view(n_groups, group_size)
    blocks = gram_s[idx.unsqueeze(-1), idx.unsqueeze(-2)]  # [groups, gs, gs]: diagonal blocks
    g = ws.view(out, n_groups, group_size)
    org_max = g.abs().amax(dim=-1)
    best_err = torch.full((out, n_groups), math.inf, dtype=torch.float64)
    best_max = org_max.clone()
    for k in range(int(CLIP_MAX_SHRINK * CLIP_GRID)):
        gmax = org_max * (1 - k / CLIP_GRID)
        q, scale = quantize_int4(ws, group_size, gmax)
        d = (g - (q.view(out, n_groups, group_size).to(torch.float32) * scale.unsqueeze(-1))).to(torch.float64)
        err = torch.einsum("ogi,gij,ogj->og", d, blocks, d)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better, gmax, best_max)
    return quantize_int4(ws, group_size, best_max)


# ---------------------------------------------------------------------------------------------
# The whole model
# ---------------------------------------------------------------------------------------------


def _check_method(method: str, group_size: int) -> bool:
    """Validate the options; True for the int4 methods."""
    if method not in METHODS:
        raise UserError(f"unknown quantization method '{method}': use one of {', '.join(METHODS)}")
    int4 = method != "int8"
    if int4 and (group_size <= 0 or group_size % 2):
        raise UserError(f"group_size must be a positive even number, got {group_size}")
    return int4


def _calibration_stats(model: nn.Module, calibration, info: dict[str, Any]) -> dict[str, LinearInputs]:
    """int4-awq: the collected Linear inputs (collected now when token id lists are given)."""
    if calibration is None:
        raise UserError("int4-awq needs calibration data (token id lists); int8 and int4-rtn do not")
    stats = calibration if isinstance(calibration, dict) else collect_activations(model, calibration)
    if not stats:
        raise UserError("the calibration data reached no Linear layer (empty token lists?)")
    info["calibration"] = calibration_summary(stats)
    info["awq"] = {"grid": AWQ_GRID, "clip_search": True, "layers": {}}
    return stats


def _quantize_awq(name: str, wname: str, w: torch.Tensor, group_size: int, stats: dict[str, LinearInputs],
                  later: list[str], awq_info: dict[str, Any], log: Callable[[str], Any]) -> dict[str, torch.Tensor]:
    """One Linear with AWQ: searched scales and clipping (plain RTN when no calibration input reached it)."""
    st = stats.get(name)
    if st is None or st.n_rows == 0:
        q, scale = quantize_int4(w, group_size)
        s = torch.ones(w.shape[1])
        awq_info[wname] = {"alpha": 0.0, "note": "no calibration input reached it: plain RTN"}
        log(f"quantize: {wname}: no calibration input reached it; plain RTN (awq_scale = 1)")
    else:
        r = awq_search(w, st.abs_mean, st.gram(), group_size, clip=not name.endswith(_NO_CLIP))
        q, scale, s = r.q, r.scale, r.awq_scale
        ref = r.reference or 1.0
        awq_info[wname] = {"alpha": r.alpha, "clipped": r.clipped, "rel_error": r.error / ref,
                           "rtn_rel_error": r.rtn_error / ref}
        if all(stats.get(n2) is not st for n2 in later):
            st.drop_gram()  # the last Linear fed this input: free its Gram matrix
    return {qformat.QDATA: qformat.pack_int4(q), qformat.SCALE: scale, qformat.AWQ_SCALE: s.to(torch.float32)}


def _quantize_linear(w: torch.Tensor, method: str, group_size: int) -> dict[str, torch.Tensor]:
    """One Linear weight, int8 or int4 round-to-nearest."""
    if method == "int8":
        q, scale = quantize_int8(w)
        return {qformat.QDATA: q, qformat.SCALE: scale}
    q, scale = quantize_int4(w, group_size)
    return {qformat.QDATA: qformat.pack_int4(q), qformat.SCALE: scale}


def _summarise(info: dict[str, Any], model: nn.Module, quantized: dict, skipped: dict[str, str]
               ) -> dict[str, torch.Tensor]:
    """Fill info (quantized, skipped, tied, what stays fp32, AWQ error means); the tensors to write."""
    tensors, tied = _tensors_to_write(model, quantized)
    info["quantized"] = sorted(quantized)
    info["skipped"] = skipped
    info["tied"] = tied
    info["kept_fp32"] = ("embeddings, the output layer (lm_head), norms, biases and skipped layers"
                         + ("; lm_head is tied to the input embedding and stored once" if tied else ""))
    layers = info.get("awq", {}).get("layers", {}).values()
    errs = [(v["rel_error"], v["rtn_rel_error"]) for v in layers if "rel_error" in v]
    if errs:
        info["awq"]["mean_rel_error"] = sum(e for e, _ in errs) / len(errs)
        info["awq"]["mean_rtn_rel_error"] = sum(e for _, e in errs) / len(errs)
    return tensors


@torch.no_grad()
def quantize_model(model: nn.Module, method: str, group_size: int = 32,
                   calibration: dict[str, LinearInputs] | Sequence[Sequence[int]] | None = None,
                   log: Callable[[str], Any] = print) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Quantize every decoder Linear weight of `model` (left unchanged) with `method`.

    calibration (int4-awq only): `collect_activations`'s result, or token-id lists to collect it from.
    Returns (tensors for `qformat.write_quantized`, info for tunesmith_quant.json). A layer that
    cannot be quantized (in_features not a multiple of group_size) stays fp32, is listed in
    info["skipped"] with the reason and is logged.
    """
    int4 = _check_method(method, group_size)
    linears = quantizable_linears(model)
    if not linears:
        raise UserError("the model has no Linear layers to quantize")
    info: dict[str, Any] = {"method": method, "bits": qformat.BITS[method],
                            "group_size": group_size if int4 else None, "symmetric": True, "calibration": None}
    stats = _calibration_stats(model, calibration, info) if method == "int4-awq" else None
    quantized: dict[str, dict[str, torch.Tensor]] = {}
    skipped: dict[str, str] = {}
    t0 = time.time()
    with progress_bar(f"quantize {method}", len(linears), "layers") as advance:
        for k, (name, lin) in enumerate(linears, start=1):
            wname = f"{name}.weight"
            w = lin.weight.detach().to("cpu", torch.float32)  # quantization runs on the CPU, in fp32
            if int4 and w.shape[1] % group_size:
                skipped[wname] = (f"in_features {w.shape[1]} is not a multiple of group_size {group_size}; "
                                  "kept in fp32")
                log(f"quantize: skipped {wname}: {skipped[wname]}")
            elif stats is not None:
                quantized[wname] = _quantize_awq(name, wname, w, group_size, stats, [n for n, _ in linears[k:]],
                                                 info["awq"]["layers"], log)
            else:
                quantized[wname] = _quantize_linear(w, method, group_size)
            advance(1)
    if not quantized:
        raise UserError(f"no Linear layer could be quantized with {method}, group_size {group_size}: "
                        + "; ".join(f"{n}: {r}" for n, r in list(skipped.items())[:2]))
    tensors = _summarise(info, model, quantized, skipped)
    log(f"quantize: {method}: {len(quantized)} Linear weights quantized, {len(skipped)} skipped "
        f"({time.time() - t0:.1f}s)")
    return tensors, info


def _tensors_to_write(model: nn.Module, quantized: dict[str, dict[str, torch.Tensor]]
                      ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with quantized weights replaced by their parts, floats as fp32, and a tensor
    shared by several names (tied embeddings) stored once; returns (tensors, {dropped: kept})."""
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    owner: dict[tuple[int, tuple[int, ...]], str] = {}
    for name, t in model.state_dict(keep_vars=False).items():
        if t.numel():
            key = (t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size(), tuple(t.shape))
            if key in owner:
                tied[name] = owner[key]
                continue
            owner[key] = name
        if name in quantized:
            for suffix, part in quantized[name].items():
                tensors[name + suffix] = part.contiguous()
        else:
            tensors[name] = (t.detach().to("cpu", torch.float32) if t.is_floating_point() else t.detach().cpu()).clone()
    lost = [n for n, kept in tied.items() if kept in quantized]
    if lost:  # a weight shared with a quantized one would be dropped unquantized: refuse
        raise UserError(f"{lost[0]} shares its tensor with quantized {tied[lost[0]]}; cannot store it")
    return tensors, tied


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def export_quantized(model_dir: str | Path, out_dir: str | Path, method: str, group_size: int = 32,
                     calibration_ids: Sequence[Sequence[int]] | None = None, log: Callable[[str], Any] = print,
                     max_tokens: int = 8192, max_rows: int = 4096) -> dict[str, Any]:
    """Load an fp32 model folder, quantize it, and write the quantized folder (config, tokenizer and
    generation config copied). int4-awq without `calibration_ids` calibrates on generated task
    conversations. Returns a summary with the sizes on disk."""
    from ..models import load_model, load_tokenizer, local_model_dir

    t0 = time.time()
    if qformat.is_quantized_dir(model_dir):
        raise UserError(f"{model_dir} is already quantized; quantize the fp32 model folder (e.g. RUN/model)")
    if method not in METHODS:
        raise UserError(f"unknown quantization method '{method}': use one of {', '.join(METHODS)}")
    if Path(out_dir).resolve() == Path(model_dir).resolve():
        raise UserError("the output folder must differ from the model folder")
    src = Path(local_model_dir(str(model_dir), log=log))
    model = load_model(str(model_dir), log=log)
    calibration = None
    cal_source = None
    if method == "int4-awq":
        if calibration_ids is None:
            calibration_ids = default_calibration_ids(load_tokenizer(str(model_dir), log=log))
            cal_source = f"generated task conversations (seed {CALIBRATION_SEED})"
        else:
            cal_source = "given token id lists"
        log(f"quantize: collecting calibration inputs from {len(calibration_ids)} sequences")
        calibration = collect_activations(model, calibration_ids, max_tokens=max_tokens, max_rows=max_rows)
    tensors, info = quantize_model(model, method, group_size, calibration, log=log)
    if cal_source:
        info["calibration"]["source"] = cal_source
        info["calibration"]["sequences"] = len(calibration_ids)
    info["source"] = str(model_dir)
    out = qformat.write_quantized(out_dir, tensors, info, copy_from=src)
    size, src_size = _dir_size(out), _dir_size(src)
    log(f"quantize: wrote {out} ({size / 2**20:.1f} MiB, source {src_size / 2**20:.1f} MiB)")
    return {"out_dir": str(out), "method": method, "group_size": info["group_size"],
            "quantized": len(info["quantized"]), "skipped": info["skipped"], "size_bytes": size,
            "source_size_bytes": src_size, "seconds": round(time.time() - t0, 1),
            **({"awq": {k: v for k, v in info["awq"].items() if k != "layers"}} if "awq" in info else {})}
