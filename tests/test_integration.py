"""Integration on the bundled SmolLM2: merged model round trip, CLI data check, run directory."""

import json
import subprocess
import sys

import torch

from tunesmith.cli import main
from tunesmith.data.samples import tokenize_examples
from tunesmith.data.tasks import generate_examples
from tunesmith.evaluate.generate import generate
from tunesmith.export.merge import merged_model, save_adapter, save_merged
from tunesmith.train.config import TrainConfig
from tunesmith.train.loop import train
from tunesmith.train.setup import prepare_model

PROMPTS = ["Convert these words to upper case. Answer with the words only: moon lamp goat",
           "What is 9 + 49? Answer with the number only."]


def test_merged_model_loads_with_plain_transformers_and_generates_the_same(tmp_path, smol_tokenizer):
    from tunesmith.models import load_model

    tok = smol_tokenizer
    model = load_model(None, log=lambda *a: None)
    samples, _, _ = tokenize_examples(tok, generate_examples(16, seed=1), 256)
    torch.manual_seed(0)
    model = prepare_model(model, TrainConfig(method="lora", lora={"r": 8}))
    cfg = TrainConfig(method="lora", lora={"r": 8}, batch_size=8, max_steps=2, lr=5e-3, warmup_steps=0)
    train(model, samples, cfg, None)
    assert save_adapter(model, tmp_path / "adapter") is not None
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    merged = merged_model(model)
    save_merged(merged, tok, tmp_path / "model")
    ours = generate(merged, tok, [[{"role": "user", "content": p}] for p in PROMPTS], max_new_tokens=20)

    # Plain transformers, in a separate process: no tunesmith import at all.
    script = f"""
import json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
d = {str(tmp_path / 'model')!r}
tok = AutoTokenizer.from_pretrained(d); model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
outs = []
for p in {PROMPTS!r}:
    ids = tok.apply_chat_template([{{"role": "user", "content": p}}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    outs.append(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
print(json.dumps(outs))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    plain = json.loads(res.stdout.strip().splitlines()[-1])
    assert plain == ours
    assert all(o.strip() for o in ours)
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert "model.safetensors" in files and "config.json" in files
    assert "quantization_config" not in json.loads((tmp_path / "model" / "config.json").read_text())


def test_data_check_reports_each_bad_row_with_its_line(tmp_path, capsys):
    bad = tmp_path / "mixed.jsonl"
    rows = [
        {"instruction": "Say hi", "output": "hi"},
        "{not json",
        {"messages": [{"role": "assistant", "content": "first"}, {"role": "user", "content": "x"}]},
        {"instruction": "Say bye"},
        {"conversations": [{"from": "human", "value": "hey"}, {"from": "gpt", "value": ""}]},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    ]
    bad.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    code = main(["data", "check", str(bad), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    for line, kind in ((2, "bad_json"), (3, "role_order"), (4, "missing_field"), (5, "empty_assistant")):
        assert f"mixed.jsonl:{line}: {kind}" in err
    assert "4 of 6 rows cannot be used" in err
    rejects = [json.loads(l) for l in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [2, 3, 4, 5]
    # With skip, the good rows go through and the counts add up.
    code = main(["data", "check", str(bad), "--out", str(tmp_path / "out2"), "--data.on_error", "skip"])
    assert code == 0
    report = json.loads((tmp_path / "out2" / "data_report.json").read_text())
    assert (report["total"], report["kept"], report["rejected"]) == (6, 2, 4)
    assert report["by_reason"] == {"bad_json": 1, "role_order": 1, "missing_field": 1, "empty_assistant": 1}


def test_bad_recipe_key_is_one_clear_message(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: 1e-3\n  learning_rate: 2\n")
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "train.learning_rate: unknown key" in err and "Traceback" not in err
    assert main(["run", str(recipe), "--train.bogus", "1"]) == 2


def test_eval_verb_writes_per_suite_records(tmp_path, capsys):
    out = tmp_path / "ev"
    code = main(["eval", "smollm2-135m-instruct", "--suites", "tasks,loss", "--limit", "4", "--tasks-n", "13",
                 "--max-new-tokens", "6", "--out", str(out)])
    assert code == 0
    tasks = json.loads((out / "eval" / "model" / "tasks.json").read_text())  # one layout: <dir>/eval/<label>/
    loss = json.loads((out / "eval" / "model" / "loss.json").read_text())
    assert tasks["n"] == 4 and len(tasks["records"]) == 4 and 0.0 <= tasks["score"] <= 1.0
    assert tasks["score"] == sum(r["correct"] for r in tasks["records"]) / 4
    assert loss["n"] == 4 and loss["score"] > 0 and len(loss["records"]) == 4
    assert "evaluation of smollm2-135m-instruct" in capsys.readouterr().out
    assert main(["eval", "smollm2-135m-instruct", "--suites", "tasks,nonsense"]) == 2
    # Nothing is replaced silently: the same suites again need --overwrite.
    assert main(["eval", "smollm2-135m-instruct", "--suites", "tasks", "--limit", "2", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["eval", "smollm2-135m-instruct", "--suites", "tasks", "--limit", "2", "--tasks-n", "13",
                 "--max-new-tokens", "6", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "eval" / "model" / "tasks.json").read_text())["n"] == 2


def test_generate_and_chat_verbs(capsys, monkeypatch, smol_model, smol_tokenizer):
    assert main(["generate", "--prompt", "What is 2 + 2? Answer with the number only.", "--max-new-tokens", "5"]) == 0
    single = capsys.readouterr().out.strip().splitlines()[-1]
    assert single.strip()
    model, tok = smol_model, smol_tokenizer
    conv = [[{"role": "user", "content": "Write three sentences about the sea."}]]
    full = generate(model, tok, conv, max_new_tokens=40)[0]
    cut = generate(model, tok, conv, max_new_tokens=40, stop=["."])[0]
    assert "." in full and cut == full[: full.index(".")]  # stops at the first stop string, text cut there
    sampled = [generate(model, tok, conv, max_new_tokens=12, temperature=0.9, seed=s)[0] for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]  # sampling is seeded
    answers = iter(["What is 2 + 2? Answer with the number only.", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    assert main(["chat", "--max-new-tokens", "5"]) == 0
    assert f"model> {single}" in capsys.readouterr().out  # greedy chat turn == greedy generate
