"""Asynchronous Lambda invoke, in-process: the controller function running against the local AWS.

moto's Invoke runs a function's code in a Docker container (https://github.com/getmoto/moto/issues/6104), and
Docker does not run here. So `LocalController.client` is a plain boto3 Lambda client for the moto endpoint with a
botocore `before-send.lambda.Invoke` hook: botocore lets such a handler return the response that fulfils the
request (https://docs.aws.amazon.com/botocore/latest/topics/events.html, "before-send"), so the orchestrator's
`invoke(...)` is exactly the production call, serialized and signed as it would be for Lambda.

What this module models, not moto:
- Which invokes: InvocationType=Event of the controller function (by name or ARN, with no qualifier). Anything else
  (another function, RequestResponse, DryRun, a qualifier) is sent on to moto untouched.
- The answer: StatusCode 202 with an empty body once the event is queued, as Lambda answers an asynchronous invoke
  (https://docs.aws.amazon.com/lambda/latest/dg/invocation-async.html); a payload that is not a JSON document is
  refused with 400 InvalidRequestContentException, as Lambda refuses it (API Reference, Invoke: Errors).
- Asynchronous queueing: the event goes to an in-memory FIFO and the request returns; one worker thread takes each
  event and runs `functions.shutdown.handler.run` with the function's own environment (moto's
  GetFunctionConfiguration, plus `env` overrides), clients on the local AWS (or `endpoint_url`), the function's
  Timeout as its remaining time, and the trigger and cause the handler derives from the event. Where that
  environment names GPU_FLEET_NAME, the run is the controller's fleet mode (it gets an Auto Scaling client too).
  Where it names HOSTS_TABLE_NAME, the run records running intervals and recovers stuck workers in that table, and
  gets, as the handler builds it, the TaskStore (a DynamoDB Table resource on the local AWS, built on first use)
  that requeues a stuck worker's tasks. Its metric lines (EMF, which the Lambda writes to stdout for CloudWatch Logs
  to extract) are kept with the run (`Run.metrics`) instead of printed.
- Serialization: one run at a time, in arrival order. The function's reserved concurrency is 1, and Lambda keeps
  an asynchronous event it cannot run yet (throttled) in its queue and retries it for up to 6 hours
  (https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html): here it waits in the FIFO.
- At-least-once delivery: with `duplicates=True` every event runs twice, as Lambda's eventually consistent event
  queue may deliver it (same page).
- The schedule: `scheduled()` queues the event EventBridge sends for a scheduled rule, and `schedule_rate_s()`
  reads the rate of the rule targeting the function from the local events service. Nothing fires by itself: the
  caller drives it (and the clock, through `clock` and `sleep`).
Not modelled: Lambda's two retries of a run that failed, and its dead-letter queue (a failed run is recorded in
`runs` and logged); IAM on Invoke (the request never reaches the server, so an IAM-enforcing local AWS does not
check lambda:InvokeFunction); payload size quotas; cold starts and the execution environment's lifetime.
"""

from __future__ import annotations

import io
import json
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
from botocore.awsrequest import AWSPreparedRequest, AWSResponse

from core import contract
from core.observe import Sources
from core.store import TaskStore
from functions.shutdown.handler import ShutdownSettings, cause_of, run, trigger_of
from modules.layout import LAMBDA

ACCEPTED = 202
_INVOKE_PATH = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/invocations$")
_RATE = re.compile(r"^rate\((?P<n>\d+) (?P<unit>minute|minutes|hour|hours|day|days)\)$")
_UNIT_S = {"minute": 60, "hour": 3600, "day": 86400}
_STOP = object()


@dataclass(frozen=True)
class Run:
    """One run of the controller: the event it got, and its logged record as JSON (None if it raised: see error)."""

    event: dict[str, Any]
    trigger: str | None
    record: dict[str, Any] | None
    error: str | None = None
    metrics: tuple[dict[str, Any], ...] = ()  # the run's EMF documents, in the order written


class _Body(io.BytesIO):
    """The raw HTTP body botocore reads a response from (`stream()` for errors, `read()` for Invoke's Payload)."""

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.read()


def _response(url: str, status: int, body: bytes = b"", **headers: str) -> AWSResponse:
    return AWSResponse(
        url, status, {"x-amzn-RequestId": str(uuid.uuid4()), "Content-Length": str(len(body)), **headers}, _Body(body)
    )


def _docs(lines: list[str]) -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(line) for line in lines)


def rate_seconds(expression: str) -> float:
    """An EventBridge `rate(N unit)` expression in seconds."""
    found = _RATE.match(expression)
    if found is None:
        raise ValueError(f"not a rate expression: {expression!r}")
    return float(int(found["n"]) * _UNIT_S[found["unit"].rstrip("s")])


class LocalController:
    """The controller Lambda of a local AWS (`localaws.LocalAws`), invoked asynchronously in-process.

    Use as a context manager: the worker starts on enter and is stopped (after the run in progress) on exit."""

    def __init__(
        self,
        local: Any,
        *,
        endpoint_url: str | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        duplicates: bool = False,
        run_as: Mapping[str, str] | None = None,
    ) -> None:
        self.local = local
        # The credentials the function runs with (its execution role's, where the local AWS enforces IAM); by
        # default the local AWS's own.
        self.run_as = dict(run_as or local.credentials)
        self.function_name: str = local.outputs[LAMBDA]["FunctionName"]
        self.client = local.client("lambda")
        conf = self.client.get_function_configuration(FunctionName=self.function_name)
        self.function_arn: str = conf["FunctionArn"]
        self.timeout_s = float(conf["Timeout"])
        self.settings = ShutdownSettings.from_env({**conf["Environment"]["Variables"], **(env or {})})
        self.sources = self._sources(endpoint_url or local.endpoint_url)
        self._endpoint_url = endpoint_url or local.endpoint_url
        self._tasks: TaskStore | None = None
        self.clock, self.sleep, self.duplicates = clock, sleep, duplicates
        self.runs: list[Run] = []
        self._events: queue.Queue[Any] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self.client.meta.events.register("before-send.lambda.Invoke", self._on_invoke)

    def _sources(self, endpoint_url: str) -> Sources:
        creds = self.run_as

        def client(service: str) -> Any:
            return boto3.client(
                service,
                endpoint_url=endpoint_url,
                region_name=self.local.region,
                aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
            )

        return Sources(
            sqs=client("sqs"),
            dynamodb=client("dynamodb"),
            ec2=client("ec2"),
            queue_url=self.settings.queue_url,
            table_name=self.settings.table_name,
            status_index=self.settings.status_index,
            instance_ids=self.settings.instance_ids,
            autoscaling=client("autoscaling") if self.settings.fleet_mode else None,
        )

    def tasks(self) -> TaskStore:
        """The TaskStore the runs requeue through (the function's credentials), built the first time one needs it."""
        if self._tasks is None:
            resource = boto3.resource(
                "dynamodb",
                endpoint_url=self._endpoint_url,
                region_name=self.local.region,
                aws_access_key_id=self.run_as["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=self.run_as["AWS_SECRET_ACCESS_KEY"],
            )
            self._tasks = TaskStore(resource.Table(self.settings.table_name), status_index=self.settings.status_index)
        return self._tasks

    def env(self) -> dict[str, str]:
        """What the orchestrator needs to find this controller (contract names)."""
        return {contract.CONTROLLER_FUNCTION_NAME.name: self.function_name}

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def __enter__(self) -> LocalController:
        self._thread = threading.Thread(target=self._work, name="local-controller", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        """Whether the worker thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker once the run in progress ends; events still queued are dropped."""
        if self.alive:
            assert self._thread is not None
            self._events.put(_STOP)
            self._thread.join(timeout)

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every queued event has run. True if none is left."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    # -- events ------------------------------------------------------------------------------------------------------
    def scheduled(self) -> None:
        """Queue the event EventBridge sends when the schedule's rule fires."""
        now = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        rule_arn = self._schedule_rule()["Arn"]
        account = rule_arn.split(":")[4]
        self._queue(
            {
                "version": "0",
                "id": str(uuid.uuid4()),
                "detail-type": "Scheduled Event",
                "source": "aws.events",
                "account": account,
                "time": now,
                "region": self.local.region,
                "resources": [rule_arn],
                "detail": {},
            }
        )

    def schedule_rate_s(self) -> float:
        """Seconds between the schedule's runs, from the rule the stacks created for the function."""
        return rate_seconds(self._schedule_rule()["ScheduleExpression"])

    def _schedule_rule(self) -> dict[str, Any]:
        events = self.local.client("events")
        names = events.list_rule_names_by_target(TargetArn=self.function_arn)["RuleNames"]
        rules = [events.describe_rule(Name=n) for n in names]
        scheduled = [r for r in rules if r.get("ScheduleExpression")]
        if len(scheduled) != 1:
            raise LookupError(f"{self.function_name}: expected one scheduled rule, found {len(scheduled)}")
        return scheduled[0]

    def _on_invoke(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse | None:
        parts = urlsplit(request.url)
        found = _INVOKE_PATH.match(parts.path)
        invocation = request.headers.get("X-Amz-Invocation-Type", b"RequestResponse")  # signed headers are bytes
        if isinstance(invocation, bytes):
            invocation = invocation.decode()
        if found is None or parts.query or invocation != "Event":
            return None
        if unquote(found["name"]) not in (self.function_name, self.function_arn):
            return None
        body = request.body or b"{}"
        try:
            event = json.loads(body.decode() if isinstance(body, bytes) else body)
        except (ValueError, UnicodeDecodeError):
            error = json.dumps({"Type": "User", "message": "Could not parse request body into json"}).encode()
            return _response(request.url, 400, error, **{"x-amzn-ErrorType": "InvalidRequestContentException"})
        for _copy in range(2 if self.duplicates else 1):
            self._queue(event)
        return _response(request.url, ACCEPTED)

    def _queue(self, event: Any) -> None:
        with self._idle:
            self._pending += 1
        self._events.put(event)

    def _work(self) -> None:
        try:
            while (event := self._events.get()) is not _STOP:
                try:
                    self._run_one(event)
                finally:
                    with self._idle:
                        self._pending -= 1
                        self._idle.notify_all()
        finally:
            with self._idle:  # nothing will run what is left: let drain() answer instead of waiting it out
                self._pending = 0
                self._idle.notify_all()

    def _run_one(self, event: Any) -> None:
        trigger = trigger_of(event)
        lines: list[str] = []
        try:
            record = run(
                self.settings,
                self.sources,
                clock=self.clock,
                sleep=self.sleep,
                remaining_s=self.timeout_s,
                trigger=trigger,
                cause=cause_of(event),
                tasks=self.tasks,
                metrics=lines.append,
            )
        except Exception as err:  # the run logged it; Lambda would record a failed invocation
            self.runs.append(Run(event, trigger, None, f"{type(err).__name__}: {err}", _docs(lines)))
            return
        # As the log line shows it (tuples become lists): what CloudWatch would hold for this run.
        self.runs.append(Run(event, trigger, json.loads(json.dumps(record, default=str)), None, _docs(lines)))
