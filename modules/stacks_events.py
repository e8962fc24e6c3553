"""The stacks of what happened: the events layer (every task state change published to EventBridge from the task
table's stream, and the webhooks tasks name, delivered from a queue: docs/EVENTS.md) and the alarm stack (the idle
alarm that wakes the controller, the operations alarms, their topic and the dashboard: docs/OBSERVABILITY.md).

The events layer's two roles live in the iam stack, like every role; they are granted this stack's resources by name
(the iam stack is applied first), which is why the names are declared here, once, and the grants written here too
(`EventsRoles.create`, which the iam stack calls).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from constructs import Construct

from core import contract
from modules.alarm import QueueIdleAlarm
from modules.base import EnvironmentStack
from modules.config import EnvironmentConfig
from modules.events import EventBus, EventSource, SigningSecret, bus_arn, secret_arn
from modules.fleet import fleet_for
from modules.function import FunctionSettings, PythonFunction, grant_logs, package_function
from modules.iam import Role, arn
from modules.layout import ALARM, EVENTS
from modules.observability import AlarmTopic, OperationsAlarms, OperationsDashboard
from modules.queue import DAY, SEND_MESSAGE_ACTIONS, TaskQueue
from modules.table import TaskTable

EVENT_BUS = "gpu-orchestrator-tasks"
EVENTS_FUNCTION = "gpu-task-events"
EVENTS_FAILED_QUEUE = "gpu-task-events-failed"  # stream batches that failed every retry (their positions)
WEBHOOK_FUNCTION = "gpu-task-webhooks"
WEBHOOK_QUEUE, WEBHOOK_DLQ = "gpu-task-webhooks", "gpu-task-webhooks-dlq"
SIGNING_SECRET = "gpu-orchestrator-webhook-key"
EVENTS_ROLE, WEBHOOK_ROLE = "task-events-role", "task-webhooks-role"
ALARM_TOPIC = "gpu-orchestrator-alarms"
ALARM_PREFIX = "gpu-orchestrator"
DASHBOARD = "gpu-orchestrator"
WEBHOOK_TIMEOUT_S = 30  # one delivery (WEBHOOK_TIMEOUT_SECONDS, 10 s) plus reading the task and the secret
# Lambda's advice for an SQS source: a visibility timeout at least six times the function's timeout
# (https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-configure.html).
WEBHOOK_VISIBILITY_S = 6 * WEBHOOK_TIMEOUT_S


class EventsStack(EnvironmentStack):
    """The bus, the task-events function on the table's stream, the webhook queue and its function, the signing
    secret. Attributes: bus, secret, webhook_queue, events_function, webhook_function."""

    def __init__(self, scope: Construct, *, config: EnvironmentConfig, table: TaskTable, roles: EventsRoles) -> None:
        super().__init__(scope, EVENTS, config=config)
        self.bus = EventBus(self, "bus", name=self.name_of(EVENT_BUS))
        self.secret = SigningSecret(self, "signing-key", name=self.name_of(SIGNING_SECRET))
        self.webhook_queue = TaskQueue(
            self,
            "webhook-queue",
            name=self.name_of(WEBHOOK_QUEUE),
            dlq_name=self.name_of(WEBHOOK_DLQ),
            visibility_timeout_seconds=WEBHOOK_VISIBILITY_S,
            retention_seconds=4 * DAY,  # a delivery retried with backoff for hours is still well inside
        )
        self.failed = TaskQueue(
            self,
            "events-failed",
            name=self.name_of(EVENTS_FAILED_QUEUE),
            dlq_name=self.name_of(f"{EVENTS_FAILED_QUEUE}-dlq"),
            retention_seconds=14 * DAY,
        )
        events_environment = {
            contract.TASK_EVENT_BUS: self.bus.name,
            contract.WEBHOOK_QUEUE_URL: self.webhook_queue.url,
        }
        events = FunctionSettings(
            name=self.name_of(EVENTS_FUNCTION),
            role=roles.events,
            environment=contract.render(events_environment, program=contract.EVENTS),
            timeout_seconds=60,
        )
        self.events_function = package_function(self, "events", config=config, settings=events)
        webhooks_environment = {
            contract.WEBHOOK_QUEUE_URL: self.webhook_queue.url,
            contract.WEBHOOK_SECRET_ARN: self.secret.arn,
            contract.TASK_TABLE_NAME: table.name,
            **({contract.WEBHOOK_ALLOW_LOOPBACK: True} if config.emulated else {}),
        }
        webhooks = FunctionSettings(
            name=self.name_of(WEBHOOK_FUNCTION),
            role=roles.webhooks,
            environment=contract.render(webhooks_environment, program=contract.WEBHOOKS),
            timeout_seconds=WEBHOOK_TIMEOUT_S,
        )
        self.webhook_function = package_function(self, "webhooks", config=config, settings=webhooks)
        EventSource(
            self,
            "stream",
            function=self.events_function,
            source_arn=table.stream_arn,
            stream=True,
            batch_size=100,
            on_failure_arn=self.failed.arn,
        )
        EventSource(
            self,
            "deliveries",
            function=self.webhook_function,
            source_arn=self.webhook_queue.arn,
            stream=False,
            batch_size=1,
        )
        self.output("EventBusName", self.bus.name, "EventBridge bus of the task state-change events")
        self.output("EventBusArn", self.bus.arn, "ARN of the task events bus (put your rules on it)")
        self.output("WebhookSecretArn", self.secret.arn, "Secrets Manager secret holding the webhook signing key")
        self.output("WebhookQueueUrl", self.webhook_queue.url, "Queue of pending webhook deliveries")
        self.output("WebhookDLQUrl", self.webhook_queue.dlq_url, "Webhook deliveries whose function kept failing")


@dataclass(frozen=True, kw_only=True)
class EventsRoles:
    """The events layer's two roles (made by the iam stack): `events` (the stream function) and `webhooks`."""

    events: Role
    webhooks: Role

    @classmethod
    def create(cls, make_role: Callable[..., Role], *, config: EnvironmentConfig, table: TaskTable) -> EventsRoles:
        """Both roles, each granted this layer's resources by the names above. `make_role(id, **props)` makes a role
        in the iam stack (modules/stacks.py IamStack._role: its trust and permissions boundary)."""
        return cls(events=_events_role(make_role, config, table), webhooks=_webhooks_role(make_role, config, table))


def _events_role(make_role: Callable[..., Role], config: EnvironmentConfig, table: TaskTable) -> Role:
    """The task-events function: read the table's stream, publish to the bus, queue webhook deliveries, and park the
    positions of batches that failed every retry."""
    where = {"region": config.region, "account": config.account}
    role = make_role(
        "task-events",
        name=config.name_of(EVENTS_ROLE),
        assumed_by="lambda.amazonaws.com",
        description="The task-events function: the task table's stream to EventBridge and the webhook queue.",
    )
    table.grant_stream_read(role)
    role.add(("events:PutEvents",), [bus_arn(config.name_of(EVENT_BUS), **where)])
    queues = [arn("sqs", config.name_of(q), **where) for q in (WEBHOOK_QUEUE, EVENTS_FAILED_QUEUE)]
    role.add(SEND_MESSAGE_ACTIONS, queues)
    grant_logs(role, **where, function_name=config.name_of(EVENTS_FUNCTION))
    return role


def _webhooks_role(make_role: Callable[..., Role], config: EnvironmentConfig, table: TaskTable) -> Role:
    """The webhook function: consume (and re-send, with a delay) its queue, read a task and write its delivery state,
    read the signing key and write the first one."""
    where = {"region": config.region, "account": config.account}
    role = make_role(
        "task-webhooks",
        name=config.name_of(WEBHOOK_ROLE),
        assumed_by="lambda.amazonaws.com",
        description="The webhook function: signs and delivers task webhooks, records their state on the task.",
    )
    queue = arn("sqs", config.name_of(WEBHOOK_QUEUE), **where)
    # What the SQS event source mapping needs of the function's role, plus SendMessage for a delayed retry.
    role.add(("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", *SEND_MESSAGE_ACTIONS), [queue])
    table.grant(role, "dynamodb:GetItem", "dynamodb:UpdateItem")
    secret = secret_arn(config.name_of(SIGNING_SECRET), **where)
    role.add(("secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"), [secret])
    grant_logs(role, **where, function_name=config.name_of(WEBHOOK_FUNCTION))
    return role


class AlarmStack(EnvironmentStack):
    """The idle alarm (it invokes the controller), the alarms ops are woken by (modules/observability.py) on one
    topic, and the dashboard of the whole system."""

    def __init__(
        self,
        scope: Construct,
        *,
        config: EnvironmentConfig,
        function: PythonFunction,
        queue: TaskQueue,
    ) -> None:
        super().__init__(scope, ALARM, config=config)
        self.alarm = QueueIdleAlarm(
            self,
            "idle",
            name=self.name_of(f"QueueEmptyFor{config.idle_window_minutes}Min"),
            queue_name=queue.name,
            window_minutes=config.idle_window_minutes,
            target=function,
        )
        self.topic = AlarmTopic(
            self,
            "topic",
            name=self.name_of(ALARM_TOPIC),
            region=config.region,
            account=config.account,
            emails=config.alarm_emails,
        )
        self.operations = OperationsAlarms(
            self,
            "operations",
            prefix=self.name_of(ALARM_PREFIX),
            queue_name=queue.name,
            dlq_name=queue.dlq_name,
            namespace=config.metrics_namespace,
            topic=self.topic,
            oldest_message_age_s=config.oldest_message_alarm_minutes * 60,
        )
        self.dashboard = OperationsDashboard(
            self,
            "dashboard",
            name=self.name_of(DASHBOARD),
            region=config.region,
            alarms=self.operations,
            # by name, from the config: the group is the gpu stack's, which this stack does not read
            group_name=fleet_for(config).name if config.gpu_mode == "fleet" else None,
        )
        self.output("AlarmName", self.alarm.name, "Name of the idle alarm")
        self.output("AlarmArn", self.alarm.arn, "ARN of the idle alarm")
        self.output("AlarmTopicArn", self.topic.arn, "SNS topic of the operations alarms (subscribe on-call to it)")
        self.output("DashboardName", self.dashboard.name, "CloudWatch dashboard of the queue, GPUs, tasks and cost")
