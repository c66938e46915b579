"""Only safetensors (and torch.load(weights_only=True)) are ever read: a model folder whose weights are pickles
is refused unless model.allow_pickle, and a hostile pickle never runs (its canary file never appears)."""

import pickle

import pytest
import torch

from conftest import tiny_llama
from tunesmith.errors import UserError
from tunesmith.models import load_model


class _Canary:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # unpickling this would create the canary file
        return (open, (self.path, "w"))


def _folder(tmp_path, hostile: bool, safetensors: bool = False):
    model = tiny_llama(0)
    d = tmp_path / "model"
    model.save_pretrained(d)  # config.json + model.safetensors
    if not safetensors:
        (d / "model.safetensors").unlink()
    state = {"canary": _Canary(str(tmp_path / "canary"))} if hostile else model.state_dict()
    with open(d / "pytorch_model.bin", "wb") as fh:
        torch.save(state, fh, pickle_module=pickle)
    return d, model


def test_pickle_weights_are_refused_and_nothing_runs(tmp_path):
    d, _ = _folder(tmp_path, hostile=True)
    with pytest.raises(UserError, match=r"pickle files \(pytorch_model.bin\).*refused.*model.allow_pickle"):
        load_model(str(d), log=lambda m: None)
    assert not (tmp_path / "canary").exists()
    with pytest.raises(UserError, match="weights_only"):  # opted in: still only weights_only, still nothing runs
        load_model(str(d), log=lambda m: None, allow_pickle=True)
    assert not (tmp_path / "canary").exists()


def test_opting_in_loads_plain_tensor_pickles_and_says_so(tmp_path):
    d, ref = _folder(tmp_path, hostile=False)
    logged = []
    model = load_model(str(d), log=logged.append, allow_pickle=True)
    assert any("model.allow_pickle" in m and "weights_only=True" in m for m in logged)
    assert torch.equal(model.model.norm.weight, ref.model.norm.weight)


def test_a_pickle_beside_safetensors_weights_is_never_read(tmp_path):
    d, ref = _folder(tmp_path, hostile=True, safetensors=True)
    model = load_model(str(d), log=lambda m: None)
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, ref.model.layers[0].mlp.up_proj.weight)
    assert not (tmp_path / "canary").exists()
