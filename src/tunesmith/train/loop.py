"""The training loop: setup -> train -> save. One readable flow, rank-aware, exactly resumable.

Data order is a pure function of (seed, step): step s of epoch e takes samples
perm_e[i*B:(i+1)*B] of a permutation seeded by seed + e. Resuming therefore needs only the step
number, plus the model, optimizer, scheduler and RNG states that the checkpoint restores.
Each step's loss is normalised by the number of target tokens in the whole step, so any split
into micro-batches or ranks (4x2, 1x8, 2 ranks x 4) computes the same gradient.
"""

from __future__ import annotations

import json
import math
import time
import signal
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..data.chat import TokenizedExample
from ..data.packing import pack_rows
from ..recipe import TrainConfig
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, set_rng_state
from .distributed import DistInfo, all_reduce_sum, init_distributed
from .loss import PackedLoss
from .schedule import build_optimizer, build_scheduler
from .setup import load_trainable_state, trainable_state


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)  # per step, this invocation only
    seconds: float = 0.0
    tokens: int = 0  # non-padding tokens processed in this invocation
    resumed_from: int | None = None
    stopped_early: bool = False


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    return max(1, n_samples // batch_size)  # the ragged tail of an epoch is dropped


def total_steps(n_samples: int, cfg: TrainConfig) -> int:
    return cfg.max_steps or max(1, math.floor(cfg.epochs * steps_per_epoch(n_samples, cfg.batch_size)))


def step_indices(step: int, n_samples: int, cfg: TrainConfig) -> list[int]:
    """Sample indices of global step `step` (0-based), identical on every rank."""
    per_epoch = steps_per_epoch(n_samples, cfg.batch_size)
    epoch, i = divmod(step, per_epoch)
    perm = epoch_permutation(n_samples, cfg.seed, epoch)
    b = min(cfg.batch_size, n_samples)
    return perm[i * b:(i + 1) * b]


def _micro_rows(samples: list[TokenizedExample], cfg: TrainConfig):
    """Split this rank's step samples into micro-batches, each packed into padding-free rows."""
    micro = cfg.micro_batch_size or len(samples)
    rows = []
    for start in range(0, len(samples), micro):
        rows.extend(pack_rows(samples[start:start + micro], cfg.max_tokens_per_row))
    return rows


def forward_backward(loss_module, model, batch: list[TokenizedExample], cfg: TrainConfig, info: DistInfo):
    """Accumulate the gradient of one global step's loss (mean over its target tokens).

    Returns (summed loss on this rank, tokens on this rank, packed rows on this rank).
    """
    # Normaliser: target tokens in the whole global step (known on every rank, no sync needed).
    n_targets = sum(s.n_trainable for s in batch)
    rows = _micro_rows(batch[info.rank::info.world_size], cfg)
    loss_sum = torch.zeros((), dtype=torch.float64)
    n_tokens = 0
    for k, row in enumerate(rows):
        last = k == len(rows) - 1
        # DDP: all-reduce gradients once per step, on the last micro-batch only.
        ctx = loss_module.no_sync() if not last and hasattr(loss_module, "no_sync") else nullcontext()
        with ctx:
            row_loss = loss_module(row.input_ids.to(info.device), row.position_ids.to(info.device),
                                   row.targets.to(info.device))
            # DDP averages gradients over ranks, so scale by world size to get a sum.
            (row_loss * (info.world_size / n_targets)).backward()
        loss_sum += row_loss.detach().double().cpu()
        n_tokens += row.n_tokens
    if not rows and info.world_size > 1:  # a rank with no sample still joins the all-reduce
        (sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0).backward()
    return loss_sum, n_tokens, len(rows)


class BestTracker:
    """Remembers the best evaluated step by one metric, in checkpoints/best.json (survives resume)."""

    def __init__(self, ckpt_root: Path, metric: str, lower_is_better: bool):
        self.path = ckpt_root / "best.json"
        self.metric, self.lower = metric, lower_is_better
        self.step: int | None = None
        self.value: float | None = None
        self.history: list[dict] = []
        if self.path.is_file():
            saved = json.loads(self.path.read_text())
            if saved.get("metric") == metric:
                self.step, self.value, self.history = saved["step"], saved["value"], saved.get("history", [])

    def update(self, step: int, scores: dict[str, float]) -> bool:
        """Record this evaluation; True when it is the new best."""
        value = scores.get(self.metric)
        if value is None:
            return False
        self.history.append({"step": step, "value": value})
        better = self.value is None or (value < self.value if self.lower else value > self.value)
        if better:
            self.step, self.value = step, value
        return better

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"metric": self.metric, "lower_is_better": self.lower, "step": self.step,
                                   "value": self.value, "history": self.history}, indent=2))
        tmp.replace(self.path)


class MetricsLog:
    """Appends one JSON line per logged step to metrics.jsonl (rank 0 only), optional TensorBoard."""

    def __init__(self, path: Path | None, tensorboard_dir: Path | None, resume_step: int):
        self.path = path
        self.writer = None
        if path is not None and path.exists():  # drop lines past the checkpoint we resume from
            kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= resume_step]
            path.write_text("".join(ln + "\n" for ln in kept))
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                from ..errors import UserError
                raise UserError("train.tensorboard is on but tensorboard is not installed: "
                                "pip install tensorboard (or set train.tensorboard: false)") from None
            self.writer = SummaryWriter(str(tensorboard_dir))

    def write(self, record: dict) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.writer.add_scalar(f"train/{k}", v, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@contextmanager
def _deferred_interrupt():
    """Ctrl-C during a step is held until the step (and its optimizer update) is done, so the
    checkpoint written then is a consistent state; a second Ctrl-C interrupts at once."""
    hits = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        hits.append(signum)
        if len(hits) > 1:
            raise KeyboardInterrupt
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, previous)


def train(model: nn.Module, samples: list[TokenizedExample], cfg: TrainConfig, run_dir: Path | None,
          resume: bool = False, stop_after: int | None = None, dist_info: DistInfo | None = None,
          progress: Callable | None = None, evaluate: Callable[[int], dict[str, float]] | None = None,
          eval_every: int = 0, best: BestTracker | None = None) -> TrainResult:
    """Train `model` (already prepared: LoRA-wrapped or full) on tokenized samples.

    run_dir: where checkpoints/ and metrics.jsonl go (None: keep nothing on disk).
    resume: continue from the latest complete checkpoint in run_dir/checkpoints.
    stop_after: end after this global step as an interruption would (checkpoint, then return).
    progress: callable(step, total, record) for a progress display (rank 0).
    evaluate, eval_every: every `eval_every` steps (and at the last step) rank 0 calls
        evaluate(step) -> {metric: value}; the values go to metrics.jsonl, and `best` (if given)
        checkpoints the step whenever its metric improves.
    """
    info = dist_info or init_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    n_total = total_steps(len(samples), cfg)
    model.train()
    loss_module = PackedLoss(model, cfg.loss_chunk_size, cfg.fused_lora, cfg.swiglu_recompute).to(info.device)
    if info.world_size > 1:
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    optimizer = build_optimizer(model.parameters(), cfg.lr, cfg.weight_decay, cfg.betas)
    scheduler = build_scheduler(optimizer, cfg.warmup_steps, n_total, cfg.min_lr_ratio)

    ckpt_root = run_dir / "checkpoints" if run_dir is not None else None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    start = 0
    result = TrainResult(steps=n_total)
    if resume and ckpt_root is not None and (latest := latest_checkpoint(ckpt_root)) is not None:
        weights, state, meta = load_checkpoint(latest)
        if (meta.get("total_steps"), meta.get("seed")) != (n_total, cfg.seed):
            from ..errors import UserError
            raise UserError(f"{latest} was written by a run with {meta.get('total_steps')} steps and seed "
                            f"{meta.get('seed')}, this one has {n_total} steps and seed {cfg.seed}: resume with "
                            "the same recipe and data, or start a new output.dir")
        load_trainable_state(model, weights)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start = result.resumed_from = meta["step"]
    log = MetricsLog(run_dir / "metrics.jsonl" if run_dir is not None and info.is_main else None,
                     run_dir / "tensorboard" if cfg.tensorboard and run_dir is not None and info.is_main else None,
                     start)

    saved: set[int] = set()

    def checkpoint(step: int) -> None:
        if ckpt_root is not None and info.is_main and step not in saved:
            save_checkpoint(ckpt_root, step, trainable_state(model), optimizer, scheduler,
                            {"total_steps": n_total, "seed": cfg.seed}, cfg.keep_checkpoints,
                            protect=best.step if best is not None else None)
            saved.add(step)

    def run_eval(step: int) -> None:
        was_training = model.training
        scores = evaluate(step)
        model.train(was_training)
        log.write({"step": step, "eval": scores})
        if best is not None and best.update(step, scores):
            checkpoint(step)
            best.save()

    t0 = time.perf_counter()
    with _deferred_interrupt() as interrupted:
        for step in range(start + 1, n_total + 1):
            t_step = time.perf_counter()
            batch = [samples[i] for i in step_indices(step - 1, len(samples), cfg)]
            n_targets = sum(s.n_trainable for s in batch)
            loss_sum, n_tokens, n_rows = forward_backward(loss_module, model, batch, cfg, info)
            grad_norm = None
            if cfg.grad_clip is not None:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], cfg.grad_clip))
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            totals = all_reduce_sum(torch.tensor([float(loss_sum), float(n_tokens)], dtype=torch.float64), info)
            loss = float(totals[0]) / n_targets
            result.losses.append(loss)
            result.tokens += int(totals[1])
            dt = time.perf_counter() - t_step
            record = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": int(totals[1]),
                      "targets": n_targets, "samples": len(batch), "rows": n_rows,
                      "tokens_per_s": round(float(totals[1]) / dt, 1), "elapsed_s": round(time.perf_counter() - t0, 2)}
            if step % cfg.log_every == 0 or step == n_total:
                log.write(record)
            if progress is not None and info.is_main:
                progress(step, n_total, record)
            if step % cfg.save_every == 0 or step == n_total:
                checkpoint(step)
            if evaluate is not None and info.is_main and eval_every and (step % eval_every == 0 or step == n_total):
                run_eval(step)
            if interrupted() or (stop_after is not None and start < step < n_total and step >= stop_after):
                checkpoint(step)
                result.stopped_early = True
                if interrupted():
                    log.close()
                    raise KeyboardInterrupt
                break
    log.close()
    result.seconds = time.perf_counter() - t0
    return result
