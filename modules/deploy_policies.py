"""The plan role's and the deploy role's policies for one environment, and how the deploy role's is split across IAM's
size limits. The actions are modules/deploy_actions.py's, the resources modules/deploy_resources.py's; the rules they
keep (exact role names, the boundary, no self-escalation) are in modules/github_oidc.py's docstring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modules.deploy_actions import (
    ALARM_READ,
    ALARM_WRITE,
    ASSOCIATION_READ,
    ASSOCIATION_WRITE,
    AUTOSCALING_SERVICE,
    BOUNDARY_REMOVAL,
    BOUNDARY_REQUIRED,
    BUCKET_READ,
    BUCKET_WRITE,
    CALLER_POLICY_READ,
    CALLER_POLICY_WRITE,
    DASHBOARD_READ,
    DASHBOARD_WRITE,
    DOCUMENT_READ,
    DOCUMENT_WRITE,
    DYNAMODB_READ,
    DYNAMODB_WRITE,
    EVENT_BUS_READ,
    EVENT_BUS_WRITE,
    EVENTS_READ,
    EVENTS_WRITE,
    FLEET_WRITE,
    HOST_CHANGE,
    HOST_CREATE,
    HOST_TAG_ON_CREATE,
    IAM_READ,
    KEY_CHANGE,
    KEY_CREATE,
    KEY_DELETION,
    KEY_POLICY_WRITES,
    KEY_READ,
    KEY_ROTATION_ON,
    KEY_TAG_ON_CREATE,
    LAMBDA_READ,
    LAMBDA_WRITE,
    LAYER_WRITE,
    LOGS_READ,
    LOGS_WRITE,
    MAPPING_CREATE,
    MAPPING_READ,
    MAPPING_TAGGING,
    MAPPING_TAGS_READ,
    MAPPING_WRITE,
    OBJECT_READ,
    OBJECT_WRITE,
    PASS_ROLE,
    PROFILE_WRITE,
    PUBLIC_PARAMETER_READ,
    ROLE_TAGGING,
    ROLE_WRITE,
    SERVICE_LINKED_ROLE_ACTIONS,
    SQS_READ,
    SQS_WRITE,
    SSM_READ,
    SSM_WRITE,
    STATE_BUCKET_READ,
    STATE_OBJECT_READ,
    STATE_OBJECT_WRITE,
    SUBSCRIPTION_PROTOCOL,
    TOPIC_READ,
    TOPIC_SUBSCRIBE,
    TOPIC_WRITE,
    UNSCOPED_READ,
    WEBHOOK_SECRET_READ,
    WEBHOOK_SECRET_WRITE,
)
from modules.deploy_resources import DEFAULT_TAG, GITHUB_OIDC_HOST, service_resources
from modules.iam import Statement, arn, boundary_arn, boundary_name, policy
from modules.observability import KEY_DELETION_DAYS

TO_LAMBDA = {"StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}}

# IAM quotas (IAM User Guide, reference_iam-quotas): a role's inline policies together hold at most 10,240
# characters, one managed policy at most 6,144 (whitespace not counted), and a role takes up to 10 managed policies.
# The deploy policy outgrows the first, so statements go into managed policies of their own, `<deploy role>-<part>`,
# made by bootstrap and attached to the deploy role only; the deploy role can never change them (NoSelfEscalation).
# Which statement goes where changes nothing IAM allows (the union of a role's policies is what counts).
# "functions": the Lambda functions, their logs and schedule, the API's layer and caller policies; "hosts": the GPU
# hosts; "events": the events layer and the alarm stack.
INLINE_LIMIT, MANAGED_LIMIT = 10_240, 6_144
MANAGED_PARTS: dict[str, frozenset[str]] = {
    "functions": frozenset(
        {
            "Lambda",
            "Logs",
            "Schedules",
            "PassOrchestratorRoleToLambda",
            "Layers",
            "CallerPolicies",
        }
    ),
    "hosts": frozenset(
        {
            "PublicParameters",
            "BootstrapDocument",
            "BootstrapAssociation",
            "GpuHostsCreate",
            "GpuHostsTagOnCreate",
            "GpuHostsOfThisEnvironment",
            "GpuFleet",
        }
    ),
    "events": frozenset(
        {
            "Alarms",
            "PassEventRolesToLambda",
            "EventBus",
            "WebhookSecret",
            "EventSourceMappingCreate",
            "EventSourceMappings",
            "EventSourceMappingTags",
            "AlarmTopic",
            "AlarmSubscriptions",
            "AlarmKeyCreate",
            "AlarmKeyTagOnCreate",
            "AlarmKeyRead",
            "AlarmKeyOfThisEnvironment",
            "AlarmKeyDeletion",
            "NoKeyLockoutBypass",
            "Dashboard",
        }
    ),
}
MANAGED_DESCRIPTIONS = {
    "functions": "the functions, their logs and schedule, the API's layer and caller policies",
    "hosts": "the GPU hosts",
    "events": "the events layer and the alarms, their topic, key and dashboard",
}


def split(document: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """`document` as (the inline part, {part: its managed part}): the statements of each MANAGED_PARTS entry go to
    that part. IAM evaluates the union of a role's policies, so together they allow and deny exactly what `document`
    does."""
    statements = list(document["Statement"])
    managed_sids = frozenset().union(*MANAGED_PARTS.values())
    inline = [st for st in statements if st.get("Sid") not in managed_sids]
    parts = {
        part: {**document, "Statement": [st for st in statements if st.get("Sid") in sids]}
        for part, sids in MANAGED_PARTS.items()
    }
    return {**document, "Statement": inline}, {part: doc for part, doc in parts.items() if doc["Statement"]}


def _statement(sid: str, actions: Sequence[str], resources: Sequence[str]) -> Statement:
    return Statement(tuple(actions), tuple(resources), sid=sid)


def _ours(environment: str) -> dict[str, dict[str, str]]:
    """The resource carries this environment's default tag (aws:ResourceTag)."""
    return {"StringEquals": {f"aws:ResourceTag/{DEFAULT_TAG}": environment}}


def _events_reads(res: Mapping[str, list[str]], environment: str) -> list[Statement]:
    """What a plan reads of the events and alarm stacks' own resources (the functions, queues, roles, log groups and
    alarms are in the statements above, by name)."""
    to_our_functions = {"ArnLike": {"lambda:FunctionArn": res["event-functions"]}}
    return [
        _statement("EventBus", EVENT_BUS_READ, res["bus"]),
        _statement("WebhookSecret", WEBHOOK_SECRET_READ, res["secret"]),
        Statement(MAPPING_READ, tuple(res["mapping"]), to_our_functions, sid="EventSourceMappings"),
        _statement("EventSourceMappingTags", MAPPING_TAGS_READ, res["mapping"]),
        _statement("AlarmTopic", TOPIC_READ, res["topic"]),
        Statement(KEY_READ, tuple(res["key"]), _ours(environment), sid="AlarmKeyRead"),
        _statement("Dashboard", DASHBOARD_READ, res["dashboard"]),
    ]


def plan_policy(*, account: str, environment: str, state_bucket_arn: str, prefix: str) -> dict[str, Any]:
    """Read-only: refresh every resource of the environment and read its state (plans run with -lock=false)."""
    res = service_resources(account, environment, prefix)
    return policy(
        [
            _statement("Queues", SQS_READ, res["sqs"]),
            _statement("TaskStore", DYNAMODB_READ, res["dynamodb"]),
            _statement("Iam", IAM_READ, res["iam"]),
            _statement("Lambda", LAMBDA_READ, res["lambda"]),
            _statement("Layers", LAMBDA_READ, res["layer"]),
            _statement("CallerPolicies", CALLER_POLICY_READ, res["caller-policy"]),
            _statement("Logs", LOGS_READ, res["logs"]),
            _statement("Alarms", ALARM_READ, res["cloudwatch"]),
            _statement("Schedules", EVENTS_READ, res["events"]),
            *_events_reads(res, environment),
            _statement("Parameters", SSM_READ, res["ssm"]),
            _statement("PublicParameters", PUBLIC_PARAMETER_READ, res["public-parameter"]),
            _statement("BootstrapDocument", DOCUMENT_READ, res["document"]),
            _statement("BootstrapAssociation", ASSOCIATION_READ, res["association"]),
            _statement("ArtifactsBucket", BUCKET_READ, res["bucket"]),
            # Only the adapter bundles Terraform manages: task inputs and results stay unreadable from a pull request.
            _statement("AdapterBundles", OBJECT_READ, res["adapter"]),
            _statement("DescribeOnly", UNSCOPED_READ, ["*"]),
            _statement("StateBucket", STATE_BUCKET_READ, [state_bucket_arn]),
            _statement("StateObjects", STATE_OBJECT_READ, [f"{state_bucket_arn}/{environment}/*"]),
        ]
    )


def _events_layer(res: Mapping[str, list[str]]) -> list[Statement]:
    """The events stack's bus, signing secret and event source mappings (modules/deploy_actions.py says why each is
    scoped as it is), and its two roles, passed to Lambda only."""
    to_our_functions = {"ArnLike": {"lambda:FunctionArn": res["event-functions"]}}
    return [
        Statement(PASS_ROLE, tuple(res["event-roles"]), TO_LAMBDA, sid="PassEventRolesToLambda"),
        _statement("EventBus", EVENT_BUS_READ + EVENT_BUS_WRITE, res["bus"]),
        _statement("WebhookSecret", WEBHOOK_SECRET_READ + WEBHOOK_SECRET_WRITE, res["secret"]),
        Statement(MAPPING_CREATE, ("*",), to_our_functions, sid="EventSourceMappingCreate"),
        Statement(MAPPING_READ + MAPPING_WRITE, tuple(res["mapping"]), to_our_functions, sid="EventSourceMappings"),
        _statement("EventSourceMappingTags", MAPPING_TAGS_READ + MAPPING_TAGGING, res["mapping"]),
    ]


def _alarm_outputs(res: Mapping[str, list[str]], environment: str) -> list[Statement]:
    """The alarm stack's topic and its subscriptions, the topic's KMS key and the dashboard."""
    key, tagged_on_request = tuple(res["key"]), {"StringEquals": {f"aws:RequestTag/{DEFAULT_TAG}": environment}}
    longest_wait = {"NumericGreaterThanEquals": {"kms:ScheduleKeyDeletionPendingWindowInDays": str(KEY_DELETION_DAYS)}}
    bypass = {"Bool": {"kms:BypassPolicyLockoutSafetyCheck": "true"}}
    return [
        _statement("AlarmTopic", TOPIC_READ + TOPIC_WRITE, res["topic"]),
        Statement(
            TOPIC_SUBSCRIBE,
            tuple(res["topic"]),
            {"StringEquals": {"sns:Protocol": SUBSCRIPTION_PROTOCOL}},
            sid="AlarmSubscriptions",
        ),
        Statement(KEY_CREATE, ("*",), tagged_on_request, sid="AlarmKeyCreate"),
        Statement(KEY_TAG_ON_CREATE, key, tagged_on_request, sid="AlarmKeyTagOnCreate"),
        _statement("AlarmKeyRead", KEY_READ + KEY_ROTATION_ON, key),
        Statement(KEY_CHANGE, key, _ours(environment), sid="AlarmKeyOfThisEnvironment"),
        Statement(KEY_DELETION, key, {**_ours(environment), **longest_wait}, sid="AlarmKeyDeletion"),
        Statement(KEY_POLICY_WRITES, ("*",), bypass, sid="NoKeyLockoutBypass", effect="Deny"),
        _statement("Dashboard", DASHBOARD_READ + DASHBOARD_WRITE, res["dashboard"]),
    ]


def deploy_policy(*, account: str, environment: str, state_bucket_arn: str, prefix: str) -> dict[str, Any]:
    """Plan and apply of one environment's stacks; its state keys only (<env>/*), with S3-native locking. IAM
    writes only on roles carrying the environment's boundary (modules/github_oidc.py docstring)."""
    res = service_resources(account, environment, prefix)
    boundary = boundary_arn(account=account, environment=environment, prefix=prefix)
    with_boundary = {"StringEquals": {"iam:PermissionsBoundary": boundary}}
    protected = [arn("iam", f"role/{prefix}-{kind}-*", region="", account=account) for kind in ("deploy", "plan")]
    protected.append(arn("iam", f"policy/{prefix}-deploy-*", region="", account=account))  # its own managed parts
    protected.append(arn("iam", f"oidc-provider/{GITHUB_OIDC_HOST}", region="", account=account))
    # Every environment's boundary (an account may hold several environments): bootstrap's, never CI's to change.
    protected.append(arn("iam", f"policy/{boundary_name('*', prefix)}", region="", account=account))
    return policy(
        [
            _statement("Queues", SQS_READ + SQS_WRITE, res["sqs"]),
            _statement("TaskStore", DYNAMODB_READ + DYNAMODB_WRITE, res["dynamodb"]),
            _statement("IamRead", IAM_READ, res["iam"]),
            Statement(ROLE_WRITE, tuple(res["role"]), with_boundary, sid="BoundedRoles"),
            _statement("RoleTags", ROLE_TAGGING, res["role"]),
            _statement("InstanceProfile", PROFILE_WRITE, res["profile"]),
            Statement(PASS_ROLE, tuple(res["shutdown-role"]), TO_LAMBDA, sid="PassShutdownRoleToLambda"),
            Statement(
                PASS_ROLE,
                tuple(res["instance-role"]),
                {"StringEqualsIfExists": {"iam:PassedToService": "ec2.amazonaws.com"}},
                sid="PassInstanceRoleToProfile",
            ),
            Statement(PASS_ROLE, tuple(res["orchestrator-role"]), TO_LAMBDA, sid="PassOrchestratorRoleToLambda"),
            _statement("Lambda", LAMBDA_READ + LAMBDA_WRITE, res["lambda"]),
            _statement("Layers", LAMBDA_READ + LAYER_WRITE, res["layer"]),
            _statement("CallerPolicies", CALLER_POLICY_READ + CALLER_POLICY_WRITE, res["caller-policy"]),
            _statement("Logs", LOGS_READ + LOGS_WRITE, res["logs"]),
            _statement("Alarms", ALARM_READ + ALARM_WRITE, res["cloudwatch"]),
            _statement("Schedules", EVENTS_READ + EVENTS_WRITE, res["events"]),
            *_events_layer(res),
            *_alarm_outputs(res, environment),
            _statement("Parameters", SSM_READ + SSM_WRITE, res["ssm"]),
            _statement("PublicParameters", PUBLIC_PARAMETER_READ, res["public-parameter"]),
            _statement("BootstrapDocument", DOCUMENT_READ + DOCUMENT_WRITE, res["document"]),
            _statement("BootstrapAssociation", ASSOCIATION_READ + ASSOCIATION_WRITE, res["association"]),
            _statement("GpuHostsCreate", HOST_CREATE, res["hosts"]),
            Statement(
                HOST_TAG_ON_CREATE,
                tuple(res["hosts"]),
                {"StringEquals": {"ec2:CreateAction": list(HOST_CREATE)}},
                sid="GpuHostsTagOnCreate",
            ),
            Statement(HOST_CHANGE, tuple(res["hosts"]), _ours(environment), sid="GpuHostsOfThisEnvironment"),
            _statement("GpuFleet", FLEET_WRITE, res["fleet"]),
            Statement(
                SERVICE_LINKED_ROLE_ACTIONS,
                tuple(res["service-linked-role"]),
                {"StringEquals": {"iam:AWSServiceName": AUTOSCALING_SERVICE}},
                sid="AutoScalingServiceLinkedRole",
            ),
            _statement("ArtifactsBucket", BUCKET_READ + BUCKET_WRITE, res["bucket"]),
            _statement("ArtifactsObjects", OBJECT_READ + OBJECT_WRITE, res["object"]),
            _statement("DescribeOnly", UNSCOPED_READ, ["*"]),
            _statement("StateBucket", STATE_BUCKET_READ, [state_bucket_arn]),
            _statement("StateObjects", STATE_OBJECT_READ + STATE_OBJECT_WRITE, [f"{state_bucket_arn}/{environment}/*"]),
            # Belt and braces, whatever an Allow above (or a later edit) says: no role without this boundary, no
            # boundary removed, and no widening of the CI roles, the OIDC provider or any boundary policy.
            Statement(
                BOUNDARY_REQUIRED,
                ("*",),
                {"StringNotEquals": {"iam:PermissionsBoundary": boundary}},
                sid="NoRoleWithoutBoundary",
                effect="Deny",
            ),
            Statement(BOUNDARY_REMOVAL, ("*",), sid="BoundaryStays", effect="Deny"),
            Statement("iam:*", tuple(protected), sid="NoSelfEscalation", effect="Deny"),
        ]
    )
