"""Calibration for activation-aware quantization: the inputs each decoder Linear sees.

Forward hooks on every Linear under the decoder (not the embeddings or lm_head) record, per
distinct input tensor, a uniform random sample of input rows (bounded memory) and the mean |x| of
every input channel over all rows; Linears fed the same tensor (q/k/v, gate/up) share one record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import UserError

CALIBRATION_SEED = 7_000_003  # generated calibration items: a seed apart from train/eval/target seeds




@dataclass
class LinearInputs:
    """What one Linear's inputs looked like on the calibration data. Linears fed the very same
    tensor (q/k/v, gate/up) share one object."""

    abs_sum: torch.Tensor  # fp32 [in]: sum of |x| over every row seen
    max_rows: int = 4096
    n_rows: int = 0  # rows seen (before sampling)
    _chunks: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (rows, keys)
    _threshold: float = 1.0  # rows with a key above this can no longer be in the sample
    _gram: torch.Tensor | None = None

    def add(self, x: torch.Tensor, gen: torch.Generator) -> None:
        """Record rows x [n, in] (fp32). The sample is uniform without replacement: every row gets a
        random key and the `max_rows` rows with the smallest keys are kept."""
        self.abs_sum += x.abs().sum(dim=0)
        self.n_rows += x.shape[0]
        keys = torch.rand(x.shape[0], generator=gen)
        keep = keys < self._threshold
        if keep.any():
            self._chunks.append((x[keep], keys[keep]))  # boolean indexing copies
        if sum(k.numel() for _, k in self._chunks) > 2 * self.max_rows:  # amortised: O(rows) overall
            self._consolidate()

    def _consolidate(self) -> None:
        if len(self._chunks) <= 1 and (not self._chunks or self._chunks[0][1].numel() <= self.max_rows):
            return
        rows = torch.cat([r for r, _ in self._chunks])
        keys = torch.cat([k for _, k in self._chunks])
        if keys.numel() > self.max_rows:
            idx = torch.topk(keys, self.max_rows, largest=False).indices
            rows, keys = rows[idx], keys[idx]
            self._threshold = float(keys.max())
        self._chunks = [(rows.contiguous(), keys)]

    @property
    def rows(self) -> torch.Tensor:
        """The sampled input rows, fp32 [min(n_rows, max_rows), in]."""
        self._consolidate()
        return self._chunks[0][0] if self._chunks else self.abs_sum.new_empty(0, self.abs_sum.numel())

    @property
    def abs_mean(self) -> torch.Tensor:
        return self.abs_sum / max(self.n_rows, 1)

    def gram(self) -> torch.Tensor:
        """X^T X of the sampled rows, float64 (computed once, shared by the Linears fed this input)."""
        if self._gram is None:
            x = self.rows.to(torch.float64)
            self._gram = x.T @ x
        return self._gram

    def drop_gram(self) -> None:
        self._gram = None


def quantizable_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(name, module) of every nn.Linear of the decoder: all Linears but the output layer (and any
    Linear whose weight is the input embedding)."""
    if hasattr(model, "peft_config"):
        raise UserError("the model still carries a LoRA adapter; merge it first (quantize the merged "
                        "model folder, e.g. RUN/model)")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    emb_w = getattr(emb, "weight", None)
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and m is not head and m.weight is not emb_w]


@torch.no_grad()
def collect_activations(model: nn.Module, token_id_lists: Sequence[Sequence[int]], max_tokens: int = 8192,
                        max_rows: int = 4096, seed: int = 0) -> dict[str, LinearInputs]:
    """Run the calibration sequences (one at a time, no grad, fp32 inputs) and record, for every
    decoder Linear, a uniform sample of at most `max_rows` input rows and the mean |x| per input
    channel over all rows. At most `max_tokens` tokens are fed (sequences are cut there)."""
    linears = quantizable_linears(model)
    gen = torch.Generator().manual_seed(seed)
    stats: dict[str, LinearInputs] = {}
    current: list[tuple[torch.Tensor, LinearInputs]] = []  # (input, its stats) within one forward

    def hook(name: str):
        def fn(module: nn.Module, args: tuple) -> None:
            x = args[0]
            for seen, st in current:  # a peer Linear already recorded this very tensor
                if seen is x:
                    stats.setdefault(name, st)
                    if stats[name] is not st:
                        raise RuntimeError(f"calibration: {name} changed which input it shares")
                    return
            x2 = x.detach().reshape(-1, x.shape[-1]).to("cpu", torch.float32)  # statistics live on the CPU
            st = stats.get(name)
            if st is None:
                st = stats[name] = LinearInputs(abs_sum=torch.zeros(x2.shape[1]), max_rows=max_rows)
            current.append((x, st))
            st.add(x2, gen)
        return fn

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in linears]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    max_len = getattr(getattr(model, "config", None), "max_position_embeddings", None) or max_tokens
    fed = 0
    try:
        for ids in token_id_lists:
            if fed >= max_tokens:
                break
            ids = list(ids)[: min(max_tokens - fed, max_len)]
            if not ids:
                continue
            current.clear()
            model(input_ids=torch.tensor([ids], device=device), use_cache=False)
            fed += len(ids)
    finally:
        current.clear()
        for h in handles:
            h.remove()
        model.train(was_training)
    return stats


def calibration_summary(stats: dict[str, LinearInputs]) -> dict[str, Any]:
    firsts = list(stats.values())
    return {"tokens": firsts[0].n_rows if firsts else 0,
            "rows_per_layer": max((s.rows.shape[0] for s in firsts), default=0),
            "distinct_inputs": len({id(s) for s in firsts})}


def default_calibration_ids(tokenizer, n: int = 128, seed: int = CALIBRATION_SEED) -> list[list[int]]:
    """Generated task conversations (tunesmith.data.tasks) rendered with the chat template: a
    calibration set when the user gives none. The seed keeps them apart from the default train and
    held-out items."""
    from ..data.chat import render
    from ..data.tasks import generate_examples

    return [render(tokenizer, ex.messages, add_generation_prompt=False) for ex in generate_examples(n, seed)]


