"""Export: soups and WiSE-FT interpolation (exact endpoints), refusals naming the tensor, the export
verb end to end on a tiny model, atomic outputs, the model card."""

import json

import pytest
import torch

from conftest import tiny_llama
from tunesmith.cli import main
from tunesmith.errors import UserError
from tunesmith.export.soup import greedy_soup, interpolate, uniform_soup


def _equal(state, model):
    ref = model.state_dict()
    return set(state) == set(ref) and all(torch.equal(state[k], ref[k]) for k in ref)


def test_soup_of_identical_models_is_the_model_bit_for_bit():
    a = tiny_llama(seed=1)
    copies = [tiny_llama(seed=1) for _ in range(3)]
    assert _equal(uniform_soup([a, *copies]), a)


def test_uniform_soup_is_the_mean():
    a, b = tiny_llama(seed=1), tiny_llama(seed=2)
    soup = uniform_soup([a, b])
    key = "model.layers.0.mlp.up_proj.weight"
    expect = ((a.state_dict()[key].double() + b.state_dict()[key].double()) / 2).float()
    assert torch.equal(soup[key], expect)


def test_interpolation_endpoints_are_exact_and_the_middle_is_the_blend():
    base, tuned = tiny_llama(seed=1), tiny_llama(seed=2)
    assert _equal(interpolate(base, tuned, 0.0), base)
    assert _equal(interpolate(base, tuned, 1.0), tuned)
    mid = interpolate(base, tuned, 0.25)
    key = "model.embed_tokens.weight"
    assert torch.allclose(mid[key], 0.75 * base.state_dict()[key] + 0.25 * tuned.state_dict()[key], atol=1e-7)


def test_mismatched_models_are_refused_naming_the_first_tensor():
    from transformers import LlamaConfig, LlamaForCausalLM

    a = tiny_llama(seed=1)
    cfg = a.config.to_dict()
    cfg["intermediate_size"] = 96
    b = LlamaForCausalLM(LlamaConfig(**cfg))
    with pytest.raises(UserError, match=r"model.layers.0.mlp.gate_proj.weight has shape \(96, 64\)"):
        uniform_soup([a, b], ["a", "b"])
    cfg["intermediate_size"], cfg["num_hidden_layers"] = 128, 3
    c = LlamaForCausalLM(LlamaConfig(**cfg))
    with pytest.raises(UserError, match="tensor model.layers.2.self_attn.q_proj.weight is only in c"):
        uniform_soup([a, c], ["a", "c"])


def test_greedy_soup_keeps_only_what_does_not_hurt():
    good, also_good, bad = tiny_llama(seed=1), tiny_llama(seed=1), tiny_llama(seed=3)
    with torch.no_grad():  # a score that prefers weights close to `good`
        target = good.model.embed_tokens.weight.clone()
    score = lambda m: -float((m.model.embed_tokens.weight.detach() - target).abs().mean())  # noqa: E731
    res = greedy_soup([bad, good, also_good], ["bad", "good", "also_good"], score, log=lambda *a: None)
    assert res.order[0] in ("good", "also_good") and res.order[-1] == "bad"
    assert res.kept == ["good", "also_good"] or res.kept == ["also_good", "good"]
    assert [s["kept"] for s in res.steps] == [True, False]
    assert _equal(res.state, good)
    assert torch.equal(bad.model.embed_tokens.weight, tiny_llama(seed=3).model.embed_tokens.weight)  # untouched




def test_export_verb_writes_each_step_report_and_card(tmp_path, tiny_dir, capsys):
    out = tmp_path / "exp"
    assert main(["export", str(tiny_dir), "--out", str(out), "--to", "merged,int8,int4-rtn,gguf-f16",
                 "--group-size", "32"]) == 0
    report = json.loads((out / "export_report.json").read_text())
    assert [s["step"] for s in report["steps"]] == ["merged", "int8", "int4-rtn", "gguf-f16"]
    assert all(s["bytes"] > 0 and "seconds" in s for s in report["steps"])
    sizes = {s["step"]: s["bytes"] for s in report["steps"]}
    assert sizes["int4-rtn"] < sizes["int8"] < sizes["merged"]
    assert (out / "gguf" / "model-f16.gguf").is_file() and (out / "int8" / "tunesmith_quant.json").is_file()
    card = (out / "MODEL_CARD.md").read_text()
    assert report["source_sha256"] in card and "| int8 |" in card and "tunesmith export" in card
    # Plain transformers refuses a quantized folder loudly (it must not random-initialise the weights).
    from transformers import AutoModelForCausalLM

    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(out / "int8")
    # Every export loads back with tunesmith and generates.
    assert main(["generate", "--model", str(out / "int8"), "--prompt", "hi", "--max-new-tokens", "3"]) == 0
    assert main(["generate", "--model", str(out / "gguf" / "model-f16.gguf"), "--prompt", "hi",
                 "--max-new-tokens", "3"]) == 0


def test_export_interpolate_sweeps_chooses_by_the_stated_rule_and_plots(tmp_path, tiny_dir, smol_tokenizer):
    base = tmp_path / "base"
    m = tiny_llama(seed=9, vocab=len(smol_tokenizer))
    m.save_pretrained(base)
    smol_tokenizer.save_pretrained(base)
    out = tmp_path / "wise"
    assert main(["export", str(tiny_dir), "--out", str(out), "--to", "interpolate", "--base", str(base),
                 "--suites", "loss", "--limit", "4", "--interpolate.alphas", "0,0.5,1", "--interpolate.metric", "loss",
                 "--interpolate.guard", "null"]) == 0
    sweep = json.loads((out / "interpolate_sweep.json").read_text())
    losses = {p["alpha"]: p["eval"]["loss"] for p in sweep["points"]}
    assert sorted(losses) == [0.0, 0.5, 1.0]
    assert sweep["chosen"] == min(losses, key=losses.get) and "best loss" in sweep["rule"]
    assert (out / "interpolate_sweep.svg").read_text().lstrip().startswith("<?xml")
    assert (out / "interpolate" / "model.safetensors").is_file()


def test_interrupted_export_leaves_no_complete_looking_folder(tmp_path, tiny_dir, monkeypatch):
    import tunesmith.export.quantize as quantize

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(quantize, "quantize_model", boom)
    out = tmp_path / "exp"
    assert main(["export", str(tiny_dir), "--out", str(out), "--to", "merged,int8"]) == 130
    assert (out / "merged" / "model.safetensors").is_file()  # finished before the interruption, and recorded
    assert not (out / "int8").exists() and not list(out.glob(".int8*"))
    report = json.loads((out / "export_report.json").read_text())
    assert [s["step"] for s in report["steps"]] == ["merged"]


def test_export_errors_are_one_message(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--to", "int8"]) == 1
    assert "missing" in capsys.readouterr().err
    assert main(["export", "x", "--out", str(tmp_path / "o"), "--to", "zip"]) == 2
    assert "unknown export step" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {name: smollm2-135m-instruct}\n")
    assert main(["export", str(run), "--out", str(tmp_path / "o"), "--to", "int8"]) == 1
    assert "without a merged model" in capsys.readouterr().err
    assert main(["export", "soup", str(run), "--out", str(tmp_path / "o")]) == 2
    assert "two or more" in capsys.readouterr().err


def test_export_scores_use_the_runs_generation_settings(tmp_path, tiny_dir):
    from tunesmith.stages.export import ExportOptions, evaluator_for
    from tunesmith.models import load_tokenizer

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text("data: {tasks: {n_train: 4, n_eval: 13, seed: 3}}\n"
                                     "eval: {max_new_tokens: 7, ifeval_items: 50, limit: 2, batch_size: 4}\n")
    ev = evaluator_for(ExportOptions(suites=["tasks"], ifeval_items=20), load_tokenizer(str(tiny_dir)), run)
    assert (ev.opts.max_new_tokens, ev.opts.batch_size, ev.opts.ifeval_items, ev.opts.limit) == (7, 4, 20, None)
    assert len(ev.ctx.task_items) == 13 and ev.ctx.seed == 3
