"""A NaN/inf loss or gradient is caught before the optimizer update: stop (the state before the step saved,
the samples named) or skip (the step dropped and logged), exactly resumable either way."""

import json

import pytest
import torch

from conftest import random_samples, tiny_llama
from tunesmith.train.checkpoint import complete_checkpoints, load_checkpoint
from tunesmith.train.config import TrainConfig
from tunesmith.train.loop import step_indices, train
from tunesmith.train.nonfinite import NonFiniteError
from tunesmith.train.setup import prepare_model

POISON = 97  # a token id random_samples never draws (its vocabulary is 97)
CFG = dict(method="full", batch_size=4, max_steps=6, lr=1e-2, warmup_steps=1, save_every=100)


def fresh(cfg: TrainConfig, poison_hook: bool = True):
    """The tiny Llama (vocabulary 98) whose embedding turns the POISON token into NaN."""
    base = tiny_llama(0, vocab=98)
    if poison_hook:
        base.get_input_embeddings().register_forward_hook(
            lambda mod, inp, out: out.masked_fill((inp[0] == POISON).unsqueeze(-1), float("nan")))
    torch.manual_seed(0)
    return prepare_model(base, cfg)


def poisoned(samples, cfg: TrainConfig, step: int):
    """The samples with one sample of (1-based) step `step` carrying the POISON token in its prompt; its index."""
    victim = step_indices(step - 1, len(samples), cfg)[1]
    out = list(samples)
    s = out[victim]
    out[victim] = type(s)([POISON] + s.input_ids[1:], s.labels, s.source, s.line)
    return out, victim


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights_at(run_dir, step):
    return load_checkpoint(run_dir / "checkpoints" / f"step-{step:06d}")[0]


def test_stop_saves_the_state_before_the_step_and_names_the_sample(tmp_path):
    cfg = TrainConfig(**CFG)
    clean = random_samples(24, seed=3)
    bad, victim = poisoned(clean, cfg, 4)
    model = fresh(cfg)
    with pytest.raises(NonFiniteError) as err:
        train(model, bad, cfg, tmp_path / "bad")
    msg = str(err.value)
    assert "step 4" in msg and f"rand:{victim + 1}" in msg and "own loss is not finite" in msg
    assert str(tmp_path / "bad" / "checkpoints" / "step-000003") in msg
    assert [c.name for c in complete_checkpoints(tmp_path / "bad" / "checkpoints")] == ["step-000003"]
    # The saved state is the clean run's state after step 3, bit for bit; the model in memory too.
    train(fresh(cfg), clean, cfg, tmp_path / "clean", stop_after=3)
    saved, state, meta = load_checkpoint(tmp_path / "bad" / "checkpoints" / "step-000003")
    ref, ref_state, _ = load_checkpoint(tmp_path / "clean" / "checkpoints" / "step-000003")
    assert saved.keys() == ref.keys()
    assert all(torch.equal(saved[k], ref[k]) for k in ref)
    assert all(torch.equal(p, ref[n]) for n, p in model.named_parameters())
    assert torch.equal(state["rng"]["torch"], ref_state["rng"]["torch"])
    assert state["scheduler"] == ref_state["scheduler"] and meta["step"] == 3
    last = metrics(tmp_path / "bad")[-1]
    assert last["nonfinite"] and last["action"] == "stopped" and last["loss"] == "nan"
    assert [s["origin"] for s in last["samples"] if s["loss_alone"] == "nan"] == [f"rand:{victim + 1}"]
    # Resuming past it with skip finishes the run.
    result = train(fresh(cfg), bad, cfg.model_copy(update={"on_nonfinite": "skip"}), tmp_path / "bad", resume=True)
    assert result.resumed_from == 3 and result.skipped == [4] and len(result.losses) == 2


def test_skip_drops_the_step_logs_it_and_resumes_exactly(tmp_path):
    cfg = TrainConfig(**CFG, on_nonfinite="skip")
    clean = random_samples(24, seed=3)
    bad, victim = poisoned(clean, cfg, 3)
    straight = train(fresh(cfg), bad, cfg, tmp_path / "a")
    assert straight.skipped == [3] and len(straight.losses) == 5 and not straight.stopped_early
    lines = metrics(tmp_path / "a")
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[2]["nonfinite"] and lines[2]["action"] == "skipped"
    assert all(isinstance(r["loss"], float) for i, r in enumerate(lines) if i != 2)
    # The skipped step changed nothing: the state after it is the state after step 2.
    train(fresh(cfg), bad, cfg, tmp_path / "b", stop_after=3)
    train(fresh(cfg), clean, cfg, tmp_path / "c", stop_after=2)
    after3, before3 = weights_at(tmp_path / "b", 3), weights_at(tmp_path / "c", 2)
    assert all(torch.equal(after3[k], before3[k]) for k in before3)
    # Resumed after the skip: the same losses as the run straight through.
    second = train(fresh(cfg), bad, cfg, tmp_path / "b", resume=True)
    assert second.resumed_from == 3
    assert [r["loss"] for r in metrics(tmp_path / "b")] == [r["loss"] for r in lines]
    assert weights_at(tmp_path / "b", 6).keys() == weights_at(tmp_path / "a", 6).keys()
    assert all(torch.equal(weights_at(tmp_path / "b", 6)[k], v) for k, v in weights_at(tmp_path / "a", 6).items())
    # The summary lists the skipped step (found in metrics.jsonl, whichever invocation skipped it) and its sample.
    from tunesmith.report.summary import skipped_steps
    for run in ("a", "b"):
        assert [(k["step"], k["loss"]) for k in skipped_steps(tmp_path / run)] == [(3, lines[2]["loss"])]
        assert bad[victim].origin in skipped_steps(tmp_path / run)[0]["samples"]


def test_too_many_skips_in_a_row_stop(tmp_path):
    cfg = TrainConfig(**CFG, on_nonfinite="skip", max_consecutive_skips=2)
    model = fresh(cfg, poison_hook=False)
    model.get_input_embeddings().register_forward_hook(lambda mod, inp, out: out * float("nan"))
    with pytest.raises(NonFiniteError, match="after 2 skipped steps in a row"):
        train(model, random_samples(24, seed=3), cfg, tmp_path)
    assert [r.get("action") for r in metrics(tmp_path)] == ["skipped", "skipped", "stopped"]
    assert complete_checkpoints(tmp_path / "checkpoints")[-1].name == "step-000002"
    assert json.loads((tmp_path / "checkpoints" / "step-000002" / "trainer.json").read_text())[
        "consecutive_skips"] == 2


def test_an_overflowing_gradient_names_the_whole_step(tmp_path):
    cfg = TrainConfig(**CFG, grad_clip=None)
    model = fresh(cfg, poison_hook=False)
    calls = []

    def blow_up(grad):  # the second step's gradient of one weight overflows; its losses stay finite
        calls.append(1)
        return grad * float("inf") if len(calls) == 2 else grad
    model.model.layers[0].mlp.down_proj.weight.register_hook(blow_up)
    samples = random_samples(24, seed=3)
    with pytest.raises(NonFiniteError) as err:
        train(model, samples, cfg, None)
    msg = str(err.value)
    assert "step 2" in msg and "gradient overflowed" in msg and "nothing was saved" in msg
    for i in step_indices(1, len(samples), cfg):
        assert samples[i].origin in msg



def test_tunesmith_train_stops_with_one_message(tmp_path, adder_recipe, capsys):
    """Through the CLI: a learning rate that blows the weights up ends in exit 1 and one message, no traceback."""
    from tunesmith.cli import main

    recipe = adder_recipe("method: full, max_steps: 4, batch_size: 4, lr: 1.0e+8, grad_clip: null, warmup_steps: 0")
    rows = tmp_path / "rows.jsonl"  # the data file adder_recipe wrote
    assert main(["train", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: training stopped at step 2: its gradient norm is nan") and "Traceback" not in err
    assert f"{rows}:" in err and "lower train.lr" in err
    assert (tmp_path / "run" / "checkpoints" / "step-000001" / "COMPLETE").is_file()
