import json

from hypothesis import given, settings
from hypothesis import strategies as st

from garage_p2p.core.jobs import JobState, parse_batch


def line(i, model="tiny", **extra):
    item = {
        "custom_id": f"c{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": str(i)}]},
    }
    item.update(extra)
    return json.dumps(item)


def test_parse_batch_keeps_good_lines_and_reports_bad_ones():
    text = "\n".join(
        [
            line(0),
            "not json",
            line(1, url="/v1/embeddings"),
            json.dumps(
                {
                    "custom_id": "c0",
                    "method": "POST",
                    "url": "/v1/completions",
                    "body": {"model": "tiny", "prompt": "x"},
                }
            ),
            line(2),
            "",
            line(3, model="other"),
            json.dumps({"custom_id": "", "url": "/v1/completions", "body": {"model": "tiny"}}),
        ]
    )
    lines, errors, model = parse_batch(text)
    assert model == "tiny"
    assert [line.custom_id for line in lines] == ["c0", "c2"]
    by_index = {e.index: e for e in errors}
    assert set(by_index) == {1, 2, 3, 6, 7}
    assert "duplicate custom_id" in by_index[3].message
    assert by_index[6].code == "model_mismatch" and by_index[6].custom_id == "c3"
    assert by_index[7].custom_id is None
    # --model overrides every line's model.
    lines, errors, model = parse_batch(line(0) + "\n" + line(1, model="other"), model="big")
    assert model == "big" and not errors and all(line.body["model"] == "big" for line in lines)


def make(n=10, size=3):
    lines, _, _ = parse_batch("\n".join(line(i) for i in range(n)))
    return JobState.of("job-1", lines, size, lease_time=10)


def test_leases_expire_and_vanished_providers_give_their_shards_back():
    job = make()
    assert len(job.shards) == 4
    a = job.claim("A", 0)
    b = job.claim("B", 0)
    assert {a.shard, b.shard} == {0, 1}
    assert job.provider_gone("B")[0].shard == b.shard
    c = job.claim("C", 1)
    assert c.shard == b.shard and not c.duplicate
    assert job.expire(100)  # A's and C's leases lapse
    assert job.claim("D", 100).shard == 0


def test_tail_stealing_duplicates_once_and_first_result_wins():
    job = make(n=4, size=2)
    a = job.claim("A", 0)
    b = job.claim("B", 0)
    steal = job.claim("C", 0)
    assert steal.duplicate and steal.shard in (a.shard, b.shard)
    d = job.claim("D", 0)
    assert d is not None and d.duplicate and d.shard != steal.shard  # each shard is duplicated once
    assert job.claim("E", 0) is None
    ids = [line.custom_id for line in job.shards[steal.shard]]
    assert job.complete(steal.lease_id, ids) == ids
    original = a if a.shard == steal.shard else b
    assert job.complete(original.lease_id, ids) == []  # the duplicate's results came first
    assert job.complete("never-granted", ids) is None
    other = b if original is a else a
    # ids from another shard are ignored.
    assert job.complete(other.lease_id, ids + [line.custom_id for line in job.shards[other.shard]]) == [
        line.custom_id for line in job.shards[other.shard]
    ]
    assert job.finished


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 7),
    st.lists(st.tuples(st.sampled_from("ABC"), st.booleans(), st.booleans()), max_size=80),
)
def test_any_schedule_ends_with_exactly_one_result_per_line(n, size, schedule):
    """Claims, completions, losses and lapses in any order: every line done once, none twice."""
    job = make(n, size)
    now = 0.0
    results: dict[str, int] = {}
    for provider, finish, vanish in schedule:
        now += 1
        lease = job.claim(provider, now)
        if lease is None:
            continue
        if vanish:
            job.provider_gone(provider)
        if finish:
            for cid in job.complete(lease.lease_id, [line.custom_id for line in job.shards[lease.shard]]) or []:
                results[cid] = results.get(cid, 0) + 1
    # Drain: one provider finishes everything that is left.
    for _ in range(len(job.shards) * 3):
        now += 100
        lease = job.claim("Z", now)
        if lease is None:
            break
        for cid in job.complete(lease.lease_id, [line.custom_id for line in job.shards[lease.shard]]) or []:
            results[cid] = results.get(cid, 0) + 1
    assert job.finished
    assert sorted(results) == sorted(f"c{i}" for i in range(n))
    assert set(results.values()) == {1}


def test_a_provider_that_asks_again_gave_up_its_lease():
    """One shard per provider at a time: a second claim (its stream broke) frees the first at once."""
    job = make(n=2, size=2)
    first = job.claim("A", 0)
    again = job.claim("A", 1)
    assert again is not None and again.shard == first.shard and not again.duplicate
    assert list(job.leases) == [again.lease_id]


T = 1_700_000_000.0
"""A Unix time: leases and receipts share the clock."""


def receipt(custom_id, *, start, end, gpus=1, gpu_s=None):
    from garage_p2p.core.receipts import Receipt

    gpu_us = int((end - start) * gpus * 1e6 if gpu_s is None else gpu_s * 1e6)
    return Receipt(request_id=custom_id, consumer="s", provider="p", model="tiny", prompt_tokens=1, completion_tokens=1,
                   gpus=gpus, gpu_us=gpu_us, start_ms=int(start * 1000), end_ms=int(end * 1000))  # fmt: skip


def test_a_receipt_is_counter_signed_only_if_it_fits_the_lease_granted_to_its_provider():
    job = make(n=6, size=3)
    lease = job.claim("p", T)
    mine = [line.custom_id for line in job.shards[lease.shard]]
    other = next(line.custom_id for line in job.shards[1 - lease.shard])
    ok = receipt(mine[0], start=T + 1, end=T + 5)
    assert job.cosign_refusal(lease.lease_id, "p", mine[0], ok, gpus=1, now=T + 6) is None
    refusals = {
        "again": job.cosign_refusal(lease.lease_id, "p", mine[0], ok, gpus=1, now=T + 6),
        "not its lease": job.cosign_refusal(lease.lease_id, "q", mine[1], ok, gpus=1, now=T + 6),
        "outside the lease": job.cosign_refusal(lease.lease_id, "p", other, ok, gpus=1, now=T + 6),
        "more GPUs than advertised": job.cosign_refusal(
            lease.lease_id, "p", mine[1], receipt(mine[1], start=T + 1, end=T + 2, gpus=64), gpus=1, now=T + 6
        ),
        "a day in six seconds": job.cosign_refusal(
            lease.lease_id, "p", mine[1], receipt(mine[1], start=T + 6 - 86_400, end=T + 6), gpus=1, now=T + 6
        ),
        "more GPU time than wall time": job.cosign_refusal(
            lease.lease_id, "p", mine[1], receipt(mine[1], start=T + 1, end=T + 6, gpu_s=5), gpus=1, now=T + 6
        ),
    }
    assert all(r is not None and r.fault for r in refusals.values()), refusals
    job.cancelled = True  # too late is refused, but no fault
    late = job.cosign_refusal(lease.lease_id, "p", mine[2], receipt(mine[2], start=T + 1, end=T + 2), gpus=1, now=T + 6)
    assert late is not None and not late.fault


def test_one_submitter_holds_at_most_its_share_of_the_batch_slots():
    from garage_p2p.core.jobs import WorkerSlots

    slots = WorkerSlots(max_jobs=4, per_submitter=2, progress_s=20)
    assert slots.take("e1", "evil", 0) and slots.take("e2", "evil", 0)
    assert not slots.take("e3", "evil", 0)  # its share is used up
    assert slots.take("h1", "honest", 0) and not slots.take("h1", "honest", 0)
    assert slots.deadlines["e1"] == 20
    slots.progress("h1", 15)
    assert slots.deadlines["h1"] == 35
    slots.release("e1")
    assert slots.take("e3", "evil", 30)


def test_a_first_stall_frees_the_slot_and_only_a_repeated_one_is_a_fault():
    from garage_p2p.core.jobs import WorkerSlots

    slots = WorkerSlots(max_jobs=4, per_submitter=2, progress_s=20, stall_memory_s=600)
    assert slots.take("j1", "slow", 0) and slots.take("j2", "slow", 0)
    assert not slots.stalled("j1", 20)  # once: a busy disk or a relayed link, not blamed
    slots.release("j1")
    assert slots.stalled("j2", 30)  # again within ten minutes: wasting slots
    slots.release("j2")
    assert slots.take("j3", "slow", 700) and not slots.stalled("j3", 720)  # forgotten after ten minutes... once
    assert slots.take("k1", "other", 720) and not slots.stalled("k1", 740)  # stalls are counted per submitter


def test_a_receipt_from_a_provider_whose_gpus_are_unknown_is_refused_without_fault():
    job = make(n=3, size=3)
    lease = job.claim("p", T)
    cid = job.shards[lease.shard][0].custom_id
    refusal = job.cosign_refusal(lease.lease_id, "p", cid, receipt(cid, start=T + 1, end=T + 2, gpus=4), gpus=None,
                                 now=T + 6)  # fmt: skip
    assert refusal is not None and not refusal.fault


def test_a_provider_result_with_numbers_the_store_cannot_hold_is_a_problem():
    from garage_p2p.core.jobs import result_problem

    good = {"custom_id": "c", "status_code": 200, "body": {"usage": {"total_tokens": 12}}}
    assert result_problem(good) is None
    assert result_problem({"custom_id": "c", "status_code": 500, "body": {"error": "boom"}}) is None
    assert result_problem({"custom_id": "c", "error": {"code": "x", "message": "y"}}) is None
    bad = [
        {"custom_id": "c", "status_code": 200, "body": {"usage": {"total_tokens": 10**29}}},
        {"custom_id": "c", "status_code": 200, "body": {"usage": {"prompt_tokens": -1}}},
        {"custom_id": "c", "status_code": 200, "body": {"usage": {"total_tokens": True}}},
        {"custom_id": "c", "status_code": 10**29, "body": {}},
        {"custom_id": "c", "status_code": 200, "body": []},
        {"custom_id": "c", "error": {"code": 10**29}},
        {"custom_id": "c"},
    ]
    assert all(result_problem(r) is not None for r in bad)


def test_a_running_shard_is_duplicated_only_at_the_tail_or_when_it_straggles():
    job = make(n=60, size=3)  # 20 shards
    leases = [job.claim(f"P{i}", 0) for i in range(20)]
    assert all(lease is not None and not lease.duplicate for lease in leases)
    # Every shard is running and 20 are left: an idle provider gets nothing rather than a duplicate.
    assert job.claim("idle", 0) is None
    for lease in leases[:10]:
        job.complete(lease.lease_id, [line.custom_id for line in job.shards[lease.shard]], now=1.0)
    assert job.claim("idle", 1.5) is None  # 10 left, each running for 1.5 s where a shard took 1 s
    straggler = job.claim("idle", 2.5)  # past twice the typical shard's time
    assert straggler is not None and straggler.duplicate and straggler.shard == leases[10].shard
    for lease in leases[11:18]:
        job.complete(lease.lease_id, [line.custom_id for line in job.shards[lease.shard]], now=1.0)
    # Two shards left (the tail): they are duplicated however young, each once.
    job.complete(straggler.lease_id, [line.custom_id for line in job.shards[straggler.shard]], now=2.6)
    tail = [job.claim(f"T{i}", 2.6) for i in range(3)]
    assert [lease.duplicate for lease in tail[:2]] == [True, True] and tail[2] is None
    assert {lease.shard for lease in tail[:2]} == {leases[18].shard, leases[19].shard}


def test_a_provider_claims_its_next_shard_while_it_works_on_one():
    job = make(n=6, size=3)  # two shards: the tail from the start
    first = job.claim("A", 0)
    second = job.claim("A", 1, working=[first.lease_id])
    assert second.shard != first.shard and set(job.leases) == {first.lease_id, second.lease_id}
    # A claim that does not name a lease gives it up (the provider restarted, or its stream broke).
    third = job.claim("A", 2, working=[second.lease_id])
    assert set(job.leases) == {second.lease_id, third.lease_id} and third.shard == first.shard
    # A provider never duplicates its own shard; another one does.
    assert job.claim("A", 3, working=[second.lease_id, third.lease_id]) is None
    assert job.claim("B", 3).duplicate


def test_the_shards_left_follow_results_however_they_are_recorded():
    """The unfinished shards are counted again whenever ``done_ids`` grew: through ``complete``, or set
    directly as the submitter does when it resumes a job from its store."""
    job = make(n=9, size=3)
    assert job.unfinished() == [0, 1, 2] and job.shards_left() == 3
    lease = job.claim("A", 0)
    job.complete(lease.lease_id, ["c0", "c1"])
    assert job.shards_left() == 3  # one line of shard 0 is still without a result
    job.complete(lease.lease_id, ["c2"])
    assert job.unfinished() == [1, 2]
    job.done_ids.update({"c6", "c7", "c8"})
    assert job.unfinished() == [1] and not job.finished
    assert job.claim("B", 1).shard == 1
    job.done_ids.update({"c3", "c4", "c5"})
    assert job.finished and job.claim("C", 2) is None
