"""A task's webhook at submit, against moto's server: `notify_url` checked (core.webhook.check_url) before anything is
written, stored, shown as `notify` to whoever may see the task, part of the idempotency rule; the API's submit
metrics (EMF lines); and `gpuq submit --notify` as a real process against the service under uvicorn on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from mangum import Mangum

from core.metrics import SUBMITS, SUBMITS_REFUSED
from core.tasks import NotifyState
from localaws.lambdas import LocalController
from orchestrator.app import create_app
from orchestrator.server import serve_in_thread
from orchestrator.settings import Clients, Settings
from tests.test_cli import cli, cli_env
from tests.test_orchestrator_api import ADMINS, ALICE, BOB, CAROL, invoke, items, messages, running, store

TOKEN = "notify-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPO = Path(__file__).resolve().parent.parent
HOOK = "https://hooks.example.com/gpu/done?job=7"
AT = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def make_app(aws: Any, controller: LocalController, lines: list[str], **env: str) -> Any:
    """The app with its EMF metric lines collected in `lines` (instead of stdout)."""
    settings = Settings.from_env({**aws.env(), **controller.env(), **env})
    table = aws.resource("dynamodb").Table(settings.table_name)
    clients = Clients(sqs=aws.client("sqs"), ec2=aws.client("ec2"), lambda_=controller.client, table=table)
    return create_app(settings, clients, metrics_out=lines.append)


def metric_lines(lines: list[str], name: str) -> list[dict[str, Any]]:
    docs = [json.loads(line) for line in lines]
    return [d for d in docs if name in d]


def test_an_https_notify_url_is_stored_shown_and_part_of_the_idempotency_rule(
    local_aws: Any, controller: LocalController
) -> None:
    lines: list[str] = []
    with running(make_app(local_aws, controller, lines, ORCHESTRATOR_TOKEN=TOKEN), headers=AUTH) as api:
        body = {"type": "noop", "idempotency_key": "hook-1", "notify_url": HOOK}
        resp = api.post("/tasks", json=body)
        assert resp.status_code == 202, resp.text
        task = resp.json()
        assert task["notify_url"] == HOOK
        assert task["notify"] == {"state": "PENDING", "attempts": 0, "error": None, "at": None}
        stored = store(local_aws).get(task["task_id"])
        assert stored is not None and stored.notify_url == HOOK and stored.notify_state is NotifyState.PENDING
        plain = api.post("/tasks", json={"type": "noop"}).json()
        assert "notify" not in plain and "notify_url" not in plain and "gpu_seconds" not in plain

        # the same key: the same request returns the first task; another webhook, or none, is another request
        again = api.post("/tasks", json=body)
        assert again.status_code == 202 and again.json()["task_id"] == task["task_id"]
        other_hook = {**body, "notify_url": "https://hooks.example.com/other"}
        for other in (other_hook, {"type": "noop", "idempotency_key": "hook-1"}):
            conflict = api.post("/tasks", json=other)
            assert conflict.status_code == 409 and conflict.json()["error"] == "idempotency_key_reused", other

        # what the webhook function and the adapter record later is shown the same way, on reads and lists
        local_aws.resource("dynamodb").Table(local_aws.table_name).update_item(
            Key={"task_id": task["task_id"]},
            UpdateExpression="SET notify_state = :s, notify_attempts = :a, notify_error = :e, notified_at = :t, "
            "gpu_seconds = :g, cost_usd = :c",
            ExpressionAttributeValues={":s": "FAILED", ":a": 8, ":e": "HTTP 500", ":t": AT, ":g": 12, ":c": 1},
        )
        shown = api.get(f"/tasks/{task['task_id']}").json()
        assert shown["notify"] == {"state": "FAILED", "attempts": 8, "error": "HTTP 500", "at": AT}
        assert shown["gpu_seconds"] == 12 and shown["cost_usd"] == 1
        assert not {"notify_state", "notify_attempts", "notify_error", "notified_at"} & set(shown)
        [listed] = [t for t in api.get("/tasks", params={"status": "QUEUED"}).json()["items"] if t.get("notify")]
        assert listed["notify"] == shown["notify"] and listed["notify_url"] == HOOK

    accepted = metric_lines(lines, SUBMITS.name)
    # two tasks queued: the replay and the conflicts queued nothing
    assert [(d["Type"], d[SUBMITS.name], d["_aws"]["CloudWatchMetrics"][0]["Dimensions"]) for d in accepted] == [
        ("noop", 1, [["Type"]]),
        ("noop", 1, [["Type"]]),
    ]
    assert {d["task_id"] for d in accepted} == {task["task_id"], plain["task_id"]}
    assert all(d["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "GpuOrchestrator" for d in accepted)
    assert [d["status"] for d in metric_lines(lines, SUBMITS_REFUSED.name)] == [409, 409]
    url_shown_only_to_whoever_may_see_the_task(local_aws, controller)  # on the same local AWS: one fixture, not two


def url_shown_only_to_whoever_may_see_the_task(local_aws: Any, controller: LocalController) -> None:
    """In IAM mode (and another metrics namespace): the submitter and admins see the URL, other callers nothing."""
    iam = {"ORCHESTRATOR_AUTH": "iam", "ORCHESTRATOR_ADMIN_ARNS": ADMINS, "METRICS_NAMESPACE": "Test/Api"}
    lines: list[str] = []
    handler = Mangum(make_app(local_aws, controller, lines, **iam), lifespan="off")
    status, task = invoke(handler, "POST", "/tasks", arn=ALICE, body={"type": "noop", "notify_url": HOOK})
    assert status == 202 and task["notify_url"] == HOOK
    tid = task["task_id"]
    assert invoke(handler, "GET", f"/tasks/{tid}", arn=BOB) == (
        404,
        {"error": "not_found", "message": f"no task {tid}"},
    )
    bobs = invoke(handler, "GET", "/tasks", arn=BOB, query={"status": "QUEUED"})[1]["items"]
    assert bobs == []
    for who in (ALICE, CAROL):
        status, seen = invoke(handler, "GET", f"/tasks/{tid}", arn=who)
        assert status == 200 and seen["notify_url"] == HOOK and seen["notify"]["state"] == "PENDING", who
    [line] = metric_lines(lines, SUBMITS.name)
    assert line["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Test/Api"


REFUSED: list[tuple[Any, str]] = [
    ("http://hooks.example.com/done", "must use https"),
    ("https://10.0.0.5/done", "private, loopback or link-local"),
    ("https://192.168.1.20/done", "private, loopback or link-local"),
    ("https://127.0.0.1:8443/done", "private, loopback or link-local"),
    ("https://[::1]/done", "private, loopback or link-local"),
    ("https://localhost/done", "must not target localhost"),
    ("https://169.254.169.254/latest/meta-data/iam/security-credentials/", "private, loopback or link-local"),
    ("https://[::ffff:169.254.169.254]/", "private, loopback or link-local"),
    ("https://user:secret@hooks.example.com/done", "must not carry credentials"),
    ("https://hooks.example.com/done#top", "must not have a fragment"),
    ("https://hooks.example.com:99999/done", "invalid port"),
    ("", "non-empty"),
    ("https://hooks.example.com/" + "x" * 2048, "longer than 2048"),
]


def test_refused_notify_urls_are_422_naming_the_field_and_write_nothing(
    local_aws: Any, controller: LocalController
) -> None:
    lines: list[str] = []
    app = make_app(local_aws, controller, lines, ORCHESTRATOR_TOKEN=TOKEN, MAX_BODY_BYTES="8192")
    with running(app, headers=AUTH) as api:
        for url, reason in REFUSED:
            resp = api.post("/tasks", json={"type": "noop", "idempotency_key": "k-1", "notify_url": url})
            assert resp.status_code == 422, (url, resp.text)
            assert resp.json()["error"] == "invalid_notify_url" and resp.json()["message"].startswith("notify_url: ")
            assert reason in resp.json()["message"], (url, resp.text)
        typed = api.post("/tasks", json={"type": "noop", "notify_url": 42})
        assert typed.status_code == 422 and "notify_url" in typed.json()["message"]
        unauthenticated = api.post("/tasks", json={"type": "noop"}, headers={"Authorization": "Bearer wrong"})
        assert unauthenticated.status_code == 401
        assert api.post("/tasks", json={"type": "infer", "params": {"prompt": "x" * 9000}}).status_code == 413
    assert items(local_aws) == [] and messages(local_aws) == [] and controller.runs == []
    refused = metric_lines(lines, SUBMITS_REFUSED.name)
    assert [d["status"] for d in refused] == [422] * (len(REFUSED) + 1) + [413]  # the 401 is nobody's submit
    assert all(d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [[]] for d in refused)
    assert metric_lines(lines, SUBMITS.name) == []

    # a local environment may let webhooks reach this machine (WEBHOOK_ALLOW_LOOPBACK=1), and nothing else private
    local = make_app(local_aws, controller, lines, ORCHESTRATOR_TOKEN=TOKEN, WEBHOOK_ALLOW_LOOPBACK="1")
    with running(local, headers=AUTH) as api:
        ok = api.post("/tasks", json={"type": "noop", "notify_url": "https://127.0.0.1:8443/done"})
        assert ok.status_code == 202 and ok.json()["notify_url"] == "https://127.0.0.1:8443/done"
        for url in ("https://10.0.0.5/done", "https://169.254.169.254/latest/meta-data/", "http://127.0.0.1/done"):
            assert api.post("/tasks", json={"type": "noop", "notify_url": url}).status_code == 422, url
    assert [i["task_id"] for i in items(local_aws)] == [ok.json()["task_id"]]


def test_gpuq_submit_notify_sends_the_webhook_and_refuses_a_bad_one_before_sending(
    local_aws: Any, controller: LocalController, tmp_path: Path
) -> None:
    settings = Settings.from_env({**local_aws.env(), **controller.env(), "ORCHESTRATOR_TOKEN": TOKEN})
    lines: list[str] = []
    table = local_aws.resource("dynamodb").Table(local_aws.table_name)
    clients = Clients(sqs=local_aws.client("sqs"), ec2=local_aws.client("ec2"), lambda_=controller.client, table=table)
    with serve_in_thread(create_app(settings, clients, metrics_out=lines.append)) as url:
        env = cli_env(url, tmp_path, TOKEN)

        def gpuq(*args: str) -> subprocess.CompletedProcess[str]:
            return cli(env, *args)

        sub = gpuq("submit", "noop", "--notify", HOOK, "--json")
        assert sub.returncode == 0, sub.stderr
        task = json.loads(sub.stdout)
        assert task["notify_url"] == HOOK and task["notify"]["state"] == "PENDING"
        shown = gpuq("status", task["task_id"])
        assert shown.returncode == 0, shown.stderr
        assert f"notify_url: {HOOK}\n" in shown.stdout and "notify: PENDING attempts=0 at=-\n" in shown.stdout

        # refused here, before anything is sent: one line, exit 2
        for bad, reason in (("http://hooks.example.com/x", "must use https"), ("https://10.1.2.3/", "link-local")):
            refused = gpuq("submit", "noop", "--notify", bad)
            assert refused.returncode == 2 and refused.stdout == "", refused
            assert refused.stderr.startswith("error: --notify: notify URL ") and reason in refused.stderr
            assert refused.stderr.count("\n") == 1
        # loopback is each environment's call (local ones allow it): this service refuses it
        loopback = gpuq("submit", "noop", "--notify", "https://127.0.0.1:9/hook")
        assert loopback.returncode == 2 and "HTTP 422: notify_url: notify URL must not target" in loopback.stderr
    assert [i["task_id"] for i in items(local_aws) if "status" in i] == [task["task_id"]]  # and its key's marker
    assert [d["task_id"] for d in metric_lines(lines, SUBMITS.name)] == [task["task_id"]]
