"""The general-ability guard and replay (issue 14): the guard's warning fires when the general score drops
beyond its interval and stays silent when it does not; the guard's loss is taken on the base's answers;
replay answers are generated once and found in the store after (counted), cut answers lose their
end-of-turn label, and a run with both writes them into the data report, summary and model card."""

from __future__ import annotations

import json

import pytest

from tunesmith.data.chat import IGNORE, end_of_turn_ids
from tunesmith.report.guard import guard_verdict, verdict_markdown


def _guard_result(verdicts, losses=None):
    recs = [{"key": f"g{i}", "instruction_id_list": ["x"], "follow_all_strict": v, "follow_all_loose": v,
             "follow_instruction_strict": [v], "follow_instruction_loose": [v],
             "reference_loss": None if losses is None else losses[i]} for i, v in enumerate(verdicts)]
    loose = sum(verdicts) / len(verdicts)
    return {"suite": "guard", "score": loose, "prompt_level_loose": loose, "prompt_level_strict": loose,
            "n": len(verdicts), "records": recs,
            "reference_loss": None if losses is None else sum(losses) / len(losses)}


def _tasks_result(correct):
    recs = [{"task": "t", "prompt": f"p{i}", "output": "", "reference": "", "correct": c} for i, c in enumerate(correct)]
    return {"suite": "tasks", "score": sum(correct) / len(correct), "n": len(correct), "records": recs}


@pytest.fixture(scope="module")
def talker_dir(tmp_path_factory, smol_tokenizer):
    """A tiny random Llama with SmolLM2's tokenizer and an untied output layer: greedy answers are random
    words (a tied one repeats the prompt's last token, a newline, which replay leaves out as empty)."""
    from conftest import tiny_llama

    d = tmp_path_factory.mktemp("talker") / "model"
    model = tiny_llama(seed=3, vocab=len(smol_tokenizer), tie=False)
    model.config.eos_token_id = smol_tokenizer.eos_token_id
    model.save_pretrained(d)
    smol_tokenizer.save_pretrained(d)
    return d


BASE = [i % 3 != 0 for i in range(120)]  # 80 of 120 follow every instruction


def test_warning_fires_when_the_general_score_drops_beyond_its_interval():
    dropped = [v and i % 2 == 0 for i, v in enumerate(BASE)]  # 40 of the 80 lost, none gained
    before = {"guard": _guard_result(BASE, [1.0] * 120), "tasks": _tasks_result([False] * 100)}
    after = {"guard": _guard_result(dropped, [1.5] * 120), "tasks": _tasks_result([True] * 70 + [False] * 30)}
    v = guard_verdict(before, after, resamples=2000)
    assert v["warning"] is True
    g = v["general"]
    assert g["n"] == 120 and g["before"]["mean"] == pytest.approx(80 / 120)
    assert g["change"]["mean"] == pytest.approx(-40 / 120) and g["change"]["high"] < 0
    assert v["specialisation"]["suite"] == "tasks" and v["specialisation"]["change"]["mean"] == pytest.approx(0.7)
    assert v["drift"]["change"]["mean"] == pytest.approx(0.5) and v["drift"]["n"] == 120
    assert "WARNING" in v["message"] and "replay.ratio" in v["message"]
    md = verdict_markdown(v)
    assert "**Warning:**" in md and "| general guard (IFEval-style, prompt loose) | 120 | 66.7 [" in md
    assert "-33.3 pp [" in md and "+70.0 pp [" in md


def test_warning_stays_silent_when_the_general_score_holds():
    shuffled = list(BASE)  # two items swap verdicts: the same score, a difference of 0 within its interval
    shuffled[0], shuffled[1] = shuffled[1], shuffled[0]
    v = guard_verdict({"guard": _guard_result(BASE)}, {"guard": _guard_result(shuffled)}, resamples=2000)
    assert v["warning"] is False and v["general"]["change"]["mean"] == 0
    assert v["general"]["change"]["low"] < 0 < v["general"]["change"]["high"]
    assert v["specialisation"] is None and v["drift"] is None and "WARNING" not in v["message"]
    # a small, noisy drop inside the interval does not warn either
    small = list(BASE)
    small[1] = False
    assert guard_verdict({"guard": _guard_result(BASE)}, {"guard": _guard_result(small)}, resamples=2000)["warning"] \
        is False
    assert guard_verdict({"tasks": _tasks_result([True])}, {"tasks": _tasks_result([True])}) is None


def test_guard_suite_takes_its_loss_on_the_reference_answers(tiny_dir):
    from tunesmith.evalsets.ifeval import guard_items, ifeval_items
    from tunesmith.evaluate.harness import EvalContext, run_suites
    from tunesmith.models import load_model_and_tokenizer, ModelConfig
    from tunesmith.ui import quiet

    model, tok = load_model_and_tokenizer(ModelConfig(name=str(tiny_dir)), log=quiet)
    items = guard_items(3)
    assert items == guard_items(3) and items[0]["prompt"] != ifeval_items(3, 0)[0]["prompt"]
    assert guard_items(5)[:3] == items  # prefix-stable: the same set whatever the size asked
    ctx = EvalContext(guard_items=3, guard_max_new_tokens=6, batch_size=4)
    base = run_suites(model, tok, ["guard"], ctx, "base")["guard"]
    assert base["suite"] == "guard" and base["n"] == 3 and base["score"] == base["prompt_level_loose"]
    own = [r["output"] for r in base["records"]]
    assert [r["reference_answer"] for r in base["records"]] == own
    assert all(r["reference_loss"] > 0 for r in base["records"]) and base["reference_tokens"] > 0
    # against other reference answers the loss is another number; the answers scored stay the model's own
    ctx.guard_reference = ["The moon is made of rock and dust, mostly.", "Yes.", "A short story about a lantern."]
    other = run_suites(model, tok, ["guard"], ctx, "tuned")["guard"]
    assert [r["output"] for r in other["records"]] == own
    assert [r["reference_answer"] for r in other["records"]] == ctx.guard_reference
    assert other["reference_loss"] != pytest.approx(base["reference_loss"])
    ctx.guard_reference = ["just one"]
    with pytest.raises(Exception, match="3 items but 1 reference"):
        run_suites(model, tok, ["guard"], ctx, "tuned")


def test_replay_answers_are_generated_once_and_found_in_the_store(talker_dir, tmp_path):
    from tunesmith.data.chat import TokenizedExample
    from tunesmith.models import ModelConfig, load_model_and_tokenizer
    from tunesmith.stages.data import DataBundle
    from tunesmith.stages.replay import ReplayConfig, add_replay
    from tunesmith.ui import quiet

    cfg_model = ModelConfig(name=str(talker_dir))
    model, tok = load_model_and_tokenizer(cfg_model, log=quiet)
    cfg = ReplayConfig(ratio=0.5, max_tokens=5, store=str(tmp_path / "store.jsonl"))
    train = [TokenizedExample([1, 2, 3], [IGNORE, 2, 3], "t", i + 1) for i in range(8)]

    first = DataBundle(list(train), [], [])
    rep = add_replay(cfg, first, model, tok, cfg_model, tmp_path / "run1", 256)
    assert rep["requested"] == 4 and rep["rows"] == 4 and rep["generated"] == 4 and rep["store_hits"] == 0
    assert len(first.train_samples) == 12 and first.report["replay"] == rep
    added = first.train_samples[8:]
    eot = end_of_turn_ids(tok)
    for s in added:  # a random tiny model runs to the 5-token cap: no end-of-turn label is trained
        assert s.meta["replay"] and s.meta["truncated"] and s.n_trainable == 5
        assert not any(t in eot for t in s.labels if t != IGNORE)
    rows = [json.loads(x) for x in (tmp_path / "run1" / "replay" / "replay.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and rows[0]["messages"][0]["role"] == "user" and rows[0]["origin"] == "replay:seed=0:1" and rows[0]["truncated"]

    again = DataBundle(list(train), [], [])
    rep2 = add_replay(cfg, again, model, tok, cfg_model, None, 256)
    assert rep2["store_hits"] == 4 and rep2["generated"] == 0  # the cache hit, counted
    assert [s.input_ids for s in again.train_samples] == [s.input_ids for s in first.train_samples]
    # another max_tokens is another answer: new keys, generated again
    more = DataBundle(list(train), [], [])
    rep3 = add_replay(cfg.model_copy(update={"max_tokens": 6}), more, model, tok, cfg_model, None, 256)
    assert rep3["store_hits"] == 0 and rep3["generated"] == 4
    assert add_replay(ReplayConfig(ratio=0.0), DataBundle(list(train), [], []), model, tok, cfg_model, None,
                      256) is None


def test_run_with_guard_and_replay_reports_both_axes(talker_dir, tmp_path, monkeypatch):
    import yaml

    from tunesmith.stages.recipe import load_recipe
    from tunesmith.stages.run import run

    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({
        "model": {"name": str(talker_dir)}, "data": {"tasks": {"n_train": 8, "n_eval": 6}, "max_seq_len": 96},
        "train": {"method": "lora", "lora": {"r": 4}, "batch_size": 4, "max_steps": 2, "lr": 1.0e-2},
        "replay": {"ratio": 0.5, "max_tokens": 4},
        "eval": {"suites": ["tasks"], "max_new_tokens": 3, "guard_items": 4, "guard_max_new_tokens": 5},
        "output": {"dir": str(tmp_path / "run")}}))
    summary = run(load_recipe(tmp_path / "r.yaml"))
    out = tmp_path / "run"
    before = json.loads((out / "eval" / "before" / "guard.json").read_text())
    after = json.loads((out / "eval" / "after" / "guard.json").read_text())
    assert before["n"] == after["n"] == 4
    # the tuned model's guard loss is taken on the base's answers
    assert [r["reference_answer"] for r in after["records"]] == [r["output"] for r in before["records"]]
    assert after["reference"] == "the base model's answers"
    report = json.loads((out / "data_report.json").read_text())
    assert report["replay"]["rows"] == 4 and report["replay"]["requested"] == 4
    assert (tmp_path / "cache" / "replay" / "samples.jsonl").is_file()
    g = summary["guard"]
    assert g["general"]["n"] == 4 and g["specialisation"]["suite"] == "tasks"
    assert g["general"]["before"]["mean"] == before["prompt_level_loose"]
    assert "## Specialisation and general ability" in (out / "summary.md").read_text()
    assert "## Specialisation and general ability" in (out / "MODEL_CARD.md").read_text()


def test_chunked_kl_equals_the_direct_formula_and_its_gradient():
    import torch

    from tunesmith.kernels.loss import chunked_kl_to_reference

    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, generator=g, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(37, 16, generator=g, dtype=torch.float64)
    w, b = torch.randn(50, 16, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    got = chunked_kl_to_reference(h, ref, w, b, chunk_size=8)
    (grad,) = torch.autograd.grad(2.0 * got, h)
    h2 = h.detach().clone().requires_grad_(True)
    logr = (ref @ w.T + b).log_softmax(-1)
    direct = torch.nn.functional.kl_div((h2 @ w.T + b).log_softmax(-1), logr, log_target=True, reduction="sum")
    (grad2,) = torch.autograd.grad(2.0 * direct, h2)
    assert got.item() == pytest.approx(direct.item(), abs=1e-9) and direct.item() > 0
    assert torch.allclose(grad, grad2, atol=1e-9)
    assert chunked_kl_to_reference(ref, ref, w, b).item() == pytest.approx(0.0, abs=1e-9)


def test_kl_term_applies_on_replay_tokens_only(tiny_model):
    import torch
    from peft import LoraConfig, get_peft_model

    from tunesmith.data.chat import TokenizedExample
    from tunesmith.data.packing import pack_rows
    from tunesmith.train.loop import replay_target_mask
    from tunesmith.train.loss import PackedLoss

    model = get_peft_model(tiny_model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a trained-looking adapter: tuned != base
    task = TokenizedExample([5, 6, 7, 8, 9], [IGNORE, IGNORE, 7, 8, 9], "t", 1)
    replay = TokenizedExample([5, 6, 10, 11, 12, 13], [IGNORE, IGNORE, 10, 11, 12, 13], "replay", 1,
                              meta={"replay": True})
    samples = [task, replay]
    (row,) = pack_rows(samples, 64)
    mask = replay_target_mask(samples)
    assert mask.tolist() == [False] * 3 + [True] * 4
    plain = PackedLoss(model, kl_weight=0.0)(row.input_ids, row.position_ids, row.targets, kl_mask=mask)
    with_kl = PackedLoss(model, kl_weight=0.5)(row.input_ids, row.position_ids, row.targets, kl_mask=mask)
    # the KL written out: the model's and the base's (adapter off) distributions at the replay sample's
    # targets (positions 1..4 of that sample, run alone: packing keeps samples apart)
    alone = torch.tensor([replay.input_ids])
    with torch.no_grad():
        logits = model(input_ids=alone).logits[0, 1:5]
        with model.disable_adapter():
            base = model(input_ids=alone).logits[0, 1:5]
    kl = torch.nn.functional.kl_div(logits.log_softmax(-1), base.log_softmax(-1), log_target=True, reduction="sum")
    assert kl.item() > 1e-3
    assert (with_kl - plain).item() == pytest.approx(0.5 * kl.item(), rel=1e-4)
    no_replay = PackedLoss(model, kl_weight=0.5)(row.input_ids, row.position_ids, row.targets,
                                                 kl_mask=torch.zeros_like(mask))
    assert no_replay.item() == plain.item()


def test_kl_to_base_is_refused_without_replay_or_lora(tmp_path):
    from tunesmith.errors import UsageError
    from tunesmith.stages.recipe import load_recipe

    (tmp_path / "r.yaml").write_text("data: {tasks: {n_train: 8}}\ntrain: {kl_to_base: 0.1}\n")
    with pytest.raises(UsageError, match="replay.ratio > 0"):
        load_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("data: {tasks: {n_train: 8}}\ntrain: {kl_to_base: 0.1, method: full}\n"
                                     "replay: {ratio: 0.25}\n")
    with pytest.raises(UsageError, match="needs train.method: lora"):
        load_recipe(tmp_path / "r.yaml")
