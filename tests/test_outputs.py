"""Every verb that writes --out: a non-empty folder needs --overwrite, an output never lies inside its own
input (or holds it), a file in place of the folder is one message; generate --file is checked first."""

import json

import pytest

from tunesmith.cli import main
from tunesmith.errors import UsageError
from tunesmith.stages.outputs import input_root, prepare_out

ROWS = [{"instruction": f"Write the number {i} in words, please.", "output": f"number {i}"} for i in range(6)]
ROWS += [ROWS[0]]  # one exact duplicate


def _pool(folder):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


# verb -> (argv, the main file it writes)
VERBS = {
    "dedup": (["data", "dedup", "{data}", "--out", "{out}"], "kept.jsonl"),
    "decontaminate": (["data", "decontaminate", "{data}", "--out", "{out}", "--suites", "tasks"], "kept.jsonl"),
    "select": (["data", "select", "{data}", "--method", "random", "--budget", "3", "--out", "{out}"],
               "selected.jsonl"),
}


def _messages(path):
    return [json.loads(line)["messages"] for line in path.read_text().splitlines()]


def _argv(verb, data, out, *extra):
    return [a.format(data=data, out=out) for a in VERBS[verb][0]] + list(extra)


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_a_non_empty_out_is_refused_without_overwrite(verb, tmp_path, capsys):
    data = _pool(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(_argv(verb, data, out)) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "not empty" in err and "notes.txt" in err and "--overwrite" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing written


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_overwrite_replaces_the_outputs_and_keeps_the_rest(verb, tmp_path, capsys):
    data = _pool(tmp_path / "data")
    out = tmp_path / "out"
    assert main(_argv(verb, data, out)) == 0  # a new folder needs no --overwrite
    main_file = out / VERBS[verb][1]
    first = _messages(main_file)
    assert first
    assert main(_argv(verb, data, out)) == 2  # a rerun into our own output is refused too
    assert "--overwrite" in capsys.readouterr().err
    main_file.write_text("stale\n")
    (out / "notes.txt").write_text("mine")
    assert main(_argv(verb, data, out, "--overwrite")) == 0
    assert _messages(main_file) == first  # really rewritten
    assert (out / "notes.txt").read_text() == "mine"  # not ours: untouched
    assert "--overwrite" in capsys.readouterr().out  # what was replaced is said


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_out_inside_the_input_or_holding_it_is_refused(verb, tmp_path, capsys):
    data = _pool(tmp_path / "data")
    for spec, out, words in [(data.parent, data.parent / "clean", "is inside the input"),
                             (str(data.parent / "*.jsonl"), data.parent / "sub" / "clean", "is inside the input"),
                             (data, data.parent, "contains the input")]:
        assert main(_argv(verb, spec, out, "--overwrite")) == 2, (spec, out)
        err = capsys.readouterr().err
        assert words in err and str(out) in err and "read its own outputs as data" in err, err
        assert "Traceback" not in err
    assert sorted(p.name for p in data.parent.iterdir()) == ["pool.jsonl"]  # no folder created, nothing removed


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_out_that_is_a_file_is_one_message(verb, tmp_path, capsys):
    data = _pool(tmp_path / "data")
    other = tmp_path / "report.txt"
    other.write_text("x")
    for overwrite in ([], ["--overwrite"]):
        assert main(_argv(verb, data, other, *overwrite)) == 2
        err = capsys.readouterr().err
        assert f"--out {other} is a file; give a folder" in err and "Traceback" not in err
    assert other.read_text() == "x"


def test_a_stale_output_of_an_earlier_run_is_removed_only_from_our_own_folder(tmp_path, capsys):
    data = _pool(tmp_path / "data")
    bad = tmp_path / "bad" / "pool.jsonl"
    bad.parent.mkdir()
    bad.write_text(data.read_text() + "{not json\n")
    out = tmp_path / "out"
    assert main(["data", "dedup", str(bad), "--out", str(out), "--on-error", "skip"]) == 0
    assert (out / "rejects.jsonl").read_text().strip()
    (out / "notes.txt").write_text("mine")
    assert main(["data", "dedup", str(data), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "rejects.jsonl").exists()  # a stale rejects list from the earlier run would mislead
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "report.json").read_text())["data"] == str(data)
    logged = capsys.readouterr().out
    assert "removed the earlier outputs" in logged and "rejects.jsonl" in logged


def test_prepare_out_rules(tmp_path):
    logs = []
    out = tmp_path / "o"
    assert prepare_out(out, overwrite=False, log=logs.append) == out and out.is_dir()
    # a user's folder (no marker): nothing removed, our names only rewritten later
    (out / "kept.jsonl").write_text("theirs")
    (out / "keep").mkdir()
    prepare_out(out, overwrite=True, writes=("kept.jsonl", "keep"), marker="report.json", log=logs.append)
    assert (out / "kept.jsonl").read_text() == "theirs" and (out / "keep").is_dir()
    assert "replacing" in logs[-1]
    # our folder (marker present): our earlier outputs go, a link is removed but not what it points to
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "precious").write_text("p")
    (out / "report.json").write_text("{}")
    (out / "linked").symlink_to(target)
    prepare_out(out, overwrite=True, writes=("kept.jsonl", "keep", "linked", "report.json"), marker="report.json",
                log=logs.append)
    assert list(out.iterdir()) == [] and (target / "precious").read_text() == "p"
    # many entries: the first few named, the rest counted
    for i in range(8):
        (out / f"f{i}").write_text("")
    with pytest.raises(UsageError, match=r"8 entries: f0, f1, f2, f3, f4 and 3 more"):
        prepare_out(out, overwrite=False)
    # inputs that do not exist (a hub id) are not paths to compare with
    prepare_out(tmp_path / "p", overwrite=False, inputs=["org/some-model"])
    assert input_root(str(tmp_path / "a" / "**" / "*.jsonl")) == (tmp_path / "a").resolve()


def test_data_check_and_export_check_out_before_loading_anything(tmp_path, capsys, monkeypatch):
    import tunesmith.stages.export as export
    import tunesmith.stages.run as run

    def no_load(*_a, **_k):
        raise AssertionError("the model/tokenizer was loaded before --out was checked")

    monkeypatch.setattr(run, "load_tokenizer", no_load)
    monkeypatch.setattr(export, "load_tokenizer", no_load)
    monkeypatch.setattr(export, "local_model_dir", no_load)
    data = _pool(tmp_path / "data")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("")
    assert main(["data", "check", str(data), "--out", str(busy)]) == 2
    assert f"--out {busy} is not empty" in capsys.readouterr().err
    assert main(["data", "check", str(data.parent), "--out", str(data.parent / "report")]) == 2
    assert "is inside the input" in capsys.readouterr().err
    # export: a run directory's model/ is the input; RUN/export is a fine --out, RUN itself is not
    run_dir = tmp_path / "runs" / "x"
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "model" / "config.json").write_text("{}")
    (run_dir / "config.yaml").write_text("model: {name: m}\n")
    assert main(["export", str(run_dir), "--out", str(run_dir), "--to", "int8", "--overwrite"]) == 2
    assert "contains the input" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--out", str(run_dir / "model" / "q"), "--to", "int8"]) == 2
    assert "is inside the input" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--out", str(busy), "--to", "int8"]) == 2
    assert f"--out {busy} is not empty" in capsys.readouterr().err
    with pytest.raises(AssertionError, match="loaded before"):  # RUN/export passes the check
        main(["export", str(run_dir), "--out", str(run_dir / "export"), "--to", "int8"])


@pytest.fixture
def no_model(monkeypatch):
    import tunesmith.stages.generate as generate

    def no_load(*_a, **_k):
        raise AssertionError("the model was loaded before --file was checked")

    monkeypatch.setattr(generate, "load_model_and_tokenizer", no_load)


def test_generate_file_problems_are_one_message_before_the_model_loads(tmp_path, capsys, no_model):
    missing = tmp_path / "missing.txt"
    assert main(["generate", "--file", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"--file {missing}: no such file" in err and "one prompt per line" in err and "Traceback" not in err

    bad = tmp_path / "prompts.txt"
    bad.write_bytes(b"first prompt\nsecond \xc3\xa9 is fine\nthird \xff here\n")
    assert main(["generate", "--file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"--file {bad}:3: not UTF-8" in err and "save the file as UTF-8" in err and "Traceback" not in err

    assert main(["generate", "--file", str(tmp_path)]) == 2
    assert f"--file {tmp_path} is a folder" in capsys.readouterr().err

    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert main(["generate", "--file", str(empty)]) == 2
    assert "holds no prompt" in capsys.readouterr().err
