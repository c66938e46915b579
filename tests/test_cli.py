"""The command line: flags generated from the stage configs, one default per setting, nothing ignored."""

import pytest

from tunesmith import __version__
from tunesmith.cli import VERBS, _load, build_parser, leaf_fields, main

VERB_ARGS = {
    ("run",): ["run", "recipes/quickstart.yaml"],
    ("train",): ["train", "recipes/quickstart.yaml"],
    ("data", "check"): ["data", "check", "recipes/quickstart.yaml"],
    ("data", "dedup"): ["data", "dedup", "pool.jsonl", "--out", "o"],
    ("data", "decontaminate"): ["data", "decontaminate", "pool.jsonl", "--out", "o"],
    ("data", "select"): ["data", "select", "pool.jsonl", "--method", "random", "--budget", "3", "--out", "o"],
    ("eval",): ["eval", "smollm2-135m-instruct"],
    ("generate",): ["generate", "--prompt", "hi"],
    ("chat",): ["chat"],
    ("export",): ["export", "runs/x", "--out", "o", "--to", "int8"],
    ("compare",): ["compare", "runs/a", "runs/b"],
    ("serve",): ["serve"],
    ("synth",): ["synth", "--out", "o"],
    ("report",): ["report", "runs/x"],
}


def test_every_verb_is_covered_here():
    assert {v.words for v in VERBS} == set(VERB_ARGS)


@pytest.mark.parametrize("words", sorted(VERB_ARGS))
@pytest.mark.parametrize("bad", [["--train.bogus", "1"], ["--no-such-flag", "x"], ["--select.nope", "2"]])
def test_every_verb_refuses_unknown_flags(words, bad, capsys):
    assert main(VERB_ARGS[words] + bad) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and bad[0] in err and "Traceback" not in err


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v.words))
def test_help_lists_every_config_field_with_its_description(verb, capsys):
    assert main([*verb.words, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    skip = {p for p, _ in verb.positional}
    fields = [(d, info) for d, info in leaf_fields(_load(verb.config)) if d not in skip]
    assert fields
    for dotted, info in fields:
        assert f"--{dotted.replace('_', '-') if '.' not in dotted else dotted}" in text, dotted
        if info.description:
            assert " ".join(info.description.split())[:30] in text, dotted


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"tunesmith {__version__}"


def test_a_setting_has_one_default_everywhere():
    from tunesmith.curate import DecontamConfig
    from tunesmith.data.packing import MAX_TOKENS_PER_ROW
    from tunesmith.data.tasks import HELD_OUT_TASKS
    from tunesmith.evaluate.harness import EvalContext
    from tunesmith.stages.curate import DecontamOptions, DecontamVerbConfig
    from tunesmith.stages.data import TaskData
    from tunesmith.stages.evaluate import EvalConfig, EvalVerbConfig
    from tunesmith.stages.select import SelectConfig, SelectVerbConfig
    from tunesmith.train.config import TrainConfig

    verb_eval = EvalVerbConfig.model_fields
    assert TaskData().n_eval == verb_eval["tasks_n"].default == DecontamConfig().tasks_n == HELD_OUT_TASKS == 260
    assert DecontamOptions().library().tasks_n == HELD_OUT_TASKS
    assert TrainConfig().max_tokens_per_row == verb_eval["max_tokens_per_row"].default == \
        EvalContext().max_tokens_per_row == MAX_TOKENS_PER_ROW == 1024
    assert DecontamOptions().suites == DecontamVerbConfig.model_fields["suites"].default == \
        list(DecontamConfig().suites) == ["tasks", "ifbench", "humaneval"]
    # A verb's config extends its recipe section: the shared fields are the same fields.
    for recipe_cls, verb_cls in ((EvalConfig, EvalVerbConfig), (SelectConfig, SelectVerbConfig)):
        shared = set(recipe_cls.model_fields) & set(verb_cls.model_fields)
        assert len(shared) >= 7
        for name in shared:
            assert recipe_cls.model_fields[name].default == verb_cls.model_fields[name].default, name
    # Every selection knob is reachable from a recipe.
    assert set(SelectVerbConfig.model_fields) - set(SelectConfig.model_fields) == \
        {"data", "out", "model", "max_seq_len", "format", "on_error"}


def test_recipe_keys_that_moved_are_named(tmp_path, capsys):
    r = tmp_path / "r.yaml"
    r.write_text("data:\n  tasks: {n_train: 8}\n  select: {method: random, budget: 4}\n")
    assert main(["data", "check", str(r)]) == 2
    assert "data.select is now the top-level section `select:`" in capsys.readouterr().err


def test_out_that_is_a_file_and_unreadable_prompt_files_are_one_message(tmp_path, capsys):
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"instruction": "a", "output": "b"}\n')
    assert main(["data", "dedup", str(pool), "--out", str(pool)]) == 2
    assert "is a file" in capsys.readouterr().err
    bad = tmp_path / "prompts.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    assert main(["generate", "--file", str(bad)]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    assert main(["generate", "--file", str(tmp_path / "missing.txt")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_parser_builds_without_importing_the_stages():
    import subprocess
    import sys

    code = ("import sys; from tunesmith.cli import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.startswith(('tunesmith.stages', 'torch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert build_parser().prog == "tunesmith"
