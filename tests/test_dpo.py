"""Preference tuning (train.objective: dpo): the losses against the papers' formulas written out and
against TRL's DPOTrainer, the reference log-probs cache, pair tokenization, exact resume and
gradient accumulation."""

import copy
import json
import random

import pytest
import torch

from conftest import tiny_llama
from tunesmith.config import build
from tunesmith.data.chat import IGNORE, TokenizedExample, TokenizedPair
from tunesmith.errors import DataError, UsageError
from tunesmith.train import preference
from tunesmith.train.config import DpoConfig, TrainConfig
from tunesmith.train.distributed import DistInfo
from tunesmith.train.loop import train
from tunesmith.train.preference import (PackedLogProbs, Reference, compute_reference, forward_backward_pairs,
                                        step_record)
from tunesmith.train.setup import prepare_model


def random_pairs(n: int, seed: int = 0, vocab: int = 97) -> list[TokenizedPair]:
    """Pairs sharing a random prompt (not trained), each with its own random answer (trained)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(3, 12))]
        sides = []
        for _ in range(2):
            answer = [rng.randrange(vocab) for _ in range(rng.randint(2, 14))]
            sides.append(TokenizedExample(prompt + answer, [IGNORE] * len(prompt) + answer, "rand", i + 1))
        out.append(TokenizedPair(*sides))
    return out


def lora_policy(cfg: TrainConfig, seed: int = 0, scale: float = 0.3):
    """A LoRA model whose adapter is not zero, so the policy differs from the reference (adapter off)."""
    torch.manual_seed(seed)
    model = prepare_model(tiny_llama(0), cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


# --- the losses, written out from the papers ---------------------------------------------------

def direct_logps(model, seq: TokenizedExample) -> tuple[torch.Tensor, int]:
    """Summed log p(label_t | tokens before t) with the model's full logits, one unpadded sequence."""
    ids = torch.tensor([seq.input_ids])
    logp = model(input_ids=ids).logits[0].float().log_softmax(-1)  # [T, V]
    total, n = torch.zeros(()), 0
    for t in range(1, len(seq.input_ids)):
        if seq.labels[t] != IGNORE:
            total = total + logp[t - 1, seq.labels[t]]
            n += 1
    return total, n


def direct_loss(model, pairs: list[TokenizedPair], ref: list[tuple[float, float]], cfg: DpoConfig) -> torch.Tensor:
    """The papers' formulas, one pair at a time. DPO (Rafailov et al. 2023, eq. 7) with conservative
    label smoothing (cDPO); IPO (Azar et al. 2023, eq. 17) on per-token log-ratios (as TRL);
    SimPO (Meng et al. 2024, eq. 6); plus the optional NLL on the chosen tokens."""
    log_sigmoid = lambda z: torch.log(torch.sigmoid(z))  # noqa: E731  written out, not F.logsigmoid
    b, eps = cfg.beta, cfg.label_smoothing
    losses, nll, n_tokens = [], torch.zeros(()), 0
    for pair, (ref_c, ref_r) in zip(pairs, ref):
        (pc, nc), (pr, nr) = direct_logps(model, pair.chosen), direct_logps(model, pair.rejected)
        nll, n_tokens = nll - pc, n_tokens + nc
        if cfg.loss == "simpo":
            z = b * (pc / nc - pr / nr) - cfg.simpo_gamma
            losses.append(-(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z))
        elif cfg.loss == "ipo":
            h = (pc - ref_c) / nc - (pr - ref_r) / nr
            losses.append((h - 1 / (2 * b)) ** 2)
        else:
            if cfg.length_normalize:
                h = (pc - ref_c) / nc - (pr - ref_r) / nr
            else:
                h = (pc - ref_c) - (pr - ref_r)
            losses.append(-(1 - eps) * log_sigmoid(b * h) - eps * log_sigmoid(-b * h))
    return torch.stack(losses).mean() + cfg.sft_weight * nll / n_tokens


VARIANTS = {
    "sigmoid": {},
    "sigmoid-label-smoothing": {"label_smoothing": 0.2},
    "sigmoid-length-normalized": {"length_normalize": True, "beta": 0.5},
    "sigmoid-sft": {"sft_weight": 0.7},
    "ipo": {"loss": "ipo", "beta": 0.3},
    "simpo": {"loss": "simpo", "beta": 2.0, "simpo_gamma": 1.0, "label_smoothing": 0.1},
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_loss_and_gradients_equal_the_papers_formulas(method, dtype):
    """Our packed, label-only, chunked path vs the formulas on full logits, pair by pair: within
    1e-6 in fp64 (the formula itself), and within fp32 rounding (1e-6 relative) in fp32."""
    pairs = random_pairs(6, seed=1)
    worst = {}
    for name, dpo in VARIANTS.items():
        # several rows per micro-batch and several micro-batches: the loss is the step's mean anyway
        cfg = TrainConfig(method=method, lora={"r": 4}, objective="dpo", dpo=dpo, batch_size=6, micro_batch_size=3,
                          max_tokens_per_row=40, loss_chunk_size=7)
        if method == "lora":
            model = lora_policy(cfg).to(dtype)  # reference: the adapter disabled
            ref = compute_reference(model, pairs, cfg, DistInfo())
            reference = tiny_llama(0).to(dtype)  # the same base weights, without any adapter
        else:
            model = prepare_model(tiny_llama(0).to(dtype), cfg)
            ref = compute_reference(model, pairs, cfg, DistInfo())  # before training: the model itself
            reference = copy.deepcopy(model)
            with torch.no_grad():  # the policy moves away from its reference
                g = torch.Generator().manual_seed(3)
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * 0.02)
        with torch.no_grad():
            ref_direct = [(float(direct_logps(reference, p.chosen)[0]), float(direct_logps(reference, p.rejected)[0]))
                          for p in pairs]
        # The cached reference equals the reference forward written out.
        assert max(abs(float(ref[0][i]) - c) + abs(float(ref[1][i]) - r) for i, (c, r) in enumerate(ref_direct)) < 1e-5

        sums, n_rows = forward_backward_pairs(PackedLogProbs(model, 7), model, pairs, ref, cfg, DistInfo())
        assert n_rows > 2
        ours = step_record(sums, pairs, cfg.dpo)["loss"]
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad(set_to_none=True)
        expected = direct_loss(model, pairs, [(float(c), float(r)) for c, r in zip(*ref)], cfg.dpo)
        expected.backward()
        loss_diff = abs(ours - expected.item())
        grad_diff = max(float((grads[n] - p.grad).abs().max()) for n, p in model.named_parameters() if p.requires_grad)
        scale = max(float(g.abs().max()) for g in grads.values())
        assert all(g.abs().sum() > 0 for g in grads.values())
        worst[name] = (loss_diff, grad_diff, scale)
        tol = 1e-6 if dtype == torch.float64 else 1e-6 * max(1.0, scale, expected.item())
        assert loss_diff < tol and grad_diff < tol, (name, loss_diff, grad_diff, scale)
    print(f"\n{method} {dtype}: max |ours - formula| (loss, grad, max |grad|): " +
          ", ".join(f"{k} {a:.1e} {b:.1e} {c:.1f}" for k, (a, b, c) in worst.items()))


def test_config_rejects_method_dpo_and_smoothing_for_ipo():
    from tunesmith.stages.recipe import Recipe

    with pytest.raises(UsageError) as err:
        build(Recipe, {"data": {"tasks": {"n_train": 4}}, "train": {"method": "dpo"}}, "r.yaml")
    assert str(err.value).startswith("r.yaml: train.method: ") and "write train.objective: dpo" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="label_smoothing applies to the sigmoid and simpo"):
        build(TrainConfig, {"objective": "dpo", "dpo": {"loss": "ipo", "label_smoothing": 0.1}}, "r.yaml")
    assert TrainConfig().objective == "sft" and TrainConfig().dpo.beta == 0.1


# --- the reference cache, resume, accumulation -------------------------------------------------

def dpo_cfg(method: str = "lora", **kw) -> TrainConfig:
    base = dict(method=method, lora={"r": 4, "dropout": 0.1}, objective="dpo", batch_size=4, max_steps=6, lr=2e-2,
                warmup_steps=1, save_every=100, micro_batch_size=2)
    return TrainConfig(**{**base, **kw})


def fresh(cfg: TrainConfig, base_seed: int = 0, init_seed: int = 0):
    base = tiny_llama(base_seed)
    torch.manual_seed(init_seed)
    return prepare_model(base, cfg)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_reference_once_resume_bit_identical_and_invalidated_by_new_weights(tmp_path, method):
    pairs = random_pairs(12, seed=2)
    cfg = dpo_cfg(method)
    counted = preference.REFERENCE_FORWARDS
    straight = train(fresh(cfg), pairs, cfg, tmp_path / "a")
    assert preference.REFERENCE_FORWARDS - counted == len(pairs)  # once per pair
    assert straight.reference == "computed"

    counted = preference.REFERENCE_FORWARDS
    first = train(fresh(cfg), pairs, cfg, tmp_path / "b", stop_after=3)
    assert preference.REFERENCE_FORWARDS - counted == len(pairs)
    assert (tmp_path / "b" / "reference_logps.safetensors").is_file()
    counted = preference.REFERENCE_FORWARDS
    second = train(fresh(cfg, init_seed=7), pairs, cfg, tmp_path / "b", resume=True)
    assert preference.REFERENCE_FORWARDS == counted  # reused: no reference forward on resume
    assert second.resumed_from == 3 and second.reference.startswith("reused from ")
    assert first.losses + second.losses == straight.losses  # bit-identical
    lines = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in lines] == straight.losses
    for r in lines:
        assert 0 <= r["reward_accuracy"] <= 1 and r["logps_chosen"] < 0 and r["logps_rejected"] < 0
        assert {"reward_margin", "grad_norm", "lr", "tokens", "pairs"} <= set(r)
    assert lines[-1]["reward_accuracy"] > 0.5 and lines[-1]["reward_margin"] > 0  # it learns the preference

    # Another base model: the cached reference no longer fits, is recomputed and says why.
    counted = preference.REFERENCE_FORWARDS
    other = train(fresh(cfg, base_seed=1), pairs, cfg, tmp_path / "b", resume=True)
    assert preference.REFERENCE_FORWARDS - counted == len(pairs)
    assert other.reference == "recomputed: the reference weights changed"
    # Other pairs invalidate it too.
    counted = preference.REFERENCE_FORWARDS
    moved = train(fresh(cfg), pairs[:8], dpo_cfg(method, max_steps=1), tmp_path / "c")
    moved = train(fresh(cfg), pairs[:10], dpo_cfg(method, max_steps=1), tmp_path / "c")
    assert moved.reference.startswith("recomputed: the training pairs changed (8 -> 10 pairs)")
    assert preference.REFERENCE_FORWARDS - counted == 18


def test_simpo_needs_no_reference(tmp_path):
    counted = preference.REFERENCE_FORWARDS
    cfg = dpo_cfg(dpo={"loss": "simpo", "beta": 2.0, "simpo_gamma": 1.0}, max_steps=2)
    result = train(fresh(cfg), random_pairs(8, seed=3), cfg, tmp_path)
    assert preference.REFERENCE_FORWARDS == counted and result.reference is None
    assert not (tmp_path / "reference_logps.safetensors").exists()


@pytest.mark.parametrize("dpo", [{}, {"loss": "ipo"}, {"loss": "simpo", "beta": 2.0}, {"sft_weight": 0.5}])
def test_grad_accumulation_and_row_budget_change_nothing(dpo):
    pairs = random_pairs(8, seed=4)
    model = fresh(dpo_cfg("full"))
    ref = compute_reference(model, pairs, dpo_cfg("full"), DistInfo())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    grads, losses = [], []
    for micro, budget in ((2, 1024), (None, 1024), (None, 30), (1, 30)):
        cfg = dpo_cfg("full", dpo=dpo, batch_size=8, micro_batch_size=micro, max_tokens_per_row=budget)
        sums, _ = forward_backward_pairs(PackedLogProbs(model), model, pairs, ref, cfg, DistInfo())
        losses.append(step_record(sums, pairs, cfg.dpo)["loss"])
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        model.zero_grad(set_to_none=True)
    for other, loss in zip(grads[1:], losses[1:]):
        assert loss == pytest.approx(losses[0], rel=1e-6, abs=1e-6)  # ipo's loss is ~25: one fp32 ulp is 2e-6
        for name, g in grads[0].items():
            # fp32 rounding only: relative to the tensor's scale (ipo's gradients are large)
            assert torch.allclose(other[name], g, atol=1e-6 * float(g.abs().max()), rtol=1e-5), name
    # And whole training runs agree step by step (4 x 2 vs 1 x 8).
    base = dict(dpo=dpo, batch_size=8, max_steps=3, lora={"r": 4, "dropout": 0.0})
    ra = train(fresh(dpo_cfg(**base)), pairs, dpo_cfg(**base, micro_batch_size=2), None)
    rb = train(fresh(dpo_cfg(**base)), pairs, dpo_cfg(**base, micro_batch_size=None), None)
    assert ra.losses == pytest.approx(rb.losses, abs=1e-5)


# --- pairs from data files, with the chat template ---------------------------------------------

def _rows(tmp_path, rows) -> str:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


PREF = [{"prompt": "Name a primary colour.", "chosen": "Red.", "rejected": "Purple."},
        {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "2+2?"}],
         "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]},
        {"prompt": "Say yes.", "chosen": "Yes.", "rejected": "Yes."}]


def test_pairs_are_tokenized_with_the_template_and_identical_pairs_rejected(tmp_path, smol_tokenizer):
    from tunesmith.stages.curate import CurateConfig
    from tunesmith.stages.data import DataConfig
    from tunesmith.stages.prepare import prepare_data

    path = _rows(tmp_path, PREF)
    (tmp_path / "run").mkdir()
    data = DataConfig(train=[path], on_error="skip")
    bundle = prepare_data(data, CurateConfig(), None, None, smol_tokenizer, tmp_path / "run", objective="dpo")
    assert len(bundle.train_pairs) == 2 and [s.line for s in bundle.train_samples] == [1, 2]
    rejects = [json.loads(line) for line in (tmp_path / "run" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"].split(":")[0]) for r in rejects] == [(3, "identical_pair")]
    assert "are the same" in rejects[0]["reason"]
    assert bundle.report["kept"] == 2 and bundle.report["rejected"] == 1
    # Labels: the final answer through its end-of-turn token, never the earlier assistant turn.
    two = bundle.train_pairs[1]
    for side, answer in ((two.chosen, "4"), (two.rejected, "5")):
        trained = [t for t in side.labels if t != IGNORE]
        assert smol_tokenizer.decode(trained) == answer + "<|im_end|>"
    assert two.chosen.input_ids[:-3] == two.rejected.input_ids[:-3]  # the same prompt, rendered once
    # Under on_error: fail the identical pair stops the run, naming file:line.
    with pytest.raises(DataError, match=r"pairs\.jsonl:3: identical_pair"):
        prepare_data(DataConfig(train=[path]), CurateConfig(), None, None, smol_tokenizer, None, objective="dpo")


def test_dpo_on_rows_without_rejected_fails_with_one_message(tmp_path, smol_tokenizer):
    from tunesmith.stages.curate import CurateConfig
    from tunesmith.stages.data import DataConfig
    from tunesmith.stages.prepare import prepare_data

    sft = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    path = _rows(tmp_path, [PREF[0], sft, sft, PREF[1]])
    with pytest.raises(DataError) as err:
        prepare_data(DataConfig(train=[path]), CurateConfig(), None, None, smol_tokenizer, None, objective="dpo")
    msg = str(err.value)
    assert f"2 of 4 rows have no rejected answer (first: {path}:2)" in msg and "train.objective: sft" in msg


# --- the stage, end to end, and TRL side by side -----------------------------------------------

def test_run_stage_trains_dpo_and_resumes(tmp_path, tiny_dir):
    from tunesmith.stages.recipe import load_recipe
    from tunesmith.stages.run import run

    path = _rows(tmp_path, PREF[:2] * 4)
    overrides = {"model.name": str(tiny_dir), "data.train": [path], "train.objective": "dpo", "train.batch_size": 4,
                 "train.max_steps": 2, "train.lora.r": 4, "output.dir": str(tmp_path / "run"), "data.on_error": "skip"}
    recipe = load_recipe(None, overrides)
    counted = preference.REFERENCE_FORWARDS
    summary = run(recipe, do_eval=False)
    assert preference.REFERENCE_FORWARDS - counted == 8
    out = tmp_path / "run"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and all("reward_accuracy" in r for r in lines)
    assert (out / "model" / "model.safetensors").is_file() and (out / "reference_logps.json").is_file()
    assert summary["method"] == "lora, dpo (sigmoid)"
    assert run(recipe, resume=True, do_eval=False)["train"]["resumed_from"] == 2
    assert preference.REFERENCE_FORWARDS - counted == 8  # reused on resume


TRL_VARIANTS = [("sigmoid", {}, {"loss_type": ["sigmoid"]}),
                ("length_normalize", {"length_normalize": True}, {"loss_type": ["sigmoid_norm"]}),
                ("ipo", {"loss": "ipo"}, {"loss_type": ["ipo"]}),
                ("sft_weight", {"sft_weight": 0.5}, {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]})]


def test_loss_equals_trl_dpo_trainer(tmp_path, tiny_dir, smol_tokenizer):
    """TRL's DPOTrainer (fp32, one batch = one step) on the same pairs: its own tokenization gives
    our prompt and answer tokens (plus the template's newline after <|im_end|>, which our masks
    leave out), so both sides get our token ids; the reference is the base with the adapter off."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from tunesmith.data.example import Example
    from tunesmith.data.samples import tokenize_pairs

    rows = [("What is 2+2?", "4", "5"), ("Name a colour.", "Blue, like the sky.", "Seven"),
            ("Say hi.", "Hi!", "No."), ("Capital of France?", "Paris.", "Berlin is the capital.")]
    examples = [Example([{"role": "user", "content": p}, {"role": "assistant", "content": c}], "rows", i + 1,
                        rejected=[{"role": "user", "content": p}, {"role": "assistant", "content": r}])
                for i, (p, c, r) in enumerate(rows)]
    pairs, rejects, _ = tokenize_pairs(smol_tokenizer, examples, 256)
    assert not rejects

    def split(seq: TokenizedExample) -> tuple[list[int], list[int]]:
        first = next(t for t, x in enumerate(seq.labels) if x != IGNORE)
        last = max(t for t, x in enumerate(seq.labels) if x != IGNORE)
        return seq.input_ids[:first], seq.input_ids[first:last + 1]

    features = []
    for p in pairs:
        (prompt, chosen), (prompt_r, rejected) = split(p.chosen), split(p.rejected)
        assert prompt == prompt_r
        features.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected})
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p, _, _ in rows],
                                 "chosen": [[{"role": "assistant", "content": c}] for _, c, _ in rows],
                                 "rejected": [[{"role": "assistant", "content": r}] for _, _, r in rows]})
    trl_tokenizer = copy.deepcopy(smol_tokenizer)  # TRL may set its pad token: never on the shared fixture
    worst = {}
    for name, ours_dpo, trl_args in TRL_VARIANTS:
        cfg = TrainConfig(method="lora", lora={"r": 4, "alpha": 8}, objective="dpo",
                          dpo={"beta": 0.3, **ours_dpo}, batch_size=len(pairs), loss_chunk_size=16)
        torch.manual_seed(0)
        model = prepare_model(AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32), cfg)
        with torch.no_grad():  # an adapter that is not zero: the policy differs from the reference
            g = torch.Generator().manual_seed(1)
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        trl_model = copy.deepcopy(model)
        ref = compute_reference(model, pairs, cfg, DistInfo())
        sums, _ = forward_backward_pairs(PackedLogProbs(model, 16), model, pairs, ref, cfg, DistInfo())
        ours = step_record(sums, pairs, cfg.dpo)["loss"]
        our_grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

        args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.3, per_device_train_batch_size=len(pairs),
                         report_to=[], use_cpu=True, bf16=False, fp16=False, max_length=None,
                         gradient_checkpointing=False, **trl_args)
        # The reference: the base model, given explicitly (given a PEFT model without one, TRL would
        # keep a copy of the adapter as it is now as the reference, for re-training an adapter).
        reference = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
        trainer = DPOTrainer(model=trl_model, ref_model=reference, args=args, train_dataset=dataset,
                             processing_class=trl_tokenizer)
        # TRL's own tokenization: our prompt tokens, our answer tokens and the newline after <|im_end|>.
        for mine, theirs in zip(features, trainer.train_dataset):
            assert theirs["prompt_ids"] == mine["prompt_ids"]
            assert theirs["chosen_ids"][:-1] == mine["chosen_ids"] and theirs["rejected_ids"][:-1] == mine["rejected_ids"]
        batch = DataCollatorForPreference(pad_token_id=trl_tokenizer.pad_token_id)(features)
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        trl_grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.requires_grad}
        loss_diff = abs(ours - loss.item())
        grad_diff = max(float((our_grads[n] - trl_grads[n]).abs().max()) for n in our_grads)
        worst[name] = (loss_diff, grad_diff, loss.item())
        assert loss_diff < 1e-5 and grad_diff < 1e-5, (name, loss_diff, grad_diff)
    print("\nmax |ours - TRL| (loss, grad, TRL loss): " +
          ", ".join(f"{k} {a:.1e} {b:.1e} {c:.4f}" for k, (a, b, c) in worst.items()))


# --- two ranks ------------------------------------------------------------------------------

DDP_CFG = dict(method="full", objective="dpo", batch_size=8, max_steps=3, lr=1e-3, warmup_steps=0, save_every=100,
               dpo={"sft_weight": 0.3})


def _ddp_worker(rank: int, world: int, port: int, out):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = TrainConfig(**DDP_CFG)
        result = train(prepare_model(tiny_llama(0), cfg), random_pairs(16, seed=9), cfg, None,
                       dist_info=DistInfo(rank=rank, world_size=world))
        out[rank] = result.losses
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_process():
    """DDP (2 CPU ranks, gloo): each rank takes every other pair of the step; same losses as one process."""
    import socket

    import torch.multiprocessing as mp

    cfg = TrainConfig(**DDP_CFG)
    single = train(prepare_model(tiny_llama(0), cfg), random_pairs(16, seed=9), cfg, None).losses
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_worker, args=(2, port, out), nprocs=2, join=True)
        ranks = [list(out[0]), list(out[1])]
    assert ranks[0] == ranks[1]
    assert ranks[0] == pytest.approx(single, abs=1e-5)
