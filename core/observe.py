"""Direct reads that build an Observation: SQS queue attributes, the task table's status GSI, EC2 DescribeInstances;
and, in fleet mode, the Auto Scaling group as a core.fleet.Fleet (`read_fleet`).

Never CloudWatch metrics: those lag minutes behind, and stop entirely for a queue idle for 6 h (the seed's failure 2).
Clients are injected (low-level boto3 clients), so the same code runs in the Lambda, on the instance and in tests.
The instance side passes no EC2 client: the GPU role may not describe instances, and it knows it is running.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .fleet import Fleet, Member
from .idle import Observation, Policy
from .instances import read_instances
from .tasks import TERMINAL, TaskStatus

QUEUE_ATTRIBUTES = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)
TERMINAL_STATUSES = tuple(sorted(s.value for s in TERMINAL))
# How many of each terminal status (newest created first) to read for the newest finished_at. A task that ends
# after more than this many newer tasks of its status ended is missed: the idle clock then starts earlier than it
# should, which can only stop an idle GPU sooner (never a busy one: RUNNING/in-flight checks are separate).
TERMINAL_LOOKBACK = 25
# RUNNING items read beyond the first before giving up and assuming one is live (only stale ones make us page).
RUNNING_PAGE = 25
RUNNING_MAX_PAGES = 4


@dataclass(frozen=True)
class Sources:
    sqs: Any
    dynamodb: Any
    queue_url: str
    table_name: str
    status_index: str
    ec2: Any = None
    instance_ids: tuple[str, ...] = ()
    autoscaling: Any = None  # fleet mode: the Auto Scaling client read_fleet uses


def read_queue(sqs: Any, queue_url: str) -> tuple[int, int, int]:
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=list(QUEUE_ATTRIBUTES))["Attributes"]
    visible, in_flight, delayed = (int(attrs.get(name, "0")) for name in QUEUE_ATTRIBUTES)
    return visible, in_flight, delayed


def _num(item: dict[str, Any], name: str) -> float | None:
    """A DynamoDB N attribute holding epoch milliseconds, as epoch seconds."""
    raw = item.get(name)
    return float(raw["N"]) / 1000.0 if raw and "N" in raw else None


def _status_query(src: Sources, status: str, **extra: Any) -> dict[str, Any]:
    names = {"#s": "status", **extra.pop("names", {})}
    values = {":s": {"S": status}, **extra.pop("values", {})}
    return src.dynamodb.query(
        TableName=src.table_name,
        IndexName=src.status_index,
        KeyConditionExpression=extra.pop("key", "#s = :s"),
        ExpressionAttributeNames=names,
        ExpressionAttributeValues=values,
        ScanIndexForward=False,  # newest created first
        **extra,
    )


def newest_queued_at(src: Sources, now: float, max_age_s: float) -> float | None:
    cutoff_ms = int((now - max_age_s) * 1000)
    out = _status_query(
        src, "QUEUED", key="#s = :s AND created_at >= :cutoff", values={":cutoff": {"N": str(cutoff_ms)}}, Limit=1
    )
    items = out.get("Items", [])
    return _num(items[0], "created_at") if items else None


def _liveness(item: dict[str, Any]) -> float | None:
    for name in ("heartbeat_at", "started_at", "updated_at", "created_at"):
        value = _num(item, name)
        if value is not None:
            return value
    return None


def running_liveness(src: Sources, fresh_after: float) -> tuple[float | None, bool]:
    """(freshest liveness seen on a RUNNING item or None, whether every RUNNING item was looked at).

    One Limit-1 query answers the usual case; only a stale first item (a dead worker's leftover) makes us page on,
    a bounded number of times."""
    best: float | None = None
    start_key: dict[str, Any] | None = None
    for page in range(RUNNING_MAX_PAGES + 1):
        extra: dict[str, Any] = {"Limit": 1 if page == 0 else RUNNING_PAGE}
        if start_key:
            extra["ExclusiveStartKey"] = start_key
        out = _status_query(src, TaskStatus.RUNNING, **extra)
        for item in out.get("Items", []):
            seen = _liveness(item)
            if seen is not None and (best is None or seen > best):
                best = seen
        start_key = out.get("LastEvaluatedKey")
        if not start_key or (best is not None and best >= fresh_after):
            return best, True
    return best, False


def last_finished_at(src: Sources) -> float | None:
    newest: float | None = None
    for status in TERMINAL_STATUSES:
        out = _status_query(src, status, Limit=TERMINAL_LOOKBACK, ProjectionExpression="finished_at, updated_at")
        for item in out.get("Items", []):
            ended = _num(item, "finished_at") or _num(item, "updated_at")
            if ended is not None and (newest is None or ended > newest):
                newest = ended
    return newest


def observe(src: Sources, now: float, policy: Policy, *, with_history: bool = True) -> Observation:
    """Read everything the decision needs. `with_history=False` skips the finished_at lookback (the on-node
    autostop keeps its own idle clock and only needs the blocking checks)."""
    visible, in_flight, delayed = read_queue(src.sqs, src.queue_url)
    heartbeat, complete = running_liveness(src, now - policy.heartbeat_stale_s)
    return Observation(
        now=now,
        visible=visible,
        in_flight=in_flight,
        delayed=delayed,
        newest_queued_at=newest_queued_at(src, now, policy.queued_max_age_s),
        running_heartbeat_at=heartbeat,
        running_scan_complete=complete,
        last_finished_at=last_finished_at(src) if with_history else None,
        instances=read_instances(src.ec2, src.instance_ids) if src.ec2 is not None else (),
    )


def read_fleet(autoscaling: Any, ec2: Any | None, name: str) -> Fleet:
    """The group `name` as Auto Scaling reports it: DescribeAutoScalingGroups (capacity settings, members with their
    LifecycleState and ProtectedFromScaleIn), DescribeWarmPool (the pool's instances, page by page), and each
    member's EC2 LaunchTime (core.instances.read_instances: the last start, which is what a warm start resets; not
    read, and None, without an `ec2` client).
    https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_DescribeAutoScalingGroups.html,
    https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_DescribeWarmPool.html"""
    found = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    if not found:
        raise LookupError(f"Auto Scaling group {name!r} does not exist")
    group = found[0]
    raw = group.get("Instances", [])
    ids = [m["InstanceId"] for m in raw]
    launched = {i.instance_id: i.launch_time for i in read_instances(ec2, ids)} if ec2 is not None else {}
    members = tuple(
        Member(m["InstanceId"], m["LifecycleState"], bool(m.get("ProtectedFromScaleIn")), launched.get(m["InstanceId"]))
        for m in raw
    )
    warm: list[Member] = []
    kwargs: dict[str, Any] = {"AutoScalingGroupName": name}
    while True:
        page = autoscaling.describe_warm_pool(**kwargs)
        warm += [Member(m["InstanceId"], m["LifecycleState"]) for m in page.get("Instances", [])]
        if not page.get("NextToken"):
            break
        kwargs["NextToken"] = page["NextToken"]
    return Fleet(
        name=name,
        desired=int(group["DesiredCapacity"]),
        min_size=int(group["MinSize"]),
        max_size=int(group["MaxSize"]),
        members=members,
        warm=tuple(warm),
    )
