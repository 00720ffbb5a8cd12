from garage_p2p.core.ad_schedule import MAX_HEARTBEAT, MESH_AD_RATE, MIN_GAP, TTL_HEARTBEATS, AdSchedule
from garage_p2p.core.capabilities import MAX_TTL, ModelOffer, PeerTable, make_ad
from garage_p2p.core.identity import Identity

NOW = 1_800_000_000.0


def heartbeats_heard_per_second(peers: int, hours: float = 24.0) -> float:
    """Drive one schedule per peer (idle: no changes) and count the heartbeats the whole mesh publishes
    (not each peer's first ad: that one announces it joined)."""
    schedules = [AdSchedule(jitter=(i % 97) / 97) for i in range(peers)]
    published = 0
    for i, schedule in enumerate(schedules):
        now, end = i * 0.01, hours * 3600
        for _ in range(10_000):
            now = max(now, schedule.get_timer())
            if now >= end:
                break
            assert schedule.handle_timer(now)
            published += schedule.last is not None
            schedule.published(now, peers, jitter=((i * 31 + published) % 89) / 89)
    return published / (hours * 3600)


def test_an_idle_mesh_carries_the_same_heartbeat_rate_whatever_its_size():
    """The whole mesh publishes about MESH_AD_RATE heartbeats a second at 100 and at 2,000 peers:
    what each idle peer hears does not grow with the mesh (a fixed 5 s period would be 20 and 400)."""
    for peers in (100, 2_000):
        rate = heartbeats_heard_per_second(peers)
        assert MESH_AD_RATE * 0.9 <= rate <= MESH_AD_RATE * 1.4, (peers, rate)


def test_a_change_goes_out_within_the_gap_and_the_ttl_covers_lost_heartbeats():
    schedule = AdSchedule(min_heartbeat=300)
    assert schedule.handle_timer(0.0)  # the first ad goes out at once
    schedule.published(0.0, peers=10)
    assert not schedule.handle_timer(299.0) and schedule.handle_timer(300.0)
    schedule.changed()
    assert not schedule.handle_timer(MIN_GAP / 2) and schedule.handle_timer(MIN_GAP)
    schedule.published(MIN_GAP, peers=50_000)
    assert schedule.period == MAX_HEARTBEAT
    assert schedule.ttl() == TTL_HEARTBEATS * MAX_HEARTBEAT <= MAX_TTL


def test_only_an_ad_that_offers_something_or_is_dialled_for_a_job_has_heartbeats():
    """A consumer's ad goes out when it starts and when it changes, never on a heartbeat: nobody routes
    to it, and its heartbeats were most of what an idle 10,000-peer mesh carried (issue 17)."""
    me = Identity.from_seed(bytes(32))

    def ad(models: tuple[str, ...] = (), relay: bool = False):
        offers = tuple(ModelOffer(name=m) for m in models)
        return make_ad(me, seq=1, now=0.0, ttl=600, addrs=(), models=offers, version="t", relay=relay)

    consumer, provider, relay, submitter = (AdSchedule() for _ in range(4))
    for schedule, sent, dialled in (
        (consumer, ad(), False),
        (provider, ad(("tiny",)), False),
        (relay, ad(relay=True), False),
        (submitter, ad(), True),  # providers dial it for the shards of its batch job
    ):
        assert schedule.handle_timer(0.0)  # the first ad goes out at once, whoever it is
        schedule.published(0.0, peers=1_000)
        schedule.note_ad(sent, dialled=dialled)
    later = 3 * MAX_HEARTBEAT
    assert provider.handle_timer(later) and relay.handle_timer(later) and submitter.handle_timer(later)
    assert not consumer.handle_timer(later)
    consumer.changed()  # its addresses changed: that still goes out within the gap
    assert consumer.handle_timer(MIN_GAP)


def test_the_heartbeat_stretches_with_the_peers_heard_of_not_the_table_size():
    """A table holds at most MAX_TABLE_PEERS ads; the mesh size the heartbeat stretches with counts
    the peers whose ads it had to let go too (``PeerTable.mesh_size``)."""
    table = PeerTable(max_peers=4)
    for i in range(8):
        peer = Identity.from_seed(bytes([i + 1]) * 32)
        table.apply(make_ad(peer, seq=1, now=NOW, ttl=600, addrs=(), models=(), version="t"), NOW)
    assert len(table) == 4 and table.mesh_size() == 8
    schedule = AdSchedule(min_heartbeat=1, rate=0.1)
    schedule.published(0.0, table.mesh_size())
    assert schedule.period == 80
