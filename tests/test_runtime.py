"""The runtime layer: device resolution, the autocast choice, a world of one, and a real 2-process gloo group."""

import contextlib
import json
import os
import socket
import warnings

import pytest
import torch
import torch.multiprocessing as mp

from neuroldm import runtime
from neuroldm.errors import ConfigError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def alone(monkeypatch):
    """A plain process: no torchrun variables."""
    for var in TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)


def test_device_without_cuda_is_the_cpu(alone, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device(None) == torch.device("cpu")
    assert runtime.resolve_device("auto") == torch.device("cpu")
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available") as e:
        runtime.resolve_device("cuda")
    assert "\n" not in str(e.value)


def test_device_with_cuda_is_this_ranks_gpu(alone, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert runtime.resolve_device(None) == torch.device("cuda:1")
    assert runtime.resolve_device("auto") == torch.device("cuda:1")
    assert runtime.resolve_device("cuda") == torch.device("cuda:1")
    assert runtime.resolve_device("cuda:0") == torch.device("cuda:0")  # an explicit index is taken as given
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.resolve_device(torch.device("cuda:3")) == torch.device("cuda:3")
    assert runtime.resolve_device(torch.device("cuda")) == torch.device("cuda:1")


def test_a_bad_device_name_is_a_one_line_error():
    with pytest.raises(ConfigError, match="--device 'gpu0': not a torch device"):
        runtime.resolve_device("gpu0")


def test_autocast_is_bf16_on_cuda_for_auto_and_anywhere_for_bf16():
    for device in ("cpu", torch.device("cpu")):
        assert isinstance(runtime.autocast(device, "auto"), contextlib.nullcontext)
        assert isinstance(runtime.autocast(device, "off"), contextlib.nullcontext)
    ctx = runtime.autocast("cpu", "bf16")
    assert isinstance(ctx, torch.autocast) and ctx.device == "cpu" and ctx.fast_dtype == torch.bfloat16
    with ctx:
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with warnings.catch_warnings():  # without a GPU, torch warns that it disables a CUDA autocast
        warnings.simplefilter("ignore")
        for amp in ("auto", "bf16"):
            ctx = runtime.autocast("cuda:0", amp)
            assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
        assert isinstance(runtime.autocast("cuda:0", "off"), contextlib.nullcontext)


def test_fp16_is_float16_autocast_with_a_loss_scaler_on_any_device():
    ctx = runtime.autocast("cpu", "fp16")
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.float16
    with ctx:
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16
    # only float16 needs the scaler: bfloat16 has float32's exponent range
    assert runtime.grad_scaler("cpu", "fp16").is_enabled()
    assert not any(runtime.grad_scaler("cpu", amp).is_enabled() for amp in ("auto", "bf16", "off"))
    runtime.check_amp("cpu", "fp16")  # torch >= 2.4 runs float16 autocast on the CPU
    for amp in ("auto", "bf16", "off"):
        runtime.check_amp("cpu", amp)


def test_an_autocast_dtype_the_device_cannot_run_is_a_one_line_config_error(monkeypatch):
    # torch warns and computes in float32 when its autocast lacks a dtype on a device: the run would silently be
    # another run, so the check refuses it
    monkeypatch.setattr(runtime.torch, "autocast", lambda **kw: contextlib.nullcontext())
    with pytest.raises(ConfigError, match=r"^train.amp=fp16: torch .* has no float16 autocast on cpu; use bf16 or "
                                          r"off$"):
        runtime.check_amp("cpu", "fp16")
    with pytest.raises(ConfigError, match=r"^train.amp=bf16: torch .* has no bfloat16 autocast on cpu; use fp16 or "
                                          r"off$"):
        runtime.check_amp("cpu", "bf16")
    runtime.check_amp("cpu", "off")  # float32 needs no autocast


def test_an_autocast_the_gpu_refuses_is_a_one_line_config_error(monkeypatch):
    def old_gpu(**kw):
        raise RuntimeError("Current CUDA Device does not support bfloat16. Please switch dtype to float16.")

    monkeypatch.setattr(runtime.torch, "autocast", old_gpu)
    with pytest.raises(ConfigError, match=r"^train.amp=bf16: Current CUDA Device does not support bfloat16. Please "
                                          r"switch dtype to float16; use fp16 or off$"):
        runtime.check_amp("cpu", "bf16")


def _bn_net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.BatchNorm3d(4), torch.nn.ReLU(),
                              torch.nn.Sequential(torch.nn.Conv3d(4, 4, 1), torch.nn.BatchNorm3d(4)),
                              torch.nn.GroupNorm(2, 4))
    net(torch.randn(2, 1, 5, 5, 5))  # running statistics that differ from their initial values
    return net


def test_batchnorm_becomes_syncbatchnorm_in_several_gpu_processes_only(caplog):
    gpus = runtime.World(rank=0, size=2, device=torch.device("cuda:0"))  # conversion needs neither GPU nor group
    net = _bn_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    synced = runtime.sync_batch_norm(net, gpus)
    norms = [type(m).__name__ for m in synced.modules() if "Norm" in type(m).__name__]
    assert norms == ["SyncBatchNorm", "SyncBatchNorm", "GroupNorm"]
    after = synced.state_dict()
    assert after.keys() == before.keys()  # the weights load into a network built without it
    assert all(torch.equal(after[k], v) for k, v in before.items())

    alone = runtime.World(rank=0, size=1, device=torch.device("cuda:0"))
    cpus = runtime.World(rank=0, size=2, device=torch.device("cpu"))
    net = _bn_net()
    assert runtime.sync_batch_norm(net, alone) is net and "SyncBatchNorm" not in str(net)
    with caplog.at_level("WARNING", logger="neuroldm.runtime"):
        assert runtime.sync_batch_norm(net, cpus) is net and "SyncBatchNorm" not in str(net)
    assert "BatchNorm in 2 CPU processes: SyncBatchNorm runs on GPUs only" in caplog.text
    caplog.clear()
    group_only = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.GroupNorm(2, 4))
    with caplog.at_level("WARNING", logger="neuroldm.runtime"):
        assert runtime.sync_batch_norm(group_only, cpus) is group_only
    assert caplog.text == ""  # nothing to say without BatchNorm


def test_a_world_of_one(alone):
    world = runtime.setup("cpu")
    assert world == runtime.World(rank=0, size=1, local_rank=0, device=torch.device("cpu"))
    assert world.is_main and not world.distributed
    assert runtime.rank() == 0 and runtime.world_size() == 1 and runtime.is_main()
    assert runtime.all_true(True, world) and not runtime.all_true(False, world)
    assert runtime.mean_across({"loss": 2.0}, world) == {"loss": 2.0}
    runtime.barrier()  # nothing to wait for
    runtime.teardown()
    assert not torch.distributed.is_initialized()


def test_rank_before_joining_is_torchruns(alone, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert runtime.rank() == 1 and runtime.world_size() == 2 and not runtime.is_main()


def test_the_group_is_joined_once_with_the_long_timeout(alone, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: calls.append(kw))
    runtime.init_process_group("cpu")  # a world of one joins nothing
    assert calls == []
    monkeypatch.setenv("WORLD_SIZE", "2")
    runtime.init_process_group(torch.device("cpu"))
    assert calls == [{"backend": "gloo", "timeout": runtime.BARRIER_TIMEOUT}]
    assert runtime.BARRIER_TIMEOUT.total_seconds() == 12 * 3600
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    runtime.init_process_group("cpu")  # already joined: idempotent
    assert len(calls) == 1


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    world = runtime.setup("cpu")
    result = {"world": [world.rank, world.size, world.local_rank, str(world.device)],
              "is_main": runtime.is_main(), "rank": runtime.rank(), "size": runtime.world_size()}
    if rank == 1:  # rank 0 writes after the barrier only if the barrier waited for rank 1's file
        with open(f"{out}/early.txt", "w") as f:
            f.write("1")
    runtime.barrier()
    result["saw_rank1_before_barrier_ended"] = os.path.exists(f"{out}/early.txt")
    result["all_true_both"] = runtime.all_true(True, world)
    result["all_true_one"] = runtime.all_true(rank == 0, world)
    result["mean"] = runtime.mean_across({"loss": float(rank), "n": 10.0 * (rank + 1)}, world)
    runtime.teardown()
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(result, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_gloo(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, res in enumerate(results):
        assert res["world"] == [r, 2, r, "cpu"] and res["rank"] == r and res["size"] == 2
        assert res["is_main"] == (r == 0)
        assert res["saw_rank1_before_barrier_ended"]
        assert res["all_true_both"] is True and res["all_true_one"] is False  # false on one rank: false on every rank
        assert res["mean"] == {"loss": 0.5, "n": 15.0}
