"""The container the runtime asks Podman for (the integration test reads the same flags from inside)."""

from pathlib import Path

import pytest

from garage_p2p.runtime.container_spec import MODEL_MOUNT, RuntimeSpec, create_kwargs, server_args
from garage_p2p.settings import SettingsError, load_settings


def spec(**extra) -> RuntimeSpec:
    values = dict(
        image="localhost/x:1",
        model_dir=Path("/models/llama"),
        served_name="llama",
        host_port=8001,
        peer_id="12D3KooWabcdefghijk",
    )
    values.update(extra)
    return RuntimeSpec(**values)


def test_hardening_is_on_by_default():
    kw = create_kwargs(spec())
    assert kw["ports"] == {"8000/tcp": ("127.0.0.1", 8001)}
    assert kw["cap_drop"] == ["ALL"] and kw["no_new_privileges"] is True
    assert kw["read_only"] is True and kw["user"] == "65534:65534" and kw["init"] is True
    model, tmp = kw["mounts"]
    assert model == {"type": "bind", "source": "/models/llama", "target": MODEL_MOUNT, "read_only": True}
    assert tmp["type"] == "tmpfs" and tmp["target"] == "/tmp"
    assert kw["mem_limit"] == "16g" and kw["pids_limit"] == 4096
    assert kw["restart_policy"] == {"Name": "no"}  # the runtime restarts, with backoff
    assert kw["environment"]["HF_HUB_OFFLINE"] == "1"


def test_cpu_and_gpu_arguments():
    cpu = server_args(spec())
    assert cpu[:4] == ["--model", MODEL_MOUNT, "--served-model-name", "llama"]
    assert "--enforce-eager" in cpu and "--tensor-parallel-size" not in cpu
    assert create_kwargs(spec())["devices"] == []
    gpu = spec(gpus=("0", "1"), gpu_memory_fraction=0.7, vllm_args=("--max-model-len", "8192"))
    args = server_args(gpu)
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.7"
    assert args[-2:] == ["--max-model-len", "8192"] and "--enforce-eager" not in args
    assert create_kwargs(gpu)["devices"] == ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]
    assert gpu.gpu_count == 2 and spec().gpu_count == 1
    assert create_kwargs(spec(gpus=("all",)))["devices"] == ["nvidia.com/gpu=all"]


def test_container_name_is_safe_and_bounded():
    name = spec(served_name="meta/Llama 3.1:8b" * 5).name
    assert len(name) <= 63 and all(c.isalnum() or c in "-_." for c in name)


def test_runtime_settings(tmp_path):
    s = load_settings(
        {"home": tmp_path, "runtime_model": tmp_path, "runtime_gpus": "0,1"},
        environ={"GARAGE_RUNTIME_ARGS": "--max-model-len,4096"},
    )
    assert s.gpu_list == ("0", "1") and s.runtime_args == ["--max-model-len", "4096"]
    with pytest.raises(SettingsError, match="runtime_gpus"):
        load_settings({"home": tmp_path, "runtime_gpus": "two"}, environ={})


def test_model_ids_resolve_to_the_newest_cached_snapshot(tmp_path):
    import os
    import time

    from garage_p2p.runtime.model_dirs import resolve_model

    snapshots = tmp_path / "models--org--tiny-model" / "snapshots"
    old, new = snapshots / "aaa", snapshots / "bbb"
    old.mkdir(parents=True)
    new.mkdir()
    os.utime(old, (time.time() - 100, time.time() - 100))
    assert resolve_model("org/tiny-model", tmp_path) == (new.resolve(), "org/tiny-model")
    assert resolve_model(str(old), tmp_path) == (old.resolve(), "aaa")
    with pytest.raises(SettingsError, match="not in the local Hugging Face cache"):
        resolve_model("org/missing", tmp_path)
    with pytest.raises(SettingsError, match="is not a directory"):
        resolve_model(str(tmp_path / "nope"), tmp_path)
