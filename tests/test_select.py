"""Data selection: budgets, the simple methods, RDS+/IFD/LESS/k-means/ZIP-FIT internals, the
feature store's caching and resume, rank shards, and the `tunesmith data select` verb."""

import json
import os
import socket

import numpy as np
import pytest
import torch

from conftest import tiny_llama
from tunesmith.data.chat import IGNORE
from tunesmith.data.example import Example
from tunesmith.data.tasks import generate_examples
from tunesmith.errors import UsageError
from tunesmith.select.budget import parse_budget
from tunesmith.kernels.loss import padded_label_losses
from tunesmith.select.features import ScoringContext, compute_cached
from tunesmith.select.ifd import ifd_select
from tunesmith.select.kmeans import cluster_proportional_select, kmeans
from tunesmith.select.rds import round_robin_select
from tunesmith.select.run import SelectOptions, pair_ifd, parse_chain, select, write_selection
from tunesmith.select.simple import proportional_allocation, stratified_select
from tunesmith.select.store import FeatureStore, merge_shards, shard_path


def test_budget_counts_and_percentages():
    assert parse_budget("10%", 4000) == 400
    assert parse_budget("400", 4000) == 400
    assert parse_budget("0.25", 10) == 3
    assert parse_budget("33%", 10) == 4  # ceil
    assert parse_budget("5000", 4000) == 4000
    for bad in ("0", "-3", "abc", "150%", "2.5"):
        with pytest.raises(UsageError, match="budget"):
            parse_budget(bad, 100)


def test_chain_parsing_and_errors():
    assert parse_chain("ifd:50%,rds", "10%") == [("ifd", "50%"), ("rds", "10%")]
    with pytest.raises(UsageError, match="unknown selection method 'bogus'"):
        parse_chain("bogus", "10%")
    with pytest.raises(UsageError, match="needs a share"):
        parse_chain("ifd,rds", "10%")


def test_stratified_allocation_is_proportional_and_exact():
    alloc = proportional_allocation({"a": 600, "b": 300, "c": 100}, 100)
    assert alloc == {"a": 60, "b": 30, "c": 10}
    alloc = proportional_allocation({"a": 5, "b": 5, "c": 1}, 10)
    assert sum(alloc.values()) == 10 and alloc["c"] <= 1
    strata = ["x"] * 70 + ["y"] * 20 + ["z"] * 10
    picked = stratified_select(strata, 10, seed=3)
    assert len(set(picked.tolist())) == 10
    assert [strata[i] for i in picked].count("x") == 7
    assert [strata[i] for i in picked].count("z") == 1


def test_round_robin_takes_turns_and_never_repeats():
    scores = np.array([[0.9, 0.8, 0.1, 0.0],    # set 0 prefers 0, then 1
                       [0.95, 0.1, 0.7, 0.6]])  # set 1 prefers 0 too, then 2
    assert round_robin_select(scores, 3).tolist() == [0, 2, 1]
    assert sorted(round_robin_select(scores, 10).tolist()) == [0, 1, 2, 3]


def test_ifd_filters_unhelpful_instructions_then_takes_the_hardest():
    ifd = np.array([0.5, 1.2, 0.9, 0.1, 1.0])
    picked, excluded = ifd_select(ifd, 2)
    assert picked.tolist() == [2, 0] and excluded == 2
    picked, _ = ifd_select(ifd, 4)  # too few below 1: the excluded closest to the cut fill up
    assert picked.tolist() == [2, 0, 3, 4]


def test_kmeans_recovers_separated_blobs_and_samples_proportionally():
    rng = np.random.default_rng(0)
    centers = np.array([[10, 0], [0, 10], [-10, -10]], dtype=np.float32)
    sizes = [300, 150, 50]
    x = np.concatenate([c + rng.normal(size=(n, 2)).astype(np.float32) for c, n in zip(centers, sizes)])
    truth = np.repeat([0, 1, 2], sizes)
    _, labels, _ = kmeans(x, 3, seed=1)
    for t in range(3):  # every true blob maps to exactly one cluster
        assert len(set(labels[truth == t].tolist())) == 1
    picked = cluster_proportional_select(labels, 50, seed=0)
    counts = np.bincount(truth[picked], minlength=3)
    assert counts.tolist() == [30, 15, 5]


def test_padded_label_losses_equal_full_logit_cross_entropy():
    model = tiny_llama(0).eval()
    ids = torch.randint(97, (2, 9))
    labels = ids.clone()
    labels[0, :4] = IGNORE
    labels[1, :6] = IGNORE
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
        mean, count = padded_label_losses(model.lm_head, hidden, labels)
        logits = model(input_ids=ids).logits
    for b in range(2):
        ref = torch.nn.functional.cross_entropy(logits[b, :-1], labels[b, 1:], ignore_index=IGNORE)
        assert abs(float(mean[b]) - float(ref)) < 1e-5
    assert count.tolist() == [5.0, 3.0]


def test_less_per_example_gradients_equal_one_example_at_a_time():
    from peft import LoraConfig, get_peft_model

    from tunesmith.select.features import pad_batch
    from tunesmith.select.less import GradientFeatures

    torch.manual_seed(0)
    model = get_peft_model(tiny_llama(1), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                     lora_dropout=0.0, init_lora_weights=False))
    model.eval()
    seqs = [[5, 9, 14, 3, 22, 7, 40], [8, 1, 2, 60, 33], [4, 4, 19, 70, 12, 90]]
    labs = [[IGNORE, IGNORE, IGNORE, 3, 22, 7, 40], [IGNORE, IGNORE, 2, 60, 33], [IGNORE, 4, 19, 70, 12, 90]]
    feat = GradientFeatures(model, {}, dim=64, seed=0)
    ids, mask = pad_batch(seqs, 0)
    labels, _ = pad_batch(labs, IGNORE)
    batched = feat.per_example_grads(ids, mask, labels)
    assert len(batched) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    params = dict(feat.params)
    for b, (s, lab) in enumerate(zip(seqs, labs)):
        out = model(input_ids=torch.tensor([s])).logits[0, :-1]
        loss = torch.nn.functional.cross_entropy(out, torch.tensor(lab[1:]), ignore_index=IGNORE)
        grads = torch.autograd.grad(loss, list(params.values()))
        for (name, _), g in zip(params.items(), grads):
            assert torch.allclose(batched[name][b], g, atol=1e-6), name
    projected = feat(ids, mask, labels, adam=False)
    assert projected.shape == (3, 64)
    assert np.allclose(np.linalg.norm(projected, axis=1), 1.0, atol=1e-5)


def test_feature_store_caches_resumes_and_merges_rank_shards(tmp_path):
    examples = generate_examples(10, seed=1)
    ctx = ScoringContext(cache_dir=tmp_path, batch_size=3, show_progress=False)
    calls = []

    def fn(exs):
        calls.append(len(exs))
        if len(calls) == 3:
            raise KeyboardInterrupt  # interrupted in the third batch
        return np.array([[len(e.messages[0]["content"])] for e in exs], dtype=np.float32)

    with pytest.raises(KeyboardInterrupt):
        compute_cached(ctx, "t", "len", {}, examples, fn, "t")
    assert calls == [3, 3, 3]
    calls.clear()
    out = compute_cached(ctx, "t", "len", {}, examples, fn, "t")  # resumes: 6 done, 4 left
    assert calls == [3, 1]
    assert out[:, 0].tolist() == [len(e.messages[0]["content"]) for e in examples]
    calls.clear()
    compute_cached(ctx, "t", "len", {}, examples, fn, "t")
    assert calls == []  # everything cached
    compute_cached(ctx, "t", "len", {"other": 1}, examples[:2], fn, "t")
    assert calls == [2]  # other parameters, other keys

    main = tmp_path / "m.sqlite"
    for rank in (0, 1):
        with FeatureStore(shard_path(main, rank)) as st:
            st.put_many([(f"k{rank}", np.array([rank, 1], dtype=np.float32))])
    assert merge_shards(main) == 2

    # A distributed run that died after rank 1 wrote its shard: the next run merges it and
    # computes only what no rank finished.
    leftover = shard_path(tmp_path / "t.sqlite", 1)
    from tunesmith.select.store import content_key
    fresh = generate_examples(12, seed=1)[10:]
    with FeatureStore(leftover) as st:
        st.put_many([(content_key("len", "none", {}, fresh[0].messages), np.array([7.0], dtype=np.float32))])
    calls.clear()
    out = compute_cached(ctx, "t", "len", {}, fresh, fn, "t")
    assert calls == [1] and out[0, 0] == 7.0 and not leftover.exists()
    assert not shard_path(main, 0).exists()
    with FeatureStore(main) as st:
        got = st.get_many(["k0", "k1", "k2"])
    assert sorted(got) == ["k0", "k1"] and got["k1"].tolist() == [1.0, 1.0]


def _rank_worker(rank: int, world: int, port: int, cache: str, out):
    import torch.distributed as dist

    from tunesmith.train.distributed import DistInfo

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        examples = generate_examples(9, seed=2)
        seen = []

        def fn(exs):
            seen.extend(e.messages[0]["content"] for e in exs)
            return np.array([[float(len(e.messages[0]["content"])), float(rank)] for e in exs], dtype=np.float32)

        ctx = ScoringContext(cache_dir=cache, batch_size=2, show_progress=False, dist=DistInfo(rank, world))
        res = compute_cached(ctx, "shared", "len", {}, examples, fn, "t")
        out[rank] = (seen, res.tolist())
    finally:
        dist.destroy_process_group()


def test_scoring_shards_across_ranks_and_merges(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank_worker, args=(2, port, str(tmp_path), out), nprocs=2, join=True)
        seen0, res0 = out[0]
        seen1, res1 = out[1]
    assert len(seen0) == 5 and len(seen1) == 4 and not set(seen0) & set(seen1)  # each example scored once
    assert res0 == res1  # both ranks read the merged store
    assert sorted(r[1] for r in res0) == [0.0] * 5 + [1.0] * 4
    assert list(tmp_path.glob("*.rank*")) == []


def test_zipfit_prefers_examples_like_the_targets(tmp_path):
    from tunesmith.select.zipfit import zipfit_alignments

    def ex(user, answer):
        return Example([{"role": "user", "content": user}, {"role": "assistant", "content": answer}])

    targets = [ex("Sort these numbers in ascending order: 4, 9, 1.", "1, 4, 9"),
               ex("Sort these numbers in ascending order: 7, 3, 5.", "3, 5, 7")]
    pool = [ex("Write a haiku about autumn leaves falling on a quiet pond.", "Leaves drift, the pond sighs"),
            ex("Sort these numbers in ascending order: 8, 2, 6.", "2, 6, 8"),
            ex("Translate 'good morning' into French, please.", "Bonjour")]
    ctx = ScoringContext(cache_dir=tmp_path, show_progress=False)
    align = zipfit_alignments(ctx, pool, targets)
    assert align.shape == (3, 2)
    assert align[1].mean() > align[0].mean() and align[1].mean() > align[2].mean()
    two_workers = zipfit_alignments(ScoringContext(cache_dir=tmp_path / "w", show_progress=False), pool, targets,
                                    workers=2)
    assert np.allclose(align, two_workers)
    sel = select(pool, parse_chain("zipfit", "1"), targets, ctx=ctx)
    assert sel.indices.tolist() == [1]


def test_rds_ifd_and_kmeans_run_on_a_model_and_share_cached_features(tmp_path, smol_tokenizer):
    model = tiny_llama(0, vocab=len(smol_tokenizer))
    targets = generate_examples(13, seed=99)
    first_set = min(targets, key=lambda e: e.meta["task"])  # target sets are ordered by task name
    pool = generate_examples(25, seed=3) + [Example(first_set.messages, meta=dict(first_set.meta))]
    ctx = ScoringContext(model, smol_tokenizer, "tiny", cache_dir=tmp_path, batch_size=8, show_progress=False)
    rds = select(pool, parse_chain("rds", "13"), targets, ctx=ctx)
    assert len(set(rds.indices.tolist())) == 13
    assert rds.indices[0] == 25  # the copy of a target has cosine 1: its set picks it first
    assert abs(rds.scores["rds"][25] - 1.0) < 1e-5
    plain = SelectOptions(ifd_filter="none")
    ifd = select(pool, parse_chain("ifd", "5"), targets, plain, ctx=ctx)
    assert np.all(np.isfinite(ifd.scores["ifd"])) and len(ifd.indices) == 5
    chained = select(pool, parse_chain("ifd:50%,kmeans", "4"), targets, plain, ctx=ctx)
    assert [s["kept"] for s in chained.steps] == [13, 4]
    paired = select(pool, parse_chain("ifd:50%,kmeans", "4"), targets, ctx=ctx)  # the default: loss filter first
    assert [(s["method"], s["kept"]) for s in paired.steps] == [("loss", 19), ("ifd", 10), ("kmeans", 4)]
    assert set(chained.indices.tolist()) <= set(np.argsort(-np.where(ifd.scores["ifd"] < 1, ifd.scores["ifd"], -1))[:13])
    with FeatureStore(tmp_path / "forward.sqlite") as st:
        # one forward pass per distinct example feeds both RDS+ and IFD (the target copy is stored once)
        assert len(st) == 25 + 13


def test_select_cli_writes_selection_and_scores(tmp_path):
    from tunesmith.cli import main

    data = tmp_path / "pool.jsonl"
    with open(data, "w") as f:
        for ex in generate_examples(52, seed=4):
            f.write(json.dumps({"messages": ex.messages, "task": ex.meta["task"]}) + "\n")
    out = tmp_path / "sel"
    rc = main(["data", "select", str(data), "--method", "stratified", "--budget", "25%", "--out", str(out),
               "--stratify-by", "task"])
    assert rc == 0
    selected = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    report = json.loads((out / "selection_report.json").read_text())
    assert len(selected) == 13 and len(scores) == 52 and sum(r["selected"] for r in scores) == 13
    assert report["coverage"] == {t: 1 for t in report["coverage"]} and len(report["coverage"]) == 13
    rc = main(["data", "select", str(data), "--method", "zipfit", "--budget", "5", "--out", str(out), "--target-tasks", "2",
               "--cache", str(tmp_path / "cache"), "--overwrite"])
    assert rc == 0
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert all(isinstance(r["zipfit"], float) for r in scores)
    assert main(["data", "select", str(data), "--method", "rds", "--budget", "5", "--out", str(out),
                 "--overwrite"]) == 2  # no targets
    assert main(["data", "select", str(tmp_path / "missing.jsonl"), "--method", "random", "--budget", "5",
                 "--out", str(out)]) != 0


def test_recipe_runs_dedup_decontamination_and_selection_before_training(tmp_path, smol_tokenizer):
    from tunesmith.testing.fault_pool import build_fault_pool
    from tunesmith.stages.prepare import prepare_data
    from tunesmith.stages.recipe import Recipe

    pool = build_fault_pool(400, seed=0)
    data = tmp_path / "pool.jsonl"
    with open(data, "w") as f:
        for ex in pool.examples:
            f.write(json.dumps({"messages": ex.messages, "task": ex.meta["task"]}) + "\n")
    recipe = Recipe.model_validate({"data": {"train": [str(data)], "max_seq_len": 256},
                                    "curate": {"dedup": True, "decontaminate": {"suites": ["tasks"]}},
                                    "select": {"method": "stratified", "budget": "50%"}})
    bundle = prepare_data(recipe.data, recipe.curate, recipe.select, recipe.model, smol_tokenizer, tmp_path / "run")
    refined = bundle.report["curation_and_selection"]
    counts = pool.counts()
    assert refined["dedup"]["exact_removed"] + refined["dedup"]["near_removed"] == counts["exact_dup"] + counts["near_dup"]
    assert refined["decontaminate"]["removed"] >= counts["eval_copy"]
    left = 400 - refined["dedup"]["exact_removed"] - refined["dedup"]["near_removed"] - refined["decontaminate"]["removed"]
    assert refined["select"]["pool"] == left and refined["select"]["selected"] == (left + 1) // 2
    assert len(bundle.train_samples) == refined["select"]["selected"]
    assert bundle.report["kept"] + refined["removed"] == 400
    removed = (tmp_path / "run" / "curation" / "decontaminate" / "removed.jsonl").read_text().splitlines()
    assert len(removed) == refined["decontaminate"]["removed"]
    assert (tmp_path / "run" / "selection" / "scores.jsonl").exists()


def _open_together(path, barrier, rank):
    barrier.wait()  # every process opens the brand-new file at the same instant
    with FeatureStore(path) as store:
        store.put_many([(f"rank{rank}", np.full(3, rank, dtype=np.float32))])


def test_feature_store_survives_many_processes_creating_it_at_once(tmp_path):
    # Regression: switching a fresh file to WAL while another process opened it raised
    # "database is locked" (it failed CI in the two-rank test about 1 time in 60; 40 trials of
    # 6 openers caught it every time).
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for trial in range(40):
        path = tmp_path / f"store{trial}.sqlite"
        barrier = ctx.Barrier(6)
        procs = [ctx.Process(target=_open_together, args=(path, barrier, r)) for r in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        assert [p.exitcode for p in procs] == [0] * 6
        with FeatureStore(path) as store:
            got = store.get_many([f"rank{r}" for r in range(6)])
        assert sorted(float(v[0]) for v in got.values()) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def _pool_with_wrong_answers(every: int = 5):
    """30 task rows of three types whose answers the base model predicts well; every 5th answer wrong."""
    import random

    from tunesmith.data.tasks import generate_tasks
    from tunesmith.testing.fault_pool import wrong_answer

    items = generate_tasks(30, seed=7, task_types=["uppercase", "extract_email", "json_object"])
    rng = random.Random(0)
    pool = []
    for i, it in enumerate(items):
        bad = i % every == every - 1
        answer = wrong_answer(it, rng, [x.answer for x in items if x.task == it.task]) if bad else it.answer
        pool.append(Example([{"role": "user", "content": it.prompt}, {"role": "assistant", "content": answer}],
                            meta={"task": it.task, "bad": bad}))
    return pool


def test_ifd_runs_after_a_loss_filter_by_default_and_the_report_says_so(tmp_path, smol_model, smol_tokenizer):
    pool = _pool_with_wrong_answers()
    bad = {i for i, e in enumerate(pool) if e.meta["bad"]}
    ctx = ScoringContext(smol_model, smol_tokenizer, "smol", cache_dir=tmp_path / "cache", show_progress=False)

    plain = select(pool, parse_chain("ifd", "6"), [], SelectOptions(ifd_filter="none"), ctx)
    assert [s["method"] for s in plain.steps] == ["ifd"]
    assert len(bad & set(plain.indices.tolist())) >= 3  # plain ifd: wrong answers are "difficult"

    sel = select(pool, parse_chain("ifd", "6"), [], SelectOptions(), ctx)  # the default pairing
    assert [(s["method"], s["input"], s["kept"]) for s in sel.steps] == [("loss", 30, 21), ("ifd", 21, 6)]
    assert sel.steps[0]["paired_with"] == "ifd" and sel.steps[0]["by"] == "task"
    seen_by_ifd = set(np.flatnonzero(np.isfinite(sel.scores["ifd"])).tolist())
    assert not bad & seen_by_ifd  # the filter dropped every wrong answer before ifd ranked
    assert len(sel.indices) == 6 and not bad & set(sel.indices.tolist())

    report = write_selection(tmp_path / "paired", pool, sel)
    on_disk = json.loads((tmp_path / "paired" / "selection_report.json").read_text())
    assert on_disk == report
    note = on_disk["ifd_quality_filter"]
    assert note["paired"] and note["filter"] == "loss:70%" and note["removed"] == 9 and "none" in note["turn_off"]
    write_selection(tmp_path / "plain", pool, plain)
    note = json.loads((tmp_path / "plain" / "selection_report.json").read_text())["ifd_quality_filter"]
    assert not note["paired"] and note["filter"] == "none" and "wrong" in note["warning"]


def test_ifd_pairing_chain_rules():
    assert pair_ifd([("ifd", "10%")], "loss:70%") == [("loss", "70%", True), ("ifd", "10%", False)]
    assert pair_ifd([("ifd", "10%")], "none") == [("ifd", "10%", False)]
    assert pair_ifd([("loss", "50%"), ("ifd", "10%")], "loss:70%") == [("loss", "50%", False), ("ifd", "10%", False)]
    assert pair_ifd([("ifd", "50%"), ("rds", "10%")], "loss:80%")[0] == ("loss", "80%", True)
    assert pair_ifd([("rds", "10%")], "loss:70%") == [("rds", "10%", False)]
    for bad in ("loss", "verifier:50%", "loss:150%"):
        with pytest.raises(UsageError, match="ifd_filter|budget"):
            pair_ifd([("ifd", "10%")], bad)


def test_loss_filter_ranks_within_strata():
    from tunesmith.select.quality import loss_select

    loss = np.array([5.0, 6.0, 7.0, 8.0, 0.1, 0.2, 0.3, 9.0, np.nan])
    strata = ["hard"] * 4 + ["easy"] * 4 + ["easy"]
    # a global cut would keep only easy rows; within strata each keeps its lowest half
    assert sorted(loss_select(loss, strata, 4).tolist()) == [0, 1, 4, 5]
    assert loss_select(loss, strata, 9)[-1] == 8  # no response tokens: last


def test_select_cli_refuses_a_bad_ifd_filter_before_loading_a_model(tmp_path, capsys):
    from tunesmith.cli import main

    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps({"messages": ex.messages}) + "\n" for ex in generate_examples(5, seed=4)))
    rc = main(["data", "select", str(data), "--method", "ifd", "--budget", "2", "--out", str(tmp_path / "o"),
               "--ifd-filter", "verifier:50%"])
    err = capsys.readouterr().err
    assert rc == 2 and "ifd_filter 'verifier:50%'" in err and "Traceback" not in err
