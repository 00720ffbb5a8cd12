"""What choosing a provider costs per request, with 100, 1,000 and 10,000 providers of the model.

Pure core, one process: a PeerTable holding N providers' ads (mixed benchmarks and loads) and a
Router, as a consumer's dispatcher drives them. Side by side in one run:

- old: every provider of the model listed from the table, given a path, and scored
  (what the dispatcher did before the shortlist; ``garage route`` still does it);
- new: ``Router.shortlist`` (the providers heard from last plus a random draw from the table's
  per-model index) and only those scored.

Each chosen provider then "answers" with its load (``Router.observe``), as its END frame would.
Also printed: how many providers were scored, and the quality of the choice: the estimate of the
provider tried first, against the best estimate over all providers (1.00 = always the best).
The machine's other load shows in the timings: compare the two columns of one run.

    .venv/bin/python benchmarks/route_cost.py [--sizes 100 1000 10000] [--seconds 2]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from garage_p2p.core.capabilities import Benchmark, CapabilityAd, Load, ModelOffer, PeerTable, make_ad  # noqa: E402
from garage_p2p.core.identity import Identity  # noqa: E402
from garage_p2p.core.routing import Candidate, PathInfo, Router, RouteRequest  # noqa: E402

NOW = 1_800_000_000.0
MODEL = "llama-3.1-8b"
REQUEST = RouteRequest(MODEL, expected_tokens=256)


def provider_ad(i: int, rng: random.Random) -> CapabilityAd:
    single = rng.uniform(15, 120)
    offer = ModelOffer(
        name=MODEL,
        benchmark=Benchmark(
            single_stream_tps=single,
            aggregate_tps=single * rng.uniform(3, 6),
            concurrency=8,
            ttft_p50_ms=rng.uniform(40, 400),
            measured_at=NOW,
        ),
        load=Load(running=rng.randint(0, 8), waiting=rng.choice((0, 0, 0, 2, 10))),
    )
    identity = Identity.from_seed(i.to_bytes(32, "big"))
    region = rng.choice(("se-sto", "se-got", "no-osl", "fi-hel"))
    return make_ad(identity, seq=1, now=NOW, ttl=300, addrs=(), models=(offer,), version="b", region=region)


def filled_table(n: int) -> PeerTable:
    rng = random.Random(n)
    table = PeerTable(max_peers=2 * n)
    for i in range(n):
        table.apply(provider_ad(i + 1, rng), NOW)
    return table


def path_of(peer_id: str) -> PathInfo:
    return PathInfo(rtt=0.02)


def old_way(router: Router, table: PeerTable, now: float) -> tuple[list[Candidate], int]:
    """Before the shortlist: every provider listed, given a path and scored."""
    ads = [e.ad for e in table.entries(now) if any(m.name == MODEL for m in e.ad.models)]
    paths = {ad.peer_id: path_of(ad.peer_id) for ad in ads}
    return router.choose(ads, REQUEST, paths, now), len(ads)


def new_way(router: Router, table: PeerTable, now: float) -> tuple[list[Candidate], int]:
    """The dispatcher's way now: a shortlist, scored."""
    ads = router.shortlist(table, REQUEST, now)
    paths = {ad.peer_id: path_of(ad.peer_id) for ad in ads}
    return router.choose(ads, REQUEST, paths, now), len(ads)


Way = Callable[[Router, PeerTable, float], tuple[list[Candidate], int]]


def measure(way: Way, table: PeerTable, seconds: float) -> tuple[float, float]:
    """Mean seconds per choice and mean providers scored, each chosen provider answering with its load."""
    router = Router(random.Random(1))
    rng = random.Random(2)
    count, scored, spent = 0, 0, 0.0
    # Bounded: at most 100,000 choices, whatever the clock says.
    while spent < seconds and count < 100_000:
        now = NOW + count * 1e-3
        start = time.perf_counter()
        order, n = way(router, table, now)
        spent += time.perf_counter() - start
        count += 1
        scored += n
        # Its END frame: the provider's load now (a little busier than its ad said, or not).
        router.observe(order[0].peer_id, MODEL, Load(running=rng.randint(0, 8), waiting=rng.choice((0, 3))), now)
    return spent / count, scored / count


def quality(table: PeerTable, choices: int = 400) -> tuple[float, float]:
    """Mean estimate of the provider tried first over the best estimate of all (1.00 = always the
    best), old and new, from the ads alone (no END feedback, so the best stays put)."""
    router = Router(random.Random(3))
    ads = [e.ad for e in table.providers(MODEL, NOW)]
    ranked = router.rank(ads, REQUEST, {ad.peer_id: path_of(ad.peer_id) for ad in ads}, NOW)
    best = ranked[0].estimate
    rng = random.Random(4)
    # The old choose: the better of two drawn from all (its first), computed from one ranking.
    old = [min(rng.sample(ranked, 2), key=lambda c: c.estimate).estimate / best for _ in range(choices)]
    new = [new_way(router, table, NOW)[0][0].estimate / best for _ in range(choices)]
    return sum(old) / choices, sum(new) / choices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--seconds", type=float, default=2.0, help="time spent choosing per size and way")
    args = parser.parse_args()
    print(
        f"{'providers':>9} | {'old: µs/choice':>14} {'scored':>7} {'quality':>7} | "
        f"{'new: µs/choice':>14} {'scored':>7} {'quality':>7} | {'speed-up':>8}"
    )
    for n in args.sizes:
        table = filled_table(n)
        old, new = measure(old_way, table, args.seconds), measure(new_way, table, args.seconds)
        old_q, new_q = quality(table)
        print(
            f"{n:>9,} | {old[0] * 1e6:>14,.0f} {old[1]:>7.0f} {old_q:>7.2f} | "
            f"{new[0] * 1e6:>14,.0f} {new[1]:>7.1f} {new_q:>7.2f} | {old[0] / new[0]:>7.0f}×"
        )
    print("quality: estimate of the provider tried first / the best estimate of all, mean of 400 choices from")
    print("the ads alone (p2c does not take the very best by design: it keeps consumers from herding)")


if __name__ == "__main__":
    main()
