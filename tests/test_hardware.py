"""GPU detection: parsing nvidia-smi's CSV, and running a stand-in nvidia-smi.

This machine has no GPU: the "GPU machine" below is a fake ``nvidia-smi`` shell script
put first on PATH, printing what a real one prints on a rig with GPUs.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from garage_p2p.core.capabilities import MAX_AD_GPU_KINDS, GpuSpec, Hardware
from garage_p2p.runtime.hardware import detect_hardware, driver_version, parse_nvidia_smi_csv


def test_parse_groups_identical_cards():
    hw = parse_nvidia_smi_csv("NVIDIA GeForce RTX 4090, 24564\nNVIDIA GeForce RTX 4090, 24564\n")
    assert hw.gpus == (GpuSpec(name="NVIDIA GeForce RTX 4090", vram_mib=24564, count=2),)
    assert hw.label == "2x NVIDIA GeForce RTX 4090 (24564 MiB)"


def test_parse_mixed_rig_keeps_first_seen_order():
    text = (
        "NVIDIA GeForce RTX 3090, 24576\r\n"
        "NVIDIA GeForce RTX 4090, 24564\r\n"
        "NVIDIA GeForce RTX 3090, 24576\r\n"
        "  Tesla T4 ,15360  \n"
    )
    hw = parse_nvidia_smi_csv(text)
    assert [(g.name, g.vram_mib, g.count) for g in hw.gpus] == [
        ("NVIDIA GeForce RTX 3090", 24576, 2),
        ("NVIDIA GeForce RTX 4090", 24564, 1),
        ("Tesla T4", 15360, 1),
    ]


def test_same_name_different_memory_are_different_kinds():
    hw = parse_nvidia_smi_csv("NVIDIA A100, 40960\nNVIDIA A100, 81920\n")
    assert [(g.vram_mib, g.count) for g in hw.gpus] == [(40960, 1), (81920, 1)]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n",
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
        "NVIDIA GeForce RTX 4090, [N/A]",
        "NVIDIA GeForce RTX 4090 24564",
        ", 24564",
        "NVIDIA GeForce RTX 4090, -1",
        "NVIDIA GeForce RTX 4090, 24564.5",
        "NVIDIA GeForce RTX 4090, 99999999999",
        "\x00\xff garbage, ,,,",
    ],
)
def test_parse_ignores_malformed_lines(text):
    assert parse_nvidia_smi_csv(text) == Hardware()
    # ...and a good line among them still counts.
    assert parse_nvidia_smi_csv(text + "\nTesla T4, 15360\n").gpus == (GpuSpec(name="Tesla T4", vram_mib=15360),)


def test_parse_stays_within_the_wire_limits():
    many = "".join(f"GPU model {i}, 1024\n" for i in range(100)) + "x" * 300 + ", 8\n"
    hw = parse_nvidia_smi_csv(many + "GPU model 0, 1024\n" * 2000)
    assert len(hw.gpus) == MAX_AD_GPU_KINDS  # as many kinds as an ad carries
    assert hw.gpus[0].count == 1024  # GpuSpec caps the count
    Hardware.model_validate_json(hw.model_dump_json())  # still a valid wire model


def fake_nvidia_smi(tmp_path: Path, monkeypatch, body: str) -> None:
    """Put a stand-in ``nvidia-smi`` (a shell script, NOT a GPU) first on PATH."""
    bin_dir = tmp_path / "fake-gpu-machine-bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


STANDIN_GPU_RIG = r"""
case "$1" in
  --query-gpu=name,memory.total)
    printf 'NVIDIA GeForce RTX 4090, 24564\nNVIDIA GeForce RTX 4090, 24564\n'
    printf 'NVIDIA GeForce RTX 3060, 12288\n' ;;
  --query-gpu=driver_version) printf '550.54.15\n550.54.15\n550.54.15\n' ;;
  *) echo "unexpected arguments: $*" >&2; exit 2 ;;
esac
"""


def test_detect_on_a_stand_in_gpu_machine(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, STANDIN_GPU_RIG)
    hw = detect_hardware()
    assert hw.label == "2x NVIDIA GeForce RTX 4090 (24564 MiB), 1x NVIDIA GeForce RTX 3060 (12288 MiB)"
    assert driver_version() == "550.54.15"


def test_detect_without_nvidia_smi_is_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no nvidia-smi anywhere
    assert detect_hardware() == Hardware()
    assert detect_hardware().label == "cpu"
    assert driver_version() is None
    assert detect_hardware(str(tmp_path / "no-such-binary")) == Hardware()


def test_detect_with_a_failing_driver_is_cpu(tmp_path, monkeypatch, caplog):
    fake_nvidia_smi(
        tmp_path,
        monkeypatch,
        'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."\nexit 9\n',
    )
    with caplog.at_level(logging.WARNING, logger="garage_p2p.runtime.hardware"):
        assert detect_hardware() == Hardware()
    assert "exited with 9" in caplog.text and "couldn't communicate" in caplog.text
    assert driver_version() is None


def test_detect_with_a_hung_nvidia_smi_is_cpu(tmp_path, monkeypatch):
    # exec: the timeout kills the process that holds the pipes, not a parent shell.
    fake_nvidia_smi(tmp_path, monkeypatch, "exec sleep 30\n")
    start = time.monotonic()
    assert detect_hardware(timeout=0.5) == Hardware()
    assert time.monotonic() - start < 5


def test_detect_with_a_non_executable_nvidia_smi_is_cpu(tmp_path):
    not_exec = tmp_path / "nvidia-smi"
    not_exec.write_text("#!/bin/sh\necho 'Tesla T4, 15360'\n")
    not_exec.chmod(0o644)
    assert detect_hardware(str(not_exec)) == Hardware()
