"""Lambda's event source mapping pollers, in-process: the task-events and webhook functions running against the
local AWS.

moto stores a table's stream (dynamodbstreams DescribeStream, GetShardIterator, GetRecords) and event source
mappings (CreateEventSourceMapping, ListEventSourceMappings) but runs a function only in Docker
(https://github.com/getmoto/moto/issues/6104), which does not run here; worse, on each write to a table (or send to a
queue) with a mapping it tries that Docker run, and for a table then empties the stream. `install()`, run in the
moto server's process (localaws.server.moto_server and localaws.authserver do), detaches every mapping from its
table or queue as it is created (`detach_moto_delivery`), so no write is lost; `LocalStreams` then polls as Lambda
does, in-process.

What this module models, not moto:
- Which mappings: every Enabled mapping (ListEventSourceMappings) of a function whose Handler is one of `HANDLERS`
  (`events.handler.handler`, `webhooks.handler.handler`); other mappings are left to moto. The function's code runs
  from this repository (functions.events.handler.run, functions.webhooks.handler.run) with the function's own
  environment (GetFunctionConfiguration, plus `env` overrides), clients on the local endpoint, and the function's
  Timeout as its time limit.
- DynamoDB stream source (https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html): each shard of the stream is
  read with GetRecords from the mapping's position (its StartingPosition TRIM_HORIZON, or LATEST taken when
  `LocalStreams` is made), BatchSize records a batch, the event shaped as Lambda delivers it (Records[].eventID,
  eventName, eventVersion, eventSource "aws:dynamodb", awsRegion, eventSourceARN, dynamodb{ApproximateCreationDateTime
  in epoch seconds, Keys, NewImage, OldImage, SequenceNumber, SizeBytes, StreamViewType}). With FunctionResponseTypes
  ReportBatchItemFailures the response is read as Lambda reads it (services-ddb-batchfailurereporting.html): the
  lowest reported SequenceNumber is the checkpoint the next pump reads from; an empty, null or unknown itemIdentifier,
  or a function that raised, has the same batch read again. Without it, the response is ignored.
- SQS source (https://docs.aws.amazon.com/lambda/latest/dg/with-sqs.html): ReceiveMessage (BatchSize, at most 10,
  no wait, the queue's visibility timeout), the event shaped as Lambda delivers it (Records[].messageId,
  receiptHandle, body, attributes, messageAttributes, md5OfBody, eventSource "aws:sqs", eventSourceARN, awsRegion);
  DeleteMessage for every record not reported failed; a function that raised, or an invalid itemIdentifier, leaves
  the whole batch to come back after the visibility timeout.
- The pollers: `pump()` runs one poll cycle (one batch per mapping, stream mappings first); `drain()` pumps until a
  cycle delivers nothing; `start(interval_s)`/`close()` pump in one background thread for the demo.
- PutEvents' partial failure (`PutEventsFaults`), which moto never produces: chosen entries of a PutEvents request
  are refused with an ErrorCode (InternalFailure unless told), the others go on to moto and are delivered as usual;
  the response has FailedEntryCount and one result per entry, in order
  (https://docs.aws.amazon.com/eventbridge/latest/APIReference/API_PutEvents.html).
Not modelled: MaximumRetryAttempts, MaximumRecordAgeInSeconds, BisectBatchOnFunctionError and on-failure
destinations (a failing record is retried on every pump, for ever); MaximumBatchingWindowInSeconds; parallelization
and shard lineage (moto's stream has one shard); concurrency (one batch at a time); IAM beyond the credentials
the functions are given. A mapping with FilterCriteria is refused: which records reach the
function would differ from AWS.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.awsrequest import AWSPreparedRequest, AWSResponse

from core.webhook import Resolver
from functions.events import handler as events_fn
from functions.webhooks import handler as webhooks_fn
from functions.webhooks.deliver import BACKOFF_BASE_S
from functions.webhooks.post import Connect
from localaws.lambdas import _response

log = logging.getLogger(__name__)
EVENTS_HANDLER = "events.handler.handler"
WEBHOOKS_HANDLER = "webhooks.handler.handler"
HANDLERS = (EVENTS_HANDLER, WEBHOOKS_HANDLER)
REPORT_FAILURES = "ReportBatchItemFailures"
SQS_MAX_RECEIVE = 10  # ReceiveMessage's MaxNumberOfMessages limit
# The attributes Lambda puts on an SQS record (the FIFO ones only where the queue has them).
_SQS_ATTRIBUTES: tuple[str, ...] = ("ApproximateReceiveCount", "SentTimestamp", "SenderId", "AWSTraceHeader")
_SQS_ATTRIBUTES += ("ApproximateFirstReceiveTimestamp", "SequenceNumber", "MessageGroupId", "MessageDeduplicationId")

Function = Callable[[dict[str, Any]], Any]  # one invocation: event -> response


@dataclass(frozen=True)
class Invocation:
    """One run of a function: the mapping, the event, what it returned (None if it raised: see error)."""

    mapping: str
    function: str
    event: dict[str, Any]
    response: Any
    error: str | None = None


def detach_moto_delivery(source_arn: str, mapping_uuid: str) -> None:
    """Stop moto's own (Docker) delivery for one mapping: moto keeps a table's and a queue's mappings on the table or
    queue object and tries them on every write. The mapping itself stays (ListEventSourceMappings still shows it)."""
    from moto.dynamodb.models import dynamodb_backends
    from moto.sqs.models import sqs_backends

    _, _, service, region, account, resource = source_arn.split(":", 5)
    holder: Any = None
    if service == "dynamodb":
        holder = dynamodb_backends[account][region].tables.get(resource.split("/")[1])
    elif service == "sqs":
        holder = sqs_backends[account][region].queues.get(resource)
    if holder is None:
        raise LookupError(f"{source_arn}: not in this process's moto (run the server in-process: moto_server)")
    mappings = holder.lambda_event_source_mappings
    for key in [k for k, esm in mappings.items() if esm.uuid == mapping_uuid]:
        del mappings[key]


def install() -> None:
    """In the moto server's process: every event source mapping is detached from its table or queue as it is
    created (`detach_moto_delivery`), so writes are never lost to moto's own delivery, whichever process creates the
    mapping; `LocalStreams` delivers instead. Idempotent."""
    from moto.awslambda.models import LambdaBackend

    if getattr(LambdaBackend.create_event_source_mapping, "_localaws", False):
        return
    original = LambdaBackend.create_event_source_mapping

    def create(self: Any, spec: dict[str, Any]) -> Any:
        mapping = original(self, spec)
        detach_moto_delivery(mapping.event_source_arn, mapping.uuid)
        return mapping

    create._localaws = True  # type: ignore[attr-defined]
    LambdaBackend.create_event_source_mapping = create  # type: ignore[method-assign]


class PutEventsFaults:
    """Refuse chosen PutEvents entries of the clients it is attached to (see the module docstring)."""

    def __init__(self, plain_client: Any) -> None:
        self._plain = plain_client  # an events client without this hook: what accepted entries go on through
        self._rules: list[list[Any]] = []  # [match, code, times left]
        self.requests: list[list[dict[str, Any]]] = []  # the entries of each PutEvents request seen
        self._lock = threading.Lock()

    def refuse(self, match: Callable[[dict[str, Any]], bool], *, code: str = "InternalFailure", times: int = 1) -> None:
        """Refuse the next `times` entries for which `match(entry)` holds (an entry as sent: Source, Detail, ...)."""
        with self._lock:
            self._rules.append([match, code, times])

    def attach(self, client: Any) -> Any:
        client.meta.events.register("before-send.events.PutEvents", self._on_put)
        return client

    def _code(self, entry: dict[str, Any]) -> str | None:
        for rule in self._rules:
            if rule[2] > 0 and rule[0](entry):
                rule[2] -= 1
                return str(rule[1])
        return None

    def _on_put(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        body = request.body or b"{}"
        entries = json.loads(body.decode() if isinstance(body, bytes) else body).get("Entries", [])
        with self._lock:
            self.requests.append(entries)
            codes = [self._code(e) for e in entries]
        results: list[dict[str, Any]] = [
            {"ErrorCode": code, "ErrorMessage": f"{code} (localaws.streams.PutEventsFaults)"} if code else {}
            for code in codes
        ]
        passing = [i for i, code in enumerate(codes) if code is None]
        if passing:
            out = self._plain.put_events(Entries=[_entry(entries[i]) for i in passing])
            for i, result in zip(passing, out["Entries"], strict=True):
                results[i] = result
        doc = {"FailedEntryCount": sum(1 for r in results if "ErrorCode" in r), "Entries": results}
        return _response(request.url, 200, json.dumps(doc).encode(), **{"Content-Type": "application/x-amz-json-1.1"})


def _entry(wire: dict[str, Any]) -> dict[str, Any]:
    """An entry as the JSON protocol carried it, as boto3 takes it again (Time: epoch seconds -> datetime)."""
    at = wire.get("Time")
    return {**wire, "Time": datetime.fromtimestamp(at, UTC)} if isinstance(at, (int, float)) else dict(wire)


@dataclass
class _Mapping:
    uuid: str
    function: str
    source_arn: str
    batch_size: int
    reports_failures: bool
    run: Function
    positions: dict[str, str] = field(default_factory=dict)  # stream shard id -> shard iterator to read next


class LocalStreams:
    """The pollers of the local AWS's event source mappings (see the module docstring). `env`: overrides of the
    functions' environment; `resolve`, `connect`, `backoff_base_s`: the webhook function's resolver, socket opener
    and retry backoff (tests point them at a receiver on 127.0.0.1 and make retries immediate)."""

    def __init__(
        self,
        endpoint_url: str,
        *,
        region: str,
        credentials: Mapping[str, str],
        env: Mapping[str, str] | None = None,
        resolve: Resolver | None = None,
        connect: Connect | None = None,
        backoff_base_s: float = BACKOFF_BASE_S,
        faults: PutEventsFaults | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.endpoint_url, self.region, self.credentials = endpoint_url, region, dict(credentials)
        self.env = dict(env or {})
        self.resolve, self.connect, self.backoff_base_s = resolve, connect, backoff_base_s
        self.faults, self.sleep = faults, sleep
        self.runs: list[Invocation] = []
        self._lambda = self.client("lambda")
        self._streams = self.client("dynamodbstreams")
        self._sqs = self.client("sqs")
        self.mappings = [m for m in map(self._model, self._enabled()) if m is not None]
        self.mappings.sort(key=lambda m: not m.source_arn.startswith("arn:aws:dynamodb:"))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def of(cls, local: Any, **kwargs: Any) -> LocalStreams:
        """For a `localaws.LocalAws`."""
        return cls(local.endpoint_url, region=local.region, credentials=local.credentials, **kwargs)

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.credentials["AWS_SECRET_ACCESS_KEY"],
        )

    # -- discovery --------------------------------------------------------------------------------------------------
    def _enabled(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for page in self._lambda.get_paginator("list_event_source_mappings").paginate():
            found += [m for m in page["EventSourceMappings"] if m.get("State") == "Enabled"]
        return found

    def _model(self, mapping: dict[str, Any]) -> _Mapping | None:
        conf = self._lambda.get_function_configuration(FunctionName=mapping["FunctionArn"])
        if conf.get("Handler") not in HANDLERS:
            return None
        if mapping.get("FilterCriteria"):
            raise ValueError(f"mapping {mapping['UUID']}: FilterCriteria is not modelled (localaws/streams.py)")
        env = {**conf.get("Environment", {}).get("Variables", {}), **self.env}
        source = mapping["EventSourceArn"]
        found = _Mapping(
            uuid=mapping["UUID"],
            function=conf["FunctionName"],
            source_arn=source,
            batch_size=int(mapping.get("BatchSize") or 10),
            reports_failures=REPORT_FAILURES in (mapping.get("FunctionResponseTypes") or []),
            run=self._function(conf, env),
        )
        if source.startswith("arn:aws:dynamodb:"):
            start = mapping.get("StartingPosition") or "TRIM_HORIZON"
            for shard in self._streams.describe_stream(StreamArn=source)["StreamDescription"]["Shards"]:
                found.positions[shard["ShardId"]] = self._iterator(source, shard["ShardId"], start)
        return found

    def _function(self, conf: dict[str, Any], env: dict[str, str]) -> Function:
        timeout_s = float(conf.get("Timeout") or 3)
        if conf["Handler"] == EVENTS_HANDLER:
            settings = events_fn.EventsSettings.from_env(env)
            events = self.client("events")
            if self.faults is not None:
                self.faults.attach(events)
            sqs = self.client("sqs")
            return lambda event: events_fn.run(
                event, settings=settings, events_client=events, sqs_client=sqs, sleep=self.sleep
            )
        hooks = webhooks_fn.WebhookSettings.from_env(env)
        deps = webhooks_fn.deps_for(hooks, self.client)
        deps = replace(deps, resolve=self.resolve or deps.resolve, connect=self.connect or deps.connect)

        def run(event: dict[str, Any]) -> Any:
            deadline = time.monotonic() + timeout_s
            return webhooks_fn.run(
                event,
                settings=hooks,
                deps=deps,
                backoff_base_s=self.backoff_base_s,
                remaining_s=lambda: deadline - time.monotonic(),
            )

        return run

    def _iterator(self, stream: str, shard: str, kind: str, sequence: str | None = None) -> str:
        extra = {"SequenceNumber": sequence} if sequence is not None else {}
        out = self._streams.get_shard_iterator(StreamArn=stream, ShardId=shard, ShardIteratorType=kind, **extra)
        return str(out["ShardIterator"])

    # -- polling ----------------------------------------------------------------------------------------------------
    def pump(self) -> int:
        """One poll cycle: at most one batch per mapping. Returns how many records the functions were given."""
        return sum(
            self._poll_stream(m) if m.source_arn.startswith("arn:aws:dynamodb:") else self._poll_queue(m)
            for m in self.mappings
        )

    def drain(self, max_cycles: int = 50) -> int:
        """Pump until a cycle delivers nothing (at most `max_cycles`). Returns the records delivered in all."""
        total = 0
        for _ in range(max_cycles):
            delivered = self.pump()
            if not delivered:
                return total
            total += delivered
        raise RuntimeError(f"still delivering after {max_cycles} cycles (a record that fails for ever?)")

    def _invoke(self, mapping: _Mapping, event: dict[str, Any]) -> tuple[bool, list[str] | None]:
        """Run the function: (raised, the reported failed identifiers; None: the response fails the whole batch)."""
        try:
            response = mapping.run(event)
        except Exception as err:
            self.runs.append(Invocation(mapping.uuid, mapping.function, event, None, f"{type(err).__name__}: {err}"))
            log.warning("%s raised: %s", mapping.function, err)
            return True, None
        self.runs.append(Invocation(mapping.uuid, mapping.function, event, response))
        if not mapping.reports_failures or not isinstance(response, Mapping):
            return False, []  # Lambda ignores the response unless the mapping asks for it
        failures = response.get("batchItemFailures") or []
        identifiers = [f.get("itemIdentifier") if isinstance(f, Mapping) else None for f in failures]
        if not all(isinstance(i, str) and i for i in identifiers):
            return False, None
        return False, [str(i) for i in identifiers]

    def _poll_stream(self, mapping: _Mapping) -> int:
        delivered = 0
        for shard, position in list(mapping.positions.items()):
            out = self._streams.get_records(ShardIterator=position, Limit=mapping.batch_size)
            records = [self._stream_record(mapping, r) for r in out["Records"]]
            if not records:
                mapping.positions[shard] = out["NextShardIterator"]
                continue
            delivered += len(records)
            raised, failed = self._invoke(mapping, {"Records": records})
            sequences = [r["dynamodb"]["SequenceNumber"] for r in records]
            if raised or failed is None or not set(failed) <= set(sequences):
                continue  # the whole batch again, from the same position
            if failed:
                first = min(failed, key=int)
                mapping.positions[shard] = self._iterator(mapping.source_arn, shard, "AT_SEQUENCE_NUMBER", first)
            else:
                mapping.positions[shard] = out["NextShardIterator"]
        return delivered

    def _stream_record(self, mapping: _Mapping, raw: dict[str, Any]) -> dict[str, Any]:
        data = dict(raw["dynamodb"])
        created = data.get("ApproximateCreationDateTime")  # boto3 parsed it; Lambda sends epoch seconds
        data["ApproximateCreationDateTime"] = created.timestamp() if isinstance(created, datetime) else created
        return {
            "eventID": raw["eventID"],
            "eventName": raw["eventName"],
            "eventVersion": raw.get("eventVersion", "1.1"),
            "eventSource": "aws:dynamodb",
            "awsRegion": self.region,
            "eventSourceARN": mapping.source_arn,
            "dynamodb": data,
        }

    def _poll_queue(self, mapping: _Mapping) -> int:
        _, _, _, _, account, name = mapping.source_arn.split(":", 5)
        url = self._sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]
        out = self._sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=min(mapping.batch_size, SQS_MAX_RECEIVE),
            WaitTimeSeconds=0,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages = out.get("Messages", [])
        if not messages:
            return 0
        raised, failed = self._invoke(mapping, {"Records": [self._sqs_record(mapping, m) for m in messages]})
        ids = {m["MessageId"] for m in messages}
        if raised or failed is None or not set(failed) <= ids:
            return len(messages)  # nothing deleted: all come back after the visibility timeout
        done = [m for m in messages if m["MessageId"] not in set(failed)]
        for start in range(0, len(done), SQS_MAX_RECEIVE):
            part = done[start : start + SQS_MAX_RECEIVE]
            entries = [{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(part)]
            self._sqs.delete_message_batch(QueueUrl=url, Entries=entries)
        return len(messages)

    def _sqs_record(self, mapping: _Mapping, message: dict[str, Any]) -> dict[str, Any]:
        attributes = message.get("Attributes", {})
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": {k: attributes[k] for k in _SQS_ATTRIBUTES if k in attributes},
            "messageAttributes": {k: _lambda_attribute(v) for k, v in message.get("MessageAttributes", {}).items()},
            "md5OfBody": message["MD5OfBody"],
            "eventSource": "aws:sqs",
            "eventSourceARN": mapping.source_arn,
            "awsRegion": self.region,
        }

    # -- background -------------------------------------------------------------------------------------------------
    def start(self, interval_s: float = 1.0) -> LocalStreams:
        """Pump every `interval_s` in a background thread until `close()`."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, args=(interval_s,), name="local-streams", daemon=True)
            self._thread.start()
        return self

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.pump()
            except Exception:  # a reset or a stopping server: the next cycle tries again
                log.warning("local streams pump failed", exc_info=True)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the background thread after the cycle in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def _lambda_attribute(value: dict[str, Any]) -> dict[str, Any]:
    """An SQS message attribute as Lambda's event spells it (camelCase, binary as base64)."""
    binary = value.get("BinaryValue")
    return {
        "stringValue": value.get("StringValue"),
        "binaryValue": base64.b64encode(binary).decode() if binary is not None else None,
        "stringListValues": list(value.get("StringListValues", [])),
        "binaryListValues": [base64.b64encode(b).decode() for b in value.get("BinaryListValues", [])],
        "dataType": value.get("DataType"),
    }
