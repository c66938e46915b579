"""The training loop: setup -> train -> save. One readable flow, rank-aware, exactly resumable.

Data order is a pure function of (seed, step): step s of epoch e takes samples
perm_e[i*B:(i+1)*B] of a permutation seeded by seed + e. Resuming therefore needs only the step
number, plus the model, optimizer, scheduler and RNG states that the checkpoint restores.
Each step's loss is normalised by the number of target tokens in the whole step, so any split
into micro-batches or ranks (4x2, 1x8, 2 ranks x 4) computes the same gradient. With
`objective: dpo` the samples are preference pairs and the loss is the mean over the step's pairs
(train.preference), with the same guarantees.
A step whose loss or gradient norm is not finite never reaches the optimizer (train.nonfinite). Under
torchrun the loss module is wrapped by DDP, or sharded by FSDP2 (train.fsdp, `distributed: fsdp`).
The tuning methods hook in at three points, each a pure function of (seed, step) so resume stays exact:
`method: lisa` switches the trained decoder layers at the start of a period (train.lisa), `method: galore`
takes its own optimizer (train.galore), and `neftune_alpha` adds per-sample noise to the input embeddings
(train.neftune) drawn from the step and the sample's place in the batch, whatever the micro-batch split.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..data.chat import TokenizedExample, TokenizedPair
from ..data.packing import pack_rows
from .config import TrainConfig
from ..errors import UserError
from .. import ui
from .checkpoint import DamagedCheckpoint, complete_checkpoints, load_checkpoint, rng_state, save_checkpoint, \
    set_rng_state, sweep
from .distributed import DistInfo, all_reduce_sum, any_rank, barrier, init_distributed
from .loss import PackedLoss
from . import fsdp, neftune, nonfinite
from ..kernels.unwrap import unwrap
from .galore import build_galore_optimizer
from .lisa import Lisa
from .preference import PackedLogProbs, Reference, forward_backward_pairs, load_or_compute_reference, step_record
from .schedule import build_optimizer, build_scheduler
from .setup import load_trainable_state, trainable_state
from .tracking import BestTracker, MetricsLog


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)  # per step, this invocation only
    seconds: float = 0.0
    tokens: int = 0  # non-padding tokens processed in this invocation
    resumed_from: int | None = None
    stopped_early: bool = False
    skipped: list[int] = field(default_factory=list)  # steps dropped for a non-finite loss (on_nonfinite: skip)
    reference: str | None = None  # dpo: how the reference log-probs were obtained (computed, reused, ...)


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
    """Split this rank's step samples into micro-batches, each packed into padding-free rows:
    [(row, the samples it holds, in order)]."""
    micro = cfg.micro_batch_size or len(samples)
    rows = []
    for start in range(0, len(samples), micro):
        group = samples[start:start + micro]
        for row in pack_rows(group, cfg.max_tokens_per_row):  # pack_rows keeps the order
            rows.append((row, group[:row.n_samples]))
            group = group[row.n_samples:]
    return rows


def replay_target_mask(samples: list[TokenizedExample]) -> torch.Tensor:
    """bool [T] over a packed row's targets (sample by sample, in order): True on replay rows' answer tokens."""
    return torch.tensor([bool(s.meta.get("replay")) for s in samples for _ in range(s.n_trainable)], dtype=torch.bool)


def forward_backward(loss_module, model, batch: list[TokenizedExample], cfg: TrainConfig, info: DistInfo,
                     step: int = 0):
    """Accumulate the gradient of one global step's loss (mean over its target tokens).

    step: the 1-based global step (seeds the NEFTune noise, train.neftune_alpha).
    Returns (summed loss on this rank, tokens on this rank, packed rows on this rank).
    """
    # Normaliser: target tokens in the whole global step (known on every rank, no sync needed).
    n_targets = sum(s.n_trainable for s in batch)
    rows = _micro_rows(batch[info.rank::info.world_size], cfg)
    loss_sum = torch.zeros((), dtype=torch.float64)
    n_tokens = 0
    done = 0  # samples of this rank in the rows before this one
    for k, (row, row_samples) in enumerate(rows):
        last = k == len(rows) - 1
        # DDP: all-reduce gradients once per step, on the last micro-batch only.
        ctx = loss_module.no_sync() if not last and hasattr(loss_module, "no_sync") else nullcontext()
        kl = {"kl_mask": replay_target_mask(row_samples).to(info.device)} if cfg.kl_to_base else {}
        if cfg.neftune_alpha:
            positions = [info.rank + info.world_size * (done + j) for j in range(len(row_samples))]
            dim = unwrap(model).get_input_embeddings().weight.shape[1]
            kl["embed_noise"] = neftune.row_noise(row_samples, positions, dim, cfg.neftune_alpha, cfg.seed,
                                                  step).to(info.device)
        done += len(row_samples)
        with ctx:
            row_loss = loss_module(row.input_ids.to(info.device), row.position_ids.to(info.device),
                                   row.targets.to(info.device), **kl)
            # DDP averages gradients over ranks, so scale by world size to get a sum.
            (row_loss * (info.world_size / n_targets)).backward()
        loss_sum += row_loss.detach().double().cpu()
        n_tokens += row.n_tokens
    if info.world_size > 1 and fsdp.is_sharded(loss_module):
        # FSDP all-gathers layer by layer in every forward: every rank runs as many as the busiest one.
        for _ in range(fsdp.max_over_ranks(len(rows), info) - len(rows)):
            (loss_module(*fsdp.dummy_row(info.device)) * 0.0).backward()
    elif not rows and info.world_size > 1:  # a rank with no sample still joins the all-reduce
        (sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0).backward()
    return loss_sum, n_tokens, len(rows)


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


class Trainer:
    """One training run, torchtune-style: `setup` in the constructor, then `restore` (resume),
    `run` (the loop), each step one `step`, checkpoints by `checkpoint`, rank-0 evaluation by
    `evaluate`.

    samples: tokenized examples, or (cfg.objective == "dpo") tokenized preference pairs.
    run_dir: where checkpoints/ and metrics.jsonl go (None: keep nothing on disk); dpo also keeps
        the reference log-probs there (computed here, in setup, before any checkpoint is restored).
    evaluate, eval_every: every `eval_every` steps (and at the last step) rank 0 calls
        evaluate(step) -> {metric: value}; the values go to metrics.jsonl, and `best` (if given)
        checkpoints the step whenever its metric improves.
    """

    def __init__(self, model: nn.Module, samples: list[TokenizedExample] | list[TokenizedPair], cfg: TrainConfig,
                 run_dir: Path | None, dist_info: DistInfo | None = None,
                 evaluate: Callable[[int], dict[str, float]] | None = None, eval_every: int = 0,
                 best: BestTracker | None = None):
        self.model, self.samples, self.cfg, self.run_dir = model, samples, cfg, run_dir
        self.info = dist_info or init_distributed()
        self.evaluator, self.eval_every, self.best = evaluate, eval_every, best
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.n_total = total_steps(len(samples), cfg)
        self.dpo = cfg.objective == "dpo"
        if samples and self.dpo != isinstance(samples[0], TokenizedPair):
            raise UserError(f"train.objective is {cfg.objective}, but the samples are "
                            + ("single conversations: dpo trains on chosen/rejected pairs" if self.dpo else
                               "preference pairs: set train.objective: dpo"))
        self.reference: Reference | None = None
        if self.dpo and cfg.dpo.loss != "simpo":  # before restore(): the weights are still the reference's
            self.reference = load_or_compute_reference(model, samples, cfg, run_dir, self.info)
        model.train()
        loss_cls = PackedLogProbs if self.dpo else PackedLoss
        extra = {"gradient_checkpointing": cfg.gradient_checkpointing}
        if not self.dpo:
            extra["kl_weight"] = cfg.kl_to_base
        self.loss_module = loss_cls(model, cfg.loss_chunk_size, cfg.fused_lora,
                                    cfg.swiglu_recompute, **extra).to(self.info.device)
        self.sharded = cfg.distributed == "fsdp"  # checkpoints in DCP format, whatever the world size
        if self.sharded and self.info.world_size > 1:
            if evaluate is not None and eval_every:
                raise UserError("evaluation during training (eval.every) runs on rank 0 alone, which a model sharded "
                                "by train.distributed: fsdp cannot do: set eval.every: 0 (the run still evaluates "
                                "after training)")
            self.loss_module = fsdp.shard(self.loss_module, model, self.info)
        elif self.info.world_size > 1:
            self.loss_module = nn.parallel.DistributedDataParallel(
                self.loss_module, device_ids=[self.info.local_rank] if self.info.device.type == "cuda" else None)
        if cfg.method == "lisa" and self.info.world_size > 1:
            raise UserError("train.method lisa under torchrun is not supported (DDP fixes the trained parameters when "
                            "it wraps the model, and LISA changes them every period): run it in one process, or "
                            "use train.method lora or full")
        self.lisa = Lisa(model, cfg) if cfg.method == "lisa" else None
        if cfg.method == "galore":
            self.optimizer = build_galore_optimizer(model, cfg)
        else:
            self.optimizer = build_optimizer(model.parameters(), cfg.lr, cfg.weight_decay, cfg.betas)
        self.scheduler = build_scheduler(self.optimizer, cfg.warmup_steps, self.n_total, cfg.min_lr_ratio)
        self.ckpt_root = run_dir / "checkpoints" if run_dir is not None else None
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
        self.start = 0
        self.result = TrainResult(steps=self.n_total, reference=self.reference.status if self.reference else None)
        self.saved: set[int] = set()
        self.log: MetricsLog | None = None
        self.skips = 0  # non-finite steps skipped in a row (checkpointed: resume goes on counting)

    def restore(self) -> None:
        """Continue from the latest complete checkpoint: weights, optimizer, scheduler, RNG, step.

        A damaged checkpoint (its files do not match the sums in its marker) is never loaded: it is named in
        the log and the one before it is taken."""
        found = complete_checkpoints(self.ckpt_root) if self.ckpt_root is not None else []
        if found and self.info.is_main:
            sweep(self.ckpt_root)  # what a killed writer left (also when no checkpoint is written after this)
        for latest in reversed(found):
            try:
                weights, state, meta = load_checkpoint(latest)
                break
            except DamagedCheckpoint as exc:
                if self.info.is_main:
                    ui.log(f"[yellow]warning:[/] {exc}; not used")
        else:
            if found:
                raise UserError(f"every checkpoint in {self.ckpt_root} is damaged: start a new output.dir "
                                "(or --overwrite)")
            return
        if (meta.get("total_steps"), meta.get("seed")) != (self.n_total, self.cfg.seed):
            raise UserError(f"{latest} was written by a run with {meta.get('total_steps')} steps and seed "
                            f"{meta.get('seed')}, this one has {self.n_total} steps and seed {self.cfg.seed}: "
                            "resume with the same recipe and data, or start a new output.dir")
        if weights is None:  # a sharded (DCP) checkpoint: loads on any number of ranks
            fsdp.read_sharded(latest / "dcp", self.model, self.optimizer)
        elif fsdp.is_sharded(self.loss_module):
            raise UserError(f"{latest} was written without train.distributed: fsdp; resume it with the setting it "
                            "was written with (ddp), or on one process")
        else:
            load_trainable_state(self.model, weights)
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.skips = int(meta.get("consecutive_skips", 0))
        self.start = self.result.resumed_from = meta["step"]

    def _open_log(self) -> MetricsLog:
        main, run_dir = self.info.is_main, self.run_dir
        return MetricsLog(run_dir / "metrics.jsonl" if run_dir is not None and main else None,
                          run_dir / "tensorboard" if self.cfg.tensorboard and run_dir is not None and main else None,
                          self.start)

    def step(self, step: int, t0: float) -> dict:
        """One optimizer step (1-based `step`): forward/backward over the global batch, clip, update.

        A loss or gradient norm that is not finite is caught before the update (see `nonfinite`)."""
        cfg, t_step = self.cfg, time.perf_counter()
        rng_before = rng_state()  # a stop saves the state before this step, RNG included
        indices = step_indices(step - 1, len(self.samples), cfg)
        batch = [self.samples[i] for i in indices]
        if self.lisa is not None:
            self.lisa.on_step(step, self.optimizer)  # a new period: other decoder layers train
        if self.dpo:
            ref = self.reference.of(indices) if self.reference is not None else None
            sums, n_rows = forward_backward_pairs(self.loss_module, self.model, batch, ref, cfg, self.info)
        else:
            loss_sum, n_tokens, n_rows = forward_backward(self.loss_module, self.model, batch, cfg, self.info, step)
            sums = torch.tensor([float(loss_sum), float(n_tokens)], dtype=torch.float64)
        totals = all_reduce_sum(sums, self.info)  # before the update: every rank decides alike
        grad_norm = self._grad_norm()
        if self.dpo:
            metrics = step_record(totals, batch, cfg.dpo)
        else:
            n_targets = sum(s.n_trainable for s in batch)
            metrics = {"loss": float(totals[0]) / n_targets, "tokens": int(totals[1]), "targets": n_targets}
        if not nonfinite.is_finite(totals, grad_norm):
            return self._nonfinite(step, batch, metrics["loss"], grad_norm, rng_before)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.skips = 0

        self.result.losses.append(metrics["loss"])
        self.result.tokens += metrics["tokens"]
        dt = time.perf_counter() - t_step
        return {"step": step, "loss": metrics.pop("loss"), "lr": lr, "grad_norm": grad_norm, **metrics,
                "samples": len(batch), "rows": n_rows,
                "tokens_per_s": round(metrics["tokens"] / dt, 1), "elapsed_s": round(time.perf_counter() - t0, 2)}

    def _grad_norm(self) -> float:
        """The global gradient norm (clipped to cfg.grad_clip when set; a non-finite norm leaves grads as they are
        for the caller to throw away)."""
        params = [p for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        if self.cfg.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def _nonfinite(self, step: int, batch, loss: float, grad_norm: float, rng_before) -> dict:
        """A non-finite step: the gradient is thrown away; skip it (on_nonfinite: skip, under the limit) or
        checkpoint the state before it and stop with one message."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        alone = nonfinite.alone_losses(self.loss_module, batch, cfg, self.info.device)
        skip = cfg.on_nonfinite == "skip" and self.skips < cfg.max_consecutive_skips
        record = nonfinite.record(step, loss, grad_norm, "skipped" if skip else "stopped", batch, alone)
        if skip:
            self.skips += 1
            self.result.skipped.append(step)
            if self.info.is_main:
                names, _ = nonfinite.culprits(batch, alone)
                ui.log(f"[yellow]step {step} skipped:[/] loss {loss}, gradient norm {grad_norm} (not finite); "
                       f"samples {', '.join(names[:nonfinite.NAMED])}{' ...' if len(names) > nonfinite.NAMED else ''}"
                       f" ({self.skips} in a row, at most {cfg.max_consecutive_skips})")
            return record
        self.log.write(record)
        saved = None
        if self.ckpt_root is not None:
            self.checkpoint(step - 1, rng=rng_before)
            saved = self.ckpt_root / f"step-{step - 1:06d}"
        self.result.stopped_early = True
        raise nonfinite.NonFiniteError(nonfinite.stop_message(step, loss, grad_norm, batch, alone, saved,
                                                              self.skips, cfg.max_consecutive_skips))

    def checkpoint(self, step: int, rng: dict | None = None) -> None:
        """Save step `step` (rank 0, once per step), protecting the best checkpoint from pruning.

        rng: the RNG states to store with it (default: the current ones)."""
        if self.ckpt_root is None or step in self.saved or not (self.info.is_main or self.sharded):
            return
        if (self.ckpt_root / f"step-{step:06d}" / "COMPLETE").is_file() and step == self.start:
            return  # the checkpoint this invocation resumed from
        extra = {"total_steps": self.n_total, "seed": self.cfg.seed, "consecutive_skips": self.skips,
                 "world_size": self.info.world_size}
        protect = self.best.step if self.best is not None else None
        if self.sharded:  # every rank writes its shard; rank 0 then completes the checkpoint
            shards = self.ckpt_root / f".dcp-step-{step:06d}"
            fsdp.write_sharded(shards, self.model, self.optimizer, self.info)
            if self.info.is_main:
                save_checkpoint(self.ckpt_root, step, None, self.optimizer, self.scheduler, extra,
                                self.cfg.keep_checkpoints, protect=protect, rng=rng, sharded=shards)
            barrier(self.info)
        else:
            save_checkpoint(self.ckpt_root, step, trainable_state(self.model), self.optimizer, self.scheduler,
                            extra, self.cfg.keep_checkpoints, protect=protect, rng=rng)
        self.saved.add(step)

    def evaluate(self, step: int) -> None:
        """Run the evaluator, log its scores, and checkpoint the step if it is the new best."""
        was_training = self.model.training
        scores = self.evaluator(step)
        self.model.train(was_training)
        self.log.write({"step": step, "eval": scores})
        if self.best is not None and self.best.update(step, scores):
            self.checkpoint(step)
            self.best.save()

    def _due(self, step: int, every: int) -> bool:
        return step % every == 0 or step == self.n_total

    def run(self, stop_after: int | None = None, progress: Callable | None = None) -> TrainResult:
        """Train from the current step to the end (or to `stop_after`, as an interruption would)."""
        self.log = self._open_log()
        t0 = time.perf_counter()
        try:
            with _deferred_interrupt() as interrupted:
                for step in range(self.start + 1, self.n_total + 1):
                    record = self.step(step, t0)
                    if record.get("nonfinite") or self._due(step, self.cfg.log_every):
                        self.log.write(record)
                    if progress is not None and self.info.is_main:
                        progress(step, self.n_total, record)
                    if self._due(step, self.cfg.save_every):
                        self.checkpoint(step)
                    if self.evaluator is not None and self.info.is_main and self.eval_every and \
                            self._due(step, self.eval_every):
                        self.evaluate(step)
                    stop = stop_after is not None and self.start < step < self.n_total and step >= stop_after
                    hit = any_rank(interrupted(), self.info)  # every rank stops at the same step
                    if hit or stop:
                        self.checkpoint(step)
                        self.result.stopped_early = True
                        if hit:
                            raise KeyboardInterrupt
                        break
        finally:
            self.log.close()
        self.result.seconds = time.perf_counter() - t0
        return self.result


def train(model: nn.Module, samples: list[TokenizedExample] | list[TokenizedPair], cfg: TrainConfig,
          run_dir: Path | None,
          resume: bool = False, stop_after: int | None = None, dist_info: DistInfo | None = None,
          progress: Callable | None = None, evaluate: Callable[[int], dict[str, float]] | None = None,
          eval_every: int = 0, best: BestTracker | None = None) -> TrainResult:
    """Train `model` (already prepared: LoRA-wrapped or full) on tokenized samples (or, with
    cfg.objective "dpo", tokenized preference pairs).

    resume: continue from the latest complete checkpoint in run_dir/checkpoints.
    stop_after: end after this global step as an interruption would (checkpoint, then return).
    progress: callable(step, total, record) for a progress display (rank 0).
    The rest as in `Trainer`.
    """
    trainer = Trainer(model, samples, cfg, run_dir, dist_info, evaluate, eval_every, best)
    if resume:
        trainer.restore()
    return trainer.run(stop_after, progress)
