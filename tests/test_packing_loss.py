"""Packed forward equals per-sample forward; label-only chunked loss equals the full-logit loss."""

import pytest
import torch

from conftest import random_samples, tiny_llama
from tunesmith.data.chat import IGNORE
from tunesmith.data.packing import make_row, pack_rows, shift_labels
from tunesmith.kernels.attention import packed_attention_enabled
from tunesmith.kernels.loss import chunked_cross_entropy
from tunesmith.testing.reference import full_logits_loss
from tunesmith.train.loss import PackedLoss


def test_shift_never_crosses_samples():
    samples = random_samples(3, seed=1)
    row = make_row(samples)
    assert row.input_ids.shape == row.position_ids.shape == row.targets.shape == (1, sum(len(s.input_ids) for s in samples))
    ends = torch.cumsum(torch.tensor([len(s.input_ids) for s in samples]), 0) - 1
    assert (row.targets[0, ends] == IGNORE).all()  # the last token of a sample predicts nothing
    assert row.position_ids[0].tolist() == sum((list(range(len(s.input_ids))) for s in samples), [])
    assert shift_labels([IGNORE, 5, 6]) == [5, 6, IGNORE]


def test_pack_rows_respects_the_budget_and_keeps_order():
    samples = random_samples(20, seed=2)
    rows = pack_rows(samples, 64)
    assert sum(r.n_samples for r in rows) == 20
    assert all(r.n_tokens <= 64 for r in rows)
    flat = torch.cat([r.input_ids[0] for r in rows]).tolist()
    assert flat == sum((s.input_ids for s in samples), [])


@pytest.mark.parametrize("packed_kernel", [False, True])
def test_packed_forward_equals_per_sample_forward(packed_kernel):
    model = tiny_llama().eval()
    samples = random_samples(5, seed=3, lo=4, hi=40)
    row = make_row(samples)
    with torch.no_grad():
        if packed_kernel:  # our [n, H, max_len, D] kernel
            with packed_attention_enabled(model):
                packed = model(input_ids=row.input_ids, position_ids=row.position_ids, use_cache=False).logits
        else:  # transformers' own block-diagonal mask from position_ids
            packed = model(input_ids=row.input_ids, position_ids=row.position_ids, use_cache=False).logits
        offset = 0
        for s in samples:
            single = model(input_ids=torch.tensor([s.input_ids]), use_cache=False).logits
            n = len(s.input_ids)
            diff = (packed[0, offset:offset + n] - single[0]).abs().max().item()
            assert diff < 1e-5, diff
            offset += n
    # Sanity: without restarting positions the logits do differ (the check can fail).
    with torch.no_grad():
        flat = model(input_ids=row.input_ids, use_cache=False).logits
    assert (flat - packed).abs().max().item() > 1e-3


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_chunked_loss_and_grads_equal_full_logit_loss(chunk):
    h = torch.randn(37, 16, dtype=torch.float32, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float32, requires_grad=True)
    b = torch.randn(50, dtype=torch.float32, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    ours = chunked_cross_entropy(h, w, b, t, chunk)
    g_ours = torch.autograd.grad(ours * 0.5, (h, w, b))
    ref = torch.nn.functional.cross_entropy(h @ w.T + b, t, reduction="sum")
    g_ref = torch.autograd.grad(ref * 0.5, (h, w, b))
    assert abs(ours.item() - ref.item()) <= 1e-6 * max(1.0, abs(ref.item()))
    for a, r in zip(g_ours, g_ref):
        assert torch.allclose(a, r, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_packed_label_only_loss_matches_plain_loss_in_a_model(method):
    from tunesmith.train.config import TrainConfig
    from tunesmith.train.setup import prepare_model

    samples = random_samples(4, seed=4)
    row = make_row(samples)

    def grads(loss_fn):
        torch.manual_seed(0)
        model = prepare_model(tiny_llama(), TrainConfig(method=method, lora={"r": 4}))
        if method == "lora":  # make B non-zero so LoRA gradients flow everywhere
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    torch.nn.init.normal_(p, std=0.1)
        loss = loss_fn(model)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ours, g_ours = grads(lambda m: PackedLoss(m, chunk_size=5)(row.input_ids, row.position_ids, row.targets))
    ref, g_ref = grads(lambda m: full_logits_loss(m, row.input_ids, row.position_ids, row.targets))
    assert abs(ours - ref) <= 1e-6 * abs(ref)
    assert g_ours.keys() == g_ref.keys() and len(g_ours) > 0
    for name in g_ref:  # gradients up to ~3 (summed loss): 1e-5 is fp32 rounding of the attention kernels' order
        assert torch.allclose(g_ours[name], g_ref[name], atol=1e-5, rtol=1e-4), name
