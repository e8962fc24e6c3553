"""What the task-events layer is built from: an EventBridge bus, Lambda event source mappings (the task table's
stream, the webhook queue), and the webhooks' signing secret.

The functions themselves are modules/function.py PythonFunctions; the layer's stack is modules/stacks_events.py.
"""

from __future__ import annotations

import re

from cdktf_cdktf_provider_aws.cloudwatch_event_bus import CloudwatchEventBus
from cdktf_cdktf_provider_aws.lambda_event_source_mapping import (
    LambdaEventSourceMapping,
    LambdaEventSourceMappingDestinationConfig,
    LambdaEventSourceMappingDestinationConfigOnFailure,
)
from cdktf_cdktf_provider_aws.secretsmanager_secret import SecretsmanagerSecret
from constructs import Construct

from modules.function import PythonFunction
from modules.iam import Role, Statement, arn
from modules.props import check, check_in, check_pattern, check_range
from modules.resource import ResourceConstruct

# PutEvents on one bus (EventBridge API Reference, PutEvents; the bus is in the entry's EventBusName).
PUT_EVENTS = ("events:PutEvents",)
# CreateEventBus: Name 1-256 characters of .-_A-Za-z0-9, not "default" (that one exists in every account) and no
# "aws." prefix (reserved for partner buses).
BUS_NAME = re.compile(r"[.\-_A-Za-z0-9]{1,256}")
# CreateSecret: Name 1-512 characters of A-Za-z0-9/_+=.@-; RecoveryWindowInDays 7..30 (Secrets Manager API
# Reference, DeleteSecret). Secrets Manager appends "-" and 6 random characters to the ARN of every secret.
SECRET_NAME = re.compile(r"[A-Za-z0-9/_+=.@-]{1,512}")
SECRET_READ = ("secretsmanager:GetSecretValue",)
# The webhook function writes the first key itself (functions/webhooks): no key ever sits in Terraform state.
SECRET_INITIALIZE = ("secretsmanager:PutSecretValue",)
# CreateEventSourceMapping (Lambda API Reference): BatchSize 1..10000 for streams, 1..10 for a standard SQS queue
# without a batching window; MaximumRetryAttempts -1 (forever) or 0..10000 (streams only);
# MaximumBatchingWindowInSeconds 0..300; starting position for streams TRIM_HORIZON | LATEST | AT_TIMESTAMP.
STREAM_POSITIONS = ("TRIM_HORIZON", "LATEST")


class EventBus(ResourceConstruct):
    """A custom EventBridge bus: consumers put their rules on it, apart from the account's default bus.

    Args:
        name: the bus's name, 1-256 characters of .-_A-Za-z0-9, not "default" and not starting "aws."
            (CreateEventBus). Required.
    """

    SERVICE = "events"

    def __init__(self, scope: Construct, id: str, *, name: str) -> None:
        super().__init__(scope, id)
        check_pattern(self, "name", name, BUS_NAME, "1-256 characters of .-_A-Za-z0-9 (EventBridge bus name)")
        check(self, "name", name, name != "default" and not name.startswith("aws."), "is reserved (EventBridge)")
        self.bus = CloudwatchEventBus(self, "bus", name=name)
        self.arn = self.bus.arn
        self.name = self.bus.name

    def grant_put_events(self, grantee: Role) -> list[Statement]:
        return self.grant(grantee, *PUT_EVENTS)


def bus_arn(name: str, *, region: str, account: str) -> str:
    """A bus's ARN from its name (for grants in a stack applied before the bus exists)."""
    return arn("events", f"event-bus/{name}", region=region, account=account)


class SigningSecret(ResourceConstruct):
    """A Secrets Manager secret holding one environment's webhook signing key, encrypted with the account's
    aws/secretsmanager key. Terraform creates it empty: the webhook function writes a random key on first use
    (PutSecretValue with a fixed client request token, so two first uses write one key), and ops rotate it with
    put-secret-value. So the key is never in Terraform state or plan output.

    Args:
        name: the secret's name, 1-512 characters of A-Za-z0-9/_+=.@- (CreateSecret). Required.
        recovery_window_days: how long a deleted secret can be restored, 7..30 (DeleteSecret). Default 7.
    """

    SERVICE = "secretsmanager"

    def __init__(self, scope: Construct, id: str, *, name: str, recovery_window_days: int = 7) -> None:
        super().__init__(scope, id)
        check_pattern(self, "name", name, SECRET_NAME, "1-512 characters of A-Za-z0-9/_+=.@- (Secrets Manager)")
        check_range(self, "recovery_window_days", recovery_window_days, 7, 30, "Secrets Manager RecoveryWindowInDays")
        self.secret = SecretsmanagerSecret(
            self,
            "secret",
            name=name,
            description="HMAC-SHA256 key that signs this environment's task webhooks (docs/EVENTS.md)",
            recovery_window_in_days=recovery_window_days,
        )
        self.arn = self.secret.arn


def secret_arn(name: str, *, region: str, account: str) -> str:
    """A secret's ARN pattern from its name: Secrets Manager appends "-" and six random characters."""
    return arn("secretsmanager", f"secret:{name}-??????", region=region, account=account)


class EventSource(Construct):
    """A Lambda event source mapping that reports partial batch failures (ReportBatchItemFailures), so a failed
    record is retried without re-running the ones before it
    (https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-batchfailurereporting.html,
    https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-errorhandling.html).

    Args:
        function: the function invoked. Required.
        source_arn: a DynamoDB stream's or an SQS queue's ARN. Required.
        stream: True for a stream source (ordered, retried by Lambda), False for a queue (retried by SQS's
            visibility timeout and redrive). Required.
        batch_size: records per invocation: 1..10000 for a stream, 1..10 for a queue. Default 10.
        starting_position: a stream's first read, TRIM_HORIZON (every record still in the stream: nothing missed
            after a redeploy) or LATEST. Default TRIM_HORIZON. Streams only.
        maximum_retry_attempts: a stream batch's retries before it goes to `on_failure_arn`, 0..10000. Default 10.
            Streams only.
        on_failure_arn: an SQS queue for the records of a stream batch that still fail (their positions, not the
            records). Streams only; default None.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        function: PythonFunction,
        source_arn: str,
        stream: bool,
        batch_size: int = 10,
        starting_position: str = "TRIM_HORIZON",
        maximum_retry_attempts: int = 10,
        on_failure_arn: str | None = None,
    ) -> None:
        super().__init__(scope, id)
        check_range(self, "batch_size", batch_size, 1, 10000 if stream else 10, "Lambda event source BatchSize")
        stream_only: dict[str, object] = {}
        if stream:
            check_in(self, "starting_position", starting_position, STREAM_POSITIONS, "Lambda StartingPosition")
            check_range(self, "maximum_retry_attempts", maximum_retry_attempts, 0, 10000, "MaximumRetryAttempts")
            stream_only = {
                "starting_position": starting_position,
                "maximum_retry_attempts": maximum_retry_attempts,
                # A poison record is split out of its batch instead of holding the shard for every retry.
                "bisect_batch_on_function_error": True,
            }
            if on_failure_arn:
                stream_only["destination_config"] = LambdaEventSourceMappingDestinationConfig(
                    on_failure=LambdaEventSourceMappingDestinationConfigOnFailure(destination_arn=on_failure_arn)
                )
        else:
            check(self, "on_failure_arn", on_failure_arn, on_failure_arn is None, "is for stream sources only")
        self.mapping = LambdaEventSourceMapping(
            self,
            "mapping",
            function_name=function.arn,
            event_source_arn=source_arn,
            batch_size=batch_size,
            function_response_types=["ReportBatchItemFailures"],
            **stream_only,
        )
        self.uuid = self.mapping.uuid
