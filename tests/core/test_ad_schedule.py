from garage_p2p.core.ad_schedule import MAX_HEARTBEAT, MESH_AD_RATE, MIN_GAP, TTL_HEARTBEATS, AdSchedule
from garage_p2p.core.capabilities import MAX_TTL


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
