"""The gang protocol of a job over several nodes (worker/gang.py) against a real Redis: distinct workers
per node, one slot per node, the first closing reason wins, node 0 gives up after its timeout naming who
joined, and a member waiting for node 0 sees the gang closed or opened."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from backend.settings import Settings
from worker.gang import Gang, GangIncomplete, GangYielded


@pytest.fixture
def gang(redis_url) -> Gang:
    settings = Settings(broker_url=redis_url, redis_prefix=f"pstest-gang-{uuid.uuid4().hex[:8]}:")
    g = Gang.of(settings, job_id=7, attempt=1, nodes=2)
    yield g
    for key in g.client.scan_iter(f"{g.base}*"):
        g.client.delete(key)


def test_each_node_takes_one_distinct_worker(gang):
    assert gang.join(0, "a:1", "10.0.0.1") == "joined"
    assert gang.join(1, "a:1", "10.0.0.1") == "busy"  # one worker holds one node of a gang
    assert gang.join(0, "b:2", "10.0.0.2") == "taken"  # a redelivered node-0 message
    assert gang.join(1, "b:2", "10.0.0.2") == "joined"
    assert [m["worker"] for m in gang.members().values()] == ["a:1", "b:2"]
    assert gang.gather(1.0, lambda: False).keys() == {0, 1}
    assert gang.open("10.0.0.1:29500")
    assert gang.state() == ("open", "10.0.0.1:29500")
    assert not gang.close("too late")  # the first state written wins
    assert gang.join(1, "c:3", "10.0.0.3") == "closed"


def test_node_0_gives_up_after_its_timeout_and_a_waiting_member_learns_why(gang):
    assert gang.join(1, "b:2", "10.0.0.2") == "joined"
    seen: dict = {}

    def member() -> None:
        try:
            gang.await_open(30.0, lambda: False)
        except GangIncomplete as exc:
            seen["reason"] = str(exc)

    waiting = threading.Thread(target=member)
    waiting.start()
    assert gang.join(0, "a:1", "10.0.0.1") == "joined"
    gang.client.hdel(gang.key, "node:1")  # node 1's worker vanished before the gang formed
    began = time.monotonic()
    with pytest.raises(GangIncomplete, match=r"only 1 of 2 nodes joined within 1 s \(a:1\)"):
        gang.gather(1.0, lambda: False)
    assert 0.9 < time.monotonic() - began < 5
    waiting.join(timeout=10)
    assert "only 1 of 2 nodes joined" in seen["reason"]
    assert gang.state()[0] == "failed"


def test_a_member_closes_the_gang_when_node_0_never_comes(gang):
    assert gang.join(1, "b:2", "10.0.0.2") == "joined"
    with pytest.raises(GangIncomplete, match="did not start within 0 s"):
        gang.await_open(0.2, lambda: False)
    with pytest.raises(GangIncomplete, match="did not start"):  # a late node 0 fails with that reason
        gang.gather(5.0, lambda: False)


@pytest.mark.parametrize("cause", ["cancel", "shutdown"])
def test_node_0_stops_waiting_on_a_cancel_or_its_workers_shutdown(gang, cause):
    from worker.gang import lead
    from worker.runtime import SHUTTING_DOWN

    class Runtime:  # what lead() reads: the settings, and whether the job is still queued for it
        settings = Settings()

        def note_waiting(self, message: str) -> str | None:
            return None if cause == "cancel" else "cpu"

    assert gang.join(0, "a:1", "10.0.0.1") == "joined"
    if cause == "shutdown":
        SHUTTING_DOWN.set()
    try:
        began = time.monotonic()
        why = "the job was cancelled" if cause == "cancel" else "node 0's worker shut down"
        with pytest.raises(GangIncomplete, match=why):
            lead(Runtime(), gang, 30.0)
        assert time.monotonic() - began < 5  # not the 30 s timeout
    finally:
        SHUTTING_DOWN.clear()
    assert gang.state() == ("failed", f"nodes: {why} while the gang formed; nothing ran")


def _gang(settings: Settings, job_id: int, round: int | None = None) -> Gang:
    return Gang.of(settings, job_id=job_id, attempt=1, nodes=2, round=round)


def test_competing_gangs_the_younger_leader_yields_and_the_older_forms(redis_url):
    """Two `nodes: 2` jobs whose node 0 took both workers: the younger leader gives its round up (its
    member messages are then dropped), the older gang forms with the freed worker, and the younger
    job's next round keeps its seniority."""
    settings = Settings(broker_url=redis_url, redis_prefix=f"pstest-gang-{uuid.uuid4().hex[:8]}:")
    older, younger = _gang(settings, 1), _gang(settings, 2)
    try:
        assert older.join(0, "a:1", "10.0.0.1") == "joined"
        older.enlist("cpu")
        time.sleep(0.01)
        assert younger.join(0, "b:2", "10.0.0.2") == "joined"
        younger.enlist("cpu")
        outcome: dict = {}

        def lead_older() -> None:  # never yields to the younger gang; forms once b:2 is free
            outcome["older"] = older.gather(20.0, lambda: False, "cpu", yield_after_s=0.3)

        leader = threading.Thread(target=lead_older)
        leader.start()
        began = time.monotonic()
        with pytest.raises(GangYielded, match=r"older gang \(job 1\) is forming on the 'cpu' queue"):
            younger.gather(20.0, lambda: False, "cpu", yield_after_s=0.3)
        assert time.monotonic() - began < 5  # not its 20 s timeout
        younger.delist("cpu")
        assert younger.state() == ("yielded", "nodes: an older gang (job 1) is forming on the 'cpu' queue")
        # Its member message (round 0) is dropped; a member that had joined leaves without failing it.
        assert younger.join(1, "a:1", "10.0.0.1") == "closed"
        with pytest.raises(GangYielded):
            younger.await_open(5.0, lambda: False)
        # The freed worker b:2 takes the older gang's member message: it forms.
        assert older.join(1, "b:2", "10.0.0.2") == "joined"
        leader.join(timeout=10)
        assert outcome["older"].keys() == {0, 1}
        assert older.open("10.0.0.1:29500")
        older.delist("cpu")
        # The younger job's next round is current, keeps the attempt's first-lead time, and forms.
        again = _gang(settings, 2)
        assert again.round == 1 and again.key != younger.key
        assert again.join(0, "b:2", "10.0.0.2") == "joined"
        assert again.enlist("cpu") == younger.enlist("cpu")
        assert again.older_forming("cpu") is None  # the older gang opened: nobody to yield to
        assert again.join(1, "a:1", "10.0.0.1") == "joined"
        assert again.gather(5.0, lambda: False, "cpu", yield_after_s=0.0).keys() == {0, 1}
    finally:
        keys = settings.redis_prefix + "*"
        for key in older.client.scan_iter(keys):
            older.client.delete(key)


def test_a_forming_gang_whose_leader_is_gone_is_not_waited_for(redis_url):
    from worker import gang as gang_module

    settings = Settings(broker_url=redis_url, redis_prefix=f"pstest-gang-{uuid.uuid4().hex[:8]}:")
    stale, mine = _gang(settings, 1), _gang(settings, 2)
    try:
        stale.join(0, "a:1", "10.0.0.1")
        stale.enlist("cpu")
        stale.client.hset(stale.key, "beat", time.time() - gang_module.BEAT_STALE_S - 1)  # leader died
        mine.join(0, "b:2", "10.0.0.2")
        mine.enlist("cpu")
        assert mine.older_forming("cpu") is None
        assert stale.client.zscore(mine.forming_key("cpu"), stale.key) is None  # dropped from the list
    finally:
        for key in stale.client.scan_iter(settings.redis_prefix + "*"):
            stale.client.delete(key)


def test_a_node_stopping_on_its_own_is_what_node_0_reports(gang):
    """Node 1's worker shuts down: its runtime notes it in the gang before stopping its ranks, and node
    0 reads that (instead of torchrun's exit code 1)."""
    from worker.node_member import NodeRuntime
    from worker.runtime import SHUTTING_DOWN

    assert gang.join(1, "b:2", "10.0.0.2") == "joined"
    assert gang.stopped_note() is None
    member = NodeRuntime(rt=None, node=1, gang=gang)
    SHUTTING_DOWN.set()
    try:
        assert member.should_stop() and member.should_stop()
    finally:
        SHUTTING_DOWN.clear()
    assert gang.stopped_note() == "node 1 (worker b:2) stopped: worker shutting down; resumable"


# -- busy workers: the leader gives its worker to queued jobs, the timeout counts across rounds ------


def _send(settings: Settings, *args) -> None:
    """A run-job message waiting in the 'cpu' queue, as the API ([job, attempt]) or a worker sends it."""
    from backend.queue import RUN_JOB, make_celery

    make_celery(settings.broker_url, settings.redis_prefix).send_task(RUN_JOB, args=list(args), queue="cpu")


@pytest.fixture
def busy(redis_url):
    """A prefix of its own; the gang of job 7 (nodes: 2) led by a:1, its node 1's message waiting in the
    'cpu' queue because every other worker is busy."""
    settings = Settings(broker_url=redis_url, redis_prefix=f"pstest-gang-{uuid.uuid4().hex[:8]}:")
    g = _gang(settings, 7)
    assert g.join(0, "a:1", "10.0.0.1") == "joined"
    g.enlist("cpu")
    _send(settings, 7, 1, 1, 2, 0)
    yield settings, g
    for key in g.client.scan_iter(settings.redis_prefix + "*"):
        g.client.delete(key)


def test_a_gang_waiting_on_busy_workers_gives_its_worker_to_queued_jobs(busy):
    """A single-node job (and another gang's node-0 message sent again, not counted) queued behind the
    gang: the leader closes its round as yielded with the reason, to be sent again after the backoff,
    and the attempt's wait keeps its start for the next round."""
    settings, g = busy
    _send(settings, 9, 1, 0, 2, 1)  # another gang's node 0 sent again: they must not trade workers
    with pytest.raises(GangIncomplete, match="only 1 of 2 nodes joined within 2 s"):
        g.gather(2.0, lambda: False, "cpu", yield_after_s=0.3)  # nothing for its worker: it holds
    g = _gang(settings, 8)
    assert g.join(0, "a:1", "10.0.0.1") == "joined"
    g.enlist("cpu")
    first_wait = g.wait_began()
    _send(settings, 8, 1, 1, 2, 0)  # its own member message
    _send(settings, 12, 1)  # a single-node job queued after the gang
    began = time.monotonic()
    with pytest.raises(GangYielded) as gave_way:
        g.gather(60.0, lambda: False, "cpu", yield_after_s=0.3)
    assert time.monotonic() - began < 5  # not its 60 s timeout
    reason = "nodes: waiting for 1 busy worker on the 'cpu' queue while 1 other job waits there"
    assert str(gave_way.value) == reason and gave_way.value.retry_in_s == 3.0
    assert "gang forms when its workers free up" in gave_way.value.waiting
    assert g.state() == ("yielded", reason)
    assert g.join(1, "b:2", "10.0.0.2") == "closed"  # its member message, taken later, is dropped
    again = _gang(settings, 8)
    assert again.round == 1 and again.wait_began() == first_wait  # the timeout counts across rounds
    # The next round, still waiting on busy workers, backs off longer.
    assert again.join(0, "a:1", "10.0.0.1") == "joined"
    again.enlist("cpu")
    with pytest.raises(GangYielded) as later:
        again.gather(60.0, lambda: False, "cpu", yield_after_s=0.3)
    assert later.value.retry_in_s == 6.0


def test_the_gang_timeout_counts_from_the_first_lead_across_rounds(busy):
    """Rounds that gave way to queued jobs do not restart the timeout: the gang fails gang_timeout_s
    after its first lead with the reason of a single round; a round that begins after that still waits
    `last_round_s` for workers that may be free by now."""
    settings, g = busy
    _send(settings, 12, 1)
    began = time.monotonic()
    with pytest.raises(GangYielded) as gave_way:
        g.gather(3.0, lambda: False, "cpu", yield_after_s=0.3)
    assert gave_way.value.retry_in_s <= 3.0 - (time.monotonic() - began) + 0.1  # not past the timeout
    g.client.delete(settings.redis_prefix + "cpu")  # the queued job ran on the freed worker
    again = _gang(settings, 7)
    assert again.join(0, "a:1", "10.0.0.1") == "joined"
    again.enlist("cpu")
    round_began = time.monotonic()
    with pytest.raises(GangIncomplete, match=r"only 1 of 2 nodes joined within 3 s \(a:1\)") as failed:
        again.gather(3.0, lambda: False, "cpu", yield_after_s=0.3, last_round_s=0.5)
    assert not isinstance(failed.value, GangYielded)
    # 3 s from the first lead, not 3 s for this round (which began about 1 s after it)
    assert 2.9 < time.monotonic() - began < 4.5 and time.monotonic() - round_began < 2.6
    assert again.state()[0] == "failed"
    # A round that begins long after the timeout (its message waited behind long jobs) still gets
    # last_round_s: the member that is free by now joins and the gang forms.
    g.client.set(f"{g.base}:wait", time.time() - 100)
    late = Gang(g.client, f"{g.base}:r9", 2, 9, g.base, g.prefix, 7)
    assert late.join(0, "a:1", "10.0.0.1") == "joined"
    late.enlist("cpu")
    threading.Timer(0.3, lambda: late.join(1, "b:2", "10.0.0.2")).start()
    assert late.gather(3.0, lambda: False, "cpu", last_round_s=1.5).keys() == {0, 1}
    late.client.hdel(late.key, "node:1")
    began = time.monotonic()
    with pytest.raises(GangIncomplete, match="only 1 of 2 nodes joined within 3 s"):
        late.gather(3.0, lambda: False, "cpu", last_round_s=0.5)
    assert 0.4 < time.monotonic() - began < 2


def test_a_gang_whose_member_arrives_forms_though_jobs_wait(busy):
    """A member that joins within yield_after_s: the gang forms as before, whatever waits in the queue."""
    settings, g = busy
    _send(settings, 12, 1)
    threading.Timer(0.2, lambda: g.join(1, "b:2", "10.0.0.2")).start()
    assert g.gather(10.0, lambda: False, "cpu", yield_after_s=1.0).keys() == {0, 1}
    assert g.open("10.0.0.1:29500") and g.state() == ("open", "10.0.0.1:29500")


def test_a_jobs_own_gang_timeout_wins_over_the_workers():
    """`timeout_of`: the job's `gang_timeout_s` param when it has one, else PRUNESCOPE_GANG_TIMEOUT_S."""
    from worker.gang import timeout_of

    settings = Settings(gang_timeout_s=77)
    assert timeout_of({"nodes": 2, "gang_timeout_s": 12.5}, settings) == 12.5
    assert timeout_of({"nodes": 2}, settings) == 77.0
    assert timeout_of(None, settings) == 77.0  # a row without params
