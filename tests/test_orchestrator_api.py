"""The HTTP API against moto's server: validation, idempotent submit, reads, paging, cancel, healthz, auth; and IAM
mode, through Mangum with function URL events as Lambda delivers them: identity, ownership, filtered paging, the
admin alias. Submits nudge the controller through localaws.lambdas' in-process asynchronous invoke, which runs the
real controller against the same moto server."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from botocore.config import Config
from mangum import Mangum

from core.contract import ADMIN_ALIAS, SettingError
from core.store import TaskStore, TransitionRejected
from core.tasks import TaskStatus
from localaws.lambdas import LocalController
from orchestrator.app import create_app
from orchestrator.identity import iam_caller
from orchestrator.server import serve_in_thread
from orchestrator.settings import Clients, Settings

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def clients(aws: Any, controller: LocalController, table_name: str, **kw: Any) -> Clients:
    table = aws.resource("dynamodb").Table(table_name)  # a TASK_TABLE_NAME override reaches the table too
    return Clients(sqs=aws.client("sqs"), ec2=aws.client("ec2"), lambda_=controller.client, table=table, **kw)


def make_app(aws: Any, controller: LocalController, **env: str) -> Any:
    settings = Settings.from_env({**aws.env(), **controller.env(), "ORCHESTRATOR_TOKEN": TOKEN, **env})
    return create_app(settings, clients(aws, controller, settings.table_name))


@contextmanager
def running(app: Any, **client_kw: Any) -> Iterator[httpx.Client]:
    """The app under uvicorn on 127.0.0.1 (what the container runs), with an HTTP client; both stopped after."""
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=10, **client_kw) as client:
        yield client


@pytest.fixture
def api(local_aws: Any, controller: LocalController) -> Iterator[httpx.Client]:
    with running(make_app(local_aws, controller, MAX_BODY_BYTES="2048"), headers=AUTH) as client:
        yield client


def messages(aws: Any) -> list[dict[str, Any]]:
    out = aws.client("sqs").receive_message(QueueUrl=aws.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    return [json.loads(m["Body"]) for m in out.get("Messages", [])]


def items(aws: Any) -> list[dict[str, Any]]:
    return aws.resource("dynamodb").Table(aws.table_name).scan()["Items"]


def store(aws: Any) -> TaskStore:
    return TaskStore(aws.resource("dynamodb").Table(aws.table_name))


def gpu_state(aws: Any) -> str:
    out = aws.client("ec2").describe_instances(InstanceIds=aws.instance_ids)
    return str(out["Reservations"][0]["Instances"][0]["State"]["Name"])


def test_submit_queues_task_sends_message_starts_gpu_and_is_idempotent(
    api: httpx.Client, local_aws: Any, controller: LocalController
) -> None:
    assert gpu_state(local_aws) == "stopped"
    resp = api.post("/tasks", json={"type": "matmul", "params": {"size": 64, "repeat": 2}})
    assert resp.status_code == 202, resp.text
    task = resp.json()
    assert task["status"] == "QUEUED" and task["type"] == "matmul" and task["params"] == {"size": 64, "repeat": 2}
    assert task["gpu"] == {"controller": "notified"}
    assert controller.drain()  # the controller's run, which the nudge queued
    [run] = controller.runs
    assert run.trigger == "api" and run.record is not None and run.record["cause"]["task_id"] == task["task_id"]
    assert gpu_state(local_aws) == "running"
    stored = store(local_aws).get(task["task_id"])
    assert stored is not None and stored.status == "QUEUED" and stored.enqueued_at is not None
    assert stored.enqueued_at >= stored.created_at
    assert messages(local_aws) == [{"v": 1, "task_id": task["task_id"], "enqueue_id": stored.enqueue_id}]
    assert api.get(f"/tasks/{task['task_id']}").json()["enqueued_at"] == stored.enqueued_at

    body = {"type": "sleep", "params": {"seconds": 1.5, "exit_code": 0}, "idempotency_key": "job-42"}
    first = api.post("/tasks", json=body)
    again = api.post("/tasks", json=body)
    assert first.status_code == again.status_code == 202
    assert again.json()["task_id"] == first.json()["task_id"]
    assert again.headers.get("Idempotent-Replayed") == "true" and "Idempotent-Replayed" not in first.headers
    assert again.json()["gpu"] == {"controller": "skipped"}  # it queued nothing, so it told the controller nothing
    assert [m["task_id"] for m in messages(local_aws)] == [first.json()["task_id"]]  # one message, not two
    conflict = api.post("/tasks", json={**body, "params": {"seconds": 2, "exit_code": 0}})
    assert conflict.status_code == 409 and first.json()["task_id"] in conflict.json()["message"]
    assert messages(local_aws) == []
    # the marker item is not a task: not readable, not listed
    assert api.get("/tasks/idem#job-42").status_code == 404
    listed = api.get("/tasks", params={"status": "QUEUED"}).json()["items"]
    assert [t["task_id"] for t in listed] == [first.json()["task_id"], task["task_id"]]


BAD_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"type": "no-such-type", "params": {}}, "unknown task type"),
    ({"type": "matmul", "params": {"size": "64", "repeat": 1}}, "size: expected integer"),
    ({"type": "matmul", "params": {"size": 64}}, "repeat: required"),
    ({"type": "matmul", "params": {"size": 64, "repeat": 1, "cmd": "rm -rf /"}}, "cmd: unexpected param"),
    ({"type": "matmul", "params": {"size": 10**9, "repeat": 1}}, "above maximum"),
    ({"type": "matmul", "params": {"size": 1, "repeat": 1}, "command": "bash -c id"}, "command"),
    ({"type": "matmul", "params": []}, "params"),
    ({"params": {}}, "type"),
    ({"type": "noop", "idempotency_key": "has spaces"}, "idempotency_key"),
]


def test_bad_requests_are_4xx_with_a_message_and_write_nothing(api: httpx.Client, local_aws: Any) -> None:
    for body, needle in BAD_BODIES:
        resp = api.post("/tasks", json=body)
        assert resp.status_code == 422, (body, resp.text)
        assert needle in resp.json()["message"], (body, resp.text)
    bad = api.post("/tasks", content=b'{"type": "noop",', headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"] == "bad_json"
    form = api.post("/tasks", content=b'{"type": "noop"}', headers={"Content-Type": "text/plain"})
    assert form.status_code == 415 and "application/json" in form.json()["message"]
    too_big = api.post("/tasks", json={"type": "infer", "params": {"prompt": "x" * 4000}})
    assert too_big.status_code == 413 and "2048" in too_big.json()["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming too
        yield b'{"type": "infer", "params": {"prompt": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}}'

    streamed = api.post("/tasks", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert items(local_aws) == [] and messages(local_aws) == []
    assert gpu_state(local_aws) == "stopped"


def test_get_and_list_pages_newest_first_through_the_gsi(api: httpx.Client, local_aws: Any) -> None:
    assert api.get("/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV").status_code == 404
    assert api.get("/tasks/not-an-id").status_code == 404
    tasks = store(local_aws)
    ids = [tasks.create(task_type="noop", params={}, at_ms=1_700_000_000_000 + i).task_id for i in range(5)]
    tasks.cancel(tasks.create(task_type="noop", params={}, at_ms=1_700_000_000_010).task_id)
    assert api.get(f"/tasks/{ids[0]}").json()["status"] == "QUEUED"
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        page = api.get("/tasks", params={"status": "QUEUED", "limit": 2, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        seen += [t["task_id"] for t in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    cancelled = api.get("/tasks", params={"status": "CANCELLED"}).json()
    assert len(cancelled["items"]) == 1 and cancelled["next_cursor"] is None
    first = api.get("/tasks", params={"status": "QUEUED", "limit": 2}).json()["next_cursor"]
    assert api.get("/tasks", params={"status": "RUNNING", "cursor": first}).status_code == 400  # other status
    assert api.get("/tasks", params={"status": "QUEUED", "cursor": "garbage!"}).status_code == 400
    assert api.get("/tasks", params={"status": "NOPE"}).status_code == 422
    assert api.get("/tasks", params={"status": "QUEUED", "limit": 0}).status_code == 422
    assert api.get("/tasks").status_code == 422


def test_cancel_queued_and_running_tasks(api: httpx.Client, local_aws: Any) -> None:
    queued = api.post("/tasks", json={"type": "noop"}).json()["task_id"]
    resp = api.post(f"/tasks/{queued}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "CANCELLED"
    # the message is still queued; the adapter's conditional claim refuses it: a cancelled task never runs
    assert messages(local_aws)[0]["task_id"] == queued
    with pytest.raises(TransitionRejected):
        store(local_aws).claim(queued, worker="gpu-1", stale_after_ms=60_000)
    assert api.post(f"/tasks/{queued}/cancel").json()["status"] == "CANCELLED"  # twice is fine

    running_id = api.post("/tasks", json={"type": "noop"}).json()["task_id"]
    claimed = store(local_aws).claim(running_id, worker="gpu-1", stale_after_ms=60_000).held
    resp = api.post(f"/tasks/{running_id}/cancel")
    assert resp.status_code == 200
    assert resp.json()["status"] == "RUNNING" and resp.json()["cancel_requested"] is True
    beat = store(local_aws).heartbeat(claimed)
    assert beat.cancel_requested is True  # what the adapter sees next; stopping the work is its job
    store(local_aws).finish(claimed, TaskStatus.SUCCEEDED)
    done = api.post(f"/tasks/{running_id}/cancel")
    assert done.status_code == 409 and "SUCCEEDED" in done.json()["message"]
    assert api.post("/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV/cancel").status_code == 404


def test_healthz_reports_queue_dlq_gpu_and_controller_and_503_when_aws_fails(
    api: httpx.Client, local_aws: Any, controller: LocalController
) -> None:
    sqs = local_aws.client("sqs")
    sqs.send_message(QueueUrl=local_aws.dlq_url, MessageBody="{}")
    sqs.send_message(QueueUrl=local_aws.queue_url, MessageBody="{}")
    sqs.send_message(QueueUrl=local_aws.queue_url, MessageBody="{}")
    health = api.get("/healthz")
    assert health.status_code == 200, health.text
    body = health.json()
    assert body["ok"] is True and body["queue"]["visible"] == 2 and body["dlq"]["visible"] == 1
    assert body["gpu"] == {local_aws.instance_ids[0]: "stopped"}
    assert body["controller"] == {"function": controller.function_name, "last_nudge": None, "last_failure": None}
    task_id = api.post("/tasks", json={"type": "noop"}).json()["task_id"]
    nudge = api.get("/healthz").json()["controller"]["last_nudge"]
    assert nudge["controller"] == "notified" and nudge["task_id"] == task_id and nudge["at_ms"] > 0

    with running(make_app(local_aws, controller, TASK_DLQ_URL=local_aws.dlq_url + "-deleted"), headers=AUTH) as broken:
        health = broken.get("/healthz")
    assert health.status_code == 503 and health.json()["ok"] is False and "error" in health.json()["dlq"]


def test_auth_required_unless_insecure_local_mode(local_aws: Any, controller: LocalController) -> None:
    with running(make_app(local_aws, controller)) as client:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": TOKEN},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": f"Bearer {TOKEN}x"},
        ):
            for method, path in (("GET", "/healthz"), ("POST", "/tasks"), ("GET", "/tasks?status=QUEUED")):
                resp = client.request(method, path, headers=headers, json={"type": "noop"})
                assert resp.status_code == 401, (headers, path)
                assert resp.headers["www-authenticate"] == "Bearer"
        assert items(local_aws) == []
        assert client.get("/healthz", headers=AUTH).status_code == 200
        assert client.get("/openapi.json").status_code == 200  # the API description is public
        assert client.get("/docs").status_code == 200

    env = {**local_aws.env(), **controller.env()}
    with pytest.raises(SettingError, match="ORCHESTRATOR_TOKEN"):
        Settings.from_env(env)
    assert Settings.from_env(env, insecure=True).insecure  # the --insecure-local flag
    settings = Settings.from_env({**env, "ORCHESTRATOR_INSECURE": "1"})
    app = create_app(settings, clients(local_aws, controller, local_aws.table_name))
    with running(app) as client:
        assert client.post("/tasks", json={"type": "noop"}).status_code == 202


# --- identity and ownership (IAM mode behind a Lambda function URL) --------------------------------------------

ACCOUNT = "123456789012"
ALICE = f"arn:aws:sts::{ACCOUNT}:assumed-role/Dev/alice@example.com"
BOB = f"arn:aws:sts::{ACCOUNT}:assumed-role/Dev/bob"
CAROL = f"arn:aws:sts::{ACCOUNT}:assumed-role/Admin/carol"  # an admin by the role prefix below
ADMINS = f"arn:aws:sts::{ACCOUNT}:assumed-role/Admin/"


def make_iam_app(aws: Any, controller: LocalController, **env: str) -> Any:
    """IAM mode, with every client (S3 included) bound to moto."""
    iam = {"ORCHESTRATOR_AUTH": "iam", "ORCHESTRATOR_ADMIN_ARNS": ADMINS}
    settings = Settings.from_env({**aws.env(), **controller.env(), **iam, **env})
    s3 = aws.client("s3", config=Config(signature_version="s3v4"))
    return create_app(settings, clients(aws, controller, settings.table_name, s3=s3))


def function_url_event(
    method: str, path: str, *, arn: str | None, body: Any = None, query: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A Lambda function URL request (payload version 2.0) as Lambda hands it to the function: with AWS_IAM auth
    the caller's identity is in requestContext.authorizer.iam (absent here when `arn` is None)."""
    context: dict[str, Any] = {
        "accountId": ACCOUNT,
        "apiId": "abcdefghij",
        "domainName": "abcdefghij.lambda-url.us-east-1.on.aws",
        "domainPrefix": "abcdefghij",
        "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.7", "userAgent": "t"},
        "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
        "routeKey": "$default",
        "stage": "$default",
        "time": "01/Jan/2026:00:00:00 +0000",
        "timeEpoch": 1767225600000,
    }
    if arn is not None:
        context["authorizer"] = {
            "iam": {"accessKey": "ASIAEXAMPLE", "accountId": ACCOUNT, "callerId": "AROAEXAMPLE:x", "userArn": arn}
        }
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": urlencode(query or {}),
        "headers": {"host": context["domainName"], "x-forwarded-proto": "https", "x-forwarded-port": "443"},
        "requestContext": context,
        "isBase64Encoded": False,
    }
    if body is not None:
        event["body"] = json.dumps(body)
        event["headers"]["content-type"] = "application/json"
    return event


FUNCTION_ARN = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:gpu-orchestrator-api"


@dataclass(frozen=True)
class LambdaContext:
    """The attributes of the context object Lambda's Python runtime passes a handler
    (https://docs.aws.amazon.com/lambda/latest/dg/python-context-object.html) that Mangum and the app read."""

    invoked_function_arn: str = FUNCTION_ARN
    function_name: str = "gpu-orchestrator-api"
    function_version: str = "$LATEST"
    aws_request_id: str = "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"
    memory_limit_in_mb: int = 512

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


THROUGH_ADMIN_ALIAS = LambdaContext(invoked_function_arn=f"{FUNCTION_ARN}:{ADMIN_ALIAS}", function_version="7")


def invoke(
    handler: Any, method: str, path: str, *, arn: str | None, context: LambdaContext = LambdaContext(), **kw: Any
) -> tuple[int, Any]:
    """One request through Mangum, as the Lambda runtime makes it: (status, decoded JSON body)."""
    out = handler(function_url_event(method, path, arn=arn, **kw), context)
    return out["statusCode"], json.loads(out["body"]) if out.get("body") else None


def test_iam_callers_see_read_and_cancel_only_their_own_tasks(local_aws: Any, controller: LocalController) -> None:
    handler = Mangum(make_iam_app(local_aws, controller), lifespan="off")
    status, task = invoke(handler, "POST", "/tasks", arn=ALICE, body={"type": "noop", "idempotency_key": "a-1"})
    assert status == 202, task
    written = store(local_aws).get(task["task_id"])
    assert task["submitted_by"] == ALICE and written is not None and written.submitted_by == ALICE
    tid = task["task_id"]
    assert invoke(handler, "GET", f"/tasks/{tid}", arn=ALICE)[0] == 200
    assert invoke(handler, "GET", f"/tasks/{tid}", arn=CAROL)[0] == 200  # an admin sees every task
    for method, path in (
        ("GET", f"/tasks/{tid}"),
        ("POST", f"/tasks/{tid}/cancel"),
        ("GET", f"/tasks/{tid}/results"),
        ("GET", f"/tasks/{tid}/logs"),
    ):
        status, body = invoke(handler, method, path, arn=BOB)
        assert status == 404 and body["error"] == "not_found", (path, body)  # as if it did not exist
    unchanged = store(local_aws).get(tid)
    assert unchanged is not None and unchanged.status == "QUEUED"  # bob's cancel changed nothing

    # an idempotency key belongs to its first caller: another caller learns nothing about that task
    status, body = invoke(handler, "POST", "/tasks", arn=BOB, body={"type": "noop", "idempotency_key": "a-1"})
    assert status == 409 and tid not in body["message"]
    status, again = invoke(handler, "POST", "/tasks", arn=ALICE, body={"type": "noop", "idempotency_key": "a-1"})
    assert status == 202 and again["task_id"] == tid

    bob_task = invoke(handler, "POST", "/tasks", arn=BOB, body={"type": "noop"})[1]["task_id"]
    legacy = store(local_aws).create(task_type="noop", params={}).task_id  # from before tasks had an owner
    listed = {
        who: [t["task_id"] for t in invoke(handler, "GET", "/tasks", arn=who, query={"status": "QUEUED"})[1]["items"]]
        for who in (ALICE, BOB, CAROL)
    }
    assert listed[ALICE] == [tid] and listed[BOB] == [bob_task]
    assert set(listed[CAROL]) == {tid, bob_task, legacy}
    assert invoke(handler, "GET", f"/tasks/{legacy}", arn=ALICE)[0] == 404
    status, cancelled = invoke(handler, "POST", f"/tasks/{tid}/cancel", arn=ALICE)
    assert status == 200 and cancelled["status"] == "CANCELLED"


def test_iam_requests_without_an_identity_are_401_however_they_arrive(
    local_aws: Any, controller: LocalController
) -> None:
    app = make_iam_app(local_aws, controller)
    handler = Mangum(app, lifespan="off")
    for method, path in (("GET", "/tasks"), ("POST", "/tasks"), ("GET", "/types"), ("GET", "/healthz")):
        status, body = invoke(handler, method, path, arn=None, body={"type": "noop"} if method == "POST" else None)
        assert status == 401 and "IAM identity" in body["message"], path
    assert invoke(handler, "GET", "/livez", arn=None) == (200, {"ok": True})
    # not through Lambda at all (no event): nothing a client sends stands in for the identity
    forged = {"Authorization": f"AWS4-HMAC-SHA256 Credential=AKIA/x, userArn={CAROL}", "X-Amz-User-Arn": CAROL}
    with running(app) as client:
        assert client.get("/tasks", params={"status": "QUEUED"}, headers=forged).status_code == 401
        assert client.post("/tasks", json={"type": "noop"}, headers=forged).status_code == 401
        spec = client.get("/openapi.json").json()
    assert items(local_aws) == []
    [(name, scheme)] = spec["components"]["securitySchemes"].items()
    assert name == "sigv4" and scheme["type"] == "apiKey" and spec["paths"]["/tasks"]["post"]["security"]


def whoami(admins: str) -> Any:
    """A minimal ASGI app behind Mangum that answers what identity.iam_caller makes of the request's scope."""

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        caller = iam_caller(scope, (admins,))
        body = json.dumps(None if caller is None else {"id": caller.id, "admin": caller.admin}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    return Mangum(app, lifespan="off")


@pytest.mark.parametrize(
    ("arn", "context", "admin"),
    [
        (BOB, LambdaContext(), False),  # the function's own URL: unqualified
        (BOB, THROUGH_ADMIN_ALIAS, True),  # the admin alias's URL
        (BOB, LambdaContext(invoked_function_arn=f"{FUNCTION_ARN}:7"), False),  # a version, not the alias
        (BOB, LambdaContext(invoked_function_arn=f"{FUNCTION_ARN}:{ADMIN_ALIAS}-old"), False),
        (BOB, LambdaContext(invoked_function_arn=f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:{ADMIN_ALIAS}"), False),
        (CAROL, LambdaContext(), True),  # listed in ORCHESTRATOR_ADMIN_ARNS, whichever URL
    ],
)
def test_an_iam_caller_is_admin_by_the_admin_list_or_the_admin_alias(arn: str, context: Any, admin: bool) -> None:
    status, caller = invoke(whoami(ADMINS), "GET", "/", arn=arn, context=context)
    assert status == 200 and caller == {"id": arn, "admin": admin}


def test_the_admin_alias_never_stands_in_for_an_identity() -> None:
    assert invoke(whoami(ADMINS), "GET", "/", arn=None, context=THROUGH_ADMIN_ALIAS) == (200, None)


def test_a_request_through_the_admin_alias_sees_every_task(local_aws: Any, controller: LocalController) -> None:
    handler = Mangum(make_iam_app(local_aws, controller), lifespan="off")
    tid = invoke(handler, "POST", "/tasks", arn=ALICE, body={"type": "noop"})[1]["task_id"]
    assert invoke(handler, "GET", f"/tasks/{tid}", arn=BOB)[0] == 404
    assert invoke(handler, "GET", f"/tasks/{tid}", arn=BOB, context=THROUGH_ADMIN_ALIAS)[0] == 200
    status, page = invoke(handler, "GET", "/tasks", arn=BOB, context=THROUGH_ADMIN_ALIAS, query={"status": "QUEUED"})
    assert status == 200 and [t["task_id"] for t in page["items"]] == [tid]


def test_a_non_admin_list_filters_after_the_index_query_and_pages_without_gaps(
    local_aws: Any, controller: LocalController
) -> None:
    app = make_iam_app(local_aws, controller)
    handler = Mangum(app, lifespan="off")
    tasks = store(local_aws)
    owners = [ALICE, BOB, None, BOB, ALICE, ALICE, BOB, BOB, BOB, ALICE, None]
    made = [
        (tasks.create(task_type="noop", params={}, at_ms=1_700_000_000_000 + i, submitted_by=o).task_id, o)
        for i, o in enumerate(owners)
    ]
    alices = [tid for tid, owner in reversed(made) if owner == ALICE]

    def pages(who: str, limit: int) -> list[list[str]]:
        out, cursor = [], None
        for _ in range(50):
            query = {"status": "QUEUED", "limit": limit, **({"cursor": cursor} if cursor else {})}
            status, page = invoke(handler, "GET", "/tasks", arn=who, query=query)
            assert status == 200, page
            out.append([t["task_id"] for t in page["items"]])
            cursor = page["next_cursor"]
            if cursor is None:
                return out
        raise AssertionError("paging did not end")

    got = pages(ALICE, 2)
    assert [tid for page in got for tid in page] == alices and all(len(p) <= 2 for p in got)
    # a tight read budget: pages come back short, even empty, with a cursor; following it still finds every task
    app.state.service = replace(app.state.service, list_scan_budget=2)
    tight = pages(ALICE, 3)
    assert [tid for page in tight for tid in page] == alices and [] in tight
    assert [tid for page in pages(CAROL, 4) for tid in page] == [tid for tid, _ in reversed(made)]


def test_iam_mode_settings_refuse_a_token_and_non_arn_admins(local_aws: Any, controller: LocalController) -> None:
    base = {**local_aws.env(), **controller.env(), "ORCHESTRATOR_AUTH": "iam"}
    with pytest.raises(SettingError, match="ORCHESTRATOR_TOKEN"):
        Settings.from_env({**base, "ORCHESTRATOR_TOKEN": TOKEN})
    with pytest.raises(SettingError, match="ORCHESTRATOR_ADMIN_ARNS"):
        Settings.from_env({**base, "ORCHESTRATOR_ADMIN_ARNS": "alice"})
    with pytest.raises(SettingError, match="ORCHESTRATOR_AUTH"):
        Settings.from_env({**base, "ORCHESTRATOR_AUTH": "cookie"})
    assert Settings.from_env(base).token is None  # no token needed: Lambda checks the signature


def test_the_lambda_entry_point_serves_function_url_events(
    local_aws: Any, controller: LocalController, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {**local_aws.env(), **controller.env(), "ORCHESTRATOR_AUTH": "iam"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("ORCHESTRATOR_TOKEN", raising=False)
    sys.modules.pop("orchestrator.lambda_handler", None)
    # Importing it sets up JSON logging for the service's loggers, as in Lambda: the tests after this one get the
    # logging they had.
    names = ("orchestrator", "botocore", "urllib3")
    kept_root = logging.getLogger("").handlers[:]  # the runtime's root logger is left alone
    kept = {
        n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate) for n in names
    }
    module = importlib.import_module("orchestrator.lambda_handler")
    try:
        assert logging.getLogger("").handlers == kept_root and logging.getLogger("orchestrator").propagate is False
        status, task = invoke(module.handler, "POST", "/tasks", arn=ALICE, body={"type": "noop"})
        # The entry point's own Lambda client reaches moto itself, which accepts the Event invoke (202) as Lambda
        # does, though moto cannot run the function here (no Docker).
        assert status == 202 and task["submitted_by"] == ALICE and task["gpu"] == {"controller": "notified"}
        assert messages(local_aws)[0]["task_id"] == task["task_id"]
        status, types = invoke(module.handler, "GET", "/types", arn=BOB)
        assert status == 200 and "noop" in [t["name"] for t in types["types"]]
        assert invoke(module.handler, "GET", "/tasks", arn=None, query={"status": "QUEUED"})[0] == 401
    finally:
        sys.modules.pop("orchestrator.lambda_handler", None)
        for name, (handlers, level, propagate) in kept.items():
            logger = logging.getLogger(name)
            logger.handlers[:], logger.propagate = handlers, propagate
            logger.setLevel(level)
