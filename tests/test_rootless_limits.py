"""The rootless capability check (runtime/rootless.py) against stand-in cgroup trees in tmp dirs.

Each ``standin_cgroup_tree`` is a directory laid out like /sys/fs/cgroup (a cgroup v2
``cgroup.controllers`` at its root, or none for v1/hybrid, and a service's cgroup below it); the
check reads files only, so a stand-in tree shows every case this host (cgroup v1) cannot.
"""

from __future__ import annotations

from pathlib import Path

from garage_p2p.cli.doctor import diagnose
from garage_p2p.runtime.rootless import DELEGATE_FIX, UNIFIED_FIX, check_limits, own_cgroup

from .conftest import doctor_status

UNIT = "/system.slice/garage-peer.service"


def standin_cgroup_tree(
    root: Path, *, v2: bool, host: str = "cpuset cpu io memory hugetlb pids", unit: str | None = None
):
    """A stand-in for /sys/fs/cgroup: v1/hybrid has no root cgroup.controllers (the controllers
    live in per-controller directories); v2 lists the host's, and ``unit`` those delegated to UNIT."""
    root.mkdir(parents=True, exist_ok=True)
    if not v2:
        for controller in ("memory", "pids", "cpu", "unified"):
            (root / controller).mkdir()
        return root
    (root / "cgroup.controllers").write_text(host + "\n")
    if unit is not None:
        here = root / UNIT.lstrip("/")
        here.mkdir(parents=True)
        (here / "cgroup.controllers").write_text(unit + "\n")
        (here / "cgroup.procs").write_text("")
    return root


def test_rootful_podman_always_enforces_the_limits(tmp_path):
    tree = standin_cgroup_tree(tmp_path / "standin-cgroup-v1", v2=False)
    check = check_limits(rootless=False, cgroup_root=tree, cgroup=UNIT)
    assert check.ok and check.fix == ""


def test_cgroup_v1_refuses_and_names_the_kernel_switch(tmp_path):
    tree = standin_cgroup_tree(tmp_path / "standin-cgroup-v1", v2=False)
    for cgroup in (None, UNIT):
        check = check_limits(rootless=True, cgroup_root=tree, cgroup=cgroup)
        assert not check.ok and "cgroup v1" in check.detail and check.fix == UNIFIED_FIX
        assert "systemd.unified_cgroup_hierarchy=1" in check.line and "\n" not in check.line


def test_cgroup_v2_without_a_controller_refuses_naming_it(tmp_path):
    tree = standin_cgroup_tree(tmp_path / "standin-cgroup-v2", v2=True, host="cpuset io memory pids")
    check = check_limits(rootless=True, cgroup_root=tree)
    assert not check.ok and "without the cpu controller" in check.detail


def test_cgroup_v2_host_is_ready_for_a_delegating_unit(tmp_path):
    tree = standin_cgroup_tree(tmp_path / "standin-cgroup-v2", v2=True)
    assert check_limits(rootless=True, cgroup_root=tree).ok


def test_cgroup_v2_needs_the_controllers_delegated_to_the_service(tmp_path):
    tree = standin_cgroup_tree(tmp_path / "standin-cgroup-v2-nodelegate", v2=True, unit="")
    check = check_limits(rootless=True, cgroup_root=tree, cgroup=UNIT)
    assert not check.ok and "memory pids cpu not delegated" in check.detail and check.fix == DELEGATE_FIX
    assert "Delegate=memory pids cpu" in check.line

    partial = standin_cgroup_tree(tmp_path / "standin-cgroup-v2-partial", v2=True, unit="memory pids")
    check = check_limits(rootless=True, cgroup_root=partial, cgroup=UNIT)
    assert not check.ok and "cpu not delegated" in check.detail

    absent = check_limits(rootless=True, cgroup_root=tree, cgroup="/system.slice/other.service")
    assert not absent.ok and absent.fix == DELEGATE_FIX


def test_cgroup_v2_delegated_and_writable_passes(tmp_path):
    tree = standin_cgroup_tree(tmp_path / "standin-cgroup-v2-delegated", v2=True, unit="cpu memory pids")
    check = check_limits(rootless=True, cgroup_root=tree, cgroup=UNIT)
    assert check.ok and UNIT in check.detail


def test_own_cgroup_reads_the_unified_line(tmp_path):
    hybrid = tmp_path / "standin-proc-cgroup"
    hybrid.write_text(f"9:name=systemd:{UNIT}\n4:memory:{UNIT}\n0::{UNIT}\n")
    assert own_cgroup(hybrid) == UNIT
    legacy = tmp_path / "standin-proc-cgroup-legacy"
    legacy.write_text("4:memory:/x\n")
    assert own_cgroup(legacy) is None
    assert own_cgroup(tmp_path / "absent") is None


def test_doctor_fails_on_a_runtime_that_refused(tmp_path):
    status = doctor_status(hardware="cpu")
    tree = standin_cgroup_tree(tmp_path / "standin-cgroup-v1", v2=False)
    refused = check_limits(rootless=True, cgroup_root=tree, cgroup=UNIT)
    found = next(
        c for c in diagnose({**status, "runtime": {"limits": refused.view()}}) if c["check"] == "container limits"
    )
    assert found["state"] == "fail" and found["fix"] == UNIFIED_FIX
    assert not any(c["check"] == "container limits" for c in diagnose({**status, "runtime": None}))
