"""Ablation of tunesmith's training step: each source of speed switched on or off on its own.

One process, one model, one fixed batch (the first optimizer step of benchmarks/train_vs_trl.py:
8 samples of the mix, 40 to 1,500 tokens), forward + backward of the step's loss, no optimizer
(identical for every variant). Every variant runs a warm-up step, then `--repeat` timed steps; the
best time is reported. MFU uses the issue's 4N count and a fp32 matmul peak measured here. The
memory column is what autograd keeps for backward in the largest row (distinct storages,
parameters excluded), which is what the row budget and the SwiGLU recompute change. The
torch.compile variant runs last (it stays compiled) and reports its compile-laden first step.

    .venv/bin/python benchmarks/train_ablation.py [--repeat 2] [--record]
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_vs_trl as bench  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _padded_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The previous kernel: scatter the packed row into a right-padded [n, H, max_len, D] batch."""
    pos = kwargs["position_ids"].reshape(-1)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    starts = pos == 0
    n, width = int(starts.sum()), int(pos.max()) + 1
    slots = (torch.cumsum(starts.long(), 0) - 1) * width + pos

    def to_padded(x):
        _, h, _, d = x.shape
        out = x.new_zeros(n * width, h, d).index_copy(0, slots, x[0].transpose(0, 1))
        return out.view(n, width, h, d).transpose(1, 2)

    out = F.scaled_dot_product_attention(*(to_padded(t) for t in (query, key, value)), is_causal=True, scale=scaling)
    return out.transpose(1, 2).reshape(n * width, out.shape[1], out.shape[3])[slots].unsqueeze(0), None


@contextmanager
def attention_kernel(kind: str):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from tunesmith.kernels import attention

    replacement = {"per-sample": None, "padded": _padded_attention, "sdpa-mask": sdpa_attention_forward}[kind]
    if replacement is not None:
        AttentionInterface.register(attention.NAME, replacement)
    try:
        yield
    finally:
        AttentionInterface.register(attention.NAME, attention.packed_attention)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()

    from tunesmith.data.packing import pack_rows
    from tunesmith.models import load_model
    from tunesmith.testing.reference import full_logits_loss, kept_activations
    from tunesmith.train.loss import PackedLoss
    from tunesmith.train.setup import prepare_model

    batch = bench.step_order(bench.build_samples(64, seed=1), 8)[:8]
    cfg = bench._train_config(64, 8)
    model = load_model(None, log=lambda *a: None)
    torch.manual_seed(0)
    model = prepare_model(model, cfg)
    model.train()
    body, head = bench._param_counts(model)
    flops = bench.model_flops(batch, body, head)
    tokens = sum(len(s.input_ids) for s in batch)
    peak = bench.matmul_peak(3.0)

    def step(attn="per-sample", fused=True, light=True, row_budget=1024, full_logits=False, chunk=512,
             measure=False):
        """One optimizer step's forward + backward; returns the most activation MB any row kept."""
        loss_module = PackedLoss(model, chunk, fused, light)
        most = 0
        with attention_kernel(attn):
            for row in pack_rows(batch, row_budget):
                with kept_activations(model) if measure else nullcontext() as saved:
                    if full_logits:
                        from tunesmith.kernels.attention import packed_attention_enabled
                        with packed_attention_enabled(model.get_base_model()):
                            loss = full_logits_loss(model, row.input_ids, row.position_ids, row.targets)
                    else:
                        loss = loss_module(row.input_ids, row.position_ids, row.targets)
                if measure:
                    most = max(most, sum(saved.values()) / 2**20)
                loss.backward()
        model.zero_grad(set_to_none=True)
        return most

    variants = [
        ("before: padded attention, PEFT LoRA forward, one 4096-token row",
         dict(attn="padded", fused=False, light=False, row_budget=4096)),
        ("+ per-sample attention (split views, GQA in SDPA)", dict(fused=False, light=False, row_budget=4096)),
        ("+ fused LoRA addmm", dict(light=False, row_budget=4096)),
        ("+ SwiGLU recompute", dict(row_budget=4096)),
        ("+ rows of <= 1024 tokens (the default)", dict()),
        ("default, rows of <= 2048 tokens", dict(row_budget=2048)),
        ("default, full logits instead of label-only chunked loss", dict(full_logits=True)),
        ("default, 1 thread instead of 2", dict(threads=1)),
        ("default + torch.compile of MLPs and RMSNorms (dynamic shapes)", dict(compiled=True)),
    ]
    print(f"batch: {len(batch)} samples, {tokens} tokens, {sum(s.n_trainable for s in batch)} label tokens; "
          f"fp32 matmul peak {peak / 1e9:.0f} GFLOP/s; threads {torch.get_num_threads()}", flush=True)
    lines = ["| variant | step s | tokens/s | MFU | activations kept, largest row (MB) |", "|---|---|---|---|---|"]
    threads = torch.get_num_threads()
    for label, kw in variants:
        kw = dict(kw)
        torch.set_num_threads(kw.pop("threads", threads))
        compile_s = None
        if kw.pop("compiled", False):
            for layer in model.get_base_model().model.layers:
                for part in (layer.mlp, layer.input_layernorm, layer.post_attention_layernorm):
                    part.compile(dynamic=True)
            t = time.perf_counter()
            step(**kw)
            compile_s = time.perf_counter() - t
        kept = step(**kw, measure=True)
        best = float("inf")
        for _ in range(args.repeat):
            t = time.perf_counter()
            step(**kw)
            best = min(best, time.perf_counter() - t)
        if compile_s is not None:
            label += f"; first step {compile_s:.0f} s"
        lines.append(f"| {label} | {best:.2f} | {tokens / best:.0f} | {100 * flops / best / peak:.1f}% | {kept:.0f} |")
        print(lines[-1], flush=True)
    torch.set_num_threads(threads)
    text = "\n".join(lines)
    print(text)
    if args.record:
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write(f"\n### Ablation: one step of the mix, forward + backward ({bench.DATE}, {bench.MACHINE})\n\n"
                    f"`python benchmarks/train_ablation.py --record` (under `flock -x /tmp/tunesmith-cpu.lock`): "
                    f"{len(batch)} samples, {tokens} tokens, best of {args.repeat} after a "
                    f"warm-up; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s measured in the run.\n\n{text}\n")


if __name__ == "__main__":
    main()
