"""The gang protocol of a job over several nodes (worker/gang.py) against a real Redis: distinct workers
per node, one slot per node, the first closing reason wins, node 0 gives up after its timeout naming who
joined, and a member waiting for node 0 sees the gang closed or opened."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from backend.settings import Settings
from worker.gang import Gang, GangIncomplete


@pytest.fixture
def gang(redis_url) -> Gang:
    settings = Settings(broker_url=redis_url, redis_prefix=f"pstest-gang-{uuid.uuid4().hex[:8]}:")
    g = Gang.of(settings, job_id=7, attempt=1, nodes=2)
    yield g
    g.client.delete(g.key)


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
        settings = Settings(gang_timeout_s=30)

        def note_waiting(self, message: str) -> str | None:
            return None if cause == "cancel" else "cpu"

    assert gang.join(0, "a:1", "10.0.0.1") == "joined"
    if cause == "shutdown":
        SHUTTING_DOWN.set()
    try:
        began = time.monotonic()
        why = "the job was cancelled" if cause == "cancel" else "node 0's worker shut down"
        with pytest.raises(GangIncomplete, match=why):
            lead(Runtime(), gang)
        assert time.monotonic() - began < 5  # not the 30 s timeout
    finally:
        SHUTTING_DOWN.clear()
    assert gang.state() == ("failed", f"nodes: {why} while the gang formed; nothing ran")
