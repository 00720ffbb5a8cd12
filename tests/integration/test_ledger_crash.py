"""A provider killed with SIGKILL during a burst: no receipt of a completed request is lost.

Real ``garage-peer`` processes on 127.0.0.1 and a StandInBackend (an
instrument, not a model: the point is the ledger, not inference).
"""

from __future__ import annotations

import threading

from garage_p2p.cli.peer_process import PeerProcess, peer_args
from tools.chat_burst import burst
from tools.testkit import wait_until

from .helpers import garage, ledger_of, models_of, standin_processes


def test_sigkilled_provider_restarts_verifies_and_loses_no_receipt(tmp_path, monkeypatch):
    with standin_processes([18690], token_delay=0.02) as (url,):
        # A fixed port, as a rig has (4001 by default): the consumer finds it again after the restart.
        a = PeerProcess(tmp_path / "a", peer_args(listen="/ip4/127.0.0.1/tcp/18691", backends={"tiny": url})).start()
        a.wait_ready()
        c = PeerProcess(tmp_path / "c", peer_args(bootstrap=[a.addr])).start()
        try:
            c.wait_ready()
            wait_until(lambda: set(models_of(c)) == {"tiny"}, 30, "C learning A's model")
            result: dict = {}
            client = threading.Thread(target=lambda: result.update(burst(c.api_url, 120, 8)))
            client.start()
            # Kill A in the middle of the burst, after some requests completed.
            wait_until(lambda: ledger_of(a).head(a.peer_id).seq >= 20, 60, "A logging 20 receipts")
            a.kill()
            client.join(120)
            completed = result["completed"]
            assert 20 <= len(completed) < 120, result  # some finished, some were cut off by the kill
            a.start()
            a.wait_ready()
            # Every request the client saw complete has its receipt in A's log, and C holds them too.
            a_id, c_id = a.peer_id, c.peer_id
            settle = wait_until(
                lambda: all(ledger_of(a).has_receipt(a_id, c_id, rid) for rid in completed),
                60,
                "A's log holding every completed request",
            )
            wait_until(
                lambda: all(ledger_of(c).has_receipt(a_id, c_id, rid) for rid in completed), 60, "C holding them too"
            )
            print(f"{len(completed)} completed before the kill; all receipts in A's log {settle:.1f} s after restart")
            a.stop()
            verify = garage("ledger", "verify", "--home", str(a.home))
            assert verify.returncode == 0, verify.stdout + verify.stderr
            assert "ok" in verify.stdout
        finally:
            for p in (a, c):
                p.stop()
