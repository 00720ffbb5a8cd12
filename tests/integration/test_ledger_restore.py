"""A provider restored with an old ``ledger.sqlite`` pulls its own log back before it signs: no fork.

Real ``garage-peer`` processes on 127.0.0.1 and a StandInBackend (an
instrument, not a model: the point is the ledger). The restarted provider
bootstraps from the consumer, so it is connected before its ledger sync runs
(as a reinstalled rig with bootstrap peers is): the consumer's requests reach
it at once, and without the restore it numbered them after its old head.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from garage_p2p.cli.peer_process import PeerProcess, peer_args
from garage_p2p.core.ledger import ZERO_HASH
from garage_p2p.store.identity_file import load_or_create_identity
from garage_p2p.store.ledger_store import LedgerStore
from tools import ledger_builders
from tools.chat_burst import burst
from tools.testkit import free_port, wait_until

from .helpers import garage, ledger_of, models_of, standin_processes

LEDGER_FILES = ("ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm")


def _status(peer: PeerProcess) -> dict:
    out = garage("status", "--json", "--home", str(peer.home))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _served(consumer: PeerProcess, provider: PeerProcess, n: int) -> list[str]:
    """Send chats through ``consumer`` until ``n`` were answered (a restoring provider turns some away)."""
    done: list[str] = []

    def more() -> bool:
        if set(models_of(consumer).get("tiny", [])) == {provider.peer_id}:
            done.extend(burst(consumer.api_url, n - len(done), 2)["completed"])
        return len(done) >= n

    wait_until(more, 60, f"{n} chats answered through {provider.peer_id}")
    return done


def _back_up(home: Path, to: Path) -> None:
    to.mkdir()
    for name in LEDGER_FILES:
        if (home / name).exists():
            shutil.copy2(home / name, to / name)


def _restore(backup: Path, home: Path) -> None:
    for name in LEDGER_FILES:
        (home / name).unlink(missing_ok=True)
        if (backup / name).exists():
            shutil.copy2(backup / name, home / name)


def _no_fork_anywhere(peers: list[PeerProcess], author: str) -> None:
    for peer in peers:
        state = ledger_of(peer)
        assert not state.flagged(author), f"{peer.home.name} flags {author}'s log as forked"
        verify = garage("ledger", "verify", "--home", str(peer.home))
        assert verify.returncode == 0 and "fork" not in verify.stdout, verify.stdout + verify.stderr


def test_restored_old_ledger_pulls_its_head_back_and_does_not_fork(tmp_path):
    with standin_processes([free_port()], token_delay=0.005) as (url,):
        a_args = peer_args(listen=f"/ip4/127.0.0.1/tcp/{free_port()}", backends={"tiny": url})
        a = PeerProcess(tmp_path / "a", a_args).start()
        a.wait_ready()
        c = PeerProcess(tmp_path / "c", peer_args(bootstrap=[a.addr])).start()
        peers = [a, c]
        try:
            c.wait_ready()
            _served(c, a, 2)
            wait_until(lambda: ledger_of(c).head(a.peer_id).seq >= 2, 30, "C replicating A's first 2 entries")
            a.stop()
            _back_up(a.home, tmp_path / "backup")  # the owner's backup: identity kept, ledger at seq 2
            a = peers[0] = PeerProcess(a.home, a_args).start()
            a.wait_ready()
            _served(c, a, 3)
            wait_until(lambda: ledger_of(c).head(a.peer_id).seq >= 5, 30, "C replicating A's log up to seq 5")
            a.stop()
            _restore(tmp_path / "backup", a.home)
            assert ledger_of(a).head(a.peer_id).seq == 2
            # Reinstalled with its bootstrap peer: connected to C before its ledger sync runs.
            a = peers[0] = PeerProcess(a.home, [*a_args, "--bootstrap", c.addr]).start()
            a.wait_ready()
            _served(c, a, 2)
            status = _status(a).get("ledger_restore")
            wait_until(
                lambda: (seen := ledger_of(c)).head(a.peer_id).seq >= 7 or seen.flagged(a.peer_id),
                30,
                "C replicating A's log up to seq 7 (or flagging a fork)",
            )
            listed = json.loads(garage("peers", "--json", "--home", str(c.home)).stdout)
            a.stop()
            c.stop()
            _no_fork_anywhere(peers, a.peer_id)
            assert not [p["peer_id"] for p in listed if p["ledger_flagged"]], listed  # `garage peers` on C
            # A continued its own log after seq 5, the mesh's head, not after its old seq 2.
            assert ledger_of(a).head(a.peer_id).seq == 7
            assert status is not None and status["phase"] == "restored", status
            print(f"restore: {status}")
        finally:
            for p in peers:
                p.stop()


def test_reinstalled_rig_with_a_long_log_continues_it_instead_of_starting_over(tmp_path):
    """A's ledger file is gone (a reinstall, the identity kept); C holds A's log of LONG_LOG entries.

    The log is long, so pulling it back takes A a while: without the restore, A numbered C's first
    requests 1, 2, … before its full sync brought the log back, a fork every peer then flags.
    """
    long_log = 5_000
    a_id, _ = load_or_create_identity(tmp_path / "a")
    c_id, _ = load_or_create_identity(tmp_path / "c")
    rows, prev = [], ZERO_HASH
    for seq in range(1, long_log + 1):
        e = ledger_builders.entry(a_id, c_id, seq, prev)
        rows.append((a_id.peer_id, seq, e.hash, e.encoded))
        prev = e.hash
    store = LedgerStore(tmp_path / "c" / "ledger.sqlite")
    store.add_entries(rows)
    store.close()
    with standin_processes([free_port()], token_delay=0.005) as (url,):
        c = PeerProcess(tmp_path / "c", peer_args()).start()
        peers = [c]
        try:
            c.wait_ready()
            a = PeerProcess(tmp_path / "a", peer_args(bootstrap=[c.addr], backends={"tiny": url})).start()
            peers.append(a)
            a.wait_ready()
            _served(c, a, 2)
            status = _status(a).get("ledger_restore")
            wait_until(
                lambda: (seen := ledger_of(c)).head(a.peer_id).seq >= long_log + 2 or seen.flagged(a.peer_id),
                60,
                f"C holding A's log up to seq {long_log + 2} (or flagging a fork)",
            )
            for p in peers:
                p.stop()
            _no_fork_anywhere(peers, a.peer_id)
            assert ledger_of(a).head(a.peer_id).seq == long_log + 2
            assert status is not None and status["phase"] == "restored", status
            print(f"restore: {status}")
        finally:
            for p in peers:
                p.stop()


def test_a_peer_alone_opens_its_log_after_the_timeout(tmp_path):
    """No peer to ask: A says why it does not serve, then serves once the timeout passed."""
    with standin_processes([free_port()], token_delay=0.005) as (url,):
        home = tmp_path / "a"
        home.mkdir()
        (home / "config.toml").write_text("ledger_restore_timeout = 4\n")
        load_or_create_identity(home)  # a kept identity (a new one has no log to restore: it opens at once)
        a = PeerProcess(home, peer_args(backends={"tiny": url})).start()
        c = None
        try:
            a.wait_ready()
            first = _status(a)["ledger_restore"]
            assert first["phase"] == "restoring", first
            shown = garage("status", "--home", str(a.home)).stdout
            assert "serving     no: to other peers, until our own ledger log is restored" in shown, shown
            restored = wait_until(lambda: _status(a)["ledger_restore"]["phase"] == "restored", 30, "A opening its log")
            assert "no peer held a newer head" in _status(a)["ledger_restore"]["reason"]
            c = PeerProcess(tmp_path / "c", peer_args(bootstrap=[a.addr])).start()
            c.wait_ready()
            _served(c, a, 1)
            wait_until(lambda: ledger_of(a).head(a.peer_id).seq == 1, 30, "A logging its first receipt")
            print(f"A opened its log {restored:.1f} s after it was ready")
        finally:
            for p in (a, c):
                if p is not None:
                    p.stop()
