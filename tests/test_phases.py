"""Phases (`then:`) in one `tunesmith run`, and the statistics that compare every phase with the base:
bootstrap intervals against numpy written out, per-item scores of each suite, the recipe rules of a
phase (merge, fixed keys, its own training rows, errors naming then[i].key), and two phases chained on
a tiny model (SFT then DPO): the second starts from the first's merged weights, resume skips what is
finished, the comparison in summary.json is the one computed from the eval files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tunesmith.errors import UsageError, UserError
from tunesmith.report import stats
from tunesmith.report.compare import compare_evals, comparison_markdown, item_scores
from tunesmith.report.stats import bootstrap_mean, paired_difference


def _direct(x, resamples, seed, level=0.95):
    """The percentile bootstrap written out in numpy, in one draw."""
    x = np.asarray(x, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    means = x[idx].mean(axis=1)
    return x.mean(), *np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2])


# ---- stats ---------------------------------------------------------------------------------------

def test_bootstrap_mean_equals_numpy_written_out_and_chunking_changes_nothing(monkeypatch):
    x = np.random.default_rng(1).integers(0, 2, 157).astype(float)
    got = bootstrap_mean(x, resamples=2000, seed=7)
    assert (got.mean, got.low, got.high) == pytest.approx(_direct(x, 2000, 7), abs=0)
    assert got.n == 157 and got.low < got.mean < got.high
    monkeypatch.setattr(stats, "_CHUNK_CELLS", 157 * 3 + 5)  # 3 resamples per draw: the same numbers
    assert bootstrap_mean(x, resamples=2000, seed=7) == got
    assert bootstrap_mean(x, resamples=2000, seed=8) != got  # the seed matters
    lo90 = bootstrap_mean(x, resamples=2000, seed=7, level=0.9)
    assert got.low < lo90.low and lo90.high < got.high


def test_paired_difference_pairs_by_id_and_excludes_or_includes_zero():
    ids = [f"item{i}" for i in range(100)]
    a = {i: float(k % 3 == 0) for k, i in enumerate(ids)}  # 34 of 100 pass
    better = {i: 1.0 if k < 15 else a[i] for k, i in enumerate(ids)}  # 10 more items pass, none fails
    iv = paired_difference(a, better, resamples=3000, seed=0)
    d = [better[i] - a[i] for i in sorted(ids)]
    assert (iv.mean, iv.low, iv.high) == pytest.approx(_direct(d, 3000, 0), abs=0)
    assert iv.mean == pytest.approx(0.10) and iv.excludes_zero() and iv.low > 0
    # the same items in another order: pairing is by id, not position
    assert paired_difference(dict(reversed(a.items())), better, resamples=3000, seed=0) == iv
    swapped = dict(a)  # one item gained, one lost: no difference
    swapped["item1"], swapped["item0"] = 1.0, 0.0
    same = paired_difference(a, swapped, resamples=3000, seed=0)
    assert same.mean == 0 and same.low < 0 < same.high and not same.excludes_zero()
    # unpaired, the two means' intervals overlap; paired, the difference is clear of zero
    assert bootstrap_mean(list(better.values()), 3000).low < bootstrap_mean(list(a.values()), 3000).high


def test_paired_difference_refuses_different_items():
    with pytest.raises(UserError, match=r"not scored on the same items \(1 only in the first.*'c'.*1 only in the "
                                        r"second.*'d'"):
        paired_difference({"a": 1.0, "b": 0.0, "c": 1.0}, {"a": 1.0, "b": 0.0, "d": 1.0})
    with pytest.raises(UserError, match="at least one"):
        bootstrap_mean([])


# ---- per-item scores and the comparison ------------------------------------------------------------

def _if_result(verdicts):
    recs = [{"key": k, "instruction_id_list": ["x"], "follow_all_strict": s, "follow_all_loose": lo,
             "follow_instruction_strict": [s], "follow_instruction_loose": [lo]} for k, s, lo in verdicts]
    return {"suite": "ifeval", "score": sum(s for _, s, _ in verdicts) / len(verdicts),
            "prompt_level_strict": sum(s for _, s, _ in verdicts) / len(verdicts),
            "prompt_level_loose": sum(lo for _, _, lo in verdicts) / len(verdicts), "n": len(verdicts), "records": recs}


def _results(seed):
    rng = np.random.default_rng(seed)
    strict = rng.random(40) < 0.3 + 0.1 * seed
    loose = strict | (rng.random(40) < 0.3)
    ifeval = _if_result([(i, bool(s), bool(lo)) for i, s, lo in zip(range(40), strict, loose)])
    correct = rng.random(26) < 0.2 + 0.2 * seed
    tasks = {"suite": "tasks", "score": float(correct.mean()), "n": 26,
             "records": [{"task": "t", "prompt": f"p{i}", "output": "", "reference": "", "correct": bool(c)}
                         for i, c in enumerate(correct)]}
    passed = rng.integers(0, 5, 10)  # 4 samples per problem: pass@1 per problem is passed / 4
    humaneval = {"suite": "humaneval", "score": float((passed / 4).mean()), "n": 10,
                 "records": [{"task_id": f"HumanEval/{i}", "correct": int(c), "passed": bool(c),
                              "results": [{}] * 4} for i, c in enumerate(passed)]}
    loss = {"suite": "loss", "score": 1.0, "n": 1, "records": [{"source": "s", "line": 1, "loss": 1.0}]}
    return {"ifeval": ifeval, "tasks": tasks, "humaneval": humaneval, "loss": loss}


def test_item_scores_reproduce_each_suites_score():
    res = _results(0)
    for suite, metric, reported in [("ifeval", "prompt_level_strict", "prompt_level_strict"),
                                    ("ifeval", "prompt_level_loose", "prompt_level_loose"),
                                    ("tasks", "exact_match", "score"), ("humaneval", "pass@1", "score")]:
        scores = item_scores(suite, res[suite])[metric]
        assert len(scores) == res[suite]["n"]
        assert np.mean(list(scores.values())) == pytest.approx(res[suite][reported])
    assert item_scores("loss", res["loss"]) == {}  # token-weighted: not a mean of items


def test_comparison_equals_a_direct_computation_and_skips_unpaired_suites():
    base, tuned, dpo = _results(0), _results(1), _results(2)
    dpo["tasks"]["records"] = dpo["tasks"]["records"][:20]  # scored on fewer items: not paired with base
    cmp = compare_evals([("base", base), ("sft", tuned), ("dpo", dpo)], resamples=1000, seed=3)
    assert [(r["suite"], r["metric"]) for r in cmp["rows"]] == [
        ("ifeval", "prompt_level_strict"), ("ifeval", "prompt_level_loose"), ("tasks", "exact_match"),
        ("humaneval", "pass@1")]
    row = cmp["rows"][1]
    key = lambda r: str(r["key"])  # noqa: E731
    b = {key(r): float(r["follow_all_loose"]) for r in base["ifeval"]["records"]}
    t = {key(r): float(r["follow_all_loose"]) for r in tuned["ifeval"]["records"]}
    want = _direct([t[k] for k in sorted(t)], 1000, 3)
    got = row["models"]["sft"]
    assert (got["mean"], got["low"], got["high"]) == pytest.approx(want, abs=0)
    want = _direct([t[k] - b[k] for k in sorted(b)], 1000, 3)
    got = row["diff"]["sft"]
    assert (got["mean"], got["low"], got["high"]) == pytest.approx(want, abs=0) and got["n"] == 40
    assert "dpo" in cmp["rows"][2]["models"] and "dpo" not in cmp["rows"][2]["diff"]
    assert [(s["suite"], s["model"]) for s in cmp["skipped"]] == [("tasks", "dpo")]
    md = comparison_markdown(cmp)
    assert "| IFEval-style | prompt loose | 40 | base |" in md and "not compared: tasks for dpo" in md


# ---- the recipe's then: ------------------------------------------------------------------------------

def _recipe(tmp_path: Path, body: dict, name="r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


BASE = {"model": "smollm2-135m-instruct", "data": {"train": ["sft.jsonl"], "tasks": {"n_train": 16, "n_eval": 8}},
        "synth": {"prompts": ["ifeval", "tasks"], "samples": 2}, "train": {"lr": 1.0e-3, "max_steps": 3},
        "output": {"dir": "runs/x"}}


def test_a_phase_merges_over_the_recipe_and_trains_on_its_synth_output_only(tmp_path):
    from tunesmith.stages.recipe import dump_recipe, load_recipe, phase_recipe

    (tmp_path / "sft.jsonl").write_text("")
    (tmp_path / "mine.jsonl").write_text("")
    path = _recipe(tmp_path, {**BASE, "then": [
        {"name": "dpo", "synth": {"feed": "pairs"}, "train": {"objective": "dpo", "lr": 5.0e-6}},
        {"name": "more", "synth": None, "data": {"train": ["mine.jsonl"]}},
        {"name": "again", "data": {"tasks": {"n_train": 4}}}]})
    recipe = load_recipe(path)
    assert [p.name for p in recipe.then] == ["dpo", "more", "again"]
    dpo = phase_recipe(recipe, recipe.then[0], "RUN/model", "RUN/phases/dpo")
    assert (dpo.model.name, dpo.output.dir, dpo.eval.before) == ("RUN/model", "RUN/phases/dpo", False)
    assert (dpo.train.objective, dpo.train.lr, dpo.train.max_steps) == ("dpo", 5.0e-6, 3)  # merged key by key
    assert (dpo.synth.feed, dpo.synth.samples, dpo.synth.prompts) == ("pairs", 2, ["ifeval", "tasks"])
    # its synth feeds it: no SFT file and no generated training tasks; the held-out items stay
    assert dpo.data.train == [] and (dpo.data.tasks.n_train, dpo.data.tasks.n_eval) == (0, 8)
    more = phase_recipe(recipe, recipe.then[1], "m", "d")  # no synth: its own file, relative to the recipe
    assert more.synth is None and more.data.train == [str(tmp_path / "mine.jsonl")]
    assert more.data.tasks.n_train == 16  # no synth feeding it: the recipe's tasks are inherited
    again = phase_recipe(recipe, recipe.then[2], "m", "d")  # synth inherited (feed sft), its own n_train kept
    assert again.synth.feed == "sft" and again.data.train == [] and again.data.tasks.n_train == 4
    # config.yaml holds the phases as written (paths resolved) and reads back to the same recipe
    again_path = _recipe(tmp_path, yaml.safe_load(dump_recipe(recipe)), "config.yaml")
    assert load_recipe(again_path) == recipe


@pytest.mark.parametrize("phase, message", [
    ({"name": "dpo", "train": {"xxx": 1}}, "then[0].train.xxx: unknown key"),
    ({"name": "dpo", "trian": {"lr": 1}}, "then[0].trian: unknown key"),
    ({"name": "dpo", "train": {"objective": "dpoo"}}, "then[0].train.objective: Input should be"),
    ({"name": "dpo", "model": "other"}, "then[0].model.name: cannot be set in a phase"),
    ({"name": "dpo", "model": {"name": "other"}}, "then[0].model.name: cannot be set in a phase"),
    ({"name": "dpo", "output": {"dir": "x"}}, "then[0].output.dir: cannot be set in a phase"),
    ({"name": "dpo", "eval": {"before": True}}, "then[0].eval.before: cannot be set in a phase"),
    ({"name": "dpo", "then": []}, "then[0].then: cannot be set in a phase"),
    ({"name": "../up"}, "then[0].name: '../up': a phase needs a name that is a folder name"),
    ({"train": {"lr": 1}}, "then[0].name: required"),
    ({"name": "sft"}, "then[0].name: 'sft' names the recipe's own tuned model"),
    ({"name": "Base"}, "then[0].name: 'Base' names the base model"),
    ({"name": "dpo", "synth": None}, "then[0]: no training data"),
])
def test_a_bad_phase_is_one_line_naming_its_key(tmp_path, phase, message):
    from tunesmith.stages.recipe import load_recipe

    body = {**BASE, "data": {"tasks": {"n_train": 0, "n_eval": 8}}, "then": [phase]}
    with pytest.raises(UsageError) as err:
        load_recipe(_recipe(tmp_path, body))
    assert str(err.value).startswith(f"{tmp_path / 'r.yaml'}: {message}") and "\n" not in str(err.value)


def test_phases_need_merged_models_and_distinct_names(tmp_path):
    from tunesmith.stages.recipe import load_recipe

    with pytest.raises(UsageError, match=r"r.yaml: output.merge: false, but then: starts each phase"):
        load_recipe(_recipe(tmp_path, {**BASE, "output": {"merge": False}, "then": [{"name": "a"}]}))
    with pytest.raises(UsageError, match=r"then\[0\].output.merge: false, but the next phase"):
        load_recipe(_recipe(tmp_path, {**BASE, "then": [{"name": "a", "output": {"merge": False}}, {"name": "b"}]}))
    assert load_recipe(_recipe(tmp_path, {**BASE, "then": [{"name": "a", "output": {"merge": False}}]})).then
    with pytest.raises(UsageError, match=r"then\[1\].name: 'A' is also then\[0\].name"):
        load_recipe(_recipe(tmp_path, {**BASE, "then": [{"name": "a"}, {"name": "A"}]}))
    with pytest.raises(UsageError, match="then: must be a list of phases"):
        load_recipe(_recipe(tmp_path, {**BASE, "then": "dpo"}))


# ---- two phases on a tiny model --------------------------------------------------------------------

SFT_ROWS = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w}."}]}
            for w in ("red", "green", "blue", "yes", "no", "cat", "dog", "sun")]
PAIRS = [{"prompt": f"Say {w}.", "chosen": f"{w}.", "rejected": f"{w[::-1]}!"}
         for w in ("red", "green", "blue", "yes", "cat", "dog", "sun", "moon")]


def _weights_hash(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def _file_hash(folder: Path) -> str:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    if "lm_head.weight" not in tensors:  # tied: the loaded model reports it too
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        h.update(name.encode())
        h.update(t.float().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture
def chained(tmp_path, tiny_dir, monkeypatch):
    """recipe (SFT LoRA on a file) -> then: dpo (its own pairs file); every model load recorded."""
    import tunesmith.stages.run as run_stage
    from tunesmith.stages.recipe import load_recipe

    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SFT_ROWS))
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    body = {"model": str(tiny_dir), "data": {"train": ["sft.jsonl"], "tasks": {"n_train": 0, "n_eval": 6},
                                              "max_seq_len": 64},
            "train": {"method": "lora", "lora": {"r": 4}, "batch_size": 4, "max_steps": 2, "lr": 1.0e-2,
                      "save_every": 1},
            "eval": {"suites": ["tasks"], "max_new_tokens": 3, "guard": False},
            "output": {"dir": str(tmp_path / "run")},
            "then": [{"name": "dpo", "data": {"train": ["pairs.jsonl"]},
                      "train": {"objective": "dpo", "max_steps": 2, "lr": 5.0e-3}}]}
    loads: list[tuple[str, str]] = []
    real = run_stage.load_configured_model

    def recording(cfg, log=print):
        model = real(cfg, log=log)
        loads.append((cfg.name, _weights_hash(model)))
        return model

    monkeypatch.setattr(run_stage, "load_configured_model", recording)
    return load_recipe(_recipe(tmp_path, body)), tmp_path / "run", loads


def test_two_phases_chain_and_resume_skips_what_is_finished(chained, tiny_dir, capsys):
    from tunesmith.stages.evaluate import load_evals
    from tunesmith.stages.run import run

    recipe, out, loads = chained
    summary = run(recipe)
    phase = out / "phases" / "dpo"
    for name in ("config.yaml", "summary.json", "MODEL_CARD.md", "metrics.jsonl", "model/model.safetensors",
                 "adapter/adapter_model.safetensors", "reference_logps.json", "eval/before/tasks.json",
                 "eval/after/tasks.json"):
        assert (phase / name).is_file(), name
    assert not (phase / "phases").exists() and (out / "model" / "model.safetensors").is_file()
    # phase 2 started from phase 1's merged weights (not the base), and trained them further
    assert [name for name, _ in loads] == [str(tiny_dir), str(out / "model")]
    assert loads[1][1] == _file_hash(out / "model") != loads[0][1]
    assert _file_hash(phase / "model") != _file_hash(out / "model")
    assert yaml.safe_load((phase / "config.yaml").read_text())["model"]["name"] == str(out / "model")
    assert yaml.safe_load((out / "config.yaml").read_text())["then"][0]["name"] == "dpo"
    # the phase's base is the recipe's tuned model: copied, not evaluated again
    assert (phase / "eval" / "before" / "tasks.json").read_text() == (out / "eval" / "after" / "tasks.json").read_text()
    lines = [json.loads(x) for x in (phase / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2] and all("reward_accuracy" in x for x in lines)
    assert summary["method"] == "lora" and summary["phases"][0]["method"] == "lora, dpo (sigmoid)"
    assert summary["final_model"] == str(phase / "model")
    # the comparison is the one computed from the eval files, the base first
    cmp = summary["comparison"]
    assert cmp["models"] == ["base", "sft", "dpo"]
    evals = [(label, load_evals(d)) for label, d in [("base", out / "eval" / "before"), ("sft", out / "eval" / "after"),
                                                     ("dpo", phase / "eval" / "after")]]
    assert json.loads(json.dumps(compare_evals(evals))) == cmp
    assert cmp["rows"][0]["n"] == 6 and set(cmp["rows"][0]["diff"]) == {"sft", "dpo"}
    saved = json.loads((out / "summary.json").read_text())
    assert saved["comparison"] == cmp and saved["train"]["steps"] == 2
    assert "## Every model on the same held-out items" in (out / "summary.md").read_text()
    assert "paired by item" in capsys.readouterr().out

    # again without --resume: refused; --resume of a finished chain loads no model and trains nothing
    with pytest.raises(UserError, match="--resume"):
        run(recipe)
    before = (phase / "metrics.jsonl").read_text()
    del loads[:]
    assert run(recipe, resume=True)["comparison"] == cmp
    assert loads == [] and (phase / "metrics.jsonl").read_text() == before
    # an unfinished phase resumes (from its last checkpoint); the finished recipe run is skipped
    (phase / "MODEL_CARD.md").unlink()
    resumed = run(recipe, resume=True)
    assert [name for name, _ in loads] == [str(out / "model")]
    assert resumed["phases"][0]["train"]["resumed_from"] == 2 and (phase / "metrics.jsonl").read_text() == before


def test_overwrite_clears_the_phases_too(tmp_path):
    from tunesmith.stages.run import guard_run_dir

    run_dir = tmp_path / "run"
    (run_dir / "phases" / "dpo" / "checkpoints").mkdir(parents=True)
    (run_dir / "synth").mkdir()
    with pytest.raises(UserError, match="--resume"):  # phases alone are an earlier run
        guard_run_dir(run_dir, resume=False, overwrite=False)
    guard_run_dir(run_dir, resume=False, overwrite=True)
    assert not (run_dir / "phases").exists() and (run_dir / "synth").is_dir()  # the sample store is kept


def test_compare_verb_expands_a_run_and_refuses_a_single_model(tmp_path, capsys):
    from tunesmith.cli import main
    from tunesmith.stages.compare import eval_folders

    out = tmp_path / "fake"
    for sub, ok in (("eval/before", 0), ("eval/after", 1), ("phases/dpo/eval/after", 1)):
        (out / sub).mkdir(parents=True)
        res = {"suite": "tasks", "score": ok, "n": 2, "records": [{"prompt": p, "correct": bool(ok)} for p in "ab"]}
        (out / sub / "tasks.json").write_text(json.dumps(res))
    (out / "config.yaml").write_text("then: [{name: dpo}]\n")
    assert [label for label, _ in eval_folders([str(out)])] == ["base", "fake", "dpo"]
    assert main(["compare", str(out), "--out", str(tmp_path / "cmp"), "--resamples", "200"]) == 0
    cmp = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert cmp["rows"][0]["diff"]["dpo"]["mean"] == 1.0 and cmp["resamples"] == 200
    assert main(["compare", str(out / "eval" / "after")]) == 2
    assert "give two or more" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nope"), str(out)]) == 1
