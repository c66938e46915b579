"""The tuning methods of train.method / lora.init / base_quant / lisa / galore / neftune_alpha: each resumes
bit for bit and accumulates gradients exactly; quantized bases, LISA's layer schedule, adapters in plain
PEFT, merging, and the combinations refused at validation."""

import time

import pytest
import torch

from conftest import random_samples, tiny_llama
from tunesmith.errors import UserError
from tunesmith.train.config import TrainConfig
from tunesmith.train.setup import prepare_model

# One TrainConfig fragment per method; r=4 adapters, an int4 group of 32 fits the tiny model's 64/128 widths.
METHODS = {
    "lora": dict(method="lora", lora={"r": 4}),
    "dora": dict(method="dora", lora={"r": 4}),
    "pissa": dict(method="lora", lora={"r": 4, "init": "pissa"}),
    "corda": dict(method="lora", lora={"r": 4, "init": "corda", "corda_samples": 16}),
    "olora": dict(method="lora", lora={"r": 4, "init": "olora"}),
    "loftq": dict(method="lora", lora={"r": 4, "init": "loftq"}, base_quant="int4", base_quant_group_size=32),
    "int8": dict(method="lora", lora={"r": 4}, base_quant="int8"),
    "int4": dict(method="lora", lora={"r": 4}, base_quant="int4", base_quant_group_size=32),
    "lisa": dict(method="lisa", lisa={"layers": 1, "period": 2}),
    "galore": dict(method="galore", galore={"rank": 8, "update_proj_gap": 2, "scale": 0.5}),
    "neftune": dict(method="lora", lora={"r": 4}, neftune_alpha=5.0),
    "lora-checkpointing": dict(method="lora", lora={"r": 4}, gradient_checkpointing=True),
    "int4-checkpointing": dict(method="lora", lora={"r": 4}, base_quant="int4", base_quant_group_size=32,
                               gradient_checkpointing=True),
    "lisa-checkpointing": dict(method="lisa", lisa={"layers": 1, "period": 2}, gradient_checkpointing=True),
}


def fresh(cfg: TrainConfig, samples, init_seed: int = 0, layers: int = 2):
    base = tiny_llama(0) if layers == 2 else _tiny_layers(layers)
    torch.manual_seed(init_seed)
    return prepare_model(base, cfg, samples)


def _tiny_layers(n: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=n,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).float()


def _loss(model, samples) -> float:
    from tunesmith.data.packing import pack_rows
    from tunesmith.train.loss import PackedLoss

    row = pack_rows(samples, 4096)[0]
    with torch.no_grad():
        return float(PackedLoss(model)(row.input_ids, row.position_ids, row.targets))


@pytest.mark.parametrize("name", list(METHODS))
def test_resume_is_bit_identical_and_4x2_equals_1x8(tmp_path, name):
    from tunesmith.train.distributed import DistInfo
    from tunesmith.train.loop import forward_backward, train
    from tunesmith.train.loss import PackedLoss

    samples = random_samples(40, seed=5)
    run = dict(batch_size=8, max_steps=5, lr=1e-2, warmup_steps=1, save_every=100, **METHODS[name])
    cfg = TrainConfig(**run, micro_batch_size=2)
    trained = fresh(cfg, samples)
    straight = train(trained, samples, cfg, tmp_path / "a")
    first = train(fresh(cfg, samples), samples, cfg, tmp_path / "b", stop_after=3)
    second = train(fresh(cfg, samples, init_seed=123), samples, cfg, tmp_path / "b", resume=True)
    assert second.resumed_from == 3
    assert first.losses + second.losses == straight.losses  # bit-identical
    assert _loss(trained, samples[:16]) != _loss(fresh(cfg, samples), samples[:16])  # it trained something

    # 4 micro-batches of 2 == 1 micro-batch of 8: the same gradient (NEFTune's noise included) ...
    model = fresh(cfg, samples)
    grads = []
    for micro in (2, None):
        c = TrainConfig(**run, micro_batch_size=micro)
        forward_backward(PackedLoss(model), model, samples[:8], c, DistInfo(), step=1)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad(set_to_none=True)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n, g in grads[1].items():
        assert torch.allclose(grads[0][n], g, atol=1e-6, rtol=1e-4), n
    # ... and whole runs agree step by step.
    accumulated = train(fresh(cfg, samples), samples, TrainConfig(**run, micro_batch_size=2), None).losses
    assert accumulated == pytest.approx(straight.losses, abs=1e-5)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantized_base_within_half_a_step_and_no_fp32_weight_kept(tmp_path, kind):
    from tunesmith.train.quantbase import QuantLinear, load_quantized_base, quantize_model_

    original = tiny_llama(0)
    weights = {n: m.weight.detach().clone() for n, m in original.named_modules()
               if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    original.save_pretrained(tmp_path / "m")
    streamed = load_quantized_base(tmp_path / "m", kind, group_size=32, log=lambda *a: None)
    in_memory = tiny_llama(0)
    quantize_model_(in_memory, kind, 32)
    for model in (streamed, in_memory):
        quant = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
        assert quant.keys() == weights.keys()
        for n, m in quant.items():
            w, deq = weights[n], m.dequantized()
            step = m.scale.view(-1, 1) if kind == "int8" else m.scale.float().repeat_interleave(32, dim=1)
            assert (w - deq).abs().le(step / 2 + 1e-7).all(), n
            assert m.qdata.dtype == (torch.int8 if kind == "int8" else torch.uint8)
        assert not any(p.dtype == torch.float32 and p.dim() == 2 and p.shape != (97, 64)
                       for p in model.parameters())  # only the (tied) embeddings stay fp32 matrices
    assert torch.equal(streamed.model.embed_tokens.weight, original.model.embed_tokens.weight)
    assert streamed.lm_head.weight is streamed.model.embed_tokens.weight
    ids = torch.tensor([[1, 5, 9, 3]])
    a, b = streamed(input_ids=ids).logits, in_memory(input_ids=ids).logits
    assert torch.equal(a, b)
    # Backward reaches the input; autograd saves no tensor the size of a weight in fp32.
    x = torch.randn(3, 64, requires_grad=True)
    layer = streamed.model.layers[0].mlp.gate_proj
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append((t.dtype, t.numel())) or t, lambda t: t):
        y = layer(x)
    y.sum().backward()
    assert torch.allclose(x.grad, layer.dequantized().sum(0).expand(3, -1), atol=1e-6)
    assert (torch.float32, 128 * 64) not in sizes


def test_lisa_trains_exactly_the_sampled_layers():
    from tunesmith.train.lisa import active_layers
    from tunesmith.train.loop import Trainer

    samples = random_samples(32, seed=3)
    cfg = TrainConfig(method="lisa", lisa={"layers": 2, "period": 2}, batch_size=4, max_steps=6, lr=1e-2,
                      warmup_steps=0, save_every=100)
    model = fresh(cfg, samples, layers=5)
    trainer = Trainer(model, samples, cfg, None)
    trainer.log = trainer._open_log()
    seen = set()
    for period in range(3):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        for step in (2 * period + 1, 2 * period + 2):
            trainer.step(step, time.perf_counter())
        active = active_layers(cfg.seed, period, 5, 2)
        assert trainer.lisa.active == active
        seen.update(active)
        for n, p in model.named_parameters():
            in_layer = n.startswith("model.layers.")
            trained = not in_layer or int(n.split(".")[2]) in active
            assert torch.equal(p, before[n]) != trained, n  # changed exactly when trained
        # Optimizer state only for what trains now (a layer that left was reset).
        stateful = {id(p) for p in trainer.optimizer.state}
        for i, layer in enumerate(model.model.layers):
            assert all((id(p) in stateful) == (i in active) for p in layer.parameters())
    assert len(seen) > 2  # the draw changed between periods


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("name", ["dora", "pissa", "corda", "int4"])
def test_saved_adapter_loads_in_plain_peft_and_merges(tmp_path, name):
    from peft import PeftModel

    from tunesmith.export.merge import BASE_NOTE, merged_model, save_adapter
    from tunesmith.train.loop import train
    from tunesmith.train.quantbase import quantize_model_

    samples = random_samples(24, seed=9)
    cfg = TrainConfig(batch_size=4, max_steps=3, lr=3e-2, warmup_steps=0, **METHODS[name])
    model = fresh(cfg, samples)
    train(model, samples, cfg, None)
    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79]])
    ours = _logits(model, ids)
    save_adapter(model, tmp_path / "adapter")
    base = tiny_llama(0)
    if name == "int4":  # the adapter belongs to the dequantized base, and says so
        assert (tmp_path / "adapter" / BASE_NOTE).is_file()
        quantize_model_(base, "int4", 32)
        from tunesmith.train.quantbase import dequantize_model_
        dequantize_model_(base)
    plain = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    assert torch.allclose(_logits(plain, ids), ours, atol=1e-5)
    assert not torch.allclose(_logits(tiny_llama(0), ids), ours, atol=1e-3)  # it did train
    merged = merged_model(model)
    assert torch.allclose(_logits(merged, ids), ours, atol=1e-5)


def test_neftune_noise_only_while_training():
    from tunesmith.train.loss import PackedLoss

    samples = random_samples(4, seed=2)
    cfg = TrainConfig(**METHODS["neftune"])
    model = fresh(cfg, samples)
    from tunesmith.data.packing import pack_rows
    from tunesmith.train.neftune import row_noise

    row = pack_rows(samples, 1024)[0]
    noise = row_noise(samples, [0, 1, 2, 3], 64, 5.0, 0, 1)
    assert noise.shape == (1, row.input_ids.shape[1], 64)
    first = samples[0]
    bound = 5.0 / (len(first.input_ids) * 64) ** 0.5  # each sample's own length, not the row's
    assert noise[0, :len(first.input_ids)].abs().max() <= bound
    loss = PackedLoss(model)
    plain = loss(row.input_ids, row.position_ids, row.targets)
    noisy = loss(row.input_ids, row.position_ids, row.targets, embed_noise=noise)
    assert plain != noisy


@pytest.mark.parametrize("train, keys", [
    ({"method": "full", "base_quant": "int4"}, ["train.base_quant", "train.method"]),
    ({"method": "lisa", "lora": {"r": 8}}, ["train.lora", "train.method"]),
    ({"method": "galore", "distributed": "fsdp"}, ["train.distributed", "train.method galore"]),
    ({"base_quant": "int8", "lora": {"init": "pissa"}}, ["train.lora.init pissa", "train.base_quant"]),
    ({"method": "dora", "lora": {"init": "corda"}}, ["train.lora.init corda", "train.method"]),
    ({"objective": "dpo", "neftune_alpha": 5}, ["train.neftune_alpha"]),
])
def test_impossible_combinations_refused_at_validation(tmp_path, train, keys):
    import yaml

    from tunesmith.stages.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"train": train}))
    with pytest.raises(UserError) as err:
        load_recipe(path)
    for key in keys:
        assert key in str(err.value)


def test_tunesmith_train_on_an_int4_base_with_loftq(tmp_path, tiny_dir, adder_recipe):
    """Through the CLI: the base is loaded quantized, the adapter and the merged (dequantized-base) model are
    written, and the summary and the card say what the merge went into."""
    import json

    from transformers import AutoModelForCausalLM

    from tunesmith.cli import main

    recipe = adder_recipe("method: lora, base_quant: int4, base_quant_group_size: 32, lora: {r: 4, init: loftq}, "
                          "max_steps: 3, batch_size: 4, warmup_steps: 0")
    assert main(["train", str(recipe)]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert "int4" in summary["merged_into"] and "dequantized" in summary["merged_into"]
    assert "int4 base" in summary["method"] and "init loftq" in summary["method"]
    assert json.loads((run / "adapter" / "tunesmith_base.json").read_text())["base"] == "int4-asym quantized"
    merged = AutoModelForCausalLM.from_pretrained(run / "model")
    assert merged.model.layers[0].self_attn.q_proj.weight.shape == (64, 64)
    assert "dequantized int4 base" in (run / "MODEL_CARD.md").read_text()


@pytest.mark.parametrize("name", ["lora", "int4", "full"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(name):
    """Each decoder layer recomputed in backward (inside the same kernel switches): the loss and every
    gradient as without checkpointing, and no layer is left checkpointing after the forward."""
    from tunesmith.data.packing import pack_rows
    from tunesmith.train.checkpointing import checkpointable_layers
    from tunesmith.train.loss import PackedLoss

    samples = random_samples(12, seed=2)
    row = pack_rows(samples, 4096)[0]
    frag = METHODS.get(name, dict(method="full"))
    model = fresh(TrainConfig(**frag), samples)
    model.train()
    results = []
    for checkpointing in (False, True):
        module = PackedLoss(model, gradient_checkpointing=checkpointing)
        loss = module(row.input_ids, row.position_ids, row.targets)
        loss.backward()
        results.append((float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
        model.zero_grad(set_to_none=True)
        assert not any(layer.__dict__.get("gradient_checkpointing") for layer in checkpointable_layers(model))
    (loss_plain, plain), (loss_ckpt, ckpt) = results
    assert loss_plain == loss_ckpt
    assert plain.keys() == ckpt.keys() and len(plain) > 0
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-5, atol=1e-7, msg=n)


def test_gradient_checkpointing_keeps_only_layer_inputs():
    """Saved-for-backward bytes with checkpointing are a fraction of those without (the memory it is for)."""
    from tunesmith.data.packing import pack_rows
    from tunesmith.train.loss import PackedLoss

    samples = random_samples(16, seed=3)
    row = pack_rows(samples, 4096)[0]
    model = fresh(TrainConfig(method="lora", lora={"r": 4}), samples, layers=6)
    model.train()
    saved = {}
    for checkpointing in (False, True):
        total = [0]

        def pack(t, total=total):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = PackedLoss(model, gradient_checkpointing=checkpointing)(row.input_ids, row.position_ids, row.targets)
        loss.backward()
        saved[checkpointing] = total[0]
    assert saved[True] < 0.5 * saved[False], saved


def test_loftq_on_a_base_already_on_the_int4_grid_keeps_a_trainable_default_init():
    """Weights that int4 reproduces exactly (a Q4_1 GGUF model's) leave LoftQ nothing to correct: those layers
    get PEFT's default init (B = 0, A random), not an all-zero A and B that no gradient could ever move; a layer
    off the grid still starts at its LoftQ factors (scaling * B @ A = L @ R)."""
    from peft.tuners.lora import LoraLayer

    from tunesmith.train.quantbase import _linear_names, dequantize_weight, loftq_factors, quantize_weight

    base = tiny_llama(0)
    names = _linear_names(base)
    off_grid = names[0]
    with torch.no_grad():
        for name in names[1:]:  # put every other weight on the int4 grid
            lin = base.get_submodule(name)
            lin.weight.copy_(dequantize_weight(*quantize_weight(lin.weight, "int4", 32), "int4-asym", 32))
    on_grid = base.get_submodule(names[1]).weight.detach().clone()
    quant, left, right = loftq_factors(on_grid, "int4", 32, rank=4, iters=2)
    assert left is None and right is None
    assert torch.equal(dequantize_weight(*quant, "int4-asym", 32), on_grid)

    expected = loftq_factors(base.get_submodule(off_grid).weight, "int4", 32, rank=4, iters=1)
    torch.manual_seed(0)
    model = prepare_model(base, TrainConfig(**METHODS["loftq"]), None)
    layers = {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert set(layers) == set(names)
    first = layers[off_grid]
    got = first.scaling["default"] * first.lora_B["default"].weight @ first.lora_A["default"].weight
    torch.testing.assert_close(got, expected[1] @ expected[2], rtol=1e-5, atol=1e-6)
    for name in names[1:]:
        layer = layers[name]
        assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
        assert torch.count_nonzero(layer.lora_A["default"].weight) == layer.lora_A["default"].weight.numel()
    assert not any(hasattr(m, "loftq") for m in model.modules())
