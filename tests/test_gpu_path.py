"""The GPU path's preflight: benchmarks/gpu_path.py stops at once, naming what is missing; the CDI spec reader
and ``garage doctor``'s CDI check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from garage_p2p.cli.doctor import diagnose
from garage_p2p.runtime.cdi import nvidia_cdi_specs

from .conftest import doctor_status

REPO = Path(__file__).resolve().parents[1]
STANDIN_SMI = REPO / "tests" / "data" / "standin-nvidia-smi"
YAML_SPEC = """---
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits: {deviceNodes: [{path: /dev/nvidia0}]}
- name: all
  containerEdits: {deviceNodes: [{path: /dev/nvidia0}]}
"""


def gpu_path(path_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": str(path_dir)}
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_path.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )


def test_without_nvidia_smi_it_exits_at_once_naming_it(tmp_path):
    done = gpu_path(tmp_path)  # a PATH with nothing on it
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_path: cannot run here: no nvidia-smi on PATH"), done.stderr
    assert done.stdout == ""


def test_with_a_gpu_but_no_cdi_spec_it_names_the_fix(tmp_path):
    bin_dir = tmp_path / "standin-bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").symlink_to(STANDIN_SMI)  # a stand-in: reports one GPU
    empty = tmp_path / "cdi"
    empty.mkdir()
    done = gpu_path(bin_dir, "--cdi-dir", str(empty))
    assert done.returncode == 2
    assert "no nvidia.com/gpu CDI spec" in done.stderr and "nvidia-ctk cdi generate" in done.stderr, done.stderr


def test_cdi_specs_are_read_from_yaml_and_json(tmp_path):
    (tmp_path / "nvidia.yaml").write_text(YAML_SPEC)
    (tmp_path / "other.json").write_text('{"cdiVersion": "0.5.0", "kind": "vendor.com/fpga", "devices": []}')
    (tmp_path / "gpu.json").write_text('{"kind": "nvidia.com/gpu", "devices": [{"name": "1", "containerEdits": {}}]}')
    specs = nvidia_cdi_specs((tmp_path, tmp_path / "absent"))
    assert [(s.path.name, s.devices) for s in specs] == [("gpu.json", ("1",)), ("nvidia.yaml", ("0", "all"))]


def test_doctor_checks_the_cdi_spec_on_a_gpu_rig(tmp_path):
    status = doctor_status(hardware="1x NVIDIA GeForce RTX 4090")
    missing = next(c for c in diagnose(status, []) if c["check"] == "gpu cdi")
    assert missing["state"] == "fail" and "nvidia-ctk cdi generate" in missing["fix"]
    (tmp_path / "nvidia.yaml").write_text(YAML_SPEC)
    found = next(c for c in diagnose(status, nvidia_cdi_specs((tmp_path,))) if c["check"] == "gpu cdi")
    assert found["state"] == "ok" and "nvidia.com/gpu=0,all" in found["detail"]
    assert not any(c["check"] == "gpu cdi" for c in diagnose({**status, "hardware": "cpu"}, []))
