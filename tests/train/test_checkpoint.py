import random

import numpy as np
import pytest
import torch

from neuroldm.errors import InputError
from neuroldm.train.checkpoint import load_state, save_state


def test_round_trip_of_model_optimizer_and_rng(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 7,
             "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "note": None}}
    save_state(state, tmp_path / "ck.safetensors")
    back = load_state(tmp_path / "ck.safetensors")
    assert back["step"] == 7 and back["rng"]["python"] == random.getstate() and back["rng"]["note"] is None
    assert torch.equal(back["rng"]["torch"], torch.get_rng_state())
    for k, v in model.state_dict().items():
        assert torch.equal(back["model"][k], v)
    assert list(back["optimizer"]["state"]) == [0, 1, 2, 3], "integer keys must survive"
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99), "tuples must survive"
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_killed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    save_state({"step": 1, "w": torch.ones(3)}, path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr("neuroldm.train.checkpoint.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_state({"step": 2, "w": torch.zeros(3)}, path)
    back = load_state(path)
    assert back["step"] == 1 and torch.equal(back["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


def test_unstorable_objects_and_bad_files_are_refused(tmp_path):
    with pytest.raises(TypeError, match="cannot store object at /x"):
        save_state({"x": object()}, tmp_path / "a.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="not a readable safetensors checkpoint"):
        load_state(bad)
    with pytest.raises(InputError, match="checkpoint not found"):
        load_state(tmp_path / "none.safetensors")


def test_numpy_rng_state_round_trips(tmp_path):
    rng = np.random.default_rng(3)
    rng.normal(size=5)
    save_state({"np": rng.bit_generator.state}, tmp_path / "r.safetensors")
    restored = np.random.default_rng()
    restored.bit_generator.state = load_state(tmp_path / "r.safetensors")["np"]
    assert np.array_equal(restored.normal(size=4), rng.normal(size=4))
