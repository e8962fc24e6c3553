"""The deploy-access construct, synthesized for real: exact trust conditions, one role pair per environment, no
wildcard principal, the action lists exactly as the module's constants say, and IAM writes only on the exactly named
runtime roles while they carry the environment's boundary (tests/test_deploy_escalation.py runs the same policy
against an IAM-enforcing server)."""

from __future__ import annotations

import json
from typing import Any

import cdktf
import pytest
from cdktf import App, TerraformStack

# First: importing `modules` registers the provider package without running its 12 s __init__.
from modules import deploy_actions as act
from modules import deploy_resources as names
from modules import github_oidc as gh
from modules.deploy_policies import MANAGED_PARTS

REPO = "example-org/gpu-orchestrator"
STATE = "arn:aws:s3:::gpu-orchestrator-tfstate-111122223333-us-east-1"
ENVS = ["dev", "staging", "prod"]


def synth(**overrides: Any) -> dict[str, Any]:
    # Imported here, after `modules`, so that import sorting can never move it ahead of the registration.
    from cdktf_cdktf_provider_aws.provider import AwsProvider

    app = cdktf.Testing.app()
    stack = TerraformStack(app, "bootstrap")
    AwsProvider(stack, "aws", region="us-east-1")
    kwargs: dict[str, Any] = {"repository": REPO, "environments": ENVS, "state_bucket_arn": STATE, **overrides}
    access = gh.GithubDeployAccess(stack, "github", **kwargs)
    synthesized: dict[str, Any] = json.loads(cdktf.Testing.synth(stack))
    synthesized["_access"] = access
    return synthesized


@pytest.fixture(scope="module")
def out() -> dict[str, Any]:
    return synth()


def resources(out: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return dict(out["resource"].get(kind, {}))


def roles_by_name(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in resources(out, "aws_iam_role").values()}


def policy_of(out: dict[str, Any], role_name: str) -> dict[str, Any]:
    """Everything the role is allowed: its inline policy and the managed one attached to it (the deploy role's
    statements for the API and the GPU hosts, split off for IAM's inline size limit)."""
    roles = resources(out, "aws_iam_role")
    role_key = next(k for k, r in roles.items() if r["name"] == role_name)
    (policy,) = [p for p in resources(out, "aws_iam_role_policy").values() if role_key in p["role"]]
    document: dict[str, Any] = json.loads(policy["policy"])
    managed = {f"${{aws_iam_policy.{k}.arn}}": p for k, p in resources(out, "aws_iam_policy").items()}
    for attached in resources(out, "aws_iam_role_policy_attachment").values():
        if role_key in attached["role"]:
            document["Statement"] += json.loads(managed[attached["policy_arn"]]["policy"])["Statement"]
    return document


def statement(document: dict[str, Any], sid: str) -> dict[str, Any]:
    (found,) = [s for s in document["Statement"] if s["Sid"] == sid]
    return dict(found)


def test_one_openid_provider_for_github_with_the_sts_audience(out: dict[str, Any]) -> None:
    (provider,) = resources(out, "aws_iam_openid_connect_provider").values()
    assert provider["url"] == "https://token.actions.githubusercontent.com"
    assert provider["client_id_list"] == ["sts.amazonaws.com"]


def test_a_deploy_role_and_a_plan_role_per_environment_and_nothing_else(out: dict[str, Any]) -> None:
    expected = {f"gpu-orchestrator-{kind}-{env}" for env in ENVS for kind in ("deploy", "plan")}
    assert set(roles_by_name(out)) == expected
    assert len(resources(out, "aws_iam_role_policy")) == len(expected)
    access = out["_access"]
    assert set(access.role_arns) == set(ENVS) == set(access.plan_role_arns)
    assert access.provider_arn.startswith("${TfToken[")  # a reference to the created provider, not a literal


@pytest.mark.parametrize("env", ENVS)
def test_trust_is_exactly_this_repository_and_github_environment(out: dict[str, Any], env: str) -> None:
    roles = roles_by_name(out)
    for role_name, github_env in (
        (f"gpu-orchestrator-deploy-{env}", env),
        (f"gpu-orchestrator-plan-{env}", f"{env}-plan"),
    ):
        trust = json.loads(roles[role_name]["assume_role_policy"])
        (only,) = trust["Statement"]
        assert only["Effect"] == "Allow"
        assert only["Action"] == "sts:AssumeRoleWithWebIdentity"
        (provider_key,) = resources(out, "aws_iam_openid_connect_provider")
        assert only["Principal"] == {"Federated": f"${{aws_iam_openid_connect_provider.{provider_key}.arn}}"}
        assert only["Condition"] == {
            "StringEquals": {
                "token.actions.githubusercontent.com:aud": "sts.amazonaws.com",
                "token.actions.githubusercontent.com:sub": f"repo:{REPO}:environment:{github_env}",
            }
        }


def test_no_policy_anywhere_has_a_wildcard_principal_or_a_like_condition(out: dict[str, Any]) -> None:
    text = json.dumps(out["resource"])
    for role in resources(out, "aws_iam_role").values():
        for st in json.loads(role["assume_role_policy"])["Statement"]:
            assert st["Principal"] != "*" and "*" not in json.dumps(st["Principal"])
            assert set(st["Condition"]) == {"StringEquals"}
    assert "StringLike" not in text
    assert "NotPrincipal" not in text and "NotAction" not in text


def test_deploy_policy_actions_are_the_module_constants(out: dict[str, Any]) -> None:
    doc = policy_of(out, "gpu-orchestrator-deploy-staging")
    expected = {
        "Queues": act.SQS_READ + act.SQS_WRITE,
        "TaskStore": act.DYNAMODB_READ + act.DYNAMODB_WRITE,
        "IamRead": act.IAM_READ,
        "BoundedRoles": act.ROLE_WRITE,
        "RoleTags": act.ROLE_TAGGING,
        "InstanceProfile": act.PROFILE_WRITE,
        "PassShutdownRoleToLambda": act.PASS_ROLE,
        "PassInstanceRoleToProfile": act.PASS_ROLE,
        "PassOrchestratorRoleToLambda": act.PASS_ROLE,
        "Lambda": act.LAMBDA_READ + act.LAMBDA_WRITE,
        "Layers": act.LAMBDA_READ + act.LAYER_WRITE,
        "CallerPolicies": act.CALLER_POLICY_READ + act.CALLER_POLICY_WRITE,
        "Logs": act.LOGS_READ + act.LOGS_WRITE,
        "Alarms": act.ALARM_READ + act.ALARM_WRITE,
        "Schedules": act.EVENTS_READ + act.EVENTS_WRITE,
        "Parameters": act.SSM_READ + act.SSM_WRITE,
        "PublicParameters": act.PUBLIC_PARAMETER_READ,
        "BootstrapDocument": act.DOCUMENT_READ + act.DOCUMENT_WRITE,
        "BootstrapAssociation": act.ASSOCIATION_READ + act.ASSOCIATION_WRITE,
        "GpuHostsCreate": act.HOST_CREATE,
        "GpuHostsTagOnCreate": act.HOST_TAG_ON_CREATE,
        "GpuHostsOfThisEnvironment": act.HOST_CHANGE,
        "GpuFleet": act.FLEET_WRITE,
        "AutoScalingServiceLinkedRole": act.SERVICE_LINKED_ROLE_ACTIONS,
        "ArtifactsBucket": act.BUCKET_READ + act.BUCKET_WRITE,
        "ArtifactsObjects": act.OBJECT_READ + act.OBJECT_WRITE,
        "DescribeOnly": act.UNSCOPED_READ,
        "StateBucket": act.STATE_BUCKET_READ,
        "StateObjects": act.STATE_OBJECT_READ + act.STATE_OBJECT_WRITE,
        # The events stack and the alarm stack.
        "PassEventRolesToLambda": act.PASS_ROLE,
        "EventBus": act.EVENT_BUS_READ + act.EVENT_BUS_WRITE,
        "WebhookSecret": act.WEBHOOK_SECRET_READ + act.WEBHOOK_SECRET_WRITE,
        "EventSourceMappingCreate": act.MAPPING_CREATE,
        "EventSourceMappings": act.MAPPING_READ + act.MAPPING_WRITE,
        "EventSourceMappingTags": act.MAPPING_TAGS_READ + act.MAPPING_TAGGING,
        "AlarmTopic": act.TOPIC_READ + act.TOPIC_WRITE,
        "AlarmSubscriptions": act.TOPIC_SUBSCRIBE,
        "AlarmKeyCreate": act.KEY_CREATE,
        "AlarmKeyTagOnCreate": act.KEY_TAG_ON_CREATE,
        "AlarmKeyRead": act.KEY_READ + act.KEY_ROTATION_ON,
        "AlarmKeyOfThisEnvironment": act.KEY_CHANGE,
        "AlarmKeyDeletion": act.KEY_DELETION,
        "Dashboard": act.DASHBOARD_READ + act.DASHBOARD_WRITE,
    }
    allows = {s["Sid"]: s for s in doc["Statement"] if s["Effect"] == "Allow"}
    assert {sid: sorted(s["Action"]) for sid, s in allows.items()} == {k: sorted(v) for k, v in expected.items()}
    # "*" as a resource only where AWS supports nothing narrower: the read-only Describe calls, and the two creates
    # that have no resource type (SAR), each held by a condition to this environment's functions or tag.
    for sid, st in allows.items():
        if "*" in st["Resource"]:
            assert sid in ("DescribeOnly", "EventSourceMappingCreate", "AlarmKeyCreate"), sid
            assert sid == "DescribeOnly" or "staging" in json.dumps(st["Condition"]), sid
    assert all(a.split(":")[1].startswith(("Describe", "List", "Get")) for a in act.UNSCOPED_READ)
    # Neither the secret's value nor any use of the key: Terraform creates the secret empty and never encrypts.
    granted = {a for st in allows.values() for a in st["Action"]}
    assert not granted & {"secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue", "kms:Decrypt"}
    assert not any(a.startswith(("kms:Encrypt", "kms:GenerateDataKey", "kms:CreateGrant")) for a in granted)
    assert "dynamodb:DeleteTable" not in json.dumps(doc)


def test_iam_writes_need_the_boundary_and_it_can_never_go(out: dict[str, Any]) -> None:
    """Every write that changes what a runtime role may do or who may assume it is allowed only with the boundary,
    and refused (explicit Deny) without it; removing a boundary, attaching or editing a managed policy: never."""
    doc = policy_of(out, "gpu-orchestrator-deploy-staging")
    account = _account(out)
    boundary = f"arn:aws:iam::{account}:policy/gpu-orchestrator-boundary-staging"
    bounded = statement(doc, "BoundedRoles")
    assert bounded["Condition"] == {"StringEquals": {"iam:PermissionsBoundary": boundary}}
    required = statement(doc, "NoRoleWithoutBoundary")
    assert required["Effect"] == "Deny" and required["Resource"] == ["*"]
    assert required["Condition"] == {"StringNotEquals": {"iam:PermissionsBoundary": boundary}}
    assert sorted(required["Action"]) == sorted(act.BOUNDARY_REQUIRED)
    stays = statement(doc, "BoundaryStays")
    assert stays["Effect"] == "Deny" and stays["Action"] == ["iam:DeleteRolePermissionsBoundary"]
    assert stays["Resource"] == ["*"]
    # Managed policies: only the callers' (the API's two, the canvas's), by their exact names, never attached.
    callers = statement(doc, "CallerPolicies")
    assert callers["Resource"] == [
        f"arn:aws:iam::{account}:policy/gpu-orchestrator-{kind}-staging" for kind in ("admin", "canvas", "submit")
    ]
    allowed = {
        a for st in doc["Statement"] if st["Effect"] == "Allow" and st["Sid"] != "CallerPolicies" for a in st["Action"]
    }
    never = {
        "iam:AttachRolePolicy",
        "iam:DeleteRolePermissionsBoundary",
        "iam:CreatePolicy",
        "iam:CreatePolicyVersion",
        "iam:DeletePolicy",
        "iam:DeletePolicyVersion",
        "iam:SetDefaultPolicyVersion",
        "iam:PutUserPolicy",
        "iam:CreateUser",
        "iam:CreateAccessKey",
    }
    assert not allowed & never
    assert not any(a in ("iam:*", "*") or a.startswith("sts:") for a in allowed)
    # The boundary key is one IAM evaluates for each of these actions (Service Authorization Reference): an action
    # without it would fail StringEquals always (no apply) or pass StringNotEquals always.
    assert set(act.ROLE_WRITE) <= set(act.PERMISSIONS_BOUNDARY_ACTIONS)
    assert set(act.BOUNDARY_REQUIRED) <= set(act.PERMISSIONS_BOUNDARY_ACTIONS)
    no_escalation = statement(doc, "NoSelfEscalation")
    assert no_escalation["Effect"] == "Deny" and no_escalation["Action"] == "iam:*"
    assert f"arn:aws:iam::{account}:policy/gpu-orchestrator-boundary-*" in no_escalation["Resource"]


def test_the_enforcing_server_models_the_boundary_key_for_the_same_actions() -> None:
    from localaws import enforce

    modelled = enforce._CARRIED_BOUNDARY_ACTIONS | {"CreateRole", "PutRolePermissionsBoundary"}
    assert modelled == {a.removeprefix("iam:") for a in act.PERMISSIONS_BOUNDARY_ACTIONS}


def _account(out: dict[str, Any]) -> str:
    (identity_key,) = out["data"]["aws_caller_identity"]
    return f"${{data.aws_caller_identity.{identity_key}.account_id}}"


def test_deploy_policy_scopes_resources_to_our_names_and_this_environment(out: dict[str, Any]) -> None:
    doc = policy_of(out, "gpu-orchestrator-deploy-staging")
    account = _account(out)
    assert statement(doc, "Queues")["Resource"] == [
        f"arn:aws:sqs:*:{account}:gpu-task-events-failed*-staging",
        f"arn:aws:sqs:*:{account}:gpu-task-webhooks*-staging",
        f"arn:aws:sqs:*:{account}:gpu_tasks_queue*-staging",
        f"arn:aws:sqs:*:{account}:shutdown-gpu-lambda-dlq*-staging",
    ]
    assert statement(doc, "TaskStore")["Resource"] == [
        f"arn:aws:dynamodb:*:{account}:table/gpu_hosts*-staging",
        f"arn:aws:dynamodb:*:{account}:table/task_store*-staging",
    ]
    assert statement(doc, "Parameters")["Resource"] == [f"arn:aws:ssm:*:{account}:parameter/gpu-orchestrator/staging/*"]
    # Bucket names are global: exact names, carrying this account's id, never `...-staging-*`.
    artifacts = f"arn:aws:s3:::gpu-orchestrator-artifacts-staging-{account}"
    assert statement(doc, "ArtifactsBucket")["Resource"] == [artifacts, f"{artifacts}-logs"]
    assert statement(doc, "ArtifactsObjects")["Resource"] == [f"{artifacts}-logs/*", f"{artifacts}/*"]
    assert statement(doc, "StateBucket")["Resource"] == [STATE]
    assert statement(doc, "StateObjects")["Resource"] == [f"{STATE}/staging/*"]
    # IAM: exact names only, so no new role or profile can be made by a prefix.
    roles = sorted(f"arn:aws:iam::{account}:role/{name}-staging" for name in names.ROLE_NAMES)
    profile = f"arn:aws:iam::{account}:instance-profile/gpu-instance-profile-staging"
    assert statement(doc, "BoundedRoles")["Resource"] == roles
    assert statement(doc, "RoleTags")["Resource"] == roles
    assert statement(doc, "InstanceProfile")["Resource"] == [profile]
    assert statement(doc, "IamRead")["Resource"] == sorted([*roles, profile])
    to_lambda = statement(doc, "PassShutdownRoleToLambda")
    assert to_lambda["Resource"] == [f"arn:aws:iam::{account}:role/lambda-gpu-shutdown-role-staging"]
    assert to_lambda["Condition"] == {"StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}}
    to_lambda = statement(doc, "PassEventRolesToLambda")
    assert to_lambda["Resource"] == [
        f"arn:aws:iam::{account}:role/{name}-staging" for name in ("task-events-role", "task-webhooks-role")
    ]
    assert to_lambda["Condition"] == {"StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}}
    to_profile = statement(doc, "PassInstanceRoleToProfile")
    assert to_profile["Resource"] == [f"arn:aws:iam::{account}:role/gpu-instance-role-staging"]
    assert to_profile["Condition"] == {"StringEqualsIfExists": {"iam:PassedToService": "ec2.amazonaws.com"}}
    for st in doc["Statement"]:
        if st["Sid"].startswith(("Iam", "Bounded", "Role", "Instance", "Pass")):
            assert all("*" not in arn for arn in st["Resource"]), st
    no_escalation = statement(doc, "NoSelfEscalation")
    assert no_escalation["Effect"] == "Deny" and no_escalation["Action"] == "iam:*"
    assert f"arn:aws:iam::{account}:role/gpu-orchestrator-deploy-*" in no_escalation["Resource"]
    assert f"arn:aws:iam::{account}:oidc-provider/token.actions.githubusercontent.com" in no_escalation["Resource"]
    # The fleet's group by its exact name (its uuid wildcarded), and Auto Scaling's own service-linked role, for that
    # service only: the one role created without the boundary, which only Auto Scaling can assume.
    assert statement(doc, "GpuFleet")["Resource"] == [
        f"arn:aws:autoscaling:*:{account}:autoScalingGroup:*:autoScalingGroupName/gpu-fleet-staging"
    ]
    linked = statement(doc, "AutoScalingServiceLinkedRole")
    assert linked["Resource"] == [
        f"arn:aws:iam::{account}:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling"
    ]
    assert linked["Condition"] == {"StringEquals": {"iam:AWSServiceName": "autoscaling.amazonaws.com"}}
    # Nothing of another environment: every scoped ARN names staging (the state bucket is shared, its keys are not),
    # but where EC2 and SSM have no names to scope by: creating new hosts (RunInstances, a template, a group; tags
    # only on create), changing only what carries staging's environment tag, AWS's own public AMI parameter, an
    # association, authorized on the instances it targets and on its generated id, and the account's one Auto
    # Scaling service-linked role; and where an ARN holds only an id AWS assigns and AWS gives no condition to hold
    # it to staging's: the tags of an event source mapping (no lambda:FunctionArn on ListTags/TagResource) and the
    # calls on the alarm key that come within seconds of its creation (reads and turning rotation on), sooner than
    # KMS may authorize by its tags.
    unnamed = {
        "GpuHostsCreate",
        "GpuHostsTagOnCreate",
        "PublicParameters",
        "BootstrapAssociation",
        "AutoScalingServiceLinkedRole",
        "EventSourceMappingTags",
        "AlarmKeyRead",
    }
    assert statement(doc, "GpuHostsOfThisEnvironment")["Condition"] == {
        "StringEquals": {"aws:ResourceTag/environment": "staging"}
    }
    for st in doc["Statement"]:
        for arn in st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]:
            scoped = "staging" in arn or "staging" in json.dumps(st.get("Condition", {}))
            assert arn in ("*", STATE) or scoped or st["Effect"] == "Deny" or st["Sid"] in unnamed, (st["Sid"], arn)
            assert "dev" not in arn.replace("/aws/", "") and "prod" not in arn, (st["Sid"], arn)


def test_event_source_mappings_and_the_alarm_key_are_held_to_this_environment(out: dict[str, Any]) -> None:
    """The conditions decide, as IAM evaluates them (localaws.iam_eval.evaluate): a mapping only for staging's two
    functions; the key created only with staging's tag, changed and deleted only while it carries it, deleted only
    with the longest wait, and never written past the lockout check."""
    from localaws.iam_eval import ALLOW, DENY, evaluate

    doc = policy_of(out, "gpu-orchestrator-deploy-staging")
    account, region = _account(out), "us-east-1"
    function = f"arn:aws:lambda:{region}:{account}:function:"
    mapping = f"arn:aws:lambda:{region}:{account}:event-source-mapping:0b6a1f4e-8c1d-4f36-9d2a-2f1c3e5a7b9d"
    for name, allowed in (
        ("gpu-task-events-staging", True),
        ("gpu-task-webhooks-staging", True),
        ("gpu-task-events-prod", False),
        ("shutdown-gpu-lambda-staging", False),  # a mapping would invoke the controller with any source's records
    ):
        context = {"lambda:FunctionArn": function + name}
        for action, resource in (
            ("lambda:CreateEventSourceMapping", "*"),
            ("lambda:UpdateEventSourceMapping", mapping),
            ("lambda:DeleteEventSourceMapping", mapping),
        ):
            assert (evaluate([doc], action, resource, context) == ALLOW) is allowed, (name, action)
    key = f"arn:aws:kms:{region}:{account}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    ours, theirs = {"aws:ResourceTag/environment": "staging"}, {"aws:ResourceTag/environment": "prod"}
    assert evaluate([doc], "kms:CreateKey", "*", {"aws:RequestTag/environment": "staging"}) == ALLOW
    assert evaluate([doc], "kms:CreateKey", "*", {"aws:RequestTag/environment": "prod"}) != ALLOW
    assert evaluate([doc], "kms:CreateKey", "*") != ALLOW  # untagged
    assert evaluate([doc], "kms:TagResource", key, {"aws:RequestTag/environment": "staging"}) == ALLOW
    for action in ("kms:PutKeyPolicy", "kms:DisableKeyRotation", "kms:UpdateKeyDescription", "kms:UntagResource"):
        assert evaluate([doc], action, key, ours) == ALLOW, action
        assert evaluate([doc], action, key, theirs) != ALLOW, action
        assert evaluate([doc], action, key) != ALLOW, action
    for action in ("kms:DescribeKey", "kms:GetKeyPolicy", "kms:EnableKeyRotation"):
        assert evaluate([doc], action, key) == ALLOW, action
    bypass = {**ours, "kms:BypassPolicyLockoutSafetyCheck": "true"}
    assert evaluate([doc], "kms:PutKeyPolicy", key, bypass) == DENY
    assert evaluate([doc], "kms:CreateKey", "*", {"aws:RequestTag/environment": "staging", **bypass}) == DENY
    for action in ("kms:Decrypt", "kms:GenerateDataKey", "kms:CreateGrant", "kms:DisableKey", "kms:CreateAlias"):
        assert evaluate([doc], action, key, ours) != ALLOW, action
    # ScheduleKeyDeletion's window is a numeric condition (which the evaluator does not model): as written.
    deletion = statement(doc, "AlarmKeyDeletion")
    assert deletion["Resource"] == [f"arn:aws:kms:*:{account}:key/*"]
    assert deletion["Condition"] == {
        "StringEquals": {"aws:ResourceTag/environment": "staging"},
        "NumericGreaterThanEquals": {"kms:ScheduleKeyDeletionPendingWindowInDays": "30"},
    }
    subscribe = statement(doc, "AlarmSubscriptions")
    assert subscribe["Condition"] == {"StringEquals": {"sns:Protocol": "email"}}
    assert subscribe["Resource"] == [f"arn:aws:sns:*:{account}:gpu-orchestrator-alarms-staging"]
    assert statement(doc, "WebhookSecret")["Resource"] == [
        f"arn:aws:secretsmanager:*:{account}:secret:gpu-orchestrator-webhook-key-staging-??????"
    ]
    dashboard = f"arn:aws:cloudwatch::{account}:dashboard/gpu-orchestrator-staging"
    assert statement(doc, "Dashboard")["Resource"] == [dashboard]


def test_plan_policy_is_read_only(out: dict[str, Any]) -> None:
    doc = policy_of(out, "gpu-orchestrator-plan-prod")
    actions = [a for st in doc["Statement"] for a in st["Action"]]
    assert {st["Effect"] for st in doc["Statement"]} == {"Allow"}
    verbs = {a.split(":")[1] for a in actions}
    assert all(v.startswith(("Get", "List", "Describe")) for v in verbs), verbs
    assert statement(doc, "StateObjects")["Resource"] == [f"{STATE}/prod/*"]
    bundles = f"arn:aws:s3:::gpu-orchestrator-artifacts-prod-{_account(out)}/adapter/*"
    assert statement(doc, "AdapterBundles")["Resource"] == [bundles]
    # The events and alarm stacks' resources are refreshed too, the signing key's value never read.
    for sid in ("EventBus", "WebhookSecret", "EventSourceMappings", "AlarmTopic", "AlarmKeyRead", "Dashboard"):
        assert statement(doc, sid)
    assert "secretsmanager:GetSecretValue" not in actions
    assert statement(doc, "AlarmKeyRead")["Condition"] == {"StringEquals": {"aws:ResourceTag/environment": "prod"}}


def resolved(text: str) -> str:
    """A policy as IAM stores it: the account-id reference resolved to a 12-digit id (the state bucket is given)."""
    import re

    return re.sub(r"\$\{data\.aws_caller_identity\.[^}]+\.account_id\}", ACCOUNT, text)


def test_policies_fit_iams_size_limits(out: dict[str, Any]) -> None:
    # 10,240 characters for all inline policies of one role, 6,144 for a managed policy, counted as IAM stores them.
    # The deploy role's managed parts are attached to it alone, and it cannot edit them.
    for policy in resources(out, "aws_iam_role_policy").values():
        assert len(resolved(policy["policy"])) < gh.INLINE_LIMIT
    managed = resources(out, "aws_iam_policy")
    parts = sorted(MANAGED_PARTS)
    expected = sorted(f"gpu-orchestrator-deploy-{env}-{part}" for env in ENVS for part in parts)
    assert sorted(p["name"] for p in managed.values()) == expected
    for policy in managed.values():
        assert len(resolved(policy["policy"])) < gh.MANAGED_LIMIT
    for env in ENVS:
        assert "policy/gpu-orchestrator-deploy-*" in json.dumps(
            statement(policy_of(out, f"gpu-orchestrator-deploy-{env}"), "NoSelfEscalation")
        )
    # The split moves statements and nothing else: the parts together are exactly the whole.
    (identity_key,) = out["data"]["aws_caller_identity"]
    whole = gh.deploy_policy(
        account=f"${{data.aws_caller_identity.{identity_key}.account_id}}",
        environment="dev",
        state_bucket_arn=STATE,
        prefix="gpu-orchestrator",
    )
    together = policy_of(out, "gpu-orchestrator-deploy-dev")["Statement"]
    assert sorted(json.dumps(st, sort_keys=True) for st in together) == sorted(
        json.dumps(st, sort_keys=True) for st in whole["Statement"]
    )


def test_existing_provider_is_reused_instead_of_created() -> None:
    arn = "arn:aws:iam::111122223333:oidc-provider/token.actions.githubusercontent.com"
    out = synth(environments=["prod"], existing_provider_arn=arn)
    assert "aws_iam_openid_connect_provider" not in out["resource"]
    (trust,) = [
        json.loads(r["assume_role_policy"])
        for r in resources(out, "aws_iam_role").values()
        if r["name"] == "gpu-orchestrator-deploy-prod"
    ]
    assert trust["Statement"][0]["Principal"] == {"Federated": arn}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"repository": "not-a-repo"},
        {"repository": "org/repo:environment:*"},
        {"environments": []},
        {"environments": ["dev", "dev"]},
        {"environments": ["Prod"]},
        {"environments": ["dev-plan"]},
    ],
)
def test_bad_arguments_are_refused_before_anything_is_built(kwargs: dict[str, Any]) -> None:
    stack = TerraformStack(App(), "bad")
    args: dict[str, Any] = {"repository": REPO, "environments": ENVS, "state_bucket_arn": STATE, **kwargs}
    with pytest.raises(ValueError):
        gh.GithubDeployAccess(stack, "github", **args)


# --- The deploy role against the real stacks: every resource they name is inside its grants. ---

ACCOUNT = "111122223333"
REGION = "us-east-1"
# resource type -> (attribute holding the name, ARN of that name, Sid of the deploy statement that must cover it)
NAMED: dict[str, tuple[str, str, str]] = {
    "aws_sqs_queue": ("name", f"arn:aws:sqs:{REGION}:{ACCOUNT}:{{}}", "Queues"),
    "aws_dynamodb_table": ("name", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{{}}", "TaskStore"),
    "aws_iam_role": ("name", f"arn:aws:iam::{ACCOUNT}:role/{{}}", "BoundedRoles"),
    "aws_iam_instance_profile": ("name", f"arn:aws:iam::{ACCOUNT}:instance-profile/{{}}", "InstanceProfile"),
    "aws_lambda_function": ("function_name", f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{{}}", "Lambda"),
    "aws_cloudwatch_log_group": ("name", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{{}}", "Logs"),
    "aws_cloudwatch_metric_alarm": ("alarm_name", f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{{}}", "Alarms"),
    "aws_cloudwatch_event_rule": ("name", f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{{}}", "Schedules"),
    "aws_ssm_parameter": ("name", f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{{}}", "Parameters"),
    "aws_s3_bucket": ("bucket", "arn:aws:s3:::{}", "ArtifactsBucket"),
    "aws_lambda_layer_version": ("layer_name", f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:{{}}", "Layers"),
    "aws_iam_policy": ("name", f"arn:aws:iam::{ACCOUNT}:policy/{{}}", "CallerPolicies"),
    "aws_ssm_document": ("name", f"arn:aws:ssm:{REGION}:{ACCOUNT}:document/{{}}", "BootstrapDocument"),
    "aws_cloudwatch_event_bus": ("name", f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/{{}}", "EventBus"),
    # Secrets Manager appends "-" and six random characters to the name.
    "aws_secretsmanager_secret": (
        "name",
        f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{{}}-a1B2c3",
        "WebhookSecret",
    ),
    "aws_sns_topic": ("name", f"arn:aws:sns:{REGION}:{ACCOUNT}:{{}}", "AlarmTopic"),
    "aws_cloudwatch_dashboard": ("dashboard_name", f"arn:aws:cloudwatch::{ACCOUNT}:dashboard/{{}}", "Dashboard"),
    # The group's ARN carries the uuid AWS assigns at creation: any one stands in for it.
    "aws_autoscaling_group": (
        "name",
        f"arn:aws:autoscaling:{REGION}:{ACCOUNT}:autoScalingGroup:0b6a1f4e-8c1d-4f36-9d2a-2f1c3e5a7b9d:"
        "autoScalingGroupName/{}",
        "GpuFleet",
    ),
}
# Resources EC2 names by the id it assigns (the ARN holds that id, not the name): a stand-in id, the statement that
# must cover it when created, and the one that must cover changing or deleting it (by the environment tag).
BY_ID: dict[str, tuple[str, ...]] = {
    "aws_launch_template": (
        f"arn:aws:ec2:{REGION}:{ACCOUNT}:launch-template/lt-0123456789abcdef0",
        "GpuHostsCreate",
        "GpuHostsOfThisEnvironment",
    ),
    "aws_security_group": (
        f"arn:aws:ec2:{REGION}:{ACCOUNT}:security-group/sg-0123456789abcdef0",
        "GpuHostsCreate",
        "GpuHostsOfThisEnvironment",
    ),
    "aws_instance": (
        f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-0123456789abcdef0",
        "GpuHostsCreate",
        "GpuHostsOfThisEnvironment",
    ),
    # A mapping is also held to its function (lambda:FunctionArn): checked below, on the function it names.
    "aws_lambda_event_source_mapping": (
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:event-source-mapping:0b6a1f4e-8c1d-4f36-9d2a-2f1c3e5a7b9d",
        "EventSourceMappingCreate",
        "EventSourceMappings",
        "EventSourceMappingTags",
    ),
    # The key is created with the environment's tag and changed only while it carries it (checked below).
    "aws_kms_key": (
        f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "AlarmKeyCreate",
        "AlarmKeyTagOnCreate",
        "AlarmKeyRead",
        "AlarmKeyOfThisEnvironment",
        "AlarmKeyDeletion",
    ),
}
# Parts of a resource above: authorized on their parent's ARN (a policy of a role, a rule of a bucket...).
PARTS = {
    "aws_iam_role_policy",
    "aws_lambda_permission",
    "aws_cloudwatch_event_target",
    "aws_sqs_queue_redrive_allow_policy",
    "aws_s3_bucket_lifecycle_configuration",
    "aws_s3_bucket_logging",
    "aws_s3_bucket_ownership_controls",
    "aws_s3_bucket_policy",
    "aws_s3_bucket_public_access_block",
    "aws_s3_bucket_server_side_encryption_configuration",
    "aws_s3_bucket_versioning",
    "aws_s3_object",
    "aws_lambda_alias",  # of the API function (lambda:CreateAlias... on function:<name>:*)
    "aws_lambda_function_url",  # of the function or its alias
    "aws_ssm_association",  # of the bootstrap document (authorized on it, its instances and its own id)
    "aws_iam_role_policy_attachment",  # only bootstrap's deploy role has one; none in the environment's stacks
    "aws_sns_topic_policy",  # an attribute of the topic (SetTopicAttributes)
    "aws_sns_topic_subscription",  # of the topic (Subscribe, email only: checked below)
}
# Every GPU mode, each as the deploy role of that environment would apply it: prod adopts, staging creates, and
# staging switched to fleet mode (on demand with its warm pool; Spot in given subnets).
FLEET = {"gpu_mode": "fleet", "fleet_max_size": 4, "gpus_per_instance": 4, "instance_type": "g5.12xlarge"}
SPOT = {**FLEET, "fleet_spot": True, "spot_instance_types": ("g5.12xlarge", "g6.12xlarge")}
# Staging also subscribes an address to the alarm topic, so its subscriptions are checked too.
MODES: dict[str, tuple[str, dict[str, Any]]] = {
    "adopt": ("prod", {}),
    "create": ("staging", {"alarm_emails": ("oncall@example.com",)}),
    "fleet": ("staging", FLEET),
    "fleet-spot": ("staging", {**SPOT, "fleet_subnet_ids": ("subnet-0123456789abcdef0",)}),
}


def _synthesized(mode: str, outdir: Any) -> tuple[Any, list[Any]]:
    from dataclasses import replace

    from main import compose
    from modules.config import load_config, validate

    environment, changes = MODES[mode]
    config = (
        load_config(
            environment, env={"CDK_DEFAULT_ACCOUNT": ACCOUNT, "CDK_CONTEXT_GPU_INSTANCE_ID": "i-0123456789abcdef0"}
        )
        if environment == "prod"
        else load_config(environment, env={"CDK_DEFAULT_ACCOUNT": ACCOUNT})
    )
    config = replace(config, **changes)
    validate(config)
    app = App(outdir=str(outdir))
    compose(app, config)
    app.synth()
    return config, sorted(outdir.glob("stacks/*/cdk.tf.json"))


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_resource_the_stacks_synthesize_is_within_the_deploy_role(mode: str, tmp_path: Any) -> None:
    from fnmatch import fnmatchcase

    config, stacks = _synthesized(mode, tmp_path)
    env = config.name
    state_arn = f"arn:aws:s3:::{config.resolved_state_bucket}"
    doc = gh.deploy_policy(account=ACCOUNT, environment=env, state_bucket_arn=state_arn, prefix="gpu-orchestrator")
    assert len(stacks) >= 5, stacks
    (boundary,) = statement(doc, "BoundedRoles")["Condition"]["StringEquals"].values()
    assert boundary == f"arn:aws:iam::{ACCOUNT}:policy/gpu-orchestrator-boundary-{env}"
    checked, roles, mappings, subscriptions, kinds = 0, 0, 0, 0, set()
    for path in stacks:
        synthesized = json.loads(path.read_text())
        backend = synthesized["terraform"]["backend"]["s3"]
        assert backend["bucket"] == config.resolved_state_bucket
        assert fnmatchcase(f"{state_arn}/{backend['key']}", statement(doc, "StateObjects")["Resource"][0])
        # What the hosts' and the key's statements are held to: the tag every resource gets from the provider.
        (default_tags,) = synthesized["provider"]["aws"][0]["default_tags"]
        assert default_tags["tags"][names.DEFAULT_TAG] == env
        created = synthesized.get("resource", {})
        functions = {key: body["function_name"] for key, body in created.get("aws_lambda_function", {}).items()}
        for kind, items in created.items():
            if kind == "aws_sns_topic_subscription":  # AlarmSubscriptions admits the email protocol only
                assert {body["protocol"] for body in items.values()} == {act.SUBSCRIPTION_PROTOCOL}
                subscriptions += len(items)
            if kind in PARTS:
                continue
            assert kind in NAMED or kind in BY_ID, f"{path.parent.name}: {kind} has no grant in modules/github_oidc.py"
            kinds.add(kind)
            for resource in items.values():
                if kind in BY_ID:
                    arn, *sids = BY_ID[kind]
                else:
                    attr, arn_format, sid = NAMED[kind]
                    arn, sids = arn_format.format(resource[attr]), [sid]
                for sid in sids:
                    patterns = statement(doc, sid)["Resource"]
                    assert any(fnmatchcase(arn, p) for p in patterns), f"{arn} is outside {sid}: {patterns}"
                checked += 1
                if kind == "aws_iam_role":  # ...and it carries the one boundary the deploy role may write it with
                    assert resource["permissions_boundary"] == boundary, resource["name"]
                    roles += 1
                if kind == "aws_lambda_event_source_mapping":  # ...and its function is one lambda:FunctionArn admits
                    key = resource["function_name"].removeprefix("${aws_lambda_function.").removesuffix(".arn}")
                    function = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{functions[key]}"
                    for sid in ("EventSourceMappingCreate", "EventSourceMappings"):
                        (admitted,) = statement(doc, sid)["Condition"]["ArnLike"].values()
                        assert any(fnmatchcase(function, p) for p in admitted), (function, sid, admitted)
                    mappings += 1
    assert checked >= 30 and roles == 5 and mappings == 2
    assert subscriptions == len(config.alarm_emails)
    layers = {"aws_cloudwatch_event_bus", "aws_secretsmanager_secret", "aws_lambda_event_source_mapping"}
    layers |= {"aws_sns_topic", "aws_kms_key", "aws_cloudwatch_dashboard"}
    assert layers <= kinds
    gpu = {"adopt": {"aws_ssm_document"}, "create": {"aws_instance", "aws_launch_template"}}
    assert gpu.get(mode, {"aws_autoscaling_group", "aws_launch_template", "aws_security_group"}) <= kinds
