"""Recipe validation and overrides; model spec resolution and its error messages."""

import pytest

from tunesmith.errors import UsageError, UserError
from tunesmith.models import resolve_model
from tunesmith.stages.recipe import load_recipe


def test_overrides_are_typed_and_nested(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("data:\n  tasks: {n_train: 10}\ntrain:\n  lr: 1.0e-3\n")
    rec = load_recipe(r, {"train.lr": "1e-4", "train.lora.r": "8", "eval.suites": "[loss]",
                          "output.dir": "runs/x", "train.tensorboard": "true"})
    assert rec.train.lr == 1e-4 and rec.train.lora.r == 8 and rec.eval.suites == ["loss"]
    assert rec.output.dir == "runs/x" and rec.train.tensorboard is True and rec.data.tasks.n_train == 10


def test_recipe_errors_name_the_key_or_line(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("data:\n  tasks: {n_train: 10}\ntrain:\n  batch_size: 6\n  micro_batch_size: 4\n")
    with pytest.raises(UsageError, match="batch_size 6 is not a multiple of micro_batch_size 4"):
        load_recipe(r)
    r.write_text("train:\n  lr: [1\n")
    with pytest.raises(UsageError, match=r"r\.yaml:\d+: not valid YAML"):
        load_recipe(r)
    r.write_text("train:\n  lr: 1e-3\n")
    with pytest.raises(UsageError, match="no training data"):
        load_recipe(r)
    with pytest.raises(UsageError, match="train.method: Input should be 'lora', 'dora', 'full', 'lisa' or 'galore'"):
        load_recipe(None, {"data.tasks.n_train": "5", "train.method": "qlora"})


def test_model_specs_resolve_or_explain(tmp_path, monkeypatch):
    import tunesmith.models as models

    bundled = resolve_model("smollm2-135m-instruct")
    assert bundled.kind == "bundled" and bundled.gguf_file.endswith(".gguf")
    monkeypatch.setattr(models, "_hub_reachable", lambda: True)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    monkeypatch.setattr(models, "_hub_reachable", lambda: False)
    with pytest.raises(UserError, match="no such local directory, and as a hub id it needs the network"):
        resolve_model("nobody-here/not-a-local-dir-xyz")
    (tmp_path / "m").mkdir()
    with pytest.raises(UserError, match="has no config.json"):
        resolve_model(str(tmp_path / "m"))
    with pytest.raises(UserError, match="does not exist"):
        resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(UserError, match="unknown model 'nonsense'"):
        resolve_model("nonsense")


def test_offline_hub_miss_is_one_clear_message(monkeypatch):
    from tunesmith.models import load_tokenizer

    import tunesmith.models as models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="hub id it needs the network"):
        load_tokenizer("nobody-here/no-such-model-xyz")
    # Past the resolver (hub reachable in principle), a miss from transformers is still one message.
    monkeypatch.setattr(models, "_hub_reachable", lambda: True)
    with pytest.raises(UserError, match="hub ids need the network"):
        load_tokenizer("nobody-here/no-such-model-xyz")
