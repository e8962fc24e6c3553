"""The cost report: the pure report (core/cost.py) with exact numbers; `GET /cost` against moto's server with a real
hosts table holding billed running intervals (written by core.hosts.HostStore, as the controller writes them), for
an admin and for submitters; and `gpuq cost` as a real process against the service under uvicorn on 127.0.0.1."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mangum import Mangum

import core.cost
from core.contract import SettingError
from core.cost import LONGEST_TASK_MS, Overhead, PriceSource, ReportScope, Usage, build_report
from core.hosts import HostStore, RunInterval
from core.tasks import TaskRecord, TaskStatus, new_task_id, now_ms, to_dynamo
from localaws.lambdas import LocalController
from orchestrator import cliprint
from orchestrator.app import create_app
from orchestrator.costs import NO_CLIENT, NO_HOSTS, NOT_YOURS, parse_since
from orchestrator.server import serve_in_thread
from orchestrator.settings import Clients, Settings
from tests.test_cli import cli, cli_env
from tests.test_orchestrator_api import ADMINS, ALICE, BOB, CAROL, invoke

S = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN, HOUR = 60_000, 3_600_000
TOKEN = "cost-test-token-0123456789"
REPO = Path(__file__).resolve().parent.parent


def task(status: TaskStatus, type_: str, who: str | None, finished: int | None, **kw: Any) -> TaskRecord:
    created = kw.pop("created", (finished or S) - 10 * MIN)
    return TaskRecord(
        task_id=new_task_id(created),
        status=status,
        type=type_,
        created_at=created,
        finished_at=finished,
        submitted_by=who,
        **kw,
    )


OK, FAILED, CANCELLED = TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED


def test_the_report_counts_finished_tasks_billed_time_and_idle_overhead_exactly() -> None:
    until = S + 6 * HOUR
    tasks = [
        task(OK, "matmul", ALICE, S + HOUR, gpu_seconds=1200.0, cost_usd=1.02),
        task(FAILED, "matmul", BOB, S + 2 * HOUR, gpu_seconds=600.0, cost_usd=0.51),
        task(CANCELLED, "sleep", ALICE, S + 3 * HOUR),  # cancelled while queued: no GPU time
        task(OK, "sleep", None, S + 4 * HOUR, gpu_seconds=300.0),  # settled with no price: unpriced
        task(OK, "matmul", ALICE, S - 1, gpu_seconds=99.0, cost_usd=9.0),  # finished before the window
        task(OK, "matmul", BOB, until + 1, gpu_seconds=99.0, cost_usd=9.0),  # after it
        task(TaskStatus.RUNNING, "matmul", ALICE, None, gpu_seconds=99.0),  # not finished
    ]
    intervals = [
        RunInterval("i-a", S - HOUR, S + HOUR),  # clipped at since: 3600 s
        RunInterval("i-b", S + 2 * HOUR, S + 3 * HOUR, slots=4),  # 3600 s, 14400 GPU-s
        RunInterval("i-a", S - 3 * HOUR, S - 2 * HOUR),  # before the window: not counted
        RunInterval("i-b", until - 30 * MIN, until + HOUR, slots=4),  # clipped at until: 1800 s, 7200 GPU-s
    ]
    report = build_report(tasks, intervals, since_ms=S, until_ms=until, hourly_usd=3.6, scope=ReportScope.ALL)
    assert (report.since, report.until, report.scope) == (S, until, ReportScope.ALL)
    assert report.price.hourly_usd == 3.6 and report.price.source is PriceSource.SETTING
    assert (report.tasks, report.used_gpu_seconds, report.cost_usd) == (4, 2100.0, 1.53)
    assert report.by_type == [Usage("matmul", 2, 1800.0, 1.53, 0), Usage("sleep", 2, 300.0, 0.0, 1)]
    assert report.by_submitter == [
        Usage(ALICE, 2, 1200.0, 1.02, 0),
        Usage(BOB, 1, 600.0, 0.51, 0),
        Usage(None, 1, 300.0, 0.0, 1),
    ]
    # 9000 instance-seconds at 3.6 USD/h = 9 USD; 25200 GPU-seconds billed, 2100 used; 23100 idle at 9/25200 each
    assert report.overhead == Overhead(
        intervals=3, billed_gpu_seconds=25200.0, billed_usd=9.0, idle_gpu_seconds=23100.0, idle_usd=8.25
    )
    assert report.overhead_note is None


def test_idle_overhead_is_never_negative_never_zero_when_unknown_and_unpriced_without_a_price() -> None:
    # a task finished in the window after running mostly before it used more than the window billed
    used = [task(OK, "matmul", ALICE, S + 10 * MIN, gpu_seconds=5000.0)]
    report = build_report(
        used,
        [RunInterval("i-a", S - HOUR, S + 10 * MIN)],
        since_ms=S,
        until_ms=S + HOUR,
        hourly_usd=None,
        scope=ReportScope.ALL,
    )
    assert report.price.hourly_usd is None and report.price.source is PriceSource.UNSET
    assert report.overhead == Overhead(1, 600.0, None, 0.0, None)
    assert report.by_type == [Usage("matmul", 1, 5000.0, 0.0, 1)]

    withheld = build_report(
        used, None, since_ms=S, until_ms=S + HOUR, hourly_usd=3.6, scope=ReportScope.OWN, overhead_note=NOT_YOURS
    )
    assert withheld.overhead is None and withheld.overhead_note == NOT_YOURS and withheld.scope is ReportScope.OWN
    with pytest.raises(ValueError, match="overhead_note"):
        build_report(used, None, since_ms=S, until_ms=S + HOUR, hourly_usd=3.6, scope=ReportScope.ALL)
    with pytest.raises(ValueError, match="before since"):
        build_report(used, [], since_ms=S, until_ms=S - 1, hourly_usd=3.6, scope=ReportScope.ALL)
    nothing = build_report([], [], since_ms=S, until_ms=S + HOUR, hourly_usd=3.6, scope=ReportScope.ALL)
    assert nothing.overhead == Overhead(0, 0.0, 0.0, 0.0, 0.0) and nothing.by_type == []


def test_a_report_without_a_price_prints_what_is_unknown() -> None:
    used = [task(OK, "matmul", BOB, S + 10 * MIN, gpu_seconds=30.0), task(OK, "noop", BOB, S + MIN, cost_usd=0.0)]
    report = build_report(
        used, [RunInterval("i-a", S, S + 60_000)], since_ms=S, until_ms=S + HOUR, hourly_usd=None, scope=ReportScope.OWN
    )
    out = io.StringIO()
    cliprint.cost(json.loads(json.dumps(asdict(report))), out)
    assert out.getvalue().splitlines() == [
        "tasks finished 2026-01-01T00:00:00Z .. 2026-01-01T01:00:00Z (your tasks)",
        "price: unknown (GPU_HOURLY_USD is not set); task costs are as recorded when each task settled",
        "",
        "TYPE     TASKS   GPU-SECONDS    COST USD",
        "matmul       1          30.0      0.0000",
        "noop         1           0.0      0.0000",
        "total        2          30.0      0.0000",
        "",
        f"{'SUBMITTER':<{len(BOB)}}   TASKS   GPU-SECONDS    COST USD",
        f"{BOB}       2          30.0      0.0000",
        "1 task(s) used GPU time but carry no cost (settled while GPU_HOURLY_USD was unset)",
        "",
        "billed:        60.0 GPU-seconds in 1 running interval(s)",
        "used:          30.0 GPU-seconds",
        "idle overhead: 30.0 GPU-seconds",
    ]
    withheld = build_report(
        used, None, since_ms=S, until_ms=S + HOUR, hourly_usd=None, scope=ReportScope.OWN, overhead_note=NOT_YOURS
    )
    out = io.StringIO()
    cliprint.cost(json.loads(json.dumps(asdict(withheld))), out)
    assert out.getvalue().splitlines()[-1] == f"idle overhead: {NOT_YOURS}"


def test_the_price_setting_is_checked() -> None:
    env = {
        "TASK_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/tasks",
        "TASK_DLQ_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/tasks-dlq",
        "TASK_TABLE_NAME": "task_store",
        "GPU_INSTANCE_IDS": "i-0123456789abcdef0",
        "CONTROLLER_FUNCTION_NAME": "shutdown-gpu-lambda",
        "ORCHESTRATOR_TOKEN": TOKEN,
    }
    assert Settings.from_env({**env, "GPU_HOURLY_USD": "3.06"}).gpu_hourly_usd == 3.06
    assert Settings.from_env(env).gpu_hourly_usd is None
    for bad, why in (("-1", "must not be negative"), ("three", "not valid"), ("nan", "not a finite number")):
        with pytest.raises(SettingError, match=f"GPU_HOURLY_USD: .*{why}"):
            Settings.from_env({**env, "GPU_HOURLY_USD": bad})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("90s", S - 90_000),
        ("30m", S - 30 * MIN),
        ("12h", S - 12 * HOUR),
        ("7d", S - 7 * 24 * HOUR),
        ("2w", S - 14 * 24 * HOUR),
        ("2025-12-31", S - 24 * HOUR),
        ("2025-12-31T18:00:00Z", S - 6 * HOUR),
        ("2025-12-31T20:00:00-04:00", S),
        ("2025-12-31T23:59:59.250", S - 750),  # no offset: UTC
    ],
)
def test_since_takes_durations_and_iso_times(raw: str, expected: int) -> None:
    assert parse_since(raw, S) == expected


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("7", "neither a duration"),
        ("7x", "neither a duration"),
        ("-3d", "neither a duration"),
        ("0d", "neither a duration"),
        ("", "neither a duration"),
        ("yesterday", "neither a duration"),
        ("2026-01-02", "in the future"),
        ("999999999w", "before 1970"),
    ],
)
def test_since_refuses_anything_else_in_one_line(raw: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as refused:
        parse_since(raw, S)
    assert "\n" not in str(refused.value)


def hosts_table(aws: Any) -> HostStore:
    """A hosts table in moto with the key core/hosts.py documents (`instance_id`, `sk`)."""
    name = "gpu_hosts-cost-test"
    client = aws.client("dynamodb")
    client.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "instance_id", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "instance_id", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
    )
    return HostStore(client, name)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def history(local_aws: Any) -> Iterator[tuple[int, HostStore]]:
    """Tasks and billed intervals around a window that starts 3 h ago (on a whole second, so an ISO `since` is
    exact): yields (since, hosts)."""
    since = (now_ms() // 1000 - 3 * 3600) * 1000
    table = local_aws.resource("dynamodb").Table(local_aws.table_name)
    for record in (
        task(OK, "matmul", ALICE, since + 10 * MIN, gpu_seconds=1200.0, cost_usd=1.02),
        task(FAILED, "matmul", BOB, since + 40 * MIN, gpu_seconds=600.0, cost_usd=0.51),
        task(OK, "sleep", ALICE, since + 65 * MIN, gpu_seconds=300.0, cost_usd=0.255),
        task(OK, "matmul", ALICE, since - MIN, gpu_seconds=99.0, cost_usd=9.0),  # before the window
        # created before the oldest a finished task can be (its item had expired): beyond the index bound
        task(OK, "matmul", BOB, since + 30 * MIN, created=since - LONGEST_TASK_MS - 1, gpu_seconds=9.0, cost_usd=9.0),
        task(CANCELLED, "noop", CAROL, since + 50 * MIN, created=since - LONGEST_TASK_MS + MIN),  # just inside
        task(TaskStatus.QUEUED, "matmul", ALICE, None, created=since + HOUR),
    ):
        table.put_item(Item=to_dynamo(record.to_item()))
    hosts = hosts_table(local_aws)
    hosts.record_running("i-a", launched_ms=since - 5 * HOUR, seen_ms=since - 4 * HOUR)  # before the window
    hosts.record_running("i-a", launched_ms=since - HOUR, seen_ms=since + 30 * MIN)
    hosts.record_running("i-a", launched_ms=since - HOUR, seen_ms=since + HOUR)  # the same interval, seen later
    hosts.record_running("i-b", launched_ms=since + 90 * MIN, seen_ms=since + 2 * HOUR, slots=2)
    yield since, hosts


def make_app(aws: Any, controller: LocalController, env: dict[str, str], *, low_level: bool = True) -> Any:
    """`low_level`: whether the app gets a low-level DynamoDB client (what reads the hosts table)."""
    settings = Settings.from_env({**aws.env(), **controller.env(), **env})
    table = aws.resource("dynamodb").Table(settings.table_name)
    clients = Clients(
        sqs=aws.client("sqs"),
        ec2=aws.client("ec2"),
        lambda_=controller.client,
        table=table,
        dynamodb=aws.client("dynamodb") if low_level else None,
    )
    return create_app(settings, clients)


def rows(found: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["key"], r["tasks"], r["gpu_seconds"], r["cost_usd"], r["unpriced"]) for r in found]


def test_the_cost_endpoint_gives_admins_everything_and_submitters_their_own(
    local_aws: Any, controller: LocalController, history: tuple[int, HostStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    since, hosts = history
    monkeypatch.setattr(core.cost, "REPORT_PAGE", 2)  # several index pages per status
    iam = {"ORCHESTRATOR_AUTH": "iam", "ORCHESTRATOR_ADMIN_ARNS": ADMINS}
    priced = {**iam, "HOSTS_TABLE_NAME": hosts.table_name, "GPU_HOURLY_USD": "3.6"}
    handler = Mangum(make_app(local_aws, controller, priced), lifespan="off")
    asked = now_ms()
    status, admin = invoke(handler, "GET", "/cost", arn=CAROL, query={"since": iso(since)})
    assert status == 200, admin
    assert admin["since"] == since and admin["until"] >= asked and admin["scope"] == "all"
    assert admin["price"] == {"hourly_usd": 3.6, "source": "GPU_HOURLY_USD"}
    assert (admin["tasks"], admin["used_gpu_seconds"], admin["cost_usd"]) == (4, 2100.0, 1.785)
    assert rows(admin["by_type"]) == [
        ("matmul", 2, 1800.0, 1.53, 0),
        ("sleep", 1, 300.0, 0.255, 0),
        ("noop", 1, 0, 0, 0),
    ]
    assert rows(admin["by_submitter"]) == [(ALICE, 2, 1500.0, 1.275, 0), (BOB, 1, 600.0, 0.51, 0), (CAROL, 1, 0, 0, 0)]
    # i-a: since -> since+1h (3600 s, 1 slot); i-b: 1800 s x 2 slots; 5400 instance-s at 0.001 USD/s
    assert admin["overhead"] == {
        "intervals": 2,
        "billed_gpu_seconds": 7200.0,
        "billed_usd": 5.4,
        "idle_gpu_seconds": 5100.0,
        "idle_usd": 3.825,
    }
    assert admin["overhead_note"] is None

    status, alice = invoke(handler, "GET", "/cost", arn=ALICE, query={"since": iso(since)})
    assert status == 200 and alice["scope"] == "own"
    assert (alice["tasks"], alice["used_gpu_seconds"], alice["cost_usd"]) == (2, 1500.0, 1.275)
    assert rows(alice["by_submitter"]) == [(ALICE, 2, 1500.0, 1.275, 0)]
    assert alice["overhead"] is None and alice["overhead_note"] == NOT_YOURS
    status, bob = invoke(handler, "GET", "/cost", arn=BOB, query={"since": iso(since)})
    assert status == 200 and rows(bob["by_type"]) == [("matmul", 1, 600.0, 0.51, 0)]
    assert invoke(handler, "GET", "/cost", arn=None)[0] == 401

    for bad in ("7x", "2999-01-01", "", "-3d"):
        status, body = invoke(handler, "GET", "/cost", arn=CAROL, query={"since": bad})
        assert status == 422 and body["error"] == "invalid_since" and body["message"].startswith("since: "), bad

    # no hosts table: the idle overhead is unknown, and said to be, never zero; no price: nothing billed is priced
    bare = Mangum(make_app(local_aws, controller, {**iam, "HOSTS_TABLE_NAME": ""}), lifespan="off")  # "" is unset
    status, unknown = invoke(bare, "GET", "/cost", arn=CAROL, query={"since": iso(since)})
    assert status == 200 and unknown["overhead"] is None and unknown["overhead_note"] == NO_HOSTS
    assert unknown["price"] == {"hourly_usd": None, "source": "unset"} and unknown["cost_usd"] == 1.785
    clientless = Mangum(make_app(local_aws, controller, priced, low_level=False), lifespan="off")
    status, unread = invoke(clientless, "GET", "/cost", arn=CAROL)
    assert status == 200 and unread["overhead"] is None and unread["overhead_note"] == NO_CLIENT
    broken = Mangum(make_app(local_aws, controller, {**iam, "HOSTS_TABLE_NAME": "no-such-table"}), lifespan="off")
    status, body = invoke(broken, "GET", "/cost", arn=CAROL)
    assert status == 503 and body["error"] == "hosts_unavailable"


def test_gpuq_cost_prints_a_table_and_json(
    local_aws: Any, controller: LocalController, history: tuple[int, HostStore], tmp_path: Path
) -> None:
    since, hosts = history
    priced = {"ORCHESTRATOR_TOKEN": TOKEN, "HOSTS_TABLE_NAME": hosts.table_name, "GPU_HOURLY_USD": "3.6"}
    app = make_app(local_aws, controller, priced)
    with serve_in_thread(app) as url:
        env = cli_env(url, tmp_path, TOKEN)

        def gpuq(*args: str) -> subprocess.CompletedProcess[str]:
            return cli(env, *args)

        shown = gpuq("cost", "--since", iso(since))
        as_json = gpuq("cost", "--since", iso(since), "--json")
        bad = gpuq("cost", "--since", "7x")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"tasks finished {iso(since)} .. ") and lines[0].endswith(" (every caller's tasks)")
    assert lines[1] == "price: 3.6 USD per instance-hour (GPU_HOURLY_USD)"
    w = len(ALICE)
    assert lines[2:] == [
        "",
        "TYPE     TASKS   GPU-SECONDS    COST USD",
        "matmul       2        1800.0      1.5300",
        "sleep        1         300.0      0.2550",
        "noop         1           0.0      0.0000",
        "total        4        2100.0      1.7850",
        "",
        f"{'SUBMITTER':<{w}}   TASKS   GPU-SECONDS    COST USD",
        f"{ALICE:<{w}}       2        1500.0      1.2750",
        f"{BOB:<{w}}       1         600.0      0.5100",
        f"{CAROL:<{w}}       1           0.0      0.0000",
        "",
        "billed:        7200.0 GPU-seconds in 2 running interval(s), 5.4000 USD",
        "used:          2100.0 GPU-seconds",
        "idle overhead: 5100.0 GPU-seconds, 3.8250 USD",
    ]
    report = json.loads(as_json.stdout)
    assert report["since"] == since and report["overhead"]["idle_usd"] == 3.825 and report["scope"] == "all"
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == (
        "error: HTTP 422: since: '7x' is neither a duration (30m, 12h, 7d, 2w) nor an ISO date or time "
        "(2026-01-01T00:00:00Z)\n"
    )
