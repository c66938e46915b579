"""Curation: exact + MinHash dedup and decontamination, scored on the planted-fault pool; CLI verbs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tunesmith.cli import main
from tunesmith.curate import DecontamConfig, DedupConfig, decontaminate, dedup, write_curated
from tunesmith.curate.hashing import TokenHasher, flatten, ngram_hashes, to32, token_hash
from tunesmith.curate.minhash import MinHasher, jaccard_pairs
from tunesmith.curate.text import dedup_tokens, exact_key
from tunesmith.data.example import Example
from tunesmith.data.tasks import check_answer, generate_train_eval
from tunesmith.errors import UsageError
from tunesmith.testing.fault_pool import FAULTS, build_fault_pool, score_dedup


@pytest.fixture(scope="module")
def pool():
    return build_fault_pool(n=1000, seed=0)


@pytest.fixture(scope="module")
def dedup_result(pool):
    return dedup(pool.examples)


def _ex(user: str, answer: str, line: int = 0) -> Example:
    return Example([{"role": "user", "content": user}, {"role": "assistant", "content": answer}], "t", line)


# --- the fault pool --------------------------------------------------------------------------

def test_fault_pool_composition_and_truth(pool):
    counts = pool.counts()
    assert counts == {"clean": 640, "corrupted_wrong": 100, "corrupted_swap": 100, "near_dup": 100,
                      "exact_dup": 50, "eval_copy": 10}
    assert set(counts) == set(FAULTS)
    assert len({ex.meta["task"] for ex in pool.examples}) == 13
    eval_prompts = {it.prompt for it in pool.eval_items}
    assert pool.eval_items == generate_train_eval(0, 260, 0)[1]
    for i, ex in enumerate(pool.examples):
        prompt, response = ex.messages[0]["content"], ex.messages[1]["content"]
        fault = ex.meta["fault"]
        assert ex.line == i + 1
        if fault in ("exact_dup", "near_dup"):
            orig = pool.examples[ex.meta["dup_of"]]
            assert orig.meta["fault"] == "clean" and orig.messages[1] == ex.messages[1]
            assert (exact_key(ex) == exact_key(orig)) == (fault == "exact_dup")
        else:
            assert ex.meta["dup_of"] is None
        assert (prompt in eval_prompts) == (fault == "eval_copy")
        correct = check_answer(ex.meta["task"], response, ex.meta["answer"])
        assert correct == (fault not in ("corrupted_wrong", "corrupted_swap")), (fault, prompt, response)
    dev = {it.prompt.lower() for it in pool.dev_items}
    assert len(pool.dev_items) == 8 * 13
    assert not dev & {ex.messages[0]["content"].lower() for ex in pool.examples}
    assert not dev & {p.lower() for p in eval_prompts}


def test_fault_pool_is_deterministic(pool):
    again = build_fault_pool(n=1000, seed=0)
    assert [e.to_json() for e in again.examples] == [e.to_json() for e in pool.examples]
    other = build_fault_pool(n=1000, seed=1)
    assert [e.messages for e in other.examples] != [e.messages for e in pool.examples]


# --- dedup -----------------------------------------------------------------------------------

def test_dedup_finds_planted_duplicates(pool, dedup_result):
    scores = score_dedup(pool, dedup_result.keep)
    assert scores["exact_recall"] == 1.0
    assert scores["near_recall"] >= 0.95
    assert scores["fp_rate"] < 0.01
    # every planted exact copy is in an exact cluster with its original
    exact_pairs = {frozenset([c.kept, r]) for c in dedup_result.exact_clusters for r in c.removed}
    for i in pool.indices("exact_dup"):
        assert frozenset([i, pool.examples[i].meta["dup_of"]]) in exact_pairs
    near = dedup_result.near_clusters
    assert near and all(0.0 < s <= 1.0 for c in near for s in c.similarity)
    assert all(c.kept < min(c.removed) for c in dedup_result.exact_clusters + near)  # first occurrence kept


def test_plain_shingles_cannot_separate_templated_rows(pool):
    """Why stop words are left out: with them, distinct template rows look like near-duplicates."""
    scores = score_dedup(pool, dedup(pool.examples, DedupConfig(stop_words=False)).keep)
    assert scores["near_recall"] < 0.95 or scores["fp_rate"] >= 0.01


def test_dedup_exact_normalisation_and_no_near():
    rows = [_ex("Sort: 3, 1, 2", "1, 2, 3", 1), _ex("  SORT:   3, 1, 2. ", "1, 2, 3", 2),
            _ex("Sort: 3, 12", "3, 12", 3), _ex("Sort: 31, 2", "2, 31", 4)]
    res = dedup(rows, DedupConfig(near=False))
    assert res.keep.tolist() == [True, False, True, True]
    assert res.exact_clusters[0].kept_where == "t:1" and res.exact_clusters[0].removed_where == ["t:2"]
    assert res.removed_reasons()[1].startswith("exact_dup: ")


def test_minhash_matches_datasketch():
    datasketch = pytest.importorskip("datasketch")
    if not hasattr(datasketch.MinHash(num_perm=2), "scheme"):
        pytest.skip("datasketch < 2.0 has only the legacy scheme")
    hasher = TokenHasher()
    rows = [dedup_tokens(_ex("What is 12 + 5? Answer with the number only.", "17")), ["<user>", "x"]]
    tokens, offsets = flatten([hasher(r) for r in rows])
    h, owner = ngram_hashes(tokens, offsets, 3)
    ids = to32(h)
    sig = MinHasher(64, seed=7).signatures(ids, np.r_[0, np.cumsum(np.bincount(owner))])
    for r in range(2):
        ref = datasketch.MinHash(num_perm=64, seed=7, hashfunc=lambda x: x)
        ref.update_batch(ids[owner == r].tolist())
        assert np.array_equal(sig[r], ref.hashvalues)


def test_jaccard_and_hash_stability():
    assert token_hash("cat") == 0x2f989d7b2cdd2733  # pinned: the same in every process and on every machine
    assert token_hash("cat") == token_hash("cat") != token_hash("dog")
    flat = np.array([1, 2, 3, 2, 3, 4, 9], dtype=np.uint32)
    offsets = np.array([0, 3, 6, 7])
    sims = jaccard_pairs(flat, offsets, np.array([[0, 1], [0, 2], [1, 1]]))
    assert sims.tolist() == [0.5, 0.0, 1.0]


def test_dedup_is_deterministic(pool, dedup_result):
    again = dedup(list(pool.examples))
    assert np.array_equal(again.keep, dedup_result.keep)
    assert [c.to_json() for c in again.near_clusters] == [c.to_json() for c in dedup_result.near_clusters]


def test_dedup_chunking_does_not_change_the_result(pool, dedup_result):
    chunked = dedup(iter(pool.examples), DedupConfig(chunk_size=97))
    assert np.array_equal(chunked.keep, dedup_result.keep)


@pytest.mark.parametrize("bad", [dict(threshold=0.0), dict(threshold=1.5), dict(ngram=0), dict(shingle="byte"),
                                 dict(bands=40, rows=8), dict(bands=4)])
def test_dedup_bad_options(bad):
    with pytest.raises(UsageError):
        dedup([], DedupConfig(**bad))


# --- decontamination -------------------------------------------------------------------------

def test_decontaminate_finds_every_eval_copy(pool):
    res = decontaminate(pool.examples, DecontamConfig(suites=("tasks",)))
    copies = set(pool.indices("eval_copy"))
    hit_rows = {h.row for h in res.hits}
    assert copies <= hit_rows
    assert len(hit_rows - copies) <= 0.01 * len(pool.examples)  # few rows close to an eval item by chance
    eval_by_prompt = {it.prompt for it in pool.eval_items}
    for h in res.hits:
        if h.row in copies:
            assert h.suite == "tasks" and h.score == 1.0
            assert h.eval_prompt == pool.examples[h.row].messages[0]["content"] in eval_by_prompt
    assert res.keep.sum() == len(pool.examples) - len(res.hits)


def test_decontaminate_short_prompts_and_light_edits():
    _, items = generate_train_eval(0, 26, 0)
    target = items[6].prompt  # json_object: long enough for 8-grams to survive a two-word edit
    rows = [_ex("Please, " + target + " Thanks!", "x", 1),  # a light edit of an eval prompt
            _ex(" ".join(target.split()[:4]), "x", 2),  # a 4-word phrase of it: covers little of it
            _ex("Tell me a joke about cats and dogs, please.", "x", 3)]
    res = decontaminate(rows, DecontamConfig(suites=("tasks",), tasks_n=26))
    assert [h.row for h in res.hits] == [0]
    assert res.hits[0].eval_prompt == target and 0.8 <= res.hits[0].score < 1.0
    whole = decontaminate([_ex(target, "x")], DecontamConfig(suites=("tasks",), tasks_n=26, ngram=40))
    assert whole.hits and whole.hits[0].score == 1.0 and whole.hits[0].ngrams == 1  # short-text fallback


# --- CLI -------------------------------------------------------------------------------------

def _write_pool_jsonl(path, pool, n=200):
    with open(path, "w") as f:
        for ex in pool.examples[:n]:
            f.write(json.dumps({"messages": ex.messages}) + "\n")


def test_cli_dedup_and_decontaminate(tmp_path, pool):
    data = tmp_path / "pool.jsonl"
    _write_pool_jsonl(data, pool)
    first = pool.examples[:200]
    expect = dedup(first)
    assert main(["data", "dedup", str(data), "--out", str(tmp_path / "d")]) == 0
    kept = (tmp_path / "d" / "kept.jsonl").read_text().splitlines()
    removed = [json.loads(x) for x in (tmp_path / "d" / "removed.jsonl").read_text().splitlines()]
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert len(kept) == int(expect.keep.sum()) and len(kept) + len(removed) == 200
    assert report["exact_removed"] == expect.n_exact_removed and report["near_removed"] == expect.n_near_removed
    assert {r["line"] for r in removed} == {i + 1 for i in np.flatnonzero(~expect.keep)}
    assert all(r["reason"].split(":")[0] in ("exact_dup", "near_dup") for r in removed)
    # kept rows keep where they came from, so a later step can still point at the user's file
    assert json.loads(kept[0]) == {"messages": first[0].messages, "origin": f"{tmp_path / 'pool.jsonl'}:1"}

    assert main(["data", "dedup", str(data), "--out", str(tmp_path / "e"), "--no-near"]) == 0
    assert json.loads((tmp_path / "e" / "report.json").read_text())["near_removed"] == 0

    assert main(["data", "decontaminate", str(data), "--out", str(tmp_path / "c"), "--suites", "tasks"]) == 0
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    copies = [i for i in range(200) if first[i].meta["fault"] == "eval_copy"]
    assert copies and {h["row"] for h in report["hits"]} >= set(copies)
    assert report["removed"] == len(report["hits"]) == len((tmp_path / "c" / "removed.jsonl").read_text().splitlines())


@pytest.mark.parametrize("argv, code, needle", [
    (["data", "dedup", "missing.jsonl", "--out", "o"], 1, "not found"),
    (["data", "dedup", "{data}", "--out", "o", "--threshold", "1.5"], 2, "threshold"),
    (["data", "decontaminate", "{data}", "--out", "o", "--suites", "tasks,nope"], 2, "nope"),
    (["data", "decontaminate", "{data}", "--out", "o", "--ngram", "0"], 2, "ngram"),
])
def test_cli_user_errors(tmp_path, pool, capsys, monkeypatch, argv, code, needle):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "pool.jsonl"
    _write_pool_jsonl(data, pool, 20)
    assert main([a.replace("{data}", str(data)) for a in argv]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err and "Traceback" not in err


def test_write_curated_rejects_changed_input(tmp_path):
    rows = [_ex("a b c", "d"), _ex("e f g", "h")]
    with pytest.raises(ValueError):
        write_curated(rows[:1], np.array([True, True]), {}, tmp_path, {})
