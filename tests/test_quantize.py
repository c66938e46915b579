"""Weight-only quantization: the quantizers' error bounds, AWQ's invariants, the folder format."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tunesmith import qformat
from tunesmith.export import quantize as qz

from conftest import tiny_llama

GS = 32  # tiny_llama: hidden 64, intermediate 128


def _calib_ids(n: int = 12, seed: int = 1, vocab: int = 97) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (int(torch.randint(8, 40, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{n}.weight": m.weight.detach().clone() for n, m in qz.quantizable_linears(model)}


def _dequantized(tensors: dict[str, torch.Tensor], info: dict, name: str) -> torch.Tensor:
    return qformat.dequantize(tensors[name + ".qdata"], tensors[name + ".scale"], info["method"],
                              info["group_size"], tensors.get(name + ".awq_scale"))


def _quiet(*_a, **_k) -> None:
    pass


# --- the quantizers of one weight -------------------------------------------------------------


def test_int8_within_half_a_step_per_row():
    model = tiny_llama()
    tensors, info = qz.quantize_model(model, "int8", log=_quiet)
    src = _weights(model)
    assert sorted(src) == info["quantized"] and not info["skipped"]
    for name, w in src.items():
        q, scale = tensors[name + ".qdata"], tensors[name + ".scale"]
        assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (w.shape[0],)
        err = (_dequantized(tensors, info, name) - w).abs()
        assert (err <= scale.view(-1, 1) / 2 * (1 + 1e-6)).all(), name
    # a zero row quantizes to zeros (no division by zero)
    q, scale = qz.quantize_int8(torch.zeros(3, 8))
    assert (q == 0).all() and torch.isfinite(scale).all()


def test_int4_rtn_within_half_a_step_per_group_and_packing_exact():
    model = tiny_llama()
    tensors, info = qz.quantize_model(model, "int4-rtn", group_size=GS, log=_quiet)
    for name, w in _weights(model).items():
        packed, scale = tensors[name + ".qdata"], tensors[name + ".scale"]
        out, cols = w.shape
        assert packed.dtype == torch.uint8 and packed.shape == (out, cols // 2)
        assert scale.shape == (out, cols // GS)
        err = (_dequantized(tensors, info, name) - w).abs().view(out, -1, GS)
        assert (err <= scale.unsqueeze(-1) / 2 * (1 + 1e-6)).all(), name
        q = qformat.unpack_int4(packed)
        assert q.min() >= -7 and q.max() <= 7
    # the packing round trip covers every 4-bit value, at every position
    q = torch.randint(-8, 8, (5, 64), dtype=torch.int8)
    q[0, :16] = torch.arange(-8, 8, dtype=torch.int8)
    assert torch.equal(qformat.unpack_int4(qformat.pack_int4(q)), q)
    with pytest.raises(ValueError):
        qformat.pack_int4(torch.full((1, 2), 8, dtype=torch.int8))


def test_int4_asym_takes_q4_1_weights_back_bit_for_bit_and_any_weight_within_half_a_step():
    gen = torch.Generator().manual_seed(0)
    # A Q4_1 weight as gguf dequantizes it: per group of 32, fp16 d and m, w = d * q + m in fp32, with q = 0 and
    # q = 15 present in every group (the quantizer puts the group's min and max there).
    d = (torch.rand(8, 4, generator=gen) * 0.01 + 1e-3).to(torch.float16)
    m = (torch.randn(8, 4, generator=gen) * 0.05).to(torch.float16)
    q = torch.randint(0, 16, (8, 4, 32), generator=gen)
    q[..., 0], q[..., 1] = 0, 15
    w = (d.float().unsqueeze(-1) * q.float() + m.float().unsqueeze(-1)).view(8, 128)
    packed, scale, low = qformat.quantize_int4_asym(w, 32)
    assert packed.shape == (8, 64) and packed.dtype == torch.uint8 and scale.dtype == torch.float16
    assert torch.equal(scale, d) and torch.equal(low, m)
    assert torch.equal(qformat.dequantize_int4_asym(packed, scale, low, 32), w)
    # Nibble order: channel 2j in the low nibble of byte j.
    assert int(packed[0, 0]) == int(q[0, 0, 0]) | (int(q[0, 0, 1]) << 4)
    # Any weight: within half a step of its group, the fp16 grid widened where rounding would cut an end off.
    for w in (torch.randn(16, 256, generator=gen) * 0.04, torch.randn(16, 256, generator=gen) * 3.0 + 7.0):
        packed, scale, low = qformat.quantize_int4_asym(w, 64)
        err = (w - qformat.dequantize_int4_asym(packed, scale, low, 64)).abs()
        step = scale.float().repeat_interleave(64, dim=1)
        assert err.le(step / 2 + 1e-6).all()
        assert err.max() > step.min() / 10  # it did quantize
    # A constant group comes back exactly; values fp16 cannot hold keep fp32 scale and minimum.
    const = torch.full((2, 32), 0.25)
    assert torch.equal(qformat.dequantize_int4_asym(*qformat.quantize_int4_asym(const, 32), 32), const)
    big = torch.randn(2, 32, generator=gen) * 1e6
    packed, scale, low = qformat.quantize_int4_asym(big, 32)
    assert scale.dtype == torch.float32 and torch.isfinite(qformat.dequantize_int4_asym(packed, scale, low, 32)).all()
    with pytest.raises(ValueError, match="group_size"):
        qformat.quantize_int4_asym(torch.zeros(2, 30), 15)


def test_awq_scale_is_exact_before_rounding_and_never_worse_than_rtn():
    model = tiny_llama()
    stats = qz.collect_activations(model, _calib_ids())
    linears = dict(qz.quantizable_linears(model))
    assert set(stats) == set(linears)
    # q/k/v (and gate/up) see the same input, so they share one record
    assert stats["model.layers.0.self_attn.q_proj"] is stats["model.layers.0.self_attn.v_proj"]
    assert stats["model.layers.0.mlp.gate_proj"] is stats["model.layers.0.mlp.up_proj"]
    tensors, info = qz.quantize_model(model, "int4-awq", group_size=GS, calibration=stats, log=_quiet)
    rtn, rtn_info = qz.quantize_model(model, "int4-rtn", group_size=GS, log=_quiet)
    assert info["quantized"] == rtn_info["quantized"]
    alphas = []
    for name, w in _weights(model).items():
        x = stats[name[: -len(".weight")]].rows.to(torch.float64)
        s = tensors[name + ".awq_scale"]
        assert s.shape == (w.shape[1],) and (s > 0).all()
        # W·diag(s) applied to X·diag(s)^-1 is the same layer (before rounding)
        xf = x.to(torch.float32)
        assert torch.allclose((xf / s) @ (w * s).T, xf @ w.T, atol=1e-5, rtol=1e-5), name
        # on the calibration rows AWQ's output error is at most RTN's
        ref = x @ w.to(torch.float64).T
        e_awq = (ref - x @ _dequantized(tensors, info, name).to(torch.float64).T).pow(2).sum()
        e_rtn = (ref - x @ _dequantized(rtn, rtn_info, name).to(torch.float64).T).pow(2).sum()
        assert e_awq <= e_rtn * (1 + 1e-9), (name, float(e_awq), float(e_rtn))
        alphas.append(info["awq"]["layers"][name]["alpha"])
    assert any(a > 0 for a in alphas)  # the search does move away from plain RTN somewhere


def test_collect_activations_bounds_rows_and_tokens():
    model = tiny_llama()
    stats = qz.collect_activations(model, _calib_ids(20), max_tokens=300, max_rows=50)
    for st in stats.values():
        assert st.rows.shape[0] == 50 and st.n_rows == 300
        assert st.rows.dtype == torch.float32 and torch.isfinite(st.rows).all()
    assert model.model.layers[0].self_attn.q_proj._forward_pre_hooks == {}  # hooks removed


def test_awq_needs_calibration():
    with pytest.raises(qz.UserError, match="calibration"):
        qz.quantize_model(tiny_llama(), "int4-awq", group_size=GS, log=_quiet)


def test_indivisible_layer_is_skipped_and_reported():
    model = tiny_llama()
    # 64 is a multiple of 32 but not of 128: with group 128 every layer fed the hidden size is skipped
    lines: list[str] = []
    tensors, info = qz.quantize_model(model, "int4-rtn", group_size=128, log=lines.append)
    down = [n for n in _weights(model) if "down_proj" in n]  # in_features 128: quantized
    assert sorted(down) == info["quantized"]
    skipped = set(_weights(model)) - set(down)
    assert set(info["skipped"]) == skipped and all("not a multiple" in r for r in info["skipped"].values())
    for name in skipped:
        assert name in tensors and name + ".qdata" not in tensors  # kept in fp32, whole
        assert any(name in line for line in lines)
    # a model with an odd-sized layer: that one layer is skipped, the others are quantized
    model.model.layers[1].mlp.down_proj = nn.Linear(128 + 8, 64, bias=False)
    model.model.layers[1].mlp.up_proj = nn.Linear(64, 128 + 8, bias=False)
    model.model.layers[1].mlp.gate_proj = nn.Linear(64, 128 + 8, bias=False)
    _, info = qz.quantize_model(model, "int4-rtn", group_size=GS, log=_quiet)
    assert list(info["skipped"]) == ["model.layers.1.mlp.down_proj.weight"]
    assert "136" in info["skipped"]["model.layers.1.mlp.down_proj.weight"]
    # nothing quantizable at all is an error, not an "export" of the fp32 model
    with pytest.raises(qz.UserError, match="no Linear layer could be quantized"):
        qz.quantize_model(tiny_llama(), "int4-rtn", group_size=256, log=_quiet)


# --- the folder ---------------------------------------------------------------------------------


def _save_tiny(tmp_path, model):
    src = tmp_path / "src"
    model.save_pretrained(src)
    return src


@pytest.mark.parametrize("method", ["int8", "int4-rtn", "int4-awq"])
def test_save_and_load_round_trip(tmp_path, method):
    model = tiny_llama()
    src = _save_tiny(tmp_path, model)
    cal = _calib_ids() if method == "int4-awq" else None
    tensors, info = qz.quantize_model(model, method, group_size=GS, calibration=cal, log=_quiet)
    assert info["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}
    out = qformat.write_quantized(tmp_path / "q", tensors, info, copy_from=src)
    assert qformat.is_quantized_dir(out) and not qformat.is_quantized_dir(src)
    assert (out / "config.json").is_file() and (out / "generation_config.json").is_file()
    desc = json.loads((out / "tunesmith_quant.json").read_text())
    assert desc["method"] == method and desc["format_version"] == qformat.FORMAT_VERSION
    assert desc["symmetric"] is True and desc["bits"] == (8 if method == "int8" else 4)

    loaded = qformat.load_quantized_model(out)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # still tied
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)
    lsd = loaded.state_dict()
    for name in info["quantized"]:
        assert torch.equal(lsd[name], _dequantized(tensors, info, name)), name
    for name, t in model.state_dict().items():
        if name not in info["quantized"]:
            assert torch.equal(lsd[name], t), name
    # the loaded model runs and stays close to the fp32 one
    ids = torch.tensor([_calib_ids(1)[0]])
    with torch.no_grad():
        a, b = model(ids).logits, loaded(ids).logits
    assert torch.isfinite(b).all() and (a - b).abs().max() < 0.5
    state, info2 = qformat.load_dequantized_state(out)
    assert info2["quantized"] == info["quantized"] and all(t.dtype == torch.float32 for t in state.values())


def test_untied_model_round_trip(tmp_path):
    model = tiny_llama(tie=False)
    tensors, info = qz.quantize_model(model, "int8", log=_quiet)
    assert info["tied"] == {} and "lm_head.weight" in tensors  # lm_head stays fp32, not quantized
    out = qformat.write_quantized(tmp_path / "q", tensors, info, copy_from=_save_tiny(tmp_path, model))
    loaded = qformat.load_quantized_model(out, dtype=torch.bfloat16)
    assert loaded.lm_head.weight is not loaded.model.embed_tokens.weight
    assert loaded.lm_head.weight.dtype == torch.bfloat16
    assert torch.equal(loaded.lm_head.weight.float(), model.lm_head.weight.to(torch.bfloat16).float())


def test_interrupted_write_leaves_no_folder(tmp_path, monkeypatch):
    model = tiny_llama()
    src = _save_tiny(tmp_path, model)
    tensors, info = qz.quantize_model(model, "int8", log=_quiet)

    def boom(*_a, **_k):
        raise KeyboardInterrupt("stopped midway")

    monkeypatch.setattr(qformat, "write_json", boom)  # after the weights, before the description
    with pytest.raises(KeyboardInterrupt):
        qformat.write_quantized(tmp_path / "q", tensors, info, copy_from=src)
    assert not (tmp_path / "q").exists() and not qformat.is_quantized_dir(tmp_path / "q")
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no temporary folder left either
    # an earlier complete folder survives a failed overwrite untouched
    monkeypatch.undo()
    qformat.write_quantized(tmp_path / "q", tensors, info, copy_from=src)
    before = (tmp_path / "q" / "quantized.safetensors").read_bytes()
    monkeypatch.setattr(qformat, "write_json", boom)
    with pytest.raises(KeyboardInterrupt):
        qformat.write_quantized(tmp_path / "q", tensors, {**info, "method": "int8"}, copy_from=src)
    assert (tmp_path / "q" / "quantized.safetensors").read_bytes() == before and qformat.is_quantized_dir(tmp_path / "q")


def test_damaged_folder_is_refused(tmp_path):
    model = tiny_llama()
    tensors, info = qz.quantize_model(model, "int8", log=_quiet)
    name = info["quantized"][0]
    del tensors[name + ".scale"]
    out = qformat.write_quantized(tmp_path / "q", tensors, info, copy_from=_save_tiny(tmp_path, model))
    with pytest.raises(qformat.UserError, match=name):
        qformat.load_dequantized_state(out)


def test_export_quantized(tmp_path):
    model = tiny_llama()
    src = _save_tiny(tmp_path, model)
    (src / "tokenizer_config.json").write_text("{}")  # copied like any non-weight file
    res = qz.export_quantized(src, tmp_path / "q", "int4-awq", group_size=GS, calibration_ids=_calib_ids(),
                              log=_quiet)
    out = tmp_path / "q"
    assert res["quantized"] == 14 and res["skipped"] == {} and res["size_bytes"] > 0
    assert (out / "tokenizer_config.json").is_file() and qformat.is_quantized_dir(out)
    assert not (out / "model.safetensors.index.json").exists()
    assert json.loads((out / "tunesmith_quant.json").read_text())["calibration"]["source"] == "given token id lists"
    with pytest.raises(qz.UserError, match="already quantized"):
        qz.export_quantized(out, tmp_path / "q2", "int8", log=_quiet)
