"""Preference tuning (the DPO family) in our own loop: sequence log-probs of packed pairs, the
losses, and the reference log-probs, computed once and cached in the run directory.

A pair is scored by the summed log-prob of each answer at its label positions. Pairs are packed
padding-free (data.packing.pack_pairs: chosen_1, rejected_1, chosen_2, ... in rows of whole pairs),
the decoder runs with packed attention, the output layer only at label positions in chunks, and
the per-sequence sums come from the segment ids (positions restart at 0 for every sequence).

The loss of a step is the mean over its pairs (plus sft_weight times the mean NLL over the chosen
answers' tokens of the step). Each row holds whole pairs, so its share of that mean is known on
its own: one backward per row, and any split into micro-batches or ranks gives the same gradient.

Reference log-probs (sigmoid and ipo; simpo has no reference) come from the model before
training: LoRA with its adapter disabled, full fine-tuning from the weights before the first update
(what a frozen copy would hold, without keeping the copy). They are computed once for every pair,
before any checkpoint is restored, and stored in RUN/reference_logps.safetensors, keyed by a
content hash of the reference weights, the tokenized pairs and the settings that change the
numbers (packing budget, chunk size). A resumed run reuses them; a changed key recomputes them and
says why. The cache holds raw summed log-probs: beta, the loss and length normalisation apply
afterwards, so changing them keeps the cache.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import ui
from ..data.chat import IGNORE, TokenizedPair
from ..data.packing import pack_pairs
from ..io import atomic_open, write_json
from ..kernels.loss import chunked_token_logprobs
from ..kernels.unwrap import unwrap
from .config import DpoConfig, TrainConfig
from .distributed import DistInfo
from .loss import PackedLoss

CACHE = "reference_logps"  # RUN/reference_logps.safetensors (+ .json: what the key was made of)
CACHE_VERSION = 1
# Pairs whose reference log-probs were computed in this process (tests count the forwards).
REFERENCE_FORWARDS = 0
# The per-step sums a rank accumulates (float64), all-reduced into the step's record.
SUMS = ("pair_loss", "chosen_nll", "reward_margin", "correct", "logps_chosen", "logps_rejected", "tokens")


class PackedLogProbs(PackedLoss):
    """forward(input_ids, position_ids, targets) -> (logps [S], counts [S]) for the S sequences of a
    packed row: each one's summed log-prob at its label positions, and how many there are."""

    def forward(self, input_ids, position_ids, targets):
        hidden = self.hidden(input_ids, position_ids)  # [1, L, H]
        keep = targets != IGNORE  # [1, L]
        head = unwrap(self.model).get_output_embeddings()
        token_logps = chunked_token_logprobs(hidden[keep], head.weight, head.bias, targets[keep],
                                             self.chunk_size)  # [M] fp32
        starts = position_ids == 0  # [1, L]: every packed sequence starts at position 0
        segment = (starts.cumsum(-1) - 1)[keep]  # [M]: which sequence each label belongs to
        n_seq = int(starts.sum())
        logps = token_logps.new_zeros(n_seq).index_add(0, segment, token_logps)  # [S]
        counts = token_logps.new_zeros(n_seq).index_add(0, segment, torch.ones_like(token_logps))  # [S]
        return logps, counts


def _neg_logsigmoid(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """-logsigmoid(z), or with label smoothing ls: (1 - ls) * -logsigmoid(z) + ls * -logsigmoid(-z)."""
    loss = -F.logsigmoid(z)
    if label_smoothing:
        loss = (1 - label_smoothing) * loss + label_smoothing * -F.logsigmoid(-z)
    return loss


def pair_losses(policy_c: torch.Tensor, policy_r: torch.Tensor, ref_c: torch.Tensor | None,
                ref_r: torch.Tensor | None, n_c: torch.Tensor, n_r: torch.Tensor, cfg: DpoConfig
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair loss and margin ([P] each) from summed log-probs ([P] each) and label counts.

    The margin is what the loss compares, beta * margin the reward margin that is logged:
      sigmoid  margin = (policy_c - ref_c) - (policy_r - ref_r)   (each divided by its count with
               length_normalize); loss -logsigmoid(beta * margin), label-smoothed (cDPO)
      ipo      margin = (policy_c - ref_c) / n_c - (policy_r - ref_r) / n_r; loss (margin - 1/(2 beta))^2
      simpo    margin = policy_c / n_c - policy_r / n_r; loss -logsigmoid(beta * margin - gamma), smoothed
    """
    if cfg.loss == "simpo":
        margin = policy_c / n_c - policy_r / n_r
        return _neg_logsigmoid(cfg.beta * margin - cfg.simpo_gamma, cfg.label_smoothing), margin
    ratio_c, ratio_r = policy_c - ref_c, policy_r - ref_r
    if cfg.loss == "ipo" or cfg.length_normalize:
        ratio_c, ratio_r = ratio_c / n_c, ratio_r / n_r
    margin = ratio_c - ratio_r
    if cfg.loss == "ipo":
        return (margin - 1 / (2 * cfg.beta)) ** 2, margin
    return _neg_logsigmoid(cfg.beta * margin, cfg.label_smoothing), margin


def _rows(batch: list[TokenizedPair], cfg: TrainConfig, info: DistInfo) -> list[tuple[object, list[int]]]:
    """This rank's pairs of the step, split into micro-batches, each packed into rows of whole
    pairs: [(row, indices of its pairs in `batch`)]."""
    mine = list(range(info.rank, len(batch), info.world_size))
    micro = cfg.micro_batch_size or len(mine)
    out = []
    for start in range(0, len(mine), micro):
        chunk = mine[start:start + micro]
        offset = 0
        for row in pack_pairs([batch[i] for i in chunk], cfg.max_tokens_per_row):
            k = row.n_samples // 2
            out.append((row, chunk[offset:offset + k]))
            offset += k
    return out


def forward_backward_pairs(loss_module: nn.Module, model: nn.Module, batch: list[TokenizedPair],
                           ref: tuple[torch.Tensor, torch.Tensor] | None, cfg: TrainConfig, info: DistInfo
                           ) -> tuple[torch.Tensor, int]:
    """Accumulate the gradient of one global step's preference loss (mean over its pairs).

    ref: reference log-probs (chosen [B], rejected [B]) of the batch's pairs; None for simpo.
    Returns (this rank's sums, float64 [len(SUMS)], packed rows on this rank).
    """
    dpo = cfg.dpo
    n_pairs = len(batch)  # normalisers of the whole global step: known on every rank, no sync
    n_chosen = sum(p.chosen.n_trainable for p in batch)
    rows = _rows(batch, cfg, info)
    sums = torch.zeros(len(SUMS), dtype=torch.float64)
    dev = info.device
    for k, (row, idx) in enumerate(rows):
        last = k == len(rows) - 1
        # DDP: all-reduce gradients once per step, on the last micro-batch only.
        ctx = loss_module.no_sync() if not last and hasattr(loss_module, "no_sync") else nullcontext()
        with ctx:
            logps, counts = loss_module(row.input_ids.to(dev), row.position_ids.to(dev), row.targets.to(dev))
            pc, pr, nc, nr = logps[0::2], logps[1::2], counts[0::2], counts[1::2]  # [P] each
            rc = rr = None
            if ref is not None:
                rc, rr = ref[0][idx].to(dev), ref[1][idx].to(dev)
            losses, margins = pair_losses(pc, pr, rc, rr, nc, nr, dpo)
            objective = losses.sum() / n_pairs
            if dpo.sft_weight:
                objective = objective + dpo.sft_weight * -pc.sum() / n_chosen
            # DDP averages gradients over ranks, so scale by world size to get a sum.
            (objective * info.world_size).backward()
        with torch.no_grad():
            sums += torch.stack([losses.sum().double().cpu(), -pc.sum().double().cpu(),
                                 (dpo.beta * margins).sum().double().cpu(), (margins > 0).sum().double().cpu(),
                                 pc.sum().double().cpu(), pr.sum().double().cpu(),
                                 torch.tensor(float(row.n_tokens), dtype=torch.float64)])
    if not rows and info.world_size > 1:  # a rank with no pair still joins the all-reduce
        (sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0).backward()
    return sums, len(rows)


def step_record(totals: torch.Tensor, batch: list[TokenizedPair], cfg: DpoConfig) -> dict:
    """The step's metrics from the all-reduced sums: loss, reward margin and accuracy, mean log-probs."""
    s = dict(zip(SUMS, (float(v) for v in totals)))
    n = len(batch)
    n_chosen = sum(p.chosen.n_trainable for p in batch)
    loss = s["pair_loss"] / n
    record = {"loss": loss}
    if cfg.sft_weight:
        record["sft_nll"] = s["chosen_nll"] / n_chosen
        record["loss"] = loss + cfg.sft_weight * record["sft_nll"]
        record["preference_loss"] = loss
    record.update({"reward_margin": s["reward_margin"] / n, "reward_accuracy": s["correct"] / n,
                   "logps_chosen": s["logps_chosen"] / n, "logps_rejected": s["logps_rejected"] / n,
                   "tokens": int(s["tokens"]), "targets": n_chosen + sum(p.rejected.n_trainable for p in batch),
                   "pairs": n})
    return record


# --- the reference ---------------------------------------------------------------------------

@dataclass
class Reference:
    """Reference log-probs of every training pair ([N] each, fp32) and how they were obtained."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    status: str  # "computed", "reused from ...", or "recomputed: <why>"

    def of(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.chosen[indices], self.rejected[indices]


def compute_reference(model: nn.Module, pairs: list[TokenizedPair], cfg: TrainConfig, info: DistInfo
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of every pair under the reference (LoRA: adapter disabled; full: the model
    as it is now, before training), in eval mode, without gradients. Returns (chosen, rejected) [N]."""
    global REFERENCE_FORWARDS
    module = PackedLogProbs(model, cfg.loss_chunk_size, fused_lora=False, swiglu_recompute=False)
    chosen, rejected = [], []
    is_peft = hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), (model.disable_adapter() if is_peft else nullcontext()), \
                ui.progress_bar("reference log-probs", len(pairs), "pairs", show=info.is_main) as advance:
            for row in pack_pairs(pairs, cfg.max_tokens_per_row):
                dev = info.device
                logps, _ = module(row.input_ids.to(dev), row.position_ids.to(dev), row.targets.to(dev))  # [2k]
                chosen.append(logps[0::2].cpu())
                rejected.append(logps[1::2].cpu())
                k = row.n_samples // 2
                REFERENCE_FORWARDS += k
                advance(k)
    finally:
        model.train(was_training)
    empty = torch.zeros(0)
    return torch.cat(chosen) if chosen else empty, torch.cat(rejected) if rejected else empty


def weights_digest(model: nn.Module) -> str:
    """sha256 of the weights the reference forward uses: every parameter and buffer (name, dtype,
    shape, bytes) except LoRA adapter weights."""
    h = hashlib.sha256()
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, t in tensors:
        if "lora_" in name:
            continue
        flat = t.detach().contiguous().view(-1)
        h.update(f"{name}|{flat.dtype}|{tuple(t.shape)}|".encode())
        h.update(flat.view(torch.uint8).cpu().numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()


def pairs_digest(pairs: list[TokenizedPair]) -> str:
    """sha256 of the tokenized pairs: ids and labels of both sides, in order."""
    h = hashlib.sha256()
    for p in pairs:
        for seq in (p.chosen.input_ids, p.chosen.labels, p.rejected.input_ids, p.rejected.labels):
            h.update(array("q", [len(seq), *seq]).tobytes())
    return h.hexdigest()


def reference_key(model: nn.Module, pairs: list[TokenizedPair], cfg: TrainConfig) -> dict:
    """What the cached reference log-probs depend on, and its hash ("key")."""
    parts = {"version": CACHE_VERSION, "weights": weights_digest(model), "pairs": pairs_digest(pairs),
             "n_pairs": len(pairs),
             "settings": {"max_tokens_per_row": cfg.max_tokens_per_row, "loss_chunk_size": cfg.loss_chunk_size}}
    parts["key"] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return parts


def _stale(saved: dict, parts: dict) -> str:
    """Why a saved cache does not fit (saved and current key parts differ)."""
    why = []
    if saved.get("weights") != parts["weights"]:
        why.append("the reference weights changed")
    if saved.get("pairs") != parts["pairs"]:
        why.append(f"the training pairs changed ({saved.get('n_pairs')} -> {parts['n_pairs']} pairs)"
                   if saved.get("n_pairs") != parts["n_pairs"] else "the training pairs changed")
    if saved.get("settings") != parts["settings"]:
        why.append(f"the settings changed ({saved.get('settings')} -> {parts['settings']})")
    if saved.get("version") != parts["version"]:
        why.append("the cache format changed")
    return "; ".join(why) or "the cache file does not match its description"


def _read_cache(run_dir: Path, parts: dict) -> tuple[Reference | None, str | None]:
    """(the cached reference, None) when it fits; (None, why not) when a stale one is there;
    (None, None) when there is none."""
    from safetensors import SafetensorError, safe_open

    meta_path, path = run_dir / f"{CACHE}.json", run_dir / f"{CACHE}.safetensors"
    if not meta_path.is_file() and not path.is_file():
        return None, None
    try:
        saved = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None, f"{meta_path.name} is missing or unreadable"
    if saved.get("key") != parts["key"]:
        return None, _stale(saved, parts)
    try:
        with safe_open(str(path), "pt") as f:
            ok = (f.metadata() or {}).get("key") == parts["key"]
            chosen, rejected = f.get_tensor("chosen"), f.get_tensor("rejected")
    except (OSError, SafetensorError, KeyError):
        return None, f"{path.name} is missing or damaged"
    if not ok or chosen.shape != (parts["n_pairs"],) or rejected.shape != (parts["n_pairs"],):
        return None, f"{path.name} does not match {meta_path.name}"
    return Reference(chosen, rejected, f"reused from {path}"), None


def _write_cache(run_dir: Path, parts: dict, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
    """The tensors first (their metadata carries the key), then the description: both atomic."""
    from safetensors.torch import save

    with atomic_open(run_dir / f"{CACHE}.safetensors", "wb") as fh:
        fh.write(save({"chosen": chosen.contiguous(), "rejected": rejected.contiguous()},
                      metadata={"key": parts["key"]}))
    write_json(run_dir / f"{CACHE}.json", parts)


def load_or_compute_reference(model: nn.Module, pairs: list[TokenizedPair], cfg: TrainConfig,
                              run_dir: Path | None, info: DistInfo, log: Callable[[str], None] = ui.log
                              ) -> Reference:
    """The reference log-probs of every pair: reused from RUN/reference_logps.safetensors when its
    key matches, else computed (once, with a progress bar) and saved there by rank 0."""
    parts = reference_key(model, pairs, cfg)
    why = None
    if run_dir is not None:
        cached, why = _read_cache(run_dir, parts)
        if cached is not None:
            if info.is_main:
                log(f"reference log-probs of {len(pairs)} pairs reused from {run_dir / (CACHE + '.safetensors')}")
            return cached
        if why is not None and info.is_main:
            log(f"reference log-probs in {run_dir / (CACHE + '.safetensors')} are invalid ({why}): computing "
                "them again")
    chosen, rejected = compute_reference(model, pairs, cfg, info)
    if run_dir is not None and info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_cache(run_dir, parts, chosen, rejected)
    return Reference(chosen, rejected, "computed" if why is None else f"recomputed: {why}")
