"""An instance leaving service hands its tasks back at once and they finish elsewhere with their retries intact.

Two fleet-mode workers against the moto server (with localaws/autoscaling.py's group lifecycle), each with its own
metadata emulator (localaws/metadata.py): A, two slots, holds two gate jobs; its metadata then says the instance
is leaving - a Spot interruption notice, a rebalance recommendation, or the group terminating it (target lifecycle
state Terminated, the termination hook waiting). Both tasks are back in the queue within a bounded few seconds
(METADATA_WATCH_SECONDS=0.2); B, whose metadata says nothing, runs them to SUCCEEDED. MAX_RECEIVES=1: a hand-back
that used up a receive would have sent them to the DLQ instead.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import tests._adapter_support as support
from adapter.__main__ import build
from adapter.fleet import HOOK_HEARTBEAT_S, Departure, Membership
from adapter.metadata import Metadata, Reading
from adapter.runner import Runner
from adapter.slots import Slots
from core.store import TaskStore
from localaws import autoscaling as model
from localaws.metadata import MetadataServer
from tests._adapter_support import (
    Gate,
    fleet_env,
    fleet_group,
    lifecycle_state,
    queue_counts,
    record_answers,
    record_calls,
    running,
    submit,
    wait_for,
    worker_env,
)

# fixtures: one local AWS per module, its task table, a registry with the gate type
module_aws, aws, store, types = support.module_aws, support.aws, support.store, support.gate_types
HAND_BACK_BOUND_S = 10.0  # "within seconds": a bound on the wait, not a measurement


def target_of(instance_id: str) -> Any:
    return lambda: model.target_lifecycle_state(instance_id)


@pytest.mark.parametrize(
    ("notice", "why"),
    [
        ("spot", "spot interruption notice (terminate at "),
        ("rebalance", "spot rebalance recommendation (noticed "),
        ("terminated", "the group is moving the instance to Terminated"),
    ],
)
def test_an_interruption_hands_back_every_task_and_they_finish_elsewhere(
    aws: Any, store: TaskStore, types: Path, tmp_path: Path, notice: str, why: str
) -> None:
    group = fleet_group(aws, 2, hook=True)
    a, b = group.instance_ids
    gate = Gate.at(tmp_path / "gate")
    settings = {"GPU_SLOTS": "2", "TASK_TYPES_FILE": str(types), "MAX_RECEIVES": "1"}
    tasks = [submit(aws, store, "gate", gate.params()) for _ in range(2)]
    with MetadataServer(a, target_lifecycle_state=target_of(a)) as imds_a:
        worker_a = build(worker_env(aws, tmp_path / "a", WORKER_ID="A", **fleet_env(group, imds_a.url, **settings)))
        assert worker_a.membership is not None
        completed = record_calls(worker_a.membership.autoscaling, "CompleteLifecycleAction")
        with running(worker_a):
            wait_for("both jobs to run on A", lambda: gate.arrived() == set(tasks))
            if notice == "spot":
                imds_a.set_spot_action("terminate")
            elif notice == "rebalance":
                imds_a.set_rebalance()
            else:  # the group takes A away: Terminating:Wait on its termination hook
                aws.client("autoscaling").terminate_instance_in_auto_scaling_group(
                    InstanceId=a, ShouldDecrementDesiredCapacity=True
                )
            wait_for(
                "both tasks back in the queue",
                lambda: all(getattr(store.get(t), "status", None) == "QUEUED" for t in tasks),
                timeout=HAND_BACK_BOUND_S,
            )
            for task_id in tasks:
                item = store.get(task_id)
                assert item is not None and item.worker is None and item.attempts == 1
                assert item.error is not None and item.error.startswith(why) and item.error.endswith("attempt 1")
            if notice == "terminated":  # hand-back first, then the lifecycle action, so the group lets A go
                wait_for("A to leave the group", lambda: lifecycle_state(aws, a) is None)
                assert completed == [
                    {
                        "LifecycleHookName": group.hook,
                        "AutoScalingGroupName": group.name,
                        "InstanceId": a,
                        "LifecycleActionResult": "CONTINUE",
                    }
                ]
            else:
                assert completed == []  # the group is not taking A away (yet): no lifecycle action to complete
            assert worker_a.slots.busy() == 0 and worker_a.departure.leaving.is_set()
    with MetadataServer(b, target_lifecycle_state=target_of(b)) as imds_b:
        worker_b = build(worker_env(aws, tmp_path / "b", WORKER_ID="B", **fleet_env(group, imds_b.url, **settings)))
        answers = record_answers(worker_b.sqs, "ReceiveMessage")
        gate.open()
        with running(worker_b):
            wait_for(
                "both to succeed on B", lambda: all(getattr(store.get(t), "status", None) == "SUCCEEDED" for t in tasks)
            )
    for task_id in tasks:
        item = store.get(task_id)
        assert item is not None and item.worker == "B" and item.attempts == 2
    counts = [m["Attributes"]["ApproximateReceiveCount"] for a in answers for m in a.get("Messages", [])]
    assert counts == ["1", "1"]  # the messages B ran were fresh: the interruption used up no receive
    assert queue_counts(aws, aws.dlq_url) == (0, 0)


def test_a_message_received_while_leaving_is_handed_back_unrun(
    aws: Any, store: TaskStore, types: Path, tmp_path: Path
) -> None:
    """A long poll that returns after the notice: its message is claimed and handed back with a fresh one, its job
    never started."""
    group = fleet_group(aws, 1)
    (me,) = group.instance_ids
    gate = Gate.at(tmp_path / "gate")
    task_id = submit(aws, store, "gate", gate.params())
    with MetadataServer(me, target_lifecycle_state=target_of(me)) as imds:
        worker = build(worker_env(aws, tmp_path / "w", TASK_TYPES_FILE=str(types), **fleet_env(group, imds.url)))
        (message,) = worker.queue.receive(1, 1)
        worker.departure.note(Reading(spot_action="terminate at 2030-01-01T00:00:00Z"))
        worker.handle(message)
    item = store.get(task_id)
    assert item is not None and item.status == "QUEUED" and item.attempts == 1
    assert item.error == "spot interruption notice (terminate at 2030-01-01T00:00:00Z) during attempt 1"
    assert gate.arrived() == set()  # the job never ran
    (fresh,) = aws.client("sqs").receive_message(
        QueueUrl=aws.queue_url, MessageSystemAttributeNames=["ApproximateReceiveCount"]
    )["Messages"]
    assert fresh["Attributes"]["ApproximateReceiveCount"] == "1" and json.loads(fresh["Body"])["task_id"] == task_id
    store.cancel(task_id)


def test_the_watch_is_off_outside_a_fleet(aws: Any, store: TaskStore, tmp_path: Path) -> None:
    """No GPU_FLEET_NAME: no group, no Spot, so the metadata service is never asked (a CPU-only dev host has none)."""
    with MetadataServer("i-0000000000000000") as imds:
        imds.set_spot_action("terminate")
        worker = build(worker_env(aws, tmp_path / "w", INSTANCE_METADATA_URL=imds.url))
        task_id = submit(aws, store, "sleep", {"seconds": 0, "exit_code": 0})
        with running(worker):
            wait_for("the task to run", lambda: getattr(store.get(task_id), "status", None) == "SUCCEEDED")
        assert worker.watch is None and worker.membership is None
        assert imds.requests == []


def call(url: str, method: str = "GET", **headers: str) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


def test_the_metadata_emulator_answers_as_imdsv2_requires() -> None:
    now = [1000.0]
    with MetadataServer("i-0123456789abcdef0", clock=lambda: now[0]) as imds:
        base, token_url = f"{imds.url}/latest/meta-data", f"{imds.url}/latest/api/token"
        assert call(f"{base}/instance-id") == (401, "")  # IMDSv1 (no token) is refused
        assert call(token_url, "PUT")[0] == 400  # no TTL
        for bad in ("0", "21601", "soon"):
            assert call(token_url, "PUT", **{"X-aws-ec2-metadata-token-ttl-seconds": bad})[0] == 400
        proxied = {"X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "10.0.0.1"}
        assert call(token_url, "PUT", **proxied)[0] == 403
        code, token = call(token_url, "PUT", **{"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        assert code == 200 and token
        auth = {"X-aws-ec2-metadata-token": token}
        assert call(f"{base}/instance-id", **auth) == (200, "i-0123456789abcdef0")
        assert call(f"{base}/instance-id", **{"X-aws-ec2-metadata-token": "forged"})[0] == 401
        for item in ("spot/instance-action", "events/recommendations/rebalance", "autoscaling/target-lifecycle-state"):
            assert call(f"{base}/{item}", **auth)[0] == 404  # nothing to say yet
        imds.set_spot_action("stop")
        imds.set_rebalance()
        imds.set_target_lifecycle_state("Warmed:Stopped")
        code, body = call(f"{base}/spot/instance-action", **auth)
        assert code == 200 and json.loads(body)["action"] == "stop" and json.loads(body)["time"].endswith("Z")
        code, body = call(f"{base}/events/recommendations/rebalance", **auth)
        assert code == 200 and json.loads(body)["noticeTime"].endswith("Z")
        assert call(f"{base}/autoscaling/target-lifecycle-state", **auth) == (200, "Warmed:Stopped")
        now[0] += 60  # the token's TTL has passed
        assert call(f"{base}/instance-id", **auth)[0] == 401
        with pytest.raises(ValueError):
            imds.set_spot_action("reboot")


def test_the_metadata_client_renews_its_token_when_refused() -> None:
    now = [1000.0]
    with MetadataServer("i-0123456789abcdef0", clock=lambda: now[0]) as imds:
        imds.set_target_lifecycle_state("InService")
        metadata = Metadata(imds.url)  # its own clock: it believes its token good for six hours
        assert metadata.instance_id() == "i-0123456789abcdef0"
        now[0] += 86400  # the service no longer accepts that token: 401, a new token, the answer
        assert metadata.get("autoscaling/target-lifecycle-state") == "InService"
        assert metadata.get("spot/instance-action") is None
    assert [m for m, p in imds.requests if p == "/latest/api/token"] == ["PUT", "PUT"]


def test_a_long_hand_back_keeps_the_termination_hook_alive(aws: Any, tmp_path: Path) -> None:
    """A hand-back still running HOOK_HEARTBEAT_S after the group began taking the instance away records the hook's
    heartbeat (the clock is the test's); once every slot is idle the lifecycle action is completed, once."""
    group = fleet_group(aws, 1, hook=True)
    (me,) = group.instance_ids
    autoscaling = aws.client("autoscaling")
    membership = Membership(autoscaling, group=group.name, instance_id=me, hook_name=group.hook)
    beats = record_calls(autoscaling, "RecordLifecycleActionHeartbeat")
    completed = record_calls(autoscaling, "CompleteLifecycleAction")
    now = [0.0]
    departure = Departure(membership, watch_s=0.01, clock=lambda: now[0])
    slots = Slots([Runner(s3=None, bucket="b", work_dir=str(tmp_path / "w"), stop_grace_s=1)])
    handing_back = threading.Event()
    slots.start(lambda runner: handing_back.wait(30), "slow-hand-back")  # a job that takes its time to stop
    autoscaling.terminate_instance_in_auto_scaling_group(InstanceId=me, ShouldDecrementDesiredCapacity=True)
    assert lifecycle_state(aws, me) == "Terminating:Wait"
    departure.note(Reading(target_state=model.target_lifecycle_state(me)))
    stopping = threading.Event()
    departure.turn(slots, stopping)
    assert beats == [] and completed == []  # still within HOOK_HEARTBEAT_S
    now[0] += HOOK_HEARTBEAT_S
    departure.turn(slots, stopping)
    assert len(beats) == 1 and completed == [] and lifecycle_state(aws, me) == "Terminating:Wait"
    handing_back.set()
    slots.wait_idle(10)
    departure.turn(slots, stopping)
    departure.turn(slots, stopping)
    assert len(completed) == 1 and completed[0]["LifecycleActionResult"] == "CONTINUE"
    wait_for("the instance to leave the group", lambda: lifecycle_state(aws, me) is None)
