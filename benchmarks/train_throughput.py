"""Training throughput, side by side in one invocation: tunesmith's loop vs a plain PEFT loop.

Same model (bundled SmolLM2-135M-Instruct), same samples (generated tasks, chat-templated, same
assistant-only masks), same LoRA (r=16, all linear layers), same AdamW, warmup + cosine schedule,
batch size and number of steps. The baseline is the usual hand-written loop: right-padded batches
and the model's own full-logit loss (`labels=`). Each contender runs in its own subprocess so that
peak resident memory is its own.

    .venv/bin/python benchmarks/train_throughput.py [--samples 160] [--batch 16] [--record]

--record appends the table to BENCHMARKS.md with the date and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _samples(n: int):
    from tunesmith.data.chat import tokenize_examples
    from tunesmith.data.tasks import generate_examples
    from tunesmith.models import load_tokenizer

    tok = load_tokenizer(None, log=lambda *a: None)
    samples, _, _ = tokenize_examples(tok, generate_examples(n, seed=123), 512)
    return samples


def _model_and_cfg(steps: int, batch: int):
    import torch

    from tunesmith.models import load_model
    from tunesmith.train.config import TrainConfig
    from tunesmith.train.setup import prepare_model

    cfg = TrainConfig(method="lora", batch_size=batch, max_steps=steps, lr=2e-3, warmup_steps=2, save_every=10**6)
    model = load_model(None, log=lambda *a: None)
    torch.manual_seed(0)
    return prepare_model(model, cfg), cfg


def run_tunesmith(n: int, batch: int) -> dict:
    from tunesmith.train.loop import train

    samples = _samples(n)
    model, cfg = _model_and_cfg(n // batch, batch)
    t0 = time.perf_counter()
    result = train(model, samples, cfg, None)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "steps": len(result.losses), "final_loss": result.losses[-1],
            "tokens": sum(len(s.input_ids) for s in samples[: len(result.losses) * batch])}


def run_plain(n: int, batch: int) -> dict:
    """The baseline: padded batches, full logits, HF loss; identical data order and schedule."""
    import torch

    from tunesmith.data.chat import IGNORE
    from tunesmith.train.loop import step_indices
    from tunesmith.train.schedule import build_optimizer, build_scheduler

    samples = _samples(n)
    model, cfg = _model_and_cfg(n // batch, batch)
    model.train()
    opt = build_optimizer(model.parameters(), cfg.lr, cfg.weight_decay, cfg.betas)
    sched = build_scheduler(opt, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
    losses, tokens = [], 0
    t0 = time.perf_counter()
    for step in range(cfg.max_steps):
        b = [samples[i] for i in step_indices(step, len(samples), cfg)]
        width = max(len(s.input_ids) for s in b)
        ids = torch.zeros(len(b), width, dtype=torch.long)
        mask = torch.zeros(len(b), width, dtype=torch.long)
        labels = torch.full((len(b), width), IGNORE, dtype=torch.long)
        for r, s in enumerate(b):
            ids[r, : len(s.input_ids)] = torch.tensor(s.input_ids)
            mask[r, : len(s.input_ids)] = 1
            labels[r, : len(s.labels)] = torch.tensor(s.labels)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        tokens += int(mask.sum())
    return {"seconds": time.perf_counter() - t0, "steps": len(losses), "final_loss": losses[-1], "tokens": tokens}


def _child(name: str, n: int, batch: int) -> None:
    result = {"tunesmith": run_tunesmith, "plain": run_plain}[name](n, batch)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=160)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        return _child(args.child, args.samples, args.batch)
    rows = {}
    for name in ("plain", "tunesmith"):
        out = subprocess.run([sys.executable, __file__, "--child", name, "--samples", str(args.samples),
                              "--batch", str(args.batch)], capture_output=True, text=True, cwd=ROOT)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if not line:
            sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
        rows[name] = json.loads(line[0][7:])
    header = "| contender | samples/s | tokens/s (non-padding) | peak RSS MB | final loss |"
    lines = [header, "|---|---|---|---|---|"]
    for name, r in rows.items():
        sps = r["steps"] * args.batch / r["seconds"]
        lines.append(f"| {name} | {sps:.2f} | {r['tokens'] / r['seconds']:.0f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['final_loss']:.4f} |")
    ratio = rows["plain"]["seconds"] / rows["tunesmith"]["seconds"]
    mem = rows["tunesmith"]["peak_rss_mb"] / rows["plain"]["peak_rss_mb"]
    table = "\n".join(lines) + f"\n\ntunesmith / plain: {ratio:.2f}x samples/s, {mem:.2f}x peak RSS\n"
    print(table)
    if args.record:
        machine = f"{platform.machine()}, {os.cpu_count()} cores, torch CPU fp32"
        cmd = f"python benchmarks/train_throughput.py --samples {args.samples} --batch {args.batch} --record"
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write(f"\n## Training throughput, LoRA r=16 on SmolLM2-135M-Instruct ({date.today()}, {machine})\n\n"
                    f"`{cmd}`: {args.samples} generated task samples, batch {args.batch}, same masks, optimizer "
                    f"and schedule.\n\n{table}")


if __name__ == "__main__":
    main()
