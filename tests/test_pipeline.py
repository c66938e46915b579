"""`tunesmith run` end to end on the bundled model, small: the run directory a person can trust."""

import json

from tunesmith.cli import main


def test_run_writes_a_complete_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "recipes/quickstart.yaml", "--output.dir", str(out), "--data.tasks.n_train", "48",
            "--data.tasks.n_eval", "26", "--train.batch_size", "8", "--train.save_every", "2",
            "--eval.max_new_tokens", "8"]
    assert main(args) == 0
    for name in ("config.yaml", "data_report.json", "rejects.jsonl", "metrics.jsonl", "summary.json", "summary.md",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "model/model.safetensors",
                 "model/config.json", "model/tokenizer.json", "eval/before.json", "eval/after.json"):
        assert (out / name).is_file(), name
    steps = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    assert all(s["samples"] == 8 and s["tokens"] > s["targets"] > 0 for s in steps)
    report = json.loads((out / "data_report.json").read_text())
    assert (report["total"], report["kept"], report["rejected"]) == (48, 48, 0)
    assert report["tokens"]["template_checked"] == 48
    after = json.loads((out / "eval" / "after.json").read_text())
    assert after["tasks"]["n"] == 26 and len(after["tasks"]["records"]) == 26
    rec = after["tasks"]["records"][0]
    assert set(rec) == {"task", "prompt", "output", "reference", "correct"}
    assert len(after["tasks"]["per_task"]) == 13  # every task type is in the held-out suite
    assert len(after["loss"]["records"]) == 26 and after["loss"]["target_tokens"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval"]["tasks"]["after"] == after["tasks"]["score"]
    assert summary["train"]["steps"] == 6
    assert "held-out evaluation: base vs tuned" in capsys.readouterr().out
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-000004", "step-000006"]

    # Running again into the same directory without --resume is refused with a clear message.
    assert main(args) == 1
    assert "--resume" in capsys.readouterr().err
    # Resuming a finished run trains nothing more and keeps the metrics as they were.
    assert main(args + ["--resume"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6
