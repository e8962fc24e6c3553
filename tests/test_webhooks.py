"""Webhooks: a task that ends with a notify_url is POSTed, signed, to an https receiver on 127.0.0.1 (a certificate
made here), through the stream -> task-events -> webhook queue -> task-webhooks path of localaws/streams.py, against
the moto server on 127.0.0.1. Retries, final failures, refused targets and redirects end in the item's notify_*
attributes, which GET /tasks/{id} shows."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from core import contract as c
from core.contract import SettingError
from core.events import WebhookMessage
from core.tasks import NotifyState, TaskRecord, TaskStatus
from core.webhook import EVENT_ID_HEADER, SIGNATURE_HEADER, verify
from functions.webhooks import handler as webhooks_fn
from functions.webhooks.deliver import MAX_DELAY_S, retry_delay_s
from functions.webhooks.post import USER_AGENT
from functions.webhooks.resolve import system_resolver
from functions.webhooks.secret import SecretCache
from functions.webhooks.settings import WebhookSettings
from tests._webhook_support import HOOK_HOST, Receiver, pki, receiver
from tests.test_task_events import CREDS, REGION, STALE_MS, World, build_world

__all__ = ["pki", "receiver"]  # fixtures

SECRET = b"signing-key-1"  # what build_world stores in the secret


# -- the system around it -------------------------------------------------------------------------------------------
class Connections:
    """The socket opener the webhook function gets: records every address it was asked for, and connects only to
    127.0.0.1 (a test must never reach anything else)."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    def __call__(self, address: tuple[str, int], timeout: float) -> socket.socket:
        self.asked.append(address)
        if address[0] != "127.0.0.1":
            raise ConnectionRefusedError(f"test: no connection to {address[0]}")
        return socket.create_connection(address, timeout)


def _resolve(host: str, port: int) -> list[str]:
    names = {HOOK_HOST: ["127.0.0.1"], "other.test": ["127.0.0.1"], "internal.test": ["10.0.0.5"]}
    return names[host] if host in names else system_resolver(host, port)


@dataclass
class Setup:
    world: World
    connections: Connections

    def streams(self, *, ca: Path | None, max_attempts: int = 3, timeout_s: float = 2.0, backoff_s: float = 0.0) -> Any:
        env = {
            c.WEBHOOK_ALLOW_LOOPBACK.name: "1",
            c.WEBHOOK_MAX_ATTEMPTS.name: str(max_attempts),
            c.WEBHOOK_TIMEOUT_SECONDS.name: str(timeout_s),
            c.WEBHOOK_CA_FILE.name: str(ca) if ca else "",
        }
        return self.world.streams(env=env, resolve=_resolve, connect=self.connections, backoff_base_s=backoff_s)

    def finish(self, url: str, status: TaskStatus = TaskStatus.SUCCEEDED) -> TaskRecord:
        store = self.world.store
        task = store.create(task_type="echo", params={}, notify_url=url)
        held = store.claim(task.task_id, worker="w", stale_after_ms=STALE_MS).held
        return store.finish(held, status, result_uri="s3://bucket/r" if status is TaskStatus.SUCCEEDED else None)

    def item(self, task_id: str) -> TaskRecord:
        found = self.world.store.get(task_id)
        assert found is not None
        return found


@pytest.fixture
def setup(moto_endpoint: str) -> Setup:
    return Setup(build_world(moto_endpoint, webhooks=True), Connections())


def test_a_failed_delivery_is_retried_after_its_delay_and_then_delivered(
    setup: Setup, receiver: Receiver, pki: dict[str, Path]
) -> None:
    receiver.replies = [500, 200]
    streams = setup.streams(ca=pki["ca"], backoff_s=1.0)
    done = setup.finish(receiver.url())
    streams.drain()
    pending = setup.item(done.task_id)
    assert len(receiver.requests) == 1 and pending.notify_state is NotifyState.PENDING
    assert pending.notify_attempts == 1 and pending.notify_error == "HTTP 500"
    time.sleep(1.2)  # the retry waits its DelaySeconds (1 s: backoff 1 s * 2**0)
    streams.drain()
    item = setup.item(done.task_id)
    assert item.notify_state is NotifyState.DELIVERED and item.notify_attempts == 2
    assert item.notify_error is None and item.notified_at is not None

    first, second = receiver.requests
    assert first["body"] == second["body"]
    body, headers = first["body"], first["headers"]
    assert verify(SECRET, body, headers[SIGNATURE_HEADER])
    assert not verify(b"another key", body, headers[SIGNATURE_HEADER])
    detail = json.loads(body)
    assert headers[EVENT_ID_HEADER] == detail["id"] and headers["User-Agent"] == USER_AGENT
    assert headers["Content-Type"] == "application/json" and headers["Host"] == f"{HOOK_HOST}:{receiver.port}"
    assert first["path"] == "/hook?token=abc" and b"token" not in body
    assert (detail["task_id"], detail["status"], detail["previous_status"]) == (done.task_id, "SUCCEEDED", "RUNNING")
    assert detail["result_uri"] == "s3://bucket/r" and detail["notify"] is True
    # The same event EventBridge got, and the delivery-state writes announced nothing more.
    published = [e["detail"] for e in setup.world.observed()]
    assert [d["status"] for d in published] == ["QUEUED", "RUNNING", "SUCCEEDED"]
    assert published[-1]["id"] == detail["id"]
    assert setup.connections.asked == [("127.0.0.1", receiver.port)] * 2


def test_a_receiver_that_always_fails_ends_failed_after_the_last_attempt(
    setup: Setup, receiver: Receiver, pki: dict[str, Path]
) -> None:
    receiver.replies = [503]
    done = setup.finish(receiver.url(), TaskStatus.FAILED)
    setup.streams(ca=pki["ca"], max_attempts=3).drain()
    item = setup.item(done.task_id)
    assert len(receiver.requests) == 3
    assert item.notify_state is NotifyState.FAILED and item.notify_attempts == 3
    assert item.notify_error == "HTTP 503 (after 3 attempts)"


def test_refused_targets_fail_at_once_without_a_connection(
    setup: Setup, receiver: Receiver, pki: dict[str, Path]
) -> None:
    urls = {
        "https://internal.test/hook": "resolves to a non-public address (10.0.0.5)",
        "https://169.254.169.254/latest/meta-data/": "link-local address (169.254.169.254)",
        f"http://127.0.0.1:{receiver.port}/hook": "must use https",
    }
    tasks = {setup.finish(url).task_id: reason for url, reason in urls.items()}
    setup.streams(ca=pki["ca"]).drain()
    for task_id, reason in tasks.items():
        item = setup.item(task_id)
        assert item.notify_state is NotifyState.FAILED and item.notify_attempts == 1
        assert item.notify_error is not None and item.notify_error.startswith("refused: ")
        assert reason in item.notify_error
    assert setup.connections.asked == [] and receiver.requests == []


def test_a_redirect_is_not_followed_and_a_client_error_is_final(
    setup: Setup, receiver: Receiver, pki: dict[str, Path]
) -> None:
    receiver.replies = [("redirect", receiver.url("/elsewhere")), 404]
    redirected = setup.finish(receiver.url("/first"))
    streams = setup.streams(ca=pki["ca"])
    streams.drain()
    refused = setup.finish(receiver.url("/second"))
    streams.drain()
    assert [r["path"] for r in receiver.requests] == ["/first", "/second"]
    first, second = setup.item(redirected.task_id), setup.item(refused.task_id)
    assert first.notify_state is NotifyState.FAILED and first.notify_error == "HTTP 302: redirects are not followed"
    assert second.notify_state is NotifyState.FAILED and second.notify_error == "HTTP 404"
    assert first.notify_attempts == second.notify_attempts == 1


def test_a_timeout_is_retried(setup: Setup, receiver: Receiver, pki: dict[str, Path]) -> None:
    receiver.replies = [("sleep", 1.5, 200), 200]
    done = setup.finish(receiver.url())
    setup.streams(ca=pki["ca"], timeout_s=0.5).drain()
    item = setup.item(done.task_id)
    assert item.notify_state is NotifyState.DELIVERED and item.notify_attempts == 2
    assert len(receiver.requests) == 2


def test_tls_is_checked_against_the_url_host(setup: Setup, receiver: Receiver, pki: dict[str, Path]) -> None:
    untrusted = setup.finish(receiver.url())
    setup.streams(ca=None, max_attempts=1).drain()  # the system CAs only: they do not know the test CA
    wrong_name = setup.finish(receiver.url(host="other.test"))  # resolves to the receiver; the certificate does not
    setup.streams(ca=pki["ca"], max_attempts=1).drain()
    for task_id in (untrusted.task_id, wrong_name.task_id):
        item = setup.item(task_id)
        assert item.notify_state is NotifyState.FAILED
        assert item.notify_error is not None and item.notify_error.startswith("TLS failed: CERTIFICATE_VERIFY_FAILED")
    assert receiver.requests == []


def test_duplicates_are_skipped_and_a_malformed_message_is_kept(
    setup: Setup, receiver: Receiver, pki: dict[str, Path]
) -> None:
    done = setup.finish(receiver.url())
    streams = setup.streams(ca=pki["ca"])
    streams.drain()
    assert len(receiver.requests) == 1
    event_id = json.loads(receiver.requests[0]["body"])["id"]
    sqs, queue = setup.world.client("sqs"), setup.world.webhook_queue_url
    again = WebhookMessage(event_id, done.task_id, TaskStatus.SUCCEEDED, TaskStatus.RUNNING, 1).encode()
    sqs.send_message(QueueUrl=queue, MessageBody=again)
    sqs.send_message(QueueUrl=queue, MessageBody='{"v": 99}')
    streams.drain()
    assert len(receiver.requests) == 1
    last = streams.runs[-1]
    bad = [r["messageId"] for r in last.event["Records"] if r["body"] == '{"v": 99}']
    assert last.response == {"batchItemFailures": [{"itemIdentifier": bad[0]}]}
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "1"  # kept: back after the visibility timeout


def test_the_lambda_handler_delivers(
    setup: Setup, receiver: Receiver, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = receiver.url(host="127.0.0.1")  # the system resolver: an IP literal needs no DNS
    done = setup.finish(url)
    message = WebhookMessage("evt-1", done.task_id, TaskStatus.SUCCEEDED, TaskStatus.RUNNING, 1).encode()
    world = setup.world
    for name, value in {
        c.AWS_ENDPOINT_URL.name: world.endpoint,
        c.AWS_DEFAULT_REGION.name: REGION,
        c.WEBHOOK_QUEUE_URL.name: world.webhook_queue_url,
        c.WEBHOOK_SECRET_ARN.name: world.secret_arn,
        c.TASK_TABLE_NAME.name: world.table_name,
        c.WEBHOOK_ALLOW_LOOPBACK.name: "1",
        c.WEBHOOK_CA_FILE.name: str(pki["ca"]),
        **CREDS,
    }.items():
        monkeypatch.setenv(name, value)
    webhooks_fn._client.cache_clear()
    webhooks_fn._deps.cache_clear()
    try:
        out = webhooks_fn.handler({"Records": [{"messageId": "m-1", "body": message}]}, None)
    finally:
        webhooks_fn._client.cache_clear()
        webhooks_fn._deps.cache_clear()
    assert out == {"batchItemFailures": []}
    assert receiver.requests[0]["headers"][EVENT_ID_HEADER] == "evt-1"
    assert setup.item(done.task_id).notify_state is NotifyState.DELIVERED


def test_the_secret_is_read_again_after_its_ttl(setup: Setup) -> None:
    secrets = setup.world.client("secretsmanager")
    now = [1000.0]
    cache = SecretCache(secrets, setup.world.secret_arn, ttl_s=300, clock=lambda: now[0])
    assert cache() == SECRET
    secrets.put_secret_value(SecretId=setup.world.secret_arn, SecretString="signing-key-2")
    now[0] += 299
    assert cache() == SECRET
    now[0] += 1
    assert cache() == b"signing-key-2"


def test_retry_delays_double_up_to_the_sqs_maximum() -> None:
    assert [retry_delay_s(n, 30) for n in range(1, 9)] == [30, 60, 120, 240, 480, 900, 900, 900]
    assert retry_delay_s(40, 30) == MAX_DELAY_S


def test_settings_refuse_bad_values_in_one_line() -> None:
    base = {c.WEBHOOK_QUEUE_URL.name: "q", c.WEBHOOK_SECRET_ARN.name: "arn", c.TASK_TABLE_NAME.name: "t"}
    assert WebhookSettings.from_env(base).max_attempts == c.WEBHOOK_MAX_ATTEMPTS.default
    for env, start in (
        ({**base, c.WEBHOOK_MAX_ATTEMPTS.name: "0"}, "WEBHOOK_MAX_ATTEMPTS: 0 is not valid"),
        ({**base, c.WEBHOOK_TIMEOUT_SECONDS.name: "-1"}, "WEBHOOK_TIMEOUT_SECONDS: -1.0 is not valid"),
        ({k: v for k, v in base.items() if k != c.WEBHOOK_SECRET_ARN.name}, "WEBHOOK_SECRET_ARN: not set"),
    ):
        with pytest.raises(SettingError) as err:
            WebhookSettings.from_env(env)
        assert str(err.value).startswith(start) and "\n" not in str(err.value)


def test_an_empty_secret_gets_one_random_key_on_first_use(setup: Setup) -> None:
    secrets = setup.world.client("secretsmanager")
    arn = secrets.create_secret(Name="created-empty")["ARN"]  # as the stack creates it: no key in Terraform state
    first, second = SecretCache(secrets, arn)(), SecretCache(secrets, arn)()
    assert first == second and len(first) >= 40
    assert secrets.get_secret_value(SecretId=arn)["SecretString"].encode() == first
    SecretCache(secrets, arn)._initialize()  # a first use that lost the race: its write is refused, quietly
    assert secrets.get_secret_value(SecretId=arn)["SecretString"].encode() == first
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        SecretCache(secrets, arn + "-missing")()


def test_messages_left_when_time_runs_short_are_handed_back_unsent(setup: Setup) -> None:
    world = setup.world
    tasks = [setup.finish("https://internal.test/hook") for _ in range(2)]
    records = [
        {"messageId": f"m-{n}", "body": WebhookMessage(f"e-{n}", t.task_id, t.status, TaskStatus.RUNNING).encode()}
        for n, t in enumerate(tasks)
    ]
    settings = WebhookSettings(world.webhook_queue_url, world.secret_arn, world.table_name, 3, 10.0, True, None, "INFO")
    deps = replace(webhooks_fn.deps_for(settings, world.client), resolve=_resolve, connect=setup.connections)
    out = webhooks_fn.run({"Records": records}, settings=settings, deps=deps, remaining_s=lambda: 1.0)
    assert out == {"batchItemFailures": [{"itemIdentifier": "m-1"}]}  # the first is always tried
    assert setup.item(tasks[0].task_id).notify_state is NotifyState.FAILED
    assert setup.item(tasks[1].task_id).notify_state is NotifyState.PENDING
