"""FSDP2 (`train.distributed: fsdp`): parameters, gradients and optimizer state sharded over the ranks, and
checkpoints through torch.distributed.checkpoint (DCP) that resume on any number of ranks.

Wrapping follows torchtitan and torchtune: `fully_shard` on every decoder layer (each is all-gathered for its
forward and backward, then freed), then on the loss module as the root (the embedding, the final norm and the
output layer, which the packed loss reads directly). On a GPU the parameters compute in bf16 and gradients
are reduced in fp32 (MixedPrecisionPolicy); on CPU (gloo) everything stays fp32.

Every rank must run the same number of forwards (each all-gathers layer by layer), so a rank whose share of
the step packs into fewer rows runs zero-weighted dummy rows (see `loop.forward_backward`).

A checkpoint's `dcp/` folder holds the trainable weights and the optimizer state, written by every rank in
parallel (each its shard), with global names, so a checkpoint written by 2 ranks loads on 1 rank (no process
group needed) or on 3. It needs a filesystem every rank sees (one machine, or a shared output.dir).
"""

from __future__ import annotations

import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..data.chat import IGNORE
from ..kernels.unwrap import unwrap
from .distributed import DistInfo, barrier


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def shard(loss_module: nn.Module, model: nn.Module, info: DistInfo) -> nn.Module:
    """fully_shard each decoder layer, then the loss module (the root). Returns the loss module, now sharded."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if info.device.type == "cuda" else MixedPrecisionPolicy()
    for layer in unwrap(model).get_decoder().layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(loss_module, mp_policy=mp)
    return loss_module


def dummy_row(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 2-token row (token 0 twice, one target) for a rank with fewer rows than the others; its loss is
    multiplied by 0 (its gradient is zero)."""
    ids = torch.zeros(1, 2, dtype=torch.long, device=device)
    pos = torch.arange(2, device=device).unsqueeze(0)
    targets = torch.tensor([[IGNORE, 0]], device=device)
    return ids, pos, targets


def max_over_ranks(n: int, info: DistInfo) -> int:
    t = torch.tensor([n], dtype=torch.long, device=info.device if info.device.type == "cuda" else None)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


@contextmanager
def _one_process_is_fine():
    """DCP warns when no process group exists ("assuming the intent is to ... in a single process"): it is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*assuming the intent is to (save|load) in a single process.*")
        yield


def _options(full: bool = False):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=False, full_state_dict=full, cpu_offload=full)


def write_sharded(folder: Path, model: nn.Module, optimizer, info: DistInfo) -> None:
    """Every rank writes its shard of the trainable weights and optimizer state into `folder` (DCP)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    if info.is_main:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    barrier(info)
    msd, osd = get_state_dict(model, optimizer, options=_options())
    with _one_process_is_fine():
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(folder))
    barrier(info)


def read_sharded(folder: Path, model: nn.Module, optimizer=None) -> None:
    """Load a DCP folder into the model (and the optimizer, if given) as they are sharded now (any number of
    ranks, or one process without a process group), insisting that every trainable weight is in it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict,
                                                         set_model_state_dict, set_state_dict)

    if optimizer is not None:
        msd, osd = get_state_dict(model, optimizer, options=_options())
        state = {"model": msd, "optim": osd}
    else:
        msd = get_model_state_dict(model, options=_options())
        state = {"model": msd}
    saved = set(dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata)
    missing = sorted(k for k in msd if f"model.{k}" not in saved)
    if missing:
        raise RuntimeError(f"checkpoint {folder} does not match the model: missing {missing[:3]}")
    with _one_process_is_fine():
        dcp.load(state, checkpoint_id=str(folder))
    if optimizer is not None:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                       options=_options())
    else:
        set_model_state_dict(model, state["model"], options=_options())


def full_trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights gathered whole onto rank 0's CPU (every rank must call it; others get {})."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(full=True))
