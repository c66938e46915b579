"""Training-only module forwards, switched on for the length of a `with` block.

The leaner training kernels (fused LoRA, memory-light SwiGLU) replace the forward of the modules
they can handle while the loss is computed, and give every module its own forward back
afterwards, so that generation, evaluation and saving see the model exactly as loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

SKIP = object()  # what a plan returns for a module that keeps its own forward


@contextmanager
def patched_forwards(model: nn.Module, enabled: bool, plan: Callable[[nn.Module], object],
                     forward: Callable[..., torch.Tensor]):
    """Inside the block, each module of `model` for which `plan(module)` is not `SKIP` runs
    `forward(module, plan_value, x, *args, **kwargs)`. Yields how many modules were switched."""
    patched = []
    if enabled:
        for module in model.modules():
            value = plan(module)
            if value is not SKIP and "forward" not in module.__dict__:
                module.forward = lambda x, *a, _m=module, _v=value, **k: forward(_m, _v, x, *a, **k)
                patched.append(module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            del module.forward
