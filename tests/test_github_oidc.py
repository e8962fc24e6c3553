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
from modules import github_oidc as gh

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
    doc = policy_of(out, "gpu-orchestrator-deploy-dev")
    expected = {
        "Queues": gh.SQS_READ + gh.SQS_WRITE,
        "TaskStore": gh.DYNAMODB_READ + gh.DYNAMODB_WRITE,
        "IamRead": gh.IAM_READ,
        "BoundedRoles": gh.ROLE_WRITE,
        "RoleTags": gh.ROLE_TAGGING,
        "InstanceProfile": gh.PROFILE_WRITE,
        "PassShutdownRoleToLambda": gh.PASS_ROLE,
        "PassInstanceRoleToProfile": gh.PASS_ROLE,
        "PassOrchestratorRoleToLambda": gh.PASS_ROLE,
        "Lambda": gh.LAMBDA_READ + gh.LAMBDA_WRITE,
        "Layers": gh.LAMBDA_READ + gh.LAYER_WRITE,
        "CallerPolicies": gh.CALLER_POLICY_READ + gh.CALLER_POLICY_WRITE,
        "Logs": gh.LOGS_READ + gh.LOGS_WRITE,
        "Alarms": gh.ALARM_READ + gh.ALARM_WRITE,
        "Schedules": gh.EVENTS_READ + gh.EVENTS_WRITE,
        "Parameters": gh.SSM_READ + gh.SSM_WRITE,
        "PublicParameters": gh.PUBLIC_PARAMETER_READ,
        "BootstrapDocument": gh.DOCUMENT_READ + gh.DOCUMENT_WRITE,
        "BootstrapAssociation": gh.ASSOCIATION_READ + gh.ASSOCIATION_WRITE,
        "GpuHostsCreate": gh.HOST_CREATE,
        "GpuHostsTagOnCreate": gh.HOST_TAG_ON_CREATE,
        "GpuHostsOfThisEnvironment": gh.HOST_CHANGE,
        "GpuFleet": gh.FLEET_WRITE,
        "AutoScalingServiceLinkedRole": gh.SERVICE_LINKED_ROLE_ACTIONS,
        "ArtifactsBucket": gh.BUCKET_READ + gh.BUCKET_WRITE,
        "ArtifactsObjects": gh.OBJECT_READ + gh.OBJECT_WRITE,
        "DescribeOnly": gh.UNSCOPED_READ,
        "StateBucket": gh.STATE_BUCKET_READ,
        "StateObjects": gh.STATE_OBJECT_READ + gh.STATE_OBJECT_WRITE,
    }
    allows = {s["Sid"]: s for s in doc["Statement"] if s["Effect"] == "Allow"}
    assert {sid: sorted(s["Action"]) for sid, s in allows.items()} == {k: sorted(v) for k, v in expected.items()}
    # "*" as a resource only where AWS supports nothing narrower, and those are read-only.
    for sid, st in allows.items():
        if "*" in st["Resource"]:
            assert sid == "DescribeOnly"
    assert all(a.split(":")[1].startswith(("Describe", "List", "Get")) for a in gh.UNSCOPED_READ)
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
    assert sorted(required["Action"]) == sorted(gh.BOUNDARY_REQUIRED)
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
    assert set(gh.ROLE_WRITE) <= set(gh.PERMISSIONS_BOUNDARY_ACTIONS)
    assert set(gh.BOUNDARY_REQUIRED) <= set(gh.PERMISSIONS_BOUNDARY_ACTIONS)
    no_escalation = statement(doc, "NoSelfEscalation")
    assert no_escalation["Effect"] == "Deny" and no_escalation["Action"] == "iam:*"
    assert f"arn:aws:iam::{account}:policy/gpu-orchestrator-boundary-*" in no_escalation["Resource"]


def test_the_enforcing_server_models_the_boundary_key_for_the_same_actions() -> None:
    from localaws import enforce

    modelled = enforce._CARRIED_BOUNDARY_ACTIONS | {"CreateRole", "PutRolePermissionsBoundary"}
    assert modelled == {a.removeprefix("iam:") for a in gh.PERMISSIONS_BOUNDARY_ACTIONS}


def _account(out: dict[str, Any]) -> str:
    (identity_key,) = out["data"]["aws_caller_identity"]
    return f"${{data.aws_caller_identity.{identity_key}.account_id}}"


def test_deploy_policy_scopes_resources_to_our_names_and_this_environment(out: dict[str, Any]) -> None:
    doc = policy_of(out, "gpu-orchestrator-deploy-staging")
    account = _account(out)
    assert statement(doc, "Queues")["Resource"] == [
        f"arn:aws:sqs:*:{account}:gpu_tasks_queue*-staging",
        f"arn:aws:sqs:*:{account}:shutdown-gpu-lambda-dlq*-staging",
    ]
    assert statement(doc, "TaskStore")["Resource"] == [f"arn:aws:dynamodb:*:{account}:table/task_store*-staging"]
    assert statement(doc, "Parameters")["Resource"] == [f"arn:aws:ssm:*:{account}:parameter/gpu-orchestrator/staging/*"]
    # Bucket names are global: exact names, carrying this account's id, never `...-staging-*`.
    artifacts = f"arn:aws:s3:::gpu-orchestrator-artifacts-staging-{account}"
    assert statement(doc, "ArtifactsBucket")["Resource"] == [artifacts, f"{artifacts}-logs"]
    assert statement(doc, "ArtifactsObjects")["Resource"] == [f"{artifacts}-logs/*", f"{artifacts}/*"]
    assert statement(doc, "StateBucket")["Resource"] == [STATE]
    assert statement(doc, "StateObjects")["Resource"] == [f"{STATE}/staging/*"]
    # IAM: exact names only, so no new role or profile can be made by a prefix.
    roles = sorted(f"arn:aws:iam::{account}:role/{name}-staging" for name in gh.ROLE_NAMES)
    profile = f"arn:aws:iam::{account}:instance-profile/gpu-instance-profile-staging"
    assert statement(doc, "BoundedRoles")["Resource"] == roles
    assert statement(doc, "RoleTags")["Resource"] == roles
    assert statement(doc, "InstanceProfile")["Resource"] == [profile]
    assert statement(doc, "IamRead")["Resource"] == sorted([*roles, profile])
    to_lambda = statement(doc, "PassShutdownRoleToLambda")
    assert to_lambda["Resource"] == [f"arn:aws:iam::{account}:role/lambda-gpu-shutdown-role-staging"]
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
    # Scaling service-linked role.
    unnamed = {
        "GpuHostsCreate",
        "GpuHostsTagOnCreate",
        "PublicParameters",
        "BootstrapAssociation",
        "AutoScalingServiceLinkedRole",
    }
    assert statement(doc, "GpuHostsOfThisEnvironment")["Condition"] == {
        "StringEquals": {"aws:ResourceTag/environment": "staging"}
    }
    for st in doc["Statement"]:
        for arn in st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]:
            scoped = "staging" in arn or "staging" in json.dumps(st.get("Condition", {}))
            assert arn in ("*", STATE) or scoped or st["Effect"] == "Deny" or st["Sid"] in unnamed, (st["Sid"], arn)
            assert "dev" not in arn.replace("/aws/", "") and "prod" not in arn, (st["Sid"], arn)


def test_plan_policy_is_read_only(out: dict[str, Any]) -> None:
    doc = policy_of(out, "gpu-orchestrator-plan-prod")
    actions = [a for st in doc["Statement"] for a in st["Action"]]
    assert {st["Effect"] for st in doc["Statement"]} == {"Allow"}
    verbs = {a.split(":")[1] for a in actions}
    assert all(v.startswith(("Get", "List", "Describe")) for v in verbs), verbs
    assert statement(doc, "StateObjects")["Resource"] == [f"{STATE}/prod/*"]
    bundles = f"arn:aws:s3:::gpu-orchestrator-artifacts-prod-{_account(out)}/adapter/*"
    assert statement(doc, "AdapterBundles")["Resource"] == [bundles]


def test_policies_fit_iams_size_limits(out: dict[str, Any]) -> None:
    # 10,240 characters for all inline policies of one role, 6,144 for a managed policy; tokens resolve to a
    # 12-digit account (shorter). The deploy role's managed part is attached to it alone, and it cannot edit it.
    for policy in resources(out, "aws_iam_role_policy").values():
        assert len(policy["policy"]) < gh.INLINE_LIMIT
    managed = resources(out, "aws_iam_policy")
    assert sorted(p["name"] for p in managed.values()) == [f"gpu-orchestrator-deploy-{e}-hosts" for e in sorted(ENVS)]
    for policy in managed.values():
        assert len(policy["policy"]) < gh.MANAGED_LIMIT
    for env in ENVS:
        assert "policy/gpu-orchestrator-deploy-*" in json.dumps(
            statement(policy_of(out, f"gpu-orchestrator-deploy-{env}"), "NoSelfEscalation")
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
BY_ID: dict[str, tuple[str, str, str]] = {
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
}
# Every GPU mode, each as the deploy role of that environment would apply it: prod adopts, staging creates, and
# staging switched to fleet mode (on demand with its warm pool; Spot in given subnets).
FLEET = {"gpu_mode": "fleet", "fleet_max_size": 4, "gpus_per_instance": 4, "instance_type": "g5.12xlarge"}
SPOT = {**FLEET, "fleet_spot": True, "spot_instance_types": ("g5.12xlarge", "g6.12xlarge")}
MODES: dict[str, tuple[str, dict[str, Any]]] = {
    "adopt": ("prod", {}),
    "create": ("staging", {}),
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
    checked, roles, kinds = 0, 0, set()
    for path in stacks:
        synthesized = json.loads(path.read_text())
        backend = synthesized["terraform"]["backend"]["s3"]
        assert backend["bucket"] == config.resolved_state_bucket
        assert fnmatchcase(f"{state_arn}/{backend['key']}", statement(doc, "StateObjects")["Resource"][0])
        for kind, items in synthesized.get("resource", {}).items():
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
    assert checked >= 12 and roles == 3
    gpu = {"adopt": {"aws_ssm_document"}, "create": {"aws_instance", "aws_launch_template"}}
    assert gpu.get(mode, {"aws_autoscaling_group", "aws_launch_template", "aws_security_group"}) <= kinds
