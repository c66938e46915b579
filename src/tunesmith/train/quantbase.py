"""A frozen base kept quantized in memory (train.base_quant, QLoRA-style), and LoftQ initialisation.

Every decoder Linear becomes a `QuantLinear`: int8 per output channel (symmetric, as export's int8) or
int4 per group of input channels with a scale and a minimum per group (`qformat.quantize_int4_asym`: GGUF's
Q4_1 layout, group 32 by default), packed two int4 values per byte. The asymmetric format puts both ends of
every group on the grid; the bundled SmolLM2 ships as Q4_1, so its decoder weights come back bit for bit
(the symmetric group-64 format used before lost 10 pp of held-out exact-match after tuning). Its forward is one autograd function that dequantizes the weight, multiplies,
and lets the fp32 weight go; backward dequantizes it again for the input gradient (the weight is frozen:
no weight gradient). Nothing of the size of the fp32 weight is kept between forward and backward. The
embeddings and the output layer (tied to them in SmolLM2) stay fp32, as do norms and biases.

`load_quantized_base` builds the model without touching memory for its weights (`no_init_weights`, so
the empty fp32 tensors are never paged in), swaps every Linear for an empty `QuantLinear` and then reads
the safetensors file one tensor at a time with plain reads (not a memory map, whose pages would stay
resident), quantizing each Linear weight as it arrives: the whole fp32
model never exists in memory, which is what makes the peak RSS drop.

Library findings (2026-11, torch 2.13 CPU): torchao 0.18's `Int8WeightOnlyConfig` gives a CPU tensor
that supports backward to the input, but `Int4WeightOnlyConfig` refuses to build without the `mslk`
kernels ("Requires mslk >= 1.0.0", GPU only); bitsandbytes is not installed here, and PEFT's LoftQ
(`loftq_init`) requires bitsandbytes and a CUDA/XPU device. So int8 and int4 share this one small path
over our own quantizers (same rounding and format as export, exact dequantization for merging), and
LoftQ (Li et al. 2023) is implemented here: alternate Q = quant(W - L R) and L R = SVD_r(W - deq(Q)).

A LoRA adapter wraps a `QuantLinear` like any nn.Linear (it is one for PEFT's dispatch; `weight` is a
read-only property giving the dequantized tensor). Fused LoRA and the SwiGLU recompute run on these layers
too: the base term goes through `_DequantLinear` (fused LoRA) or is dequantized inside the SwiGLU function,
forward and again backward, so a quantized base keeps for backward what an fp32 base keeps plus references to
its own int4/int8 buffers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import qformat
from ..errors import UserError

FORMATS = {"int8": "int8", "int4": "int4-asym"}  # train.base_quant -> quantized format
LOFTQ_EXACT = 1e-6  # ||w - deq(Q(w))|| / ||w|| at or below this: w is on the grid, LoftQ has nothing to correct


class _DequantLinear(torch.autograd.Function):
    """y = x @ deq(q).T + b, saving only the quantized weight; backward recomputes deq(q) for dx."""

    @staticmethod
    def forward(ctx, x, qdata, scale, low, bias, method, group_size):
        w = dequantize_weight(qdata, scale, low, method, group_size).to(x.dtype)  # [out, in], freed on return
        ctx.save_for_backward(qdata, scale, low)
        ctx.fmt = (method, group_size)
        return F.linear(x, w, bias)

    @staticmethod
    def backward(ctx, grad_out):
        qdata, scale, low = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            w = dequantize_weight(qdata, scale, low, *ctx.fmt).to(grad_out.dtype)  # [out, in]
            grad_x = grad_out @ w
        return grad_x, None, None, None, None, None, None


class QuantLinear(nn.Linear):
    """A frozen Linear whose weight lives as int8 / packed int4 plus scales (and, int4, group minima) as
    buffers."""

    quantized = True

    def __init__(self, in_features: int, out_features: int, qdata: torch.Tensor, scale: torch.Tensor,
                 method: str, group_size: int | None, bias: torch.Tensor | None = None,
                 low: torch.Tensor | None = None):
        nn.Module.__init__(self)  # not nn.Linear.__init__: no fp32 weight is ever allocated
        self.in_features, self.out_features = in_features, out_features
        self.method, self.group_size = method, group_size
        self.register_buffer("qdata", qdata)
        self.register_buffer("scale", scale)
        self.register_buffer("low", low)  # int4-asym: each group's minimum; None for int8
        self.register_parameter("bias", None if bias is None else nn.Parameter(bias, requires_grad=False))

    @classmethod
    def from_weight(cls, w: torch.Tensor, method: str, group_size: int, bias: torch.Tensor | None = None,
                    ) -> "QuantLinear":
        q, scale, low = quantize_weight(w, method, group_size)
        return cls(w.shape[1], w.shape[0], q, scale, FORMATS[method], group_size if method == "int4" else None, bias,
                   low)

    @property
    def weight(self) -> torch.Tensor:  # the dequantized weight, a fresh tensor (read-only use)
        return self.dequantized()

    def dequantized(self) -> torch.Tensor:
        return dequantize_weight(self.qdata, self.scale, self.low, self.method, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _DequantLinear.apply(x, self.qdata, self.scale, self.low, self.bias, self.method, self.group_size)

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear holding the dequantized weight (for merging and export)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight = nn.Parameter(self.dequantized(), requires_grad=False)
        if self.bias is not None:
            lin.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        return lin

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.method}"


def quantize_weight(w: torch.Tensor, method: str, group_size: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(qdata, scale, low) of an fp32 weight [out, in]: int8 [out, in] (low None), or int4-asym packed uint8
    [out, in // 2] with per-group scale and minimum [out, in / group_size]."""
    if method == "int8":
        return (*qformat.quantize_int8(w), None)
    return qformat.quantize_int4_asym(w, group_size)


def dequantize_weight(qdata: torch.Tensor, scale: torch.Tensor, low: torch.Tensor | None, method: str,
                      group_size: int | None) -> torch.Tensor:
    """The fp32 weight a QuantLinear's buffers stand for (method: a FORMATS value)."""
    if method == "int4-asym":
        return qformat.dequantize_int4_asym(qdata, scale, low, group_size)
    return qformat.dequantize(qdata, scale, method, group_size)


def quantizable(w_shape: torch.Size, method: str, group_size: int) -> bool:
    return method == "int8" or w_shape[1] % group_size == 0


def loftq_factors(w: torch.Tensor, method: str, group_size: int, rank: int, iters: int
                  ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor | None,
                             torch.Tensor | None]:
    """LoftQ: ((qdata, scale, low), L [out, r], R [r, in]) with deq(Q) + L @ R ~ w (alternating quantization
    of w - L R and a rank-r SVD of w - deq(Q), `iters` times).

    L and R are None when w is already on the quantization grid (w - deq(Q) is zero up to fp32 rounding, as
    for every decoder weight of a Q4_1 GGUF model under int4): there is nothing for the adapter to correct,
    and a zero L R split into A and B would leave both at zero, where LoRA's gradients are zero too (the
    adapter would never train). The caller keeps the default initialisation (B = 0, A random) there."""
    w = w.detach().to(torch.float32)
    approx = torch.zeros_like(w)  # L @ R
    fmt = FORMATS[method]
    gs = group_size if method == "int4" else None
    left = right = None
    for step in range(iters):
        quant = quantize_weight(w - approx, method, group_size)
        residual = w - dequantize_weight(*quant, fmt, gs)
        if step == 0 and float(residual.norm()) <= LOFTQ_EXACT * float(w.norm()):
            return quant, None, None
        u, s, vh = torch.linalg.svd(residual, full_matrices=False)
        root = s[:rank].sqrt()
        left, right = u[:, :rank] * root, root[:, None] * vh[:rank]  # [out, r], [r, in]
        approx = left @ right
    return quant, left.contiguous(), right.contiguous()


def loftq_layers(model: nn.Module) -> int:
    """How many layers carry LoftQ factors (the others quantized exactly and keep the default LoRA init)."""
    return sum(hasattr(m, "loftq") for m in model.modules())


def _linear_names(model: nn.Module) -> list[str]:
    """Every nn.Linear of the model but the output layer (which stays fp32, like the embeddings)."""
    head = model.get_output_embeddings()
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head
            and not getattr(m, "quantized", False)]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _quantized_module(name: str, w: torch.Tensor, bias, method: str, group_size: int,
                      loftq: tuple[int, int] | None) -> QuantLinear:
    if loftq is None:
        return QuantLinear.from_weight(w, method, group_size, bias)
    (q, scale, low), left, right = loftq_factors(w, method, group_size, *loftq)
    module = QuantLinear(w.shape[1], w.shape[0], q, scale, FORMATS[method],
                         group_size if method == "int4" else None, bias, low)
    if left is not None:  # taken by train.setup when the adapter is made (None: w was already on the grid)
        module.loftq = (left, right)
    return module


def quantize_model_(model: nn.Module, method: str, group_size: int = 32, loftq: tuple[int, int] | None = None
                    ) -> dict[str, list[str]]:
    """Replace the Linear layers of an fp32 model in place, one at a time (each fp32 weight freed as it
    goes). loftq: (rank, iters) to also compute LoftQ factors. Returns {quantized, kept_fp32: names}."""
    done, kept = [], []
    for name in _linear_names(model):
        lin = model.get_submodule(name)
        if not quantizable(lin.weight.shape, method, group_size):
            kept.append(name)
            continue
        bias = None if lin.bias is None else lin.bias.detach()
        _set_module(model, name, _quantized_module(name, lin.weight.detach(), bias, method, group_size, loftq))
        done.append(name)
        del lin
    return {"quantized": done, "kept_fp32": kept}


def dequantize_model_(model: nn.Module) -> int:
    """Replace every QuantLinear (also inside LoRA layers) by an nn.Linear of its dequantized weight."""
    names = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    for name in names:
        _set_module(model, name, model.get_submodule(name).to_linear())
    return len(names)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QuantLinear) for m in model.modules())


def load_quantized_base(path: str | Path, method: str, group_size: int = 32,
                        loftq: tuple[int, int] | None = None, log: Callable[[str], None] = print) -> nn.Module:
    """A causal LM from a safetensors folder whose decoder Linears are quantized as they are read (the fp32
    model is never whole in memory). fp32, SDPA attention, tied weights tied, in train mode off (eval)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UserError(f"train.base_quant needs the model's weights as safetensors; {path} has none")
    config = AutoConfig.from_pretrained(str(path))
    with no_init_weights():  # the empty weights are never written, so never paged in
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    targets = set(_linear_names(model))
    for name in targets:  # drop the (untouched) fp32 weights at once
        lin = model.get_submodule(name)
        shell = QuantLinear(lin.in_features, lin.out_features, torch.empty(0), torch.empty(0), FORMATS[method], None,
                            None if lin.bias is None else torch.zeros(lin.out_features))
        _set_module(model, name, shell)
    state_names = set(model.state_dict().keys())
    filled, kept = set(), []
    for key, tensor in _read_tensors(files):
        mod, _, leaf = key.rpartition(".")
        if mod in targets and leaf == "weight":
            w = tensor.to(torch.float32)
            del tensor
            shell = model.get_submodule(mod)
            bias = shell.bias.detach() if shell.bias is not None else None
            if quantizable(w.shape, method, group_size):
                new = _quantized_module(mod, w, bias, method, group_size, loftq)
            else:
                new = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device="meta")
                new.weight = nn.Parameter(w, requires_grad=False)
                new.bias = None if bias is None else nn.Parameter(bias)
                kept.append(mod)
            _set_module(model, mod, new)
            filled.add(key)
            del w
        elif key in state_names:
            try:
                target = model.get_parameter(key)
            except AttributeError:
                target = model.get_buffer(key)
            with torch.no_grad():
                target.copy_(tensor)
            filled.add(key)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if n not in filled and not _tied(model, n)]
    missing += [f"{t}.weight" for t in targets if f"{t}.weight" not in filled]
    if missing:
        raise UserError(f"{path}: weights {missing[:3]} are missing from its safetensors; the folder is incomplete")
    if kept:
        log(f"base_quant {method}: {len(kept)} Linear layers kept fp32 (in_features not a multiple of {group_size})")
    if loftq is not None:
        exact = len(targets) - len(kept) - loftq_layers(model)
        if exact:
            log(f"lora.init loftq: {exact} of {len(targets) - len(kept)} layers are already on the {method} grid "
                f"(quantized without loss); their adapters keep the default init, as LoftQ has nothing to correct")
    model.eval()
    return model


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def _read_tensors(files: list[Path]):
    """(name, tensor) of safetensors files, one tensor at a time, read with plain file reads into fresh memory.

    Not safetensors' safe_open: it maps the file, and every page read stays resident in the mapping (and is
    counted in the process's RSS) until the file is closed, i.e. the whole fp32 model again."""
    import json
    import struct

    for file in files:
        with open(file, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
            header.pop("__metadata__", None)
            base = 8 + n
            for name, entry in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
                begin, end = entry["data_offsets"]
                dtype = _DTYPES.get(entry["dtype"])
                if dtype is None:
                    raise UserError(f"{file}: tensor {name} has dtype {entry['dtype']}, which train.base_quant "
                                    "cannot read")
                fh.seek(base + begin)
                buf = bytearray(end - begin)
                fh.readinto(buf)
                t = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
                yield name, t.reshape(entry["shape"])


def _tied(model: nn.Module, name: str) -> bool:
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and head.weight is emb.weight and name.startswith(
        next(n for n, m in model.named_modules() if m is head))
