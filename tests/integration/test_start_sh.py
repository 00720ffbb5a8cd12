"""bootstrap/start.sh, the one-command rig install, in a throwaway root.

The root is a Podman container running systemd as init (``--systemd=always``), so
``systemctl enable --now garage-peer`` is real: systemd starts the daemon as the ``garage`` user
under the unit's hardening and the script waits for its /health. The image is the project's
debootstrapped base (``localhost/garage-debian:bookworm``, built through
``garage_p2p.runtime.images.build_base`` if missing) plus systemd, python3-venv, podman and runc
from the Debian mirror, built once and kept by tag. The container has no network
(``--network none``): pip installs from a wheelhouse of the package's dependencies built once on
this machine (``~/.cache/garage/startsh/wheels-*``) and passed as PIP_NO_INDEX/PIP_FIND_LINKS,
which start.sh leaves to pip like any pip configuration. The GPU steps are skipped (--skip-gpu).

The tests run in order on one container: a missing dependency first (nothing may change), then
the install, a second run (a no-op), the model container under the service (rootless Podman:
refused with its fix where limits cannot hold, as on cgroup v1; served and hardened where they
can), ``--uninstall`` (keeps the identity), a reinstall (same peer id) and ``--uninstall
--purge``, after which the container's files, users, subordinate ids and the garage user's
Podman storage must be as before.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

from garage_p2p.runtime.images import BASE_IMAGE, VLLM_CPU_IMAGE, build_base, image_exists
from garage_p2p.runtime.podman_service import podman_env
from garage_p2p.runtime.rootless import check_limits
from garage_p2p.runtime.vllm_cpu import default_tiny_model
from tools.testkit import standin_command

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("GARAGE_STARTSH_CACHE") or Path.home() / ".cache" / "garage" / "startsh")
HOME = "/var/lib/garage"
PREFIX = "/opt/garage"
STEPS = ["user", "subids", "home", "venv", "links", "identity", "unit", "enable", "start"]
MODEL = "/models/tiny"
# Where the host has cgroup v2 (the rig's systemd delegates from it), rootless limits can hold and
# the model test serves from vLLM-CPU; on cgroup v1 (this project's CI host) the runtime must refuse.
ROOTLESS_LIMITS = check_limits(rootless=True).ok

CONTAINERFILE = f"""\
FROM {BASE_IMAGE}
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      systemd systemd-sysv dbus python3-venv podman runc uidmap catatonit \\
 && apt-get clean && rm -rf /var/lib/apt/lists/* \\
 && printf '%s\\n' '[storage]' 'driver = "vfs"' 'runroot = "/run/containers/storage"' \\
      'graphroot = "/var/lib/containers/storage"' > /etc/containers/storage.conf \\
 && systemctl mask podman.service podman.socket podman-auto-update.service podman-auto-update.timer \\
      podman-restart.service
"""
# (Podman's own units fail in a container without its settings; masked, the root is "running".)
# Podman inside the rig: overlay cannot stack on the rig's own overlay root, so its storage is vfs
# (root's and, through the driver named here, the garage user's rootless storage too); uidmap gives
# the setuid newuidmap/newgidmap that rootless Podman maps the user's subordinate ids with, and
# catatonit the container's init (both only recommended by Debian's podman).

# What the comparison of the root before and after leaves out: kernel and runtime file systems,
# logs and caches, systemd's own state (timers, random seed), the test's mounts, and the backups
# shadow-utils writes itself on every useradd/userdel (/etc/passwd- & co. hold the previous copy).
LISTING = r"""
import hashlib, os, stat, sys
SKIP = {"/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", "/var/log", "/var/cache", "/var/lib/systemd",
        "/src", "/wheels", "/models",
        "/etc/passwd-", "/etc/group-", "/etc/shadow-", "/etc/gshadow-", "/etc/subuid-", "/etc/subgid-"}
out = []
def walk(d):
    for n in sorted(os.listdir(d)):
        p = "/" + n if d == "/" else d + "/" + n
        if p in SKIP:
            continue
        st = os.lstat(p)
        line = f"{p}\t{oct(st.st_mode)}\t{st.st_uid}:{st.st_gid}"
        if stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            line += "\t" + h.hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            line += "\t-> " + os.readlink(p)
        out.append(line)
        if stat.S_ISDIR(st.st_mode):
            walk(p)
walk("/")
sys.stdout.write("\n".join(out) + "\n")
"""

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("podman") is None, reason="needs root and Podman (bootstrap/dev-env.sh)"
)


def _env() -> dict[str, str]:
    return podman_env(CACHE)


def _rig_image() -> str:
    """The systemd root image, built once per Containerfile text and kept by tag."""
    tag = "localhost/garage-startsh-rig:" + hashlib.sha256(CONTAINERFILE.encode()).hexdigest()[:12]
    env = _env()
    if image_exists(tag, env):
        return tag
    build_base(CACHE)  # the project's debootstrap path; returns at once when the base exists
    ctx = CACHE / "rig-image"
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Containerfile").write_text(CONTAINERFILE)
    result = subprocess.run(
        ["podman", "build", "--pull=never", "-t", tag, str(ctx)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tag


def _wheelhouse() -> Path:
    """Wheels of the package's dependencies (and its build backend), built once per pyproject."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs = sorted(project["project"]["dependencies"]) + sorted(project["build-system"]["requires"]) + ["wheel"]
    key = hashlib.sha256(("\n".join(reqs) + sys.version).encode()).hexdigest()[:12]
    final = CACHE / f"wheels-{key}"
    if (final / ".complete").exists():
        return final
    tmp = CACHE / f"wheels-{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", str(tmp), *reqs],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (tmp / ".complete").touch()
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def _snapshot_source(dest: Path) -> Path:
    """This checkout as it is now (the working tree), without the venv, caches and git."""
    skip = {
        ".git",
        ".venv",
        "build",
        "dist",
        "__pycache__",
        ".pytest_cache",
        ".hypothesis",
        ".ruff_cache",
        "node_modules",
    }

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        return None if any(p in skip or p.endswith(".egg-info") for p in parts) else info

    archive = dest / "src.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(REPO, arcname="src", filter=keep)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="tar")
    archive.unlink()
    return dest / "src"


class Rig:
    """One systemd container; ``sh`` runs a command inside it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.env = _env()

    def sh(self, command: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        flags = [f"--env={k}={v}" for k, v in (env or {}).items()]
        return subprocess.run(
            ["podman", "exec", *flags, self.name, "bash", "-c", command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start_sh(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        # Offline: pip takes everything from the wheelhouse (plain pip configuration).
        return self.sh(
            "bash /src/bootstrap/start.sh " + " ".join(args),
            timeout=timeout,
            env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheels"},
        )

    def listing(self) -> list[str]:
        result = subprocess.run(
            ["podman", "exec", "-i", self.name, "python3", "-I", "-B", "-"],
            input=LISTING,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout.splitlines()

    def file_hash(self, path: str) -> str:
        result = self.sh(f"sha256sum {path}")
        assert result.returncode == 0, result.stderr
        return result.stdout.split()[0]


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        image_job = pool.submit(_rig_image)
        wheels_job = pool.submit(_wheelhouse)
        image, wheels = image_job.result(), wheels_job.result()
    src = _snapshot_source(tmp_path_factory.mktemp("startsh"))
    name = f"garage-startsh-{os.getpid()}"
    env = _env()
    subprocess.run(["podman", "rm", "-f", name], env=env, capture_output=True, check=False)
    # CAP_SYS_ADMIN is the one capability needed beyond Podman's defaults: without it systemd
    # silently skips the unit's mount namespacing (ProtectSystem=, ReadWritePaths=, PrivateTmp=),
    # with it the daemon runs under the unit's real hardening.
    run = subprocess.run(
        [
            "podman",
            "run",
            "-d",
            "--name",
            name,
            "--systemd=always",
            "--cap-add=SYS_ADMIN",
            "--network",
            "none",
            "-v",
            f"{src}:/src:ro",
            "-v",
            f"{wheels}:/wheels:ro",
            "-v",
            f"{default_tiny_model()}:{MODEL}:ro",
            # A container of the garage user's inside the rig mounts its own /proc: only where it runs.
            *(["--security-opt", "unmask=ALL"] if ROOTLESS_LIMITS else []),
            image,
            "/sbin/init",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    rig = Rig(name)
    try:
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            state = rig.sh("systemctl is-system-running", timeout=30).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.5)
        assert state in ("running", "degraded"), f"systemd in the container did not come up: {state!r}"
        rig.before = rig.listing()
        yield rig
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "5", name], env=env, capture_output=True, timeout=120, check=False)


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    return errors[0]


def _step_lines(output: str) -> dict[str, str]:
    """``garage: STEP  text`` lines → {step: text} (the last line of each step)."""
    steps = {}
    for line in output.splitlines():
        m = re.match(r"garage: (\S+)\s+(.*)$", line)
        if m:
            steps[m.group(1)] = m.group(2)
    return steps


def _diff(before: list[str], after: list[str]) -> str:
    b, a = set(before), set(after)
    lines = [f"- {x}" for x in sorted(b - a)] + [f"+ {x}" for x in sorted(a - b)]
    return "\n".join(lines[:60])


def test_a_missing_dependency_stops_with_one_line_naming_the_fix(rig):
    moved = rig.sh("mv /usr/bin/podman /usr/bin/podman.hidden")
    assert moved.returncode == 0, moved.stderr
    try:
        result = rig.start_sh("--skip-gpu")
    finally:
        assert rig.sh("mv /usr/bin/podman.hidden /usr/bin/podman").returncode == 0
    assert result.returncode != 0
    line = _one_error_line(result)
    assert "Podman" in line and "apt-get install -y podman" in line, line
    # The checks come before any change.
    assert rig.listing() == rig.before, _diff(rig.before, rig.listing())


def test_install_starts_the_daemon_under_systemd(rig):
    result = rig.start_sh("--skip-gpu")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr  # no warnings, no noise
    steps = _step_lines(result.stdout)
    assert steps["identity"].startswith("created "), steps
    assert steps["gpu"] == "skipped (--skip-gpu)"
    assert "skipped" in steps["bench"]
    printed_id = re.search(r"peer id +(12D3Koo\w+)", result.stdout).group(1)

    assert rig.sh("systemctl is-active garage-peer").stdout.strip() == "active"
    assert rig.sh("systemctl is-enabled garage-peer").stdout.strip() == "enabled"
    health = rig.sh(
        f"{PREFIX}/bin/python -c 'import urllib.request; "
        'print(urllib.request.urlopen("http://127.0.0.1:8000/health", timeout=5).read().decode())\''
    )
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["peer_id"] == printed_id

    # The identity is the one `garage init` made: asking it again (as the garage user) gives the same id.
    init = rig.sh(f"runuser -u garage -- env GARAGE_HOME={HOME} garage init")
    assert init.returncode == 0, init.stderr
    assert init.stdout.strip() == printed_id
    status = rig.sh(f"garage status --home {HOME} --json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["peer_id"] == printed_id

    # The daemon runs as garage, under the unit's hardening: its own mount namespace in which
    # the system is read-only and only the home is writable; the home is private.
    pid = rig.sh("systemctl show -p MainPID --value garage-peer").stdout.strip()
    assert rig.sh(f"stat -c %U /proc/{pid}").stdout.strip() == "garage"
    mounts = rig.sh(f"cat /proc/{pid}/mountinfo").stdout
    assert re.search(rf"^\S+ \S+ \S+ \S+ {HOME} rw,", mounts, re.MULTILINE), mounts
    assert re.search(r"^\S+ \S+ \S+ / / ro,", mounts, re.MULTILINE), mounts
    perms = rig.sh(
        f"stat -c '%a %U' {HOME} {HOME}/identity.key; readlink /usr/local/bin/garage /usr/local/bin/garage-peer"
    ).stdout.split("\n")
    assert perms[:4] == ["700 garage", "600 garage", f"{PREFIX}/bin/garage", f"{PREFIX}/bin/garage-peer"], perms
    rig.peer_id = printed_id
    rig.key_hash = rig.file_hash(f"{HOME}/identity.key")


def _outside_home(listing: list[str]) -> list[str]:
    """The listing without the daemon's own files (its databases change while it runs)."""
    return [line for line in listing if not line.startswith(HOME + "/")]


def test_a_second_run_changes_nothing(rig):
    pid = rig.sh("systemctl show -p MainPID --value garage-peer").stdout.strip()
    before = _outside_home(rig.listing())
    result = rig.start_sh("--skip-gpu")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr
    steps = _step_lines(result.stdout)
    for name in STEPS:
        assert steps[name].startswith("already done"), (name, steps)
    assert "skipped" in steps["bench"]
    assert _outside_home(rig.listing()) == before, _diff(before, _outside_home(rig.listing()))
    assert rig.sh("systemctl show -p MainPID --value garage-peer").stdout.strip() == pid  # not restarted
    assert rig.file_hash(f"{HOME}/identity.key") == rig.key_hash


def test_bench_runs_once_a_backend_is_configured(rig):
    """With a model server configured, the bench step measures it (a CPU server: --skip-gpu does not stop it)."""
    # The stand-in is a tool of the checkout (mounted at /src), run by the rig's installed interpreter.
    standin = shlex.join(standin_command(18101, python=f"{PREFIX}/bin/python"))
    started = rig.sh(f"cd /src && nohup {standin} >/dev/null 2>&1 & echo $!")
    pid = started.stdout.strip()
    assert pid.isdigit(), started.stderr
    try:
        up = rig.sh(
            f"for i in $(seq 100); do {PREFIX}/bin/python -c 'import urllib.request; "
            'urllib.request.urlopen("http://127.0.0.1:18101/v1/models", timeout=1)\' 2>/dev/null && exit 0; '
            "sleep 0.2; done; exit 1"
        )
        assert up.returncode == 0, "the stand-in backend did not come up"
        config = rig.sh(
            f"printf 'backends = {{ tiny = \"http://127.0.0.1:18101/v1\" }}\\n' > {HOME}/config.toml "
            f"&& chown garage:garage {HOME}/config.toml"
        )
        assert config.returncode == 0, config.stderr
        result = rig.start_sh("--skip-gpu")
        assert result.returncode == 0, result.stdout + result.stderr
        steps = _step_lines(result.stdout)
        assert steps["bench"] == f"saved {HOME}/bench.json", steps
        figures = json.loads(rig.sh(f"cat {HOME}/bench.json").stdout)
        assert set(figures) == {"tiny"} and figures["tiny"]["aggregate_tps"] > 0, figures
        again = _step_lines(rig.start_sh("--skip-gpu").stdout)
        assert again["bench"].startswith("already done"), again
    finally:
        rig.sh(f"kill {pid}")


def _garage_podman(rig: Rig, *args: str) -> subprocess.CompletedProcess:
    """The garage user's rootless Podman, as the unit runs it (its home, XDG_RUNTIME_DIR=/run/garage)."""
    return rig.sh(
        f"cd / && runuser -u garage -- env HOME={HOME} XDG_RUNTIME_DIR=/run/garage podman " + shlex.join(args)
    )


def _runtime_status(rig: Rig) -> dict:
    result = rig.sh(f"garage runtime status --json --home {HOME}")
    return json.loads(result.stdout) if result.returncode == 0 else {}


def _wait(rig: Rig, what: str, predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    journal = rig.sh("journalctl -u garage-peer -n 30 -o cat --no-pager").stdout
    raise AssertionError(f"{what} within {timeout} s; journal:\n{journal}")


def test_the_service_runs_its_model_container_rootless_or_refuses_without_limits(rig):
    """runtime_model set: start.sh loads the image into garage's rootless storage; the service's
    runtime serves from a hardened, limited rootless container, or (cgroup v1) refuses with the fix."""
    # Where the runtime refuses before it needs the image, the small base image stands for the
    # 2.6 GB vLLM-CPU one: the nested vfs storage would copy that twice, minutes for no extra check.
    image = VLLM_CPU_IMAGE if ROOTLESS_LIMITS else BASE_IMAGE
    try:
        _serve_or_refuse(rig, image)
    finally:
        # Root's image in the rig is the test's doing (an image built there), not start.sh's: it goes
        # again, with what root's Podman made around it (caches, its network lock).
        rig.sh("podman rmi --all --force")
        before = {line.split("\t", 1)[0] for line in rig.before}
        made: list[str] = []
        for path in sorted({line.split("\t", 1)[0] for line in rig.listing()} - before):
            if path.startswith(("/var/lib/containers/", "/etc/cni/net.d/")) and not any(
                path.startswith(m + "/") for m in made
            ):
                made.append(path)
        rig.sh("rm -rf -- " + shlex.join(made))


def _serve_or_refuse(rig: Rig, image: str) -> None:
    save = subprocess.Popen(["podman", "save", image], stdout=subprocess.PIPE, env=rig.env)
    load = subprocess.run(
        ["podman", "exec", "-i", rig.name, "podman", "load"],
        stdin=save.stdout,
        env=rig.env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    save.stdout.close()
    assert save.wait() == 0 and load.returncode == 0, load.stderr
    config = rig.sh(
        f'printf \'runtime_model = "{MODEL}"\\nruntime_name = "tiny"\\nruntime_image = "{image}"\\n'
        f'runtime_memory = "3g"\\n\' > {HOME}/config.toml && chown garage:garage {HOME}/config.toml'
    )
    assert config.returncode == 0, config.stderr
    result = rig.start_sh("--skip-gpu")
    assert result.returncode == 0, result.stdout + result.stderr
    steps = _step_lines(result.stdout)
    assert steps["images"] == f"{image}: loaded into garage's Podman storage", steps
    images = _garage_podman(rig, "images", "--format", "{{.Repository}}:{{.Tag}}")
    assert images.returncode == 0 and image in images.stdout.split(), images.stdout + images.stderr
    assert _step_lines(rig.start_sh("--skip-gpu").stdout)["images"] == f"already done ({image})"

    assert rig.sh("systemctl restart garage-peer").returncode == 0
    if not ROOTLESS_LIMITS:
        # cgroup v1: start.sh said it in one line naming the fix, and nothing runs unlimited.
        line = _one_error_line(result)
        assert "will not start" in line and "systemd.unified_cgroup_hierarchy=1" in line, line
        _wait(rig, "the runtime refusing", lambda: _runtime_status(rig).get("state") == "refused", 60)
        status = _runtime_status(rig)
        assert "cgroup v1" in status["last_exit"] and "systemd.unified_cgroup_hierarchy=1" in status["last_exit"]
        assert status["limits"]["ok"] is False and status["container_id"] is None
        doctor = rig.sh(f"garage doctor --home {HOME}")
        assert doctor.returncode == 1, doctor.stdout
        assert "[FAIL] container limits: cgroup v1" in doctor.stdout, doctor.stdout
        assert "fix: boot with systemd.unified_cgroup_hierarchy=1" in doctor.stdout, doctor.stdout
        listed = _garage_podman(rig, "ps", "-a", "--format", "{{.Names}}")
        assert listed.returncode == 0 and listed.stdout.strip() == "", listed.stdout + listed.stderr
        return

    # cgroup v2 with delegation: the rootless container serves a chat through a second peer.
    assert "will not start" not in result.stderr, result.stderr
    _wait(rig, "the model container healthy", lambda: _runtime_status(rig).get("state") == "healthy", 600)
    addr = json.loads(rig.sh(f"garage status --home {HOME} --json").stdout)["addrs"][0]
    consumer = rig.sh(
        f"mkdir -p /tmp/consumer && nohup {PREFIX}/bin/garage-peer --home /tmp/consumer --no-mdns "
        f"--listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:8100 --bootstrap {addr} >/tmp/consumer.log 2>&1 & echo $!"
    )
    pid = consumer.stdout.strip()
    try:
        chat = rig.sh(
            f"for i in $(seq 120); do {PREFIX}/bin/python -c 'import json, urllib.request; "
            'r = urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:8100/v1/chat/completions", '
            'json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode(), '
            '{"content-type": "application/json"}), timeout=60); print(json.load(r)["usage"]["completion_tokens"])\' '
            "2>/dev/null && exit 0; sleep 1; done; exit 1",
            timeout=600,
        )
        assert chat.returncode == 0 and int(chat.stdout.split()[-1]) > 0, chat.stdout + chat.stderr
    finally:
        rig.sh(f"kill {pid}")
    name = _garage_podman(rig, "ps", "--format", "{{.Names}}").stdout.split()[0]
    inspect = json.loads(_garage_podman(rig, "inspect", name).stdout)[0]
    host = inspect["HostConfig"]
    assert host["Memory"] == 3 * 1024**3 and host["PidsLimit"] == 4096 and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] and not host.get("CapAdd") and "no-new-privileges" in " ".join(host["SecurityOpt"])

    def inside(command: str) -> str:
        return _garage_podman(rig, "exec", name, "sh", "-c", command).stdout

    status = inside("cat /proc/self/status")
    assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status
    assert "uid=65534" in inside("id")
    assert inside("cat /sys/fs/cgroup/memory.max").strip() == str(3 * 1024**3)
    assert inside("cat /sys/fs/cgroup/pids.max").strip() == "4096"
    assert "Read-only file system" in inside("touch /etc/x 2>&1; touch /model/x 2>&1")


def test_uninstall_keeps_the_identity_and_removes_the_rest(rig):
    result = rig.sh("bash /src/bootstrap/start.sh --uninstall")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{HOME}/identity.key" in result.stdout and "back it up" in result.stdout
    assert rig.file_hash(f"{HOME}/identity.key") == rig.key_hash
    assert rig.sh(f"ls -A {HOME}").stdout.split() == [".install-manifest", "identity.key"]
    assert rig.sh("systemctl is-active garage-peer").stdout.strip() != "active"
    gone = [
        "/etc/systemd/system/garage-peer.service",
        "/etc/systemd/system/multi-user.target.wants/garage-peer.service",
        "/usr/local/bin/garage",
        "/usr/local/bin/garage-peer",
        PREFIX,
    ]
    for path in gone:
        assert rig.sh(f"test -e {path} || test -L {path}").returncode != 0, f"{path} is still there"
    assert rig.sh("getent passwd garage").returncode != 0
    assert rig.sh("getent group garage").returncode != 0
    assert rig.sh("grep garage /etc/subuid /etc/subgid").returncode == 1  # the subordinate ids went with the user
    # Only the home (with the key) differs from the root before the install.
    after = rig.listing()
    extra = sorted(set(after) - set(rig.before))
    assert [line.split("\t")[0] for line in extra] == [HOME, f"{HOME}/.install-manifest", f"{HOME}/identity.key"], (
        _diff(rig.before, after)
    )
    assert not set(rig.before) - set(after), _diff(rig.before, after)


def test_reinstall_reuses_the_identity_and_purge_leaves_the_root_as_before(rig):
    result = rig.start_sh("--skip-gpu")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _step_lines(result.stdout)["identity"] == f"already done (peer id {rig.peer_id})"
    assert rig.sh("systemctl is-active garage-peer").stdout.strip() == "active"

    result = rig.sh("bash /src/bootstrap/start.sh --uninstall --purge")
    assert result.returncode == 0, result.stdout + result.stderr
    after = rig.listing()
    assert after == rig.before, _diff(rig.before, after)  # no subuid/subgid entry, no garage Podman storage
    assert rig.sh("grep garage /etc/subuid /etc/subgid").returncode == 1
    assert rig.sh("ls /run/garage /var/lib/garage").returncode != 0
    # And a second purge has nothing left to do.
    again = rig.sh("bash /src/bootstrap/start.sh --uninstall --purge")
    assert again.returncode == 0 and "nothing to uninstall" in again.stdout, again.stdout + again.stderr


def test_install_deps_installs_what_is_missing_and_a_bad_source_is_one_line(tmp_path):
    """--install-deps in a rig with network (the Debian mirror): podman removed, then put back by the script."""
    image = _rig_image()
    name = f"garage-startsh-deps-{os.getpid()}"
    env = _env()
    src = _snapshot_source(tmp_path)
    run = subprocess.run(
        ["podman", "run", "-d", "--name", name, "--systemd=always", "-v", f"{src}:/src:ro", image, "/sbin/init"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    try:
        rig = Rig(name)
        removed = rig.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq podman", timeout=120)
        assert removed.returncode == 0 and rig.sh("command -v podman").returncode != 0, removed.stderr
        # No package index: pip cannot find this version, so the install stops at the venv step.
        result = rig.sh(
            "bash /src/bootstrap/start.sh --skip-gpu --install-deps --source garage-p2p==999",
            env={"PIP_NO_INDEX": "1"},
            timeout=600,
        )
        assert "deps      installing podman runc" in result.stdout, result.stdout + result.stderr
        assert rig.sh("command -v podman").returncode == 0
        assert result.returncode != 0
        line = _one_error_line(result)
        assert "pip install garage-p2p==999 failed" in line and "No matching distribution" in line, line
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "5", name], env=env, capture_output=True, timeout=120, check=False)


def test_usage_errors_are_one_line():
    script = str(REPO / "bootstrap" / "start.sh")
    bad = subprocess.run(["bash", script, "--bogus"], capture_output=True, text=True, timeout=30, check=False)
    assert bad.returncode == 2 and _one_error_line(bad) == "garage: error: unknown option --bogus (see --help)"
    purge = subprocess.run(["bash", script, "--purge"], capture_output=True, text=True, timeout=30, check=False)
    assert purge.returncode == 2 and "--purge goes with --uninstall" in _one_error_line(purge)
    # `nobody` may not be able to read this checkout (a clone under a 0700 temporary directory): it runs a copy
    # of the script beside a pyproject.toml (what the script takes for a checkout), in a directory it can read.
    with tempfile.TemporaryDirectory(dir="/tmp") as shared:
        os.chmod(shared, 0o755)
        (Path(shared) / "bootstrap").mkdir(mode=0o755)
        copy = Path(shutil.copy(script, Path(shared) / "bootstrap" / "start.sh"))
        copy.chmod(0o755)
        (Path(shared) / "pyproject.toml").write_text("")
        not_root = subprocess.run(
            ["runuser", "-u", "nobody", "--", "bash", str(copy), "--skip-gpu"],
            cwd="/",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert not_root.returncode == 3 and "run as root" in _one_error_line(not_root)
    usage = subprocess.run(["bash", script, "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert usage.returncode == 0 and "--uninstall" in usage.stdout and "set -euo" not in usage.stdout
    if shutil.which("shellcheck"):
        check = subprocess.run(["shellcheck", script], capture_output=True, text=True, timeout=60, check=False)
        assert check.returncode == 0, check.stdout


def test_other_prefix_and_home_no_start_then_uninstall_and_purge_in_two_steps(rig):
    """--prefix/--home/--no-start; --uninstall finds the prefix from the unit; a later --purge ends the kept
    identity."""
    prefix, home = "/srv/rig/garage", "/srv/garage-home"
    result = rig.start_sh("--skip-gpu", "--no-start", "--prefix", prefix, "--home", home)
    assert result.returncode == 0, result.stdout + result.stderr
    steps = _step_lines(result.stdout)
    assert steps["start"].startswith("skipped (--no-start)"), steps
    assert rig.sh("systemctl is-enabled garage-peer").stdout.strip() == "enabled"
    assert rig.sh("systemctl is-active garage-peer").stdout.strip() != "active"
    unit = rig.sh("cat /etc/systemd/system/garage-peer.service").stdout
    assert f"ExecStart={prefix}/bin/garage-peer\n" in unit and f"Environment=GARAGE_HOME={home}\n" in unit
    assert (
        f"ReadWritePaths={home}\n" in unit and "StateDirectory=" not in unit
    )  # StateDirectory= is for /var/lib/NAME only
    assert rig.sh("readlink /usr/local/bin/garage").stdout.strip() == f"{prefix}/bin/garage"
    # It starts from the unit as installed.
    assert rig.sh("systemctl start garage-peer").returncode == 0
    health = rig.sh(
        f"for i in $(seq 60); do {prefix}/bin/python -c 'import urllib.request; "
        'print(urllib.request.urlopen("http://127.0.0.1:8000/health", timeout=2).read().decode())\' 2>/dev/null && '
        "exit 0; sleep 1; done; exit 1"
    )
    assert health.returncode == 0 and json.loads(health.stdout)["status"] == "ok"
    key_hash = rig.file_hash(f"{home}/identity.key")

    result = rig.sh("bash /src/bootstrap/start.sh --uninstall")  # no --prefix: the unit names it
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"found the install in {prefix}" in result.stdout
    assert rig.file_hash(f"{home}/identity.key") == key_hash
    assert rig.sh(f"test -e {prefix} || test -e /srv/rig").returncode != 0

    result = rig.sh(f"bash /src/bootstrap/start.sh --uninstall --purge --home {home}")
    assert result.returncode == 0, result.stdout + result.stderr
    after = rig.listing()
    assert after == rig.before, _diff(rig.before, after)
