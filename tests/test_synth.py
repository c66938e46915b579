"""tunesmith synth: prompt sources (bad rows with file:line), decontamination, K samples per prompt
scored by verifiers, RAFT choice and drop reasons, sft/pairs/samples files, and resume from the
content-hashed store without generating a stored sample again.

A scripted engine (answers chosen per prompt and sample index) where the verdicts must be known; the
real engine on a tiny random Llama for the sampling path, the store and Ctrl-C / --resume.
"""

from __future__ import annotations

import json
import threading

import pytest

from tunesmith.cli import main
from tunesmith.data.load import load_examples
from tunesmith.data.tasks import generate_train_eval
from tunesmith.generation.requests import Completion
from tunesmith.synth.prompts import SynthPrompt
from tunesmith.synth.raft import Sample, decide
from tunesmith.synth.sampling import prompt_seed

CODE_OK = "```python\ndef inc(x):\n    return x + 1\n```"
CODE_BAD = "```python\ndef inc(x):\n    return x - 1\n```"
SCRIPT = {  # text in the prompt -> the answer of each sample index
    "Add 2 and 3": ["6", "5", "5.", "7"],  # two accepted: the first, "5", is chosen; "6" is the closest miss
    "Sort 3 and 1": ["1, 3"] * 4,  # all identical
    "Uppercase cat": ["cat", "Cat", "cAt", "caT"],  # all failing
    "What is 2+2": ["4", "four", "5", "4"],  # a free-text reference: unverified
    "def inc": [CODE_BAD, CODE_OK, CODE_BAD, CODE_BAD],  # unit tests in the sandbox
}


class _Handle:
    def __init__(self, completions):
        self.done = threading.Event()
        self.done.set()
        self.error = None
        self._completions = completions

    def completions(self):
        return self._completions

    def cancel(self):
        pass


class ScriptedEngine:
    """Answers from SCRIPT by sample index (recovered from the request's seed); counts requests."""

    submits: list[int] = []

    def __init__(self, model, tokenizer, max_batch=16, max_queue=256):
        self.tokenizer = tokenizer

    def step(self):
        return False

    def shutdown(self, grace_s=10.0):
        pass

    def submit(self, ids, params, stream=True):
        ScriptedEngine.submits.append(params.n)
        text = self.tokenizer.decode(ids)
        answers = next((v for k, v in SCRIPT.items() if k in text), ["a", "b", "c", "d"])
        first = params.seed - prompt_seed(0, ids)
        return _Handle([Completion(answers[first + i], [0] * len(answers[first + i]), "stop", len(ids))
                        for i in range(params.n)])


@pytest.fixture
def prompt_file(tmp_path):
    """Good rows of every kind, a copy of a held-out eval task prompt, and two bad rows (lines 8 and 9)."""
    eval_item = generate_train_eval(0, 260, 0)[1][0]
    rows = [
        {"prompt": "Add 2 and 3. Answer with the number only.", "task": "add_numbers", "answer": "5"},
        {"prompt": "Sort 3 and 1 ascending, comma separated.", "task": "sort_numbers", "answer": "1, 3"},
        {"prompt": "Uppercase cat.", "task": "uppercase", "answer": "CAT"},
        {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]},
        {"prompt": "def inc(x):\n    \"\"\"x plus one\"\"\"\n", "test": "def check(f):\n    assert f(1) == 2\n",
         "entry_point": "inc"},
        {"prompt": eval_item.prompt, "task": eval_item.task, "answer": eval_item.answer},
    ]
    lines = [json.dumps(r) for r in rows] + ["", "not json", json.dumps({"prompt": 5})]
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _synth(tiny_dir, prompt_file, out, *extra):
    return main(["synth", "--model", str(tiny_dir), "--prompts", str(prompt_file), "--samples", "4", "--out", str(out),
                 "--decontaminate", "tasks,humaneval", *extra])


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bad_rows_are_each_reported_with_file_and_line(tiny_dir, prompt_file, tmp_path, capsys):
    assert _synth(tiny_dir, prompt_file, tmp_path / "out") == 1  # on_error: fail, before any model loads
    err = capsys.readouterr().err
    assert f"{prompt_file}:8: bad_json" in err and f"{prompt_file}:9: wrong_type: field 'prompt'" in err
    assert "Traceback" not in err and "--on-error skip" in err
    rejects = _rows(tmp_path / "out" / "rejects.jsonl")
    assert [(r["line"], r["reason"].split(":")[0]) for r in rejects] == [(8, "bad_json"), (9, "wrong_type")]


def test_synth_chooses_pairs_drops_and_reports(tiny_dir, prompt_file, tmp_path, monkeypatch, capsys):
    from tunesmith import ui

    monkeypatch.setattr("tunesmith.stages.synth.Engine", ScriptedEngine)
    monkeypatch.setattr(ui.console, "width", 400)  # printed lines unwrapped
    ScriptedEngine.submits = []
    out = tmp_path / "out"
    assert _synth(tiny_dir, prompt_file, out, "--on-error", "skip") == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())

    # bad rows: each with file:line, in the report, rejects.jsonl and the printed summary
    assert [r["where"] for r in report["rejects"]] == [f"{prompt_file}:8", f"{prompt_file}:9"]
    assert f"{prompt_file}:8: bad_json" in printed and f"{prompt_file}:9: wrong_type" in printed
    # the copy of an eval task prompt is removed before sampling, and counted
    assert report["decontamination"]["removed"] == 1
    assert report["decontamination"]["removed_by_suite"] == {"tasks": 1}
    assert ScriptedEngine.submits == [4] * 5  # 5 prompts sampled, 4 samples each
    assert report["dropped"] == {"unverified": 1, "all_identical": 1, "all_failing": 1, "decontaminated": 1,
                                  "not_sampled": 0, "duplicate": 0}
    assert report["sampling"]["generated"] == 20 and report["sampling"]["samples_per_s"] > 0
    assert report["acceptance"]["tasks"]["add_numbers"] == {"samples": 4, "accepted": 2, "rate": 0.5}
    assert report["acceptance"]["code"]["code"]["accepted"] == 1

    sft = _rows(out / "sft.jsonl")
    assert [r["messages"][-1]["content"] for r in sft] == ["5", CODE_OK]
    assert sft[0]["task"] == "add_numbers" and sft[0]["origin"] == f"{prompt_file}:1"
    assert sft[0]["synth"]["sample"] == 1 and sft[0]["synth"]["accepted"] == 2 and sft[0]["synth"]["samples"] == 4
    pairs = _rows(out / "pairs.jsonl")
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [("5", "6"), (CODE_OK,
                                                                                                    CODE_BAD)]
    assert pairs[0]["chosen_verdict"]["passed"] is True and pairs[0]["rejected_verdict"]["passed"] is False
    assert pairs[1]["rejected_verdict"]["status"] == "failed"
    samples = _rows(out / "samples.jsonl")
    assert len(samples) == 20 and {s["dropped"] for s in samples if s["prompt_id"].endswith(":4")} == {"unverified"}
    assert all(s["passed"] is None for s in samples if s["verifier"] == "none")

    # pairs.jsonl reads back through our own loader as preference rows
    loaded = load_examples(out / "pairs.jsonl")
    assert [ex.meta["format"] for ex in loaded.examples] == ["preference", "preference"]
    first = loaded.examples[0]
    assert first.messages[-1] == {"role": "assistant", "content": "5"}
    assert first.rejected[-1]["content"] == "6" and first.messages[:-1] == first.rejected[:-1]
    assert first.meta["fields"]["chosen_verdict"]["passed"] is True
    assert [ex.meta["format"] for ex in load_examples(out / "sft.jsonl").examples] == ["messages"] * 2


def test_resume_after_ctrl_c_generates_only_what_is_missing(tiny_dir, tmp_path, monkeypatch):
    from tunesmith.generation.engine import Engine
    from tunesmith.synth.store import SampleStore

    submitted: list[int] = []
    real_submit, real_put = Engine.submit, SampleStore.put_many

    def submit(self, ids, params, stream=True):
        submitted.append(params.n)
        return real_submit(self, ids, params, stream)

    def put_once_then_interrupt(self, records):
        if len(self) >= 2:  # the first prompt's samples are stored, then Ctrl-C
            raise KeyboardInterrupt
        real_put(self, records)

    monkeypatch.setattr(Engine, "submit", submit)
    monkeypatch.setattr(SampleStore, "put_many", put_once_then_interrupt)
    out = tmp_path / "out"
    args = ["synth", "--model", str(tiny_dir), "--prompts", "tasks", "--limit", "3", "--samples", "2",
            "--max-tokens", "3", "--decontaminate", "none", "--out", str(out)]
    assert main(args) == 130
    assert len(SampleStore(out / "store" / "samples.jsonl")) == 2
    monkeypatch.setattr(SampleStore, "put_many", real_put)

    assert main(args) == 1  # an earlier run is there: continue it with --resume, or --overwrite
    submitted.clear()
    assert main(args + ["--resume"]) == 0
    assert submitted == [2, 2]  # the two prompts not stored; none of the stored samples again
    report = json.loads((out / "report.json").read_text())
    assert (report["sampling"]["generated"], report["sampling"]["reused"]) == (4, 2)
    first = _rows(out / "samples.jsonl")

    submitted.clear()
    assert main(args + ["--resume", "--samples", "3"]) == 0  # one more sample per prompt: only that is made
    assert submitted == [1, 1, 1]
    again = _rows(out / "samples.jsonl")
    assert [s["text"] for s in again if s["sample"] < 2] == [s["text"] for s in first]


def test_ifeval_prompts_never_equal_eval_items_and_carry_their_checker():
    from tunesmith.evalsets.ifeval import TOPICS, ifeval_items
    from tunesmith.synth.generated import SYNTH_TOPICS, ifeval_prompts
    from tunesmith.synth.verify import verify_all

    assert not {t for t in SYNTH_TOPICS for e in TOPICS if t in e or e in t}
    synth = ifeval_prompts(200, seed=0)
    eval_prompts = {it["prompt"] for s in (0, 1, 2) for it in ifeval_items(300, s)}
    eval_keys = {it["key"] for s in (0, 1, 2) for it in ifeval_items(300, s)}
    assert not {p.messages[0]["content"] for p in synth} & eval_prompts
    assert not {p.id for p in synth} & eval_keys
    assert all(p.verifier == "ifeval" and p.spec["instruction_id_list"] == p.groups for p in synth)

    lower = SynthPrompt("p", "test", "test:1", [{"role": "user", "content": "Answer in lowercase."}], "ifeval",
                        {"key": "p", "prompt": "Answer in lowercase.", "instruction_id_list":
                         ["change_case:english_lowercase"], "kwargs": [{}]}, ["change_case:english_lowercase"])
    ok, bad = verify_all([(lower, "all lowercase here."), (lower, "Not Lowercase.")])
    assert ok["passed"] and ok["strict"] and ok["loose"] and not bad["passed"]
    assert bad["instructions"] == {"change_case:english_lowercase": {"strict": False, "loose": False}}


def test_rejected_side_is_the_closest_miss_and_never_the_chosen_text():
    prompt = SynthPrompt("p", "s", "o", [{"role": "user", "content": "x"}], "ifeval", {}, [])

    def s(i, text, passed, strict=(), reason="stop"):
        instr = {f"i{k}": {"strict": v, "loose": v} for k, v in enumerate(strict)}
        return Sample(i, text, reason, len(text), {"passed": passed, "instructions": instr})

    d = decide(prompt, [s(0, "long accepted", True, (1, 1)), s(1, "short", True, (1, 1), "length"),
                        s(2, "miss one", False, (1, 0)), s(3, "miss two", False, (0, 0)), s(4, "ok", True, (1, 1))])
    assert d.reason is None and d.chosen.index == 0 and d.rejected.index == 2
    d = decide(prompt, [s(0, "cut short", True, (1,), "length"), s(1, "failed", False, (0,)), s(2, "done", True, (1,))])
    assert d.chosen.index == 2  # an answer that ended by itself before one cut at max_tokens
    assert decide(prompt, [s(0, "a", True, (1,)), s(1, "b", True, (1,))]).rejected is None


def test_a_recipe_synth_section_feeds_data_train(tiny_dir, prompt_file, tmp_path, monkeypatch):
    from tunesmith.stages.recipe import load_recipe
    from tunesmith.stages.synth import with_synth_data

    monkeypatch.setattr("tunesmith.stages.synth.Engine", ScriptedEngine)
    assert load_recipe(None, {"data.tasks.n_train": "8"}).synth is None  # absent: nothing changes
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(f"model: {tiny_dir}\nsynth:\n  prompts: [{prompt_file.name}]\n  on_error: skip\n"
                           "  decontaminate: none\n")
    recipe = load_recipe(recipe_file)  # synth alone is enough training data; its path is relative to the recipe
    assert recipe.synth.prompts == [str(prompt_file)] and recipe.synth.feed == "sft"
    fed = with_synth_data(recipe, tmp_path / "run")
    assert fed.data.train == [str(tmp_path / "run" / "synth" / "sft.jsonl")]
    assert len(_rows(tmp_path / "run" / "synth" / "sft.jsonl")) == 2
    report = json.loads((tmp_path / "run" / "synth" / "report.json").read_text())
    assert report["dropped"]["all_failing"] == 2  # no suites to compare with: the eval copy was sampled
