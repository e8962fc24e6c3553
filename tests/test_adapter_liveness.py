"""Liveness: the adapter's loop records `seen_at` on its instance's item of the GPU hosts table (core/hosts.py), the
first right at start and then at most every LIVENESS_SECONDS, with the instance id from its metadata service (a
localaws.metadata.MetadataServer on 127.0.0.1). A failing write never stops work; without HOSTS_TABLE_NAME the
metadata service is never asked. A real Worker against the local AWS (moto on 127.0.0.1)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import tests._adapter_support as support
from adapter.__main__ import build
from adapter.liveness import Liveness
from core import contract as c
from core.hosts import LIVE, HostStore
from core.store import TaskStore
from localaws.metadata import MetadataServer
from localaws.server import free_port
from tests._adapter_support import create_hosts_table, running, submit, wait_for, worker_env

# fixtures: one local AWS per module and its task table
module_aws, aws, store = support.module_aws, support.aws, support.store


def live_item(aws: Any, table: str, instance_id: str) -> dict[str, Any] | None:
    key = {"instance_id": {"S": instance_id}, "sk": {"S": LIVE}}
    found = aws.client("dynamodb").get_item(TableName=table, Key=key, ConsistentRead=True)
    return found.get("Item")


def test_seen_at_is_written_at_start_and_then_once_per_interval(aws: Any, tmp_path: Path) -> None:
    table = create_hosts_table(aws)
    me = aws.instance_ids[0]
    with MetadataServer(me) as imds:
        env = worker_env(
            aws,
            tmp_path / "work",
            WORKER_ID="w-live",
            HOSTS_TABLE_NAME=table,
            INSTANCE_METADATA_URL=imds.url,
            LIVENESS_SECONDS="2",
        )
        worker = build(env)
        assert worker.liveness is not None and worker.liveness.instance_id == me
        assert imds.requests == [("PUT", "/latest/api/token"), ("GET", "/latest/meta-data/instance-id")]
        calls: list[tuple[str, float]] = []  # liveness writes and receives, in the order the loop made them
        writers: set[str] = set()  # the threads that made the writes

        def on_write(**_: Any) -> None:
            calls.append(("seen", time.monotonic()))
            writers.add(threading.current_thread().name)

        worker.liveness.hosts.dynamodb.meta.events.register("provide-client-params.dynamodb.UpdateItem", on_write)
        worker.sqs.meta.events.register(
            "provide-client-params.sqs.ReceiveMessage", lambda **_: calls.append(("receive", time.monotonic()))
        )
        with running(worker):
            wait_for("three liveness writes", lambda: sum(1 for what, _ in calls if what == "seen") >= 3, timeout=15)
        item = live_item(aws, table, me)
    seen = [at for what, at in calls if what == "seen"]
    assert calls[0][0] == "seen"  # right at start, before the first receive
    assert writers == {"worker-run"}  # the loop's own thread (tests/_adapter_support.py `running`): a hung loop stops
    assert all(later - earlier >= 2.0 for earlier, later in zip(seen, seen[1:], strict=False))  # never more often
    assert sum(1 for what, _ in calls if what == "receive") > len(seen)  # the loop turned more often than it wrote
    assert item is not None and item["worker"] == {"S": "w-live"}
    assert int(item["seen_at"]["N"]) <= int(time.time() * 1000)


def test_the_interval_is_counted_on_the_loop_clock(aws: Any) -> None:
    """Liveness itself, on a clock the test moves: one write per interval however often the loop ticks."""
    table = create_hosts_table(aws)
    now = [100.0]
    wall = [1_700_000_000_000]
    liveness = Liveness(
        HostStore(aws.client("dynamodb"), table),
        instance_id="i-0123456789abcdef0",
        worker="w-clock",
        every_s=60.0,
        clock=lambda: now[0],
        wall_ms=lambda: wall[0],
    )
    written = []
    for step in (0.0, 1.0, 30.0, 59.9, 60.0, 61.0, 119.9, 120.0):
        now[0], wall[0] = 100.0 + step, 1_700_000_000_000 + int(step * 1000)
        written.append(liveness.tick())
    assert written == [True, False, False, False, True, False, False, True]
    item = live_item(aws, table, "i-0123456789abcdef0")
    assert item is not None and item["seen_at"] == {"N": str(1_700_000_000_000 + 120_000)}


def test_a_failing_liveness_write_does_not_stop_work(
    aws: Any, store: TaskStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with MetadataServer(aws.instance_ids[0]) as imds:
        env = worker_env(
            aws,
            tmp_path / "work",
            HOSTS_TABLE_NAME="gpu_hosts-that-does-not-exist",  # every write fails: ResourceNotFoundException
            INSTANCE_METADATA_URL=imds.url,
            LIVENESS_SECONDS="0.5",
        )
        worker = build(env)
        first = submit(aws, store, "sleep", {"seconds": 1, "exit_code": 0})
        with caplog.at_level(logging.WARNING, logger="adapter.liveness"), running(worker):
            wait_for("the task to succeed", lambda: getattr(store.get(first), "status", None) == "SUCCEEDED")
            second = submit(aws, store, "noop", {})
            wait_for("the next one too", lambda: getattr(store.get(second), "status", None) == "SUCCEEDED")
    failures = [r for r in caplog.records if r.getMessage() == "liveness_failed"]
    assert len(failures) >= 2  # logged on each try, and the loop went on
    assert "ResourceNotFoundException" in failures[0].fields["error"]  # type: ignore[attr-defined]


def test_without_a_hosts_table_the_metadata_is_never_asked(aws: Any, store: TaskStore, tmp_path: Path) -> None:
    with MetadataServer(aws.instance_ids[0]) as imds:
        worker = build(worker_env(aws, tmp_path / "work", INSTANCE_METADATA_URL=imds.url, LIVENESS_SECONDS="0.1"))
        assert worker.liveness is None
        task_id = submit(aws, store, "noop", {})
        worker.turn()
        worker.turn()  # an idle turn as well
        assert getattr(store.get(task_id), "status", None) == "SUCCEEDED"
        assert imds.requests == []


def test_an_unreadable_metadata_service_is_a_one_line_setting_error(aws: Any, tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = worker_env(aws, tmp_path / "work", HOSTS_TABLE_NAME="gpu_hosts", INSTANCE_METADATA_URL=nowhere)
    with pytest.raises(c.SettingError) as raised:
        build(env)
    assert raised.value.name == "INSTANCE_METADATA_URL"
    assert str(raised.value).startswith("INSTANCE_METADATA_URL: liveness (HOSTS_TABLE_NAME) needs this instance's id")
    assert "\n" not in str(raised.value)
