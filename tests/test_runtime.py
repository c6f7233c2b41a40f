"""cratelab.runtime: device names, the autocast dtype, thread bounds, torchrun's place, memory checks."""

import sys
from types import SimpleNamespace

import pytest
import torch

from cratelab.errors import ConfigError, CratelabError
from cratelab.runtime import (autocast_dtype, check_threads, distributed, is_device_name, max_threads,
                              require_memory, resolve_device, spread_over_gpus, visible_gpus)


def test_no_bf16_on_cpu():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("float32", cpu) is None
    for dtype in ("bfloat16", "float16"):
        with pytest.raises(CratelabError, match=f"train.dtype = '{dtype}'"):
            autocast_dtype(dtype, cpu)


def test_device_names_are_checked_without_touching_a_device():
    assert all(map(is_device_name, ("auto", "cpu", "cuda", "cuda:1", "mps")))
    assert not any(map(is_device_name, ("cuda:x", "tpu", "", "CPU")))
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(CratelabError, match="--device = 'tpu'"):
        resolve_device("tpu", setting="--device")


def test_thread_counts_beyond_the_machine_are_a_config_error():
    assert check_threads(max_threads(), "train.threads") == max_threads()
    with pytest.raises(ConfigError, match=rf"train.threads: must be at most {max_threads()} on this machine") as err:
        check_threads(100_000, "train.threads")
    assert err.value.field == "train.threads"


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert visible_gpus() == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5, GPU-3f2a")  # a scheduler's choice: indices or UUIDs
    assert visible_gpus() == ["5", "GPU-3f2a"]


def test_workers_spread_round_robin_over_several_gpus():
    assert spread_over_gpus(5, ["0", "1"]) == ["0", "1", "0", "1", "0"]
    assert spread_over_gpus(2, ["4", "6", "7"]) == ["4", "6"]
    assert spread_over_gpus(3, ["0"]) == [] and spread_over_gpus(3, []) == []  # all share the one GPU, or none


def test_memory_and_torchrun(monkeypatch):
    with pytest.raises(ConfigError, match="model: a model need at least .* GiB for the weights"):
        require_memory(2**80, "model", "a model", "the weights")
    require_memory(1, "model", "a model", "the weights")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert distributed().world_size == 1 and not distributed().under_torchrun
    for key, value in (("RANK", "3"), ("LOCAL_RANK", "1"), ("WORLD_SIZE", "4")):
        monkeypatch.setenv(key, value)
    place = distributed()
    assert place.under_torchrun and (place.rank, place.local_rank, place.world_size) == (3, 1, 4)


@pytest.mark.parametrize("major, expected", [(7, None), (8, torch.bfloat16), (9, torch.bfloat16)])
def test_bf16_only_on_gpus_with_bf16_units(major, expected, monkeypatch):
    """A V100 or T4 (compute capability 7) only emulates bf16, though torch.cuda.is_bf16_supported() says yes."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(major=major))
    monkeypatch.setattr(torch.version, "hip", None)
    assert autocast_dtype("auto", torch.device("cuda", 0)) == expected
    if expected is None:
        with pytest.raises(CratelabError, match="train.dtype = 'bfloat16' needs a CUDA GPU with bf16 support"):
            autocast_dtype("bfloat16", torch.device("cuda", 0))


def _keep_freed_memory_in_fresh_process(env: dict) -> str:
    # the setting is process-wide and permanent: a child process keeps it away from the other tests
    import subprocess
    import sys
    code = "from cratelab.runtime import keep_freed_memory; print(keep_freed_memory())"
    return subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_applies_on_glibc_unless_the_user_tunes_malloc():
    import os
    env = {k: v for k, v in os.environ.items()
           if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")}
    assert _keep_freed_memory_in_fresh_process(env) == "True"
    assert _keep_freed_memory_in_fresh_process({**env, "MALLOC_MMAP_THRESHOLD_": "131072"}) == "False"
