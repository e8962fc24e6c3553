"""TaskStore's conditional transitions against the moto server: who may move a task, and when."""

from __future__ import annotations

from typing import Any

import pytest

import tests._adapter_support as support
from core.store import TaskStore, TransitionRejected
from core.tasks import TaskStatus, new_task_id
from tests._adapter_support import store_for

module_aws, aws = support.module_aws, support.aws  # fixtures: one local AWS per module


@pytest.fixture
def store(aws: Any) -> TaskStore:
    return store_for(aws)


def new(store: TaskStore, **params: Any) -> str:
    return str(store.create(task_type="sleep", params=params or {"seconds": 1.5, "exit_code": 0}).task_id)


def test_ids_sort_by_creation_time() -> None:
    ids = [new_task_id(ms) for ms in (1, 2, 1_700_000_000_000, 1_700_000_000_001)]
    assert ids == sorted(ids) and len(set(ids)) == 4 and all(len(i) == 26 for i in ids)


def test_create_then_get_round_trips_numbers(store: TaskStore) -> None:
    task_id = new(store)
    item = store.get(task_id)
    assert item is not None
    assert item.status == "QUEUED" and item.attempts == 0
    assert item.params == {"seconds": 1.5, "exit_code": 0}  # float back as float, int as int
    assert store.get("01NOSUCHTASK0000000000000") is None


def test_claim_is_exclusive_and_counts_attempts(store: TaskStore) -> None:
    task_id = new(store)
    item = store.claim(task_id, worker="a", stale_after_ms=60_000).held
    assert item.status == "RUNNING" and item.attempts == 1 and item.worker == "a"
    with pytest.raises(TransitionRejected) as rejected:
        store.claim(task_id, worker="b", stale_after_ms=60_000)
    assert rejected.value.item is not None and rejected.value.item.worker == "a"


def test_stale_holder_is_taken_over_and_fenced_out(store: TaskStore) -> None:
    task_id = new(store)
    first = store.claim(task_id, worker="a", stale_after_ms=1000, at_ms=10_000).held
    with pytest.raises(TransitionRejected):  # heartbeat 999 ms old: still fresh
        store.claim(task_id, worker="b", stale_after_ms=1000, at_ms=10_999)
    taken = store.claim(task_id, worker="b", stale_after_ms=1000, at_ms=11_001).held
    assert taken.attempts == 2 and taken.worker == "b"
    # The presumed-dead worker wakes up: it can neither heartbeat nor finish attempt 1.
    with pytest.raises(TransitionRejected):
        store.heartbeat(first)
    with pytest.raises(TransitionRejected):
        store.finish(first, TaskStatus.SUCCEEDED, result_uri="s3://x/")
    done = store.finish(taken, TaskStatus.SUCCEEDED, result_uri="s3://b/r/")
    assert store.get(task_id) == done  # what finish returns is what the item now holds
    assert done.status == "SUCCEEDED" and done.result_uri == "s3://b/r/" and done.finished_at > 0


def test_finish_needs_a_terminal_status_and_happens_once(store: TaskStore) -> None:
    task_id = new(store)
    held = store.claim(task_id, worker="a", stale_after_ms=60_000).held
    with pytest.raises(ValueError):
        store.finish(held, TaskStatus.QUEUED)
    store.finish(held, TaskStatus.FAILED, error="boom")
    with pytest.raises(TransitionRejected):
        store.finish(held, TaskStatus.SUCCEEDED)
    assert store.get(task_id).error == "boom"  # type: ignore[union-attr]


def test_requeue_returns_the_task_to_the_queue(store: TaskStore) -> None:
    task_id = new(store)
    held = store.claim(task_id, worker="a", stale_after_ms=60_000).held
    item = store.requeue(held, error="exit code 1")
    assert item.status == "QUEUED" and item.worker is None and item.heartbeat_at is None
    assert item.error == "exit code 1" and item.attempts == 1
    assert store.claim(task_id, worker="b", stale_after_ms=60_000).held.attempts == 2


def test_cancel_queued_is_immediate_running_is_a_request(store: TaskStore) -> None:
    queued, running = new(store), new(store)
    assert store.cancel(queued).status == "CANCELLED"
    with pytest.raises(TransitionRejected):
        store.claim(queued, worker="a", stale_after_ms=60_000)  # a cancelled task never runs
    held = store.claim(running, worker="a", stale_after_ms=60_000).held
    asked = store.cancel(running)
    assert asked.status == "RUNNING" and asked.cancel_requested is True
    assert store.heartbeat(held).cancel_requested is True  # the adapter sees it
    store.finish(held, TaskStatus.CANCELLED)
    with pytest.raises(TransitionRejected):
        store.cancel(running)  # terminal


def test_fail_unclaimed_only_moves_live_tasks(store: TaskStore) -> None:
    task_id = new(store)
    assert store.fail_unclaimed(task_id, error="poison").status == "FAILED"
    with pytest.raises(TransitionRejected):
        store.fail_unclaimed(task_id, error="again")


def test_idempotency_key_creates_one_task(store: TaskStore) -> None:
    first = store.create(task_type="noop", params={}, idempotency_key="k-1")
    with pytest.raises(TransitionRejected) as again:
        store.create(task_type="noop", params={}, idempotency_key="k-1")
    assert again.value.item is not None and again.value.item.task_id == first.task_id
    assert store.find_by_idempotency_key("k-1").task_id == first.task_id  # type: ignore[union-attr]
    assert store.find_by_idempotency_key("k-2") is None


def test_list_by_status_newest_first_with_cursor(local_aws: Any) -> None:
    store = store_for(local_aws)  # a table of its own: the listing sees every task in it
    ids = [str(store.create(task_type="noop", params={}, at_ms=1_000 + i).task_id) for i in range(3)]
    store.claim(ids[0], worker="a", stale_after_ms=60_000)
    page = store.list_by_status(TaskStatus.QUEUED, limit=1)
    assert [i.task_id for i in page.items] == [ids[2]] and page.cursor is not None
    rest = store.list_by_status(TaskStatus.QUEUED, limit=5, cursor=page.cursor)
    assert [i.task_id for i in rest.items] == [ids[1]]
    assert [i.task_id for i in store.list_by_status(TaskStatus.RUNNING).items] == [ids[0]]
