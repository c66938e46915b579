"""`tunesmith run` end to end on the bundled model, small: the run directory a person can trust."""

import json

import pytest

from tunesmith.cli import main


def test_run_writes_a_complete_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "recipes/quickstart.yaml", "--output.dir", str(out), "--data.tasks.n_train", "48",
            "--data.tasks.n_eval", "26", "--train.batch_size", "8", "--train.save_every", "2",
            "--eval.max_new_tokens", "8", "--eval.suites", "[tasks,loss,robustness]", "--eval.limit", "13",
            "--eval.every", "2", "--eval.during", "[loss]", "--eval.best_metric", "loss", "--export.to", "gguf-q8_0",
            "--eval.guard_items", "3", "--eval.guard_max_new_tokens", "24",
            "--replay.ratio", "0.125", "--replay.max_tokens", "12", "--replay.store", str(tmp_path / "replay-store.jsonl")]
    assert main(args) == 0
    for name in ("config.yaml", "data_report.json", "rejects.jsonl", "metrics.jsonl", "summary.json", "summary.md",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "model/model.safetensors",
                 "model/config.json", "model/tokenizer.json", "eval/before/tasks.json", "eval/before/loss.json",
                 "eval/before/robustness.json", "eval/after/tasks.json", "eval/after/loss.json",
                 "eval/after/robustness.json", "checkpoints/best.json"):
        assert (out / name).is_file(), name
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in lines if "loss" in s]
    evals = [s for s in lines if "eval" in s]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in evals] == [2, 4, 6] and all(e["eval"]["loss"] > 0 for e in evals)
    assert all(s["samples"] == 8 and s["tokens"] > s["targets"] > 0 for s in steps)
    report = json.loads((out / "data_report.json").read_text())
    assert (report["total"], report["kept"], report["rejected"]) == (48, 48, 0)
    # replay (the demo has it on): 6 of the base's own answers joined the 48 task rows (54 rows: 6 steps of 8)
    assert (report["replay"]["rows"], report["replay"]["generated"]) == (6, 6)
    assert len((out / "replay" / "replay.jsonl").read_text().splitlines()) == 6
    assert report["tokens"]["template_checked"] == 48
    after = {n: json.loads((out / "eval" / "after" / f"{n}.json").read_text()) for n in ("tasks", "loss", "robustness")}
    assert after["tasks"]["n"] == 13 and len(after["tasks"]["records"]) == 13
    rec = after["tasks"]["records"][0]
    assert set(rec) == {"task", "prompt", "output", "reference", "correct"}
    assert len(after["tasks"]["per_task"]) == 13  # every task type is in the held-out suite
    assert len(after["loss"]["records"]) == 13 and after["loss"]["target_tokens"] > 0
    rob = after["robustness"]
    assert rob["phrasings"] == 3 and len(rob["records"]) == 13 * 3 and len(rob["per_phrasing"]) == 3
    assert rob["spread"] == max(rob["per_phrasing"]) - min(rob["per_phrasing"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval"]["tasks"]["after"] == after["tasks"]["score"]
    # the general-ability guard ran on both models, the tuned one scored against the base's answers
    guard = {w: json.loads((out / "eval" / w / "guard.json").read_text()) for w in ("before", "after")}
    assert guard["before"]["n"] == guard["after"]["n"] == 3
    assert [r["reference_answer"] for r in guard["after"]["records"]] == [r["output"] for r in guard["before"]["records"]]
    assert summary["guard"]["general"]["after"]["mean"] == guard["after"]["prompt_level_loose"]
    assert summary["guard"]["specialisation"]["suite"] == "tasks"
    assert summary["train"]["steps"] == 6
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    history = {h["step"]: h["value"] for h in best["history"]}
    assert best["metric"] == "loss" and set(history) == {2, 4, 6} and best["value"] == min(history.values())
    kept = summary["checkpoint_kept"]
    assert kept["kept_step"] == best["step"] and kept["metric"] == "loss" and kept["reason"]
    assert (out / "checkpoints" / f"step-{best['step']:06d}").is_dir()  # the best is never pruned
    assert "held-out evaluation: base vs tuned" in capsys.readouterr().out
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert ckpts[-2:] == ["step-000004", "step-000006"] or ckpts[-1] == "step-000006"

    # The model card: base weights hash, every source with its hash and funnel, evals linked, exports.
    card = (out / "MODEL_CARD.md").read_text()
    from tunesmith.models import base_weights_sha256

    assert base_weights_sha256("smollm2-135m-instruct") in card
    source = report["sources"]["tasks:seed=0"]
    assert source["rows"] == 48 and source["trained"] == 48 and source["sha256"][:16] in card
    assert "[after](eval/after/tasks.json)" in card and "tunesmith run" in card
    exports = json.loads((out / "export" / "export_report.json").read_text())
    assert [s["step"] for s in exports["steps"]] == ["gguf-q8_0"] and (out / "export" / "gguf" / "model-q8_0.gguf").is_file()
    assert "| gguf-q8_0 | `export/gguf/model-q8_0.gguf` |" in card

    # The report page: built at the end of the run from its files, the eval numbers those of the JSON.
    page = (out / "report.html").read_text()
    assert 'data-suite="tasks"' in page and f'data-value="{after["tasks"]["score"]!r}"' in page
    assert 'id="items-data"' in page and 'id="exports"' in page and 'id="training"' in page
    assert json.loads((out / "provenance.json").read_text())["versions"]["tunesmith"]

    # `tunesmith eval RUN` evaluates RUN/model into the same layout (eval/after/), never silently over it.
    assert main(["eval", str(out), "--suites", "loss", "--limit", "2"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["eval", str(out), "--suites", "loss", "--limit", "2", "--label", "again"]) == 0
    again = json.loads((out / "eval" / "again" / "loss.json").read_text())
    assert again["n"] == 2  # the run's own held-out items, the saved tuned model: the run's numbers
    assert [r["loss"] for r in again["records"]] == pytest.approx([r["loss"] for r in after["loss"]["records"][:2]],
                                                                  abs=1e-4)

    # Running again into the same directory without --resume is refused with a clear message.
    assert main(args) == 1
    assert "--resume" in capsys.readouterr().err
    # Resuming a finished run trains nothing more and keeps the metrics as they were.
    assert main(args + ["--resume", "--eval.after", "false"]) == 0
    assert (out / "metrics.jsonl").read_text().splitlines() == [json.dumps(x) for x in lines]
