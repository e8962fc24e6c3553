"""Which resources the deploy role and the plan role reach: the names the stacks give them and the ARNs (or ARN
patterns) of one environment's resources that modules/deploy_policies.py grants the actions of
modules/deploy_actions.py on.

What modules/stacks.py and modules/stacks_events.py name our resources, before the environment suffix ("-dev"...): a
deploy role reaches `<name>*-<env>` for these and nothing else, and the IAM ones, the buckets and the events and alarm
stacks' resources by their exact names only. tests/test_github_oidc.py synthesizes the real stacks of an environment
and fails when a resource's name falls outside them (rename both together). Where the stacks declare a name as a
constant it is imported from there, so a renamed resource moves its grant with it.
"""

from __future__ import annotations

from collections.abc import Sequence

from modules.deploy_actions import AUTOSCALING_SERVICE_ROLE
from modules.events import bus_arn, secret_arn
from modules.fleet import FLEET
from modules.iam import arn
from modules.observability import MEANINGS
from modules.stacks_events import (
    ALARM_PREFIX,
    ALARM_TOPIC,
    DASHBOARD,
    EVENT_BUS,
    EVENTS_FAILED_QUEUE,
    EVENTS_FUNCTION,
    EVENTS_ROLE,
    SIGNING_SECRET,
    WEBHOOK_FUNCTION,
    WEBHOOK_QUEUE,
    WEBHOOK_ROLE,
)

GITHUB_OIDC_HOST = "token.actions.githubusercontent.com"  # the account's OIDC provider for GitHub Actions
# Each base name covers its dead-letter queue too (`<base>-dlq-<env>`, `<base>_dlq-<env>`).
QUEUE_NAMES = ("gpu_tasks_queue", "shutdown-gpu-lambda-dlq", WEBHOOK_QUEUE, EVENTS_FAILED_QUEUE)
RUNTIME_QUEUES = ("gpu_tasks_queue", "gpu_tasks_queue_dlq", "shutdown-gpu-lambda-dlq")  # exact, for the boundary
TABLE_NAMES = ("task_store",)  # the task table, which the boundary names too
HOSTS_TABLE_NAMES = ("gpu_hosts",)  # modules/stacks.py DynamoDbStack: liveness and billed intervals
INSTANCE_ROLE, SHUTDOWN_ROLE = "gpu-instance-role", "lambda-gpu-shutdown-role"
ORCHESTRATOR_ROLE = "orchestrator-task-role"
EVENT_ROLE_NAMES = (EVENTS_ROLE, WEBHOOK_ROLE)  # the events layer's functions' roles, made by the iam stack
ROLE_NAMES = (INSTANCE_ROLE, SHUTDOWN_ROLE, ORCHESTRATOR_ROLE, *EVENT_ROLE_NAMES)
INSTANCE_PROFILE_NAMES = ("gpu-instance-profile",)
API_FUNCTION = "gpu-orchestrator-api"  # its layer is `<function>-<env>-deps` (modules/api.py)
FUNCTION_NAMES = ("shutdown-gpu-lambda", API_FUNCTION)  # the functions the boundary lets a runtime role invoke
EVENT_FUNCTION_NAMES = (EVENTS_FUNCTION, WEBHOOK_FUNCTION)  # invoked by their event source mappings only
# The adapter's metrics log group (modules/stacks.py adapter_metrics_group, made by the gpu stack), by its exact name.
ADAPTER_METRICS_GROUP = "/gpu-orchestrator/adapter-metrics"
# The managed policies for callers, which ops attach to people (users, groups, SSO permission sets) or to what runs
# the canvas service: the API's submit and admin policies and the canvas's. Never attached by CI (no Attach*).
CALLER_POLICY_NAMES = ("gpu-orchestrator-submit", "gpu-orchestrator-admin", "gpu-orchestrator-canvas")
ALARM_NAMES = ("QueueEmptyFor",)  # QueueEmptyFor<minutes>Min
# The operations alarms are `<prefix>-<env>-<suffix>`: named exactly, since `<prefix>-<env>-*` would also match
# the alarms of an environment whose name starts with this one's and a dash ("staging-eu").
OPERATIONS_ALARMS = tuple(MEANINGS)
# The GPU stack (modules/gpu.py): adopt mode's bootstrap document; create mode's launch template, security group and
# instances, all named or tagged with the environment.
DOCUMENT_NAMES = ("gpu-adapter-bootstrap",)
HOST_NAMES = ("gpu-adapter",)
FLEET_NAMES = (FLEET,)  # fleet mode's Auto Scaling group (modules/fleet.py), by its exact name
RULE_NAMES = ("gpu-orchestrator-idle-check",)
# The tag key the provider's default tags give the environment's name on everything the stacks create (modules/base.py
# default_tags): what the EC2 hosts and the KMS key are scoped by, where AWS assigns the id their ARN holds.
DEFAULT_TAG = "environment"


def _names(account: str, service: str, kind: str, bases: Sequence[str], suffix: str, sep: str = "/") -> list[str]:
    region = "" if service == "iam" else "*"
    return [arn(service, f"{kind}{sep}{base}*{suffix}", region=region, account=account) for base in bases]


def _iam(account: str, kind: str, bases: Sequence[str], environment: str) -> list[str]:
    """Exact IAM ARNs `<kind>/<base>-<env>`: a pattern would also admit any new role or profile by that prefix."""
    return [arn("iam", f"{kind}/{base}-{environment}", region="", account=account) for base in bases]


def artifacts_buckets(prefix: str, environment: str, account: str) -> list[str]:
    """The artifacts bucket and its access-log bucket (modules/stacks.py ArtifactsStack), by their exact names.
    Bucket names are global: a pattern such as `<prefix>-artifacts-<env>-*` would also match another account's
    bucket, while these names carry this account's id."""
    name = f"{prefix}-artifacts-{environment}-{account}"
    return [name, f"{name}-logs"]


def service_resources(account: str, environment: str, prefix: str) -> dict[str, list[str]]:
    """ARNs and ARN patterns for one environment's resources (the region is free: an environment picks its own)."""
    end = f"-{environment}"
    artifacts, logs = (arn("s3", b, region="", account="") for b in artifacts_buckets(prefix, environment, account))
    functions = (*FUNCTION_NAMES, *EVENT_FUNCTION_NAMES)
    groups = [f"/aws/lambda/{f}" for f in functions]
    topic = arn("sns", f"{ALARM_TOPIC}{end}", region="*", account=account)
    return {
        "sqs": [arn("sqs", f"{base}*{end}", region="*", account=account) for base in QUEUE_NAMES],
        "dynamodb": _names(account, "dynamodb", "table", (*TABLE_NAMES, *HOSTS_TABLE_NAMES), end),
        "iam": _iam(account, "role", ROLE_NAMES, environment)
        + _iam(account, "instance-profile", INSTANCE_PROFILE_NAMES, environment),
        "role": _iam(account, "role", ROLE_NAMES, environment),
        "profile": _iam(account, "instance-profile", INSTANCE_PROFILE_NAMES, environment),
        "shutdown-role": _iam(account, "role", [SHUTDOWN_ROLE], environment),
        "instance-role": _iam(account, "role", [INSTANCE_ROLE], environment),
        "orchestrator-role": _iam(account, "role", [ORCHESTRATOR_ROLE], environment),
        "event-roles": _iam(account, "role", EVENT_ROLE_NAMES, environment),
        "lambda": [
            qualified
            for name in _names(account, "lambda", "function", functions, end, sep=":")
            for qualified in (name, f"{name}:*")  # an alias or version of it
        ],
        # A layer's ARN with and without its version (PublishLayerVersion names the layer, the others a version).
        "layer": [
            versioned
            for name in [arn("lambda", f"layer:{API_FUNCTION}{end}-deps", region="*", account=account)]
            for versioned in (name, f"{name}:*")
        ],
        # The event source mappings' functions, exactly (the value of lambda:FunctionArn), and every mapping of the
        # account: a mapping's ARN holds only the UUID Lambda assigns.
        "event-functions": [
            arn("lambda", f"function:{f}{end}", region="*", account=account) for f in EVENT_FUNCTION_NAMES
        ],
        "mapping": [arn("lambda", "event-source-mapping:*", region="*", account=account)],
        "caller-policy": _iam(account, "policy", CALLER_POLICY_NAMES, environment),
        # Log-group actions are authorized on the group's ARN with or without the trailing ":*".
        "logs": [
            group + tail
            for group in [
                *_names(account, "logs", "log-group", groups, end, sep=":"),
                arn("logs", f"log-group:{ADAPTER_METRICS_GROUP}{end}", region="*", account=account),
            ]
            for tail in ("", ":*")
        ],
        "cloudwatch": [
            *_names(account, "cloudwatch", "alarm", ALARM_NAMES, end, sep=":"),
            *(
                arn("cloudwatch", f"alarm:{ALARM_PREFIX}{end}-{s}", region="*", account=account)
                for s in OPERATIONS_ALARMS
            ),
        ],
        "dashboard": [arn("cloudwatch", f"dashboard/{DASHBOARD}{end}", region="", account=account)],
        "events": _names(account, "events", "rule", RULE_NAMES, end),
        "bus": [bus_arn(f"{EVENT_BUS}{end}", region="*", account=account)],
        "secret": [secret_arn(f"{SIGNING_SECRET}{end}", region="*", account=account)],
        "topic": [topic],
        # The topic's key: KMS assigns its id, so every key of the account, narrowed by conditions where AWS allows.
        "key": [arn("kms", "key/*", region="*", account=account)],
        "ssm": [arn("ssm", f"parameter/{prefix}/{environment}/*", region="*", account=account)],
        "public-parameter": [arn("ssm", "parameter/aws/service/deeplearning/*", region="*", account="")],
        "document": _names(account, "ssm", "document", DOCUMENT_NAMES, end),
        "association": [
            *_names(account, "ssm", "document", DOCUMENT_NAMES, end),
            arn("ssm", "association/*", region="*", account=account),
            arn("ec2", "instance/*", region="*", account=account),
        ],
        # What RunInstances and the template/security group calls touch: the environment's own template and group
        # by name, and in this account the instances, volumes and interfaces they create, the subnets and VPCs
        # they use; AWS's images (no account) and this account's.
        "hosts": [
            arn("ec2", "launch-template/*", region="*", account=account),
            arn("ec2", "security-group/*", region="*", account=account),
            arn("ec2", "security-group-rule/*", region="*", account=account),
            arn("ec2", "vpc/*", region="*", account=account),
            arn("ec2", "subnet/*", region="*", account=account),
            arn("ec2", "network-interface/*", region="*", account=account),
            arn("ec2", "volume/*", region="*", account=account),
            arn("ec2", "instance/*", region="*", account=account),
            arn("ec2", "image/*", region="*", account=""),
        ],
        # Exact names; the uuid Auto Scaling assigns at creation is wildcarded (modules/fleet.py group_arn).
        "fleet": [
            arn("autoscaling", f"autoScalingGroup:*:autoScalingGroupName/{base}{end}", region="*", account=account)
            for base in FLEET_NAMES
        ],
        "service-linked-role": [arn("iam", f"role/{AUTOSCALING_SERVICE_ROLE}", region="", account=account)],
        "bucket": [artifacts, logs],
        "object": [f"{artifacts}/*", f"{logs}/*"],
        "adapter": [f"{artifacts}/adapter/*"],
    }
