"""The own-data suite (`tunesmith eval MODEL --data FILE`): matchers, hand-counted scores, user
checkers and their errors, the verb; and decontamination against the user's own eval files."""

from __future__ import annotations

import json

import pytest

from tunesmith.cli import main
from tunesmith.curate import DecontamConfig, decontaminate
from tunesmith.data.example import Example
from tunesmith.data.load import load_examples
from tunesmith.errors import UserError
from tunesmith.evaluate import owndata
from tunesmith.evaluate.owndata import contains_words, eval_owndata, normalize_answer, prepare_items, text_verdicts

# ---- matchers on tricky strings ----------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("  Hello,   World! ", "hello world"),
    ("ÉCOLE", "école"),  # case-folded, accents kept
    ("ﬁne", "fine"),  # NFKC: the ligature is two letters
    ("Straße", "strasse"),  # casefold, not lower
    ("ＡＢＣ１２３", "abc123"),  # full-width forms
    ("e\u0301cole", "école"),  # combining accent composed
    ("-3.5", "-3.5"),  # a number keeps its sign and decimal point...
    ("3.5.", "3.5"),  # ...but not the full stop after it
    ("1,000", "1,000"),
    ("«Oui», dit-il.", "oui ditil"),
    ("don't\tstop\n", "dont stop"),
    ("東京。", "東京"),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_normalized_contains_disagree_where_they_should():
    assert text_verdicts(" Paris\n", "Paris") == {"exact": True, "normalized": True, "contains": True}
    assert text_verdicts("PARIS!", "Paris") == {"exact": False, "normalized": True, "contains": True}
    assert text_verdicts("It is Paris.", "Paris") == {"exact": False, "normalized": False, "contains": True}
    assert text_verdicts("3.5", "35")["normalized"] is False  # a decimal point is not punctuation to drop
    assert text_verdicts("-7", "7")["normalized"] is False


@pytest.mark.parametrize("output, reference, expected", [
    ("the answer is 14", "4", False),  # not inside another number
    ("the answer is 4.", "4", True),
    ("cathedral", "cat", False),
    ("a cat, a dog", "cat a dog", True),  # punctuation gone, words still bounded
    ("首都は東京です", "東京", True),  # no word boundaries in unspaced scripts
    ("", "", True),
    ("anything", "", False),  # an empty reference only matches an empty output
])
def test_contains_needs_whole_words(output, reference, expected):
    assert contains_words(normalize_answer(output), normalize_answer(reference)) is expected


def test_regex_is_searched_in_the_raw_output():
    assert text_verdicts("Answer: 42 apples", "42", r"\b42\b")["regex"] is True
    assert text_verdicts("Answer: 420 apples", "42", r"\b42\b")["regex"] is False
    assert text_verdicts("ANSWER", "x", r"answer")["regex"] is False  # case counts unless the pattern says (?i)
    assert text_verdicts("ANSWER", "x", r"(?i)answer")["regex"] is True
    assert "regex" not in text_verdicts("a", "a")  # no pattern, no regex verdict


# ---- a fixture of six conversations with known outputs -------------------------------------------

ROWS = [  # (row, the fake model's output)
    ({"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]},
     "Paris"),
    ({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}, " 4\n"),
    ({"instruction": "Spell colour the British way.", "output": "Colour"}, "colour."),
    ({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Largest planet?"},
                   {"role": "assistant", "content": "Jupiter"}], "match": "contains"}, "It is Jupiter."),
    ({"messages": [{"role": "user", "content": "Legs of a spider?"}, {"role": "assistant", "content": "8"}]}, "18"),
    ({"messages": [{"role": "user", "content": "Café in English?"}, {"role": "assistant", "content": "coffee"}],
      "pattern": "(?i)^coff?ee$"}, "Coffee"),
]
# Hand count per item:    1     2     3     4     5     6
#   exact                 T     T     F     F     F     F   -> 2/6
#   normalized            T     T     T     F     F     T   -> 4/6
#   contains              T     T     T     T     F     T   -> 5/6
#   regex (item 6 only)                                 T   -> 1/1
# Item 4 is matched by `contains` whatever --match says (its row's `match` field).


@pytest.fixture
def own_file(tmp_path):
    path = tmp_path / "own.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row, _ in ROWS))
    return path


@pytest.fixture
def fake_generate(monkeypatch):
    """Replace generation by the fixed outputs above (keyed by the last user turn); record the calls."""
    answers = {next(m["content"] for m in reversed(load_messages(row)) if m["role"] == "user"): out
               for row, out in ROWS}
    calls = []

    def generate(model, tokenizer, conversations, max_new_tokens, batch_size, progress=None):
        calls.append((conversations, max_new_tokens))
        return [answers[c[-1]["content"]] for c in conversations]

    monkeypatch.setattr(owndata, "generate", generate)
    return calls


def load_messages(row):
    if "messages" in row:
        return row["messages"][:-1]
    return [{"role": "user", "content": row["instruction"]}]


def test_scores_equal_the_hand_count(own_file, fake_generate):
    examples = load_examples(own_file).examples
    res = eval_owndata(None, None, examples, match="exact", max_new_tokens=7)
    assert res["suite"] == "data" and res["n"] == 6 and res["metric"] == "exact"
    assert res["exact"] == pytest.approx(2 / 6)
    assert res["normalized"] == pytest.approx(4 / 6)
    assert res["contains"] == pytest.approx(5 / 6)
    assert res["regex"] == 1.0 and res["regex_n"] == 1
    assert res["score"] == pytest.approx(3 / 6)  # exact, but item 4 by contains: T T F T F F
    assert res["matchers_used"] == {"exact": 5, "contains": 1}
    assert eval_owndata(None, None, examples, match="normalized")["score"] == pytest.approx(5 / 6)
    assert eval_owndata(None, None, examples, match="contains")["score"] == pytest.approx(5 / 6)
    # The prompt is every turn before the last assistant turn; the reference is that turn.
    conversations, max_new = fake_generate[0]
    assert max_new == 7
    assert conversations[3] == ROWS[3][0]["messages"][:-1]
    rec = res["records"][3]
    assert rec["prompt"] == "Largest planet?" and rec["reference"] == "Jupiter" and rec["output"] == "It is Jupiter."
    assert rec["matcher"] == "contains" and rec["verdict"] == 1.0
    assert rec["verdicts"] == {"exact": False, "normalized": False, "contains": True}
    assert [r["line"] for r in res["records"]] == [1, 2, 3, 4, 5, 6]
    assert res["records"][5]["verdicts"]["regex"] is True and res["records"][2]["source"] == str(own_file)


def test_regex_matcher_takes_the_reference_as_the_pattern(own_file, fake_generate):
    res = eval_owndata(None, None, load_examples(own_file).examples, match="regex")
    # Patterns: "Paris", "4", "Colour", (4: contains), "8" (found in "18"), "(?i)^coff?ee$" (its field)
    assert [r["verdict"] for r in res["records"]] == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert res["regex_n"] == 5 and res["regex"] == pytest.approx(4 / 5)


CHECKER = '''
def strict(output, reference, item):
    assert item["reference"] == reference and isinstance(item["messages"], list)
    return 1.0 if output.strip() == reference else 0.25
'''


@pytest.mark.parametrize("form", ["module", "file"])
def test_a_python_checker_of_the_users_own(tmp_path, own_file, fake_generate, monkeypatch, form):
    name = f"owndata_checks_{form}"
    (tmp_path / f"{name}.py").write_text(CHECKER)
    monkeypatch.chdir(tmp_path)
    spec = f"{name}:strict" if form == "module" else f"{tmp_path / name}.py:strict"
    res = eval_owndata(None, None, load_examples(own_file).examples, match=spec)
    # Items 1, 2 stripped-equal (1.0); 3, 5, 6 not (0.25); item 4 by its row's `contains` (1.0).
    assert res["score"] == pytest.approx((1 + 1 + 0.25 + 1 + 0.25 + 0.25) / 6)
    assert res["checkers"] == {spec: {"n": 5, "score": pytest.approx(2.75 / 5)}}
    assert res["records"][2]["verdicts"][spec] == 0.25


@pytest.mark.parametrize("source, spec, needle", [
    (None, "no_such_module_xyz:check", "no_such_module_xyz"),
    ("def other(o, r, i):\n    return True\n", "{mod}:check", "no function 'check'"),
    ("import does_not_exist_either\n", "{mod}:check", "does_not_exist_either"),
    ("def check(o, r, i):\n    return 1 / 0\n", "{mod}:check", "ZeroDivisionError"),
    ("def check(o, r, i):\n    return 'yes'\n", "{mod}:check", "returned 'yes'"),
    ("def check(o, r, i):\n    return 2\n", "{mod}:check", "in [0, 1]"),
    (None, "missing_dir/x.py:check", "not found"),
])
def test_bad_checkers_are_one_clear_error_before_generating(tmp_path, own_file, fake_generate, monkeypatch,
                                                            source, spec, needle):
    mod = f"owndata_bad_{abs(hash((source, spec))) % 10**8}"
    if source is not None:
        (tmp_path / f"{mod}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    spec = spec.format(mod=mod)
    with pytest.raises(UserError) as err:
        eval_owndata(None, None, load_examples(own_file).examples, match=spec)
    assert spec in str(err.value) and needle in str(err.value) and "\n" not in str(err.value)
    assert fake_generate == []  # nothing was generated


def test_bad_rows_are_named_before_generating(tmp_path, fake_generate):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
             "pattern": "(unclosed"},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "match": "fuzzy"}]
    for i, row in enumerate(rows):
        path = tmp_path / f"bad{i}.jsonl"
        path.write_text("\n" + json.dumps(row) + "\n")  # on line 2
        with pytest.raises(UserError, match=f"bad{i}.jsonl:2"):
            prepare_items(load_examples(path).examples)
    with pytest.raises(UserError, match="fuzzy"):
        prepare_items([Example([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])], "fuzzy")
    assert fake_generate == []


# ---- the verb -----------------------------------------------------------------------------------



def test_eval_data_runs_the_data_and_loss_suites(tmp_path, tiny_dir, own_file, capsys):
    out = tmp_path / "ev"
    assert main(["eval", str(tiny_dir), "--data", str(own_file), "--out", str(out), "--data-max-new-tokens", "3",
                 "--match", "contains"]) == 0
    folder = out / "eval" / "model"
    assert sorted(p.name for p in folder.glob("*.json")) == ["data.json", "loss.json"]  # no --suites: data, loss
    data = json.loads((folder / "data.json").read_text())
    loss = json.loads((folder / "loss.json").read_text())
    assert data["n"] == 6 == loss["n"] and data["metric"] == "contains" and data["max_new_tokens"] == 3
    assert 0.0 <= data["score"] <= 1.0 and {"exact", "normalized", "contains", "regex"} <= set(data)
    assert [r["reference"] for r in data["records"]] == ["Paris", "4", "Colour", "Jupiter", "8", "coffee"]
    assert all(isinstance(r["output"], str) for r in data["records"])
    # Asked for explicitly, the suites are as given.
    assert main(["eval", str(tiny_dir), "--data", str(own_file), "--out", str(out), "--suites", "loss",
                 "--overwrite"]) == 0


@pytest.mark.parametrize("extra, code, needle", [
    (["--suites", "data"], 2, "--data"),  # the data suite without data
    (["--data", "{own}", "--match", "fuzzy"], 2, "fuzzy"),
    (["--data", "{own}", "--match", "no_such_mod_q:fn"], 1, "no_such_mod_q"),
])
def test_eval_verb_user_errors(tmp_path, own_file, capsys, extra, code, needle):
    argv = ["eval", "no-model-needed-before-this-error", "--out", str(tmp_path / "o")]
    assert main(argv + [a.replace("{own}", str(own_file)) for a in extra]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "Traceback" not in err


# ---- decontamination against the user's own eval files ----------------------------------------

def _ex(user: str, line: int) -> Example:
    return Example([{"role": "user", "content": user}, {"role": "assistant", "content": "ok"}], "train.jsonl", line)


EVAL_PROMPT = "Summarise the quarterly report of the northern sales region in three bullet points"


def _eval_file(tmp_path):
    path = tmp_path / "myeval.jsonl"
    rows = [[{"role": "user", "content": EVAL_PROMPT}, {"role": "assistant", "content": "- a\n- b\n- c"}],
            [{"role": "user", "content": "Name a prime number larger than one hundred and explain why"},
             {"role": "assistant", "content": "101"}]]
    path.write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows))
    return path


def test_decontaminate_against_an_eval_file(tmp_path):
    path = _eval_file(tmp_path)
    train = [_ex("Write a haiku about the sea at dawn and the gulls above it", 1),
             _ex(EVAL_PROMPT.lower() + ".", 2),  # a copy of the eval file's first prompt
             _ex("Summarise the yearly report of the southern region", 3)]
    res = decontaminate(train, DecontamConfig(suites=(), eval_files=(str(path),)))
    assert res.keep.tolist() == [True, False, True]
    (hit,) = res.hits
    assert hit.suite == "file:myeval.jsonl" and hit.eval_id == "1" and hit.where == "train.jsonl:2"
    summary = res.summary()
    assert summary["removed_by_suite"] == {"file:myeval.jsonl": 1}
    assert summary["eval_prompts"] == {"file:myeval.jsonl": 2}
    with pytest.raises(UserError, match="nothing to compare"):
        decontaminate(train, DecontamConfig(suites=()))


def test_decontaminate_verb_with_eval_files(tmp_path):
    path = _eval_file(tmp_path)
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"messages": e.messages}) + "\n"
                            for e in [_ex("Tell me a story about a brave little toaster", 1), _ex(EVAL_PROMPT, 2)]))
    assert main(["data", "decontaminate", str(pool), "--out", str(tmp_path / "c"), "--suites", "tasks",
                 "--eval-files", str(path)]) == 0
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert report["removed_by_suite"] == {"file:myeval.jsonl": 1}
    assert set(report["eval_prompts"]) == {"tasks", "file:myeval.jsonl"}
    assert [h["row"] for h in report["hits"]] == [1]


def test_decontam_options_add_a_recipes_eval_files():
    from tunesmith.stages.curate import DecontamOptions

    opts = DecontamOptions(suites="none", eval_files="a.jsonl")
    assert opts.suites == [] and opts.library(eval_files=["b.jsonl", "a.jsonl"]).eval_files == ("a.jsonl", "b.jsonl")
    with pytest.raises(UserError, match="nothing to compare"):
        DecontamOptions(suites="none").library()
