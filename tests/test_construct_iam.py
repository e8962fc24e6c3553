"""Role, GpuInstances and GithubDeployAccess alone in a stack: grants through the shared aws-cdk-style helper, the
limits they refuse; the one ARN helper and policy renderer every construct uses; and, in the synthesized stacks,
every runtime role's trust (confused-deputy keys) and permissions boundary."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cdktf import TerraformStack

from modules.github_oidc import GithubDeployAccess
from modules.gpu import DESCRIBE_ACTIONS, START_ACTIONS, STOP_ACTIONS, GpuInstances
from modules.iam import Role, Statement, TokenOrder, arn, boundary_arn, merge, policy, render, service_trust
from modules.props import ConstructPropError, check_range
from tests.infra_helpers import assert_grant, fresh_stack, load, one, refusal, synth

ROLE: dict[str, Any] = {"name": "worker", "assumed_by": "ec2.amazonaws.com", "description": "Runs tasks"}
INSTANCES = ("i-0123456789abcdef0", "i-0fedcba9876543210")
INSTANCE_ARNS = [f"arn:aws:ec2:us-east-1:123456789012:instance/{i}" for i in INSTANCES]
REPO = "example-org/gpu-orchestrator"
STATE = "arn:aws:s3:::gpu-orchestrator-tfstate-dev-123456789012-us-east-1"


def stack_of(construct: Any) -> TerraformStack:
    return TerraformStack.of(construct)


# --- the ARN helper and the renderer ---


def test_arn_helper_spells_every_arn_form() -> None:
    where = {"region": "us-east-1", "account": "123456789012"}
    assert arn("sqs", "q", **where) == "arn:aws:sqs:us-east-1:123456789012:q"
    assert arn("s3", "bucket/*", region="", account="") == "arn:aws:s3:::bucket/*"
    assert arn("iam", "role/r", region="", account="123456789012") == "arn:aws:iam::123456789012:role/r"
    assert arn("ec2", "instance/i-1", **where, partition="aws-cn").startswith("arn:aws-cn:ec2:")


def test_renderer_keeps_each_documents_form() -> None:
    deny = Statement("s3:*", ("b/*", "b"), {"Bool": {"aws:SecureTransport": "false"}}, effect="Deny", principal="*")
    allow = Statement(("s3:PutObject", "s3:GetObject", "s3:GetObject"), "b/logs/*", sid="Logs")
    doc = policy([deny, allow])
    assert doc["Statement"] == [
        {
            "Effect": "Deny",
            "Action": "s3:*",
            "Resource": ["b", "b/*"],
            "Principal": "*",
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        },
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": "b/logs/*", "Sid": "Logs"},
    ]
    assert render(doc) == json.dumps(doc, sort_keys=True)
    assert render(doc, compact=True) == json.dumps(doc, sort_keys=True, separators=(",", ":"))


def test_role_statements_merge_by_resource_set() -> None:
    merged = merge([Statement(("a:X",), ("r1",)), Statement(("a:Y",), ("r1",)), Statement(("a:Z",), ("r2", "r1"))])
    assert [st.render() for st in merged] == [
        {"Effect": "Allow", "Action": ["a:X", "a:Y"], "Resource": ["r1"]},
        {"Effect": "Allow", "Action": ["a:Z"], "Resource": ["r1", "r2"]},
    ]


def test_token_resources_order_by_first_appearance_not_by_token_number() -> None:
    # TOKEN.10 sorts before TOKEN.9 as text: the order must come from the statements, not from the numbering.
    early, late = "${TfToken[TOKEN.9]}", "${TfToken[TOKEN.10]}"
    merged = merge([Statement(("a:X",), (early,)), Statement(("a:Y",), (late, "arn:aws:s3:::b"))])
    assert [st.resources for st in merged] == [(early,), (late, "arn:aws:s3:::b")]
    assert TokenOrder().ordered([f"{late}/*", early, late, early]) == [late, f"{late}/*", early]


def test_a_roles_policy_does_not_depend_on_tokens_minted_before_it() -> None:
    """Every attribute read mints a numbered token; what another construct read first must not reorder a policy."""
    from cdktf_cdktf_provider_aws.sqs_queue import SqsQueue

    def policy_after(unrelated_reads: int) -> str:
        stack = fresh_stack()
        other = SqsQueue(stack, "other", name="other")
        for _ in range(unrelated_reads):
            _ = other.arn
        queues = [SqsQueue(stack, f"q{n}", name=f"q{n}") for n in range(12)]
        worker = Role(stack, "worker", **ROLE)
        for n, queue in enumerate(queues):
            worker.add((f"sqs:Action{n}",), (queue.arn,))
        return str(one(synth(stack), "aws_iam_role_policy")["policy"])

    assert policy_after(0) == policy_after(95)


def test_prop_errors_are_one_line_naming_the_path_the_prop_and_the_limit() -> None:
    with pytest.raises(ConstructPropError) as err:
        check_range("stack/queue", "visibility_timeout_seconds", 50000, 0, 43200, "SQS VisibilityTimeout")
    assert str(err.value) == "stack/queue: visibility_timeout_seconds=50000 is outside 0..43200 (SQS VisibilityTimeout)"
    assert isinstance(err.value, ValueError) and err.value.prop == "visibility_timeout_seconds"


# --- Role ---


@pytest.fixture(scope="module")
def role() -> Role:
    return Role(fresh_stack(), "worker", **ROLE, instance_profile_name="worker-profile")


def test_role_alone_trusts_its_service_and_has_a_profile(role: Role) -> None:
    doc = synth(stack_of(role))
    body = one(doc, "aws_iam_role", name="worker")
    assert json.loads(body["assume_role_policy"])["Statement"] == [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ]
    assert body["max_session_duration"] == 3600
    assert one(doc, "aws_iam_instance_profile")["name"] == "worker-profile"


def test_role_alone_has_no_boundary_and_the_bare_trust(role: Role) -> None:
    body = one(synth(stack_of(role)), "aws_iam_role", name="worker")
    assert "permissions_boundary" not in body
    assert "Condition" not in json.loads(body["assume_role_policy"])["Statement"][0]


def test_boundary_arn_is_the_one_arn_helper_on_the_bootstrap_policy_name() -> None:
    expected = arn("iam", "policy/gpu-orchestrator-boundary-dev", region="", account="123456789012")
    assert boundary_arn(account="123456789012", environment="dev") == expected
    assert expected == "arn:aws:iam::123456789012:policy/gpu-orchestrator-boundary-dev"


# Which confused-deputy keys each service sets when it assumes a role (modules/iam.py SOURCE_*_SERVICES, with the
# AWS docs cited there): a key the service does not send would break its AssumeRole, so EC2 gets none.
TRUST_CONDITIONS = {
    "ecs-tasks.amazonaws.com": {
        "StringEquals": {"aws:SourceAccount": "123456789012"},
        "ArnLike": {"aws:SourceArn": "arn:aws:ecs:eu-west-1:123456789012:*"},
    },
    "lambda.amazonaws.com": {"StringEquals": {"aws:SourceAccount": "123456789012"}},
    "ec2.amazonaws.com": None,
}


@pytest.mark.parametrize("service", sorted(TRUST_CONDITIONS))
def test_role_for_an_account_trusts_its_service_only_on_its_behalf(service: str) -> None:
    boundary = boundary_arn(account="123456789012", environment="dev")
    stack = fresh_stack()
    Role(
        stack,
        "r",
        **{**ROLE, "assumed_by": service},
        account="123456789012",
        region="eu-west-1",
        permissions_boundary=boundary,
    )
    body = one(synth(stack), "aws_iam_role", name="worker")
    assert body["permissions_boundary"] == boundary
    (statement,) = json.loads(body["assume_role_policy"])["Statement"]
    assert statement["Principal"] == {"Service": service} and statement["Action"] == "sts:AssumeRole"
    assert statement.get("Condition") == TRUST_CONDITIONS[service]
    assert json.loads(body["assume_role_policy"]) == service_trust(service, account="123456789012", region="eu-west-1")


def test_role_generic_grant_is_on_the_role(role: Role) -> None:
    assert_grant(stack_of(role), lambda grantee: role.grant(grantee, "iam:PassRole"), [(["iam:PassRole"], [role.arn])])


def test_role_add_returns_the_statement_it_added(role: Role) -> None:
    statement = role.add(["s3:GetObject"], ["arn:aws:s3:::b/*"], sid="Read")
    assert statement == Statement(("s3:GetObject",), ("arn:aws:s3:::b/*",), {}, "Read")


@pytest.mark.parametrize(
    ("props", "problem"),
    [
        ({"name": "r" * 65}, f"name='{'r' * 65}' is not 1-64 characters of A-Za-z0-9+=,.@_- (IAM role name)"),
        ({"name": "my role"}, "name='my role' is not 1-64 characters of A-Za-z0-9+=,.@_- (IAM role name)"),
        ({"max_session_duration": 3599}, "max_session_duration=3599 is outside 3600..43200 (CreateRole)"),
        ({"max_session_duration": 43201}, "max_session_duration=43201 is outside 3600..43200 (CreateRole)"),
        (
            {"description": "d" * 1001},
            f"description='{'d' * 1001}' is not up to 1000 printable characters (CreateRole)",
        ),
        (
            {"instance_profile_name": "p" * 129},
            f"instance_profile_name='{'p' * 129}' is not 1-128 characters of A-Za-z0-9+=,.@_-",
        ),
        ({"assumed_by": "lambda"}, "assumed_by='lambda' is not an AWS service principal"),
        ({"account": "1234"}, "account='1234' is not a 12-digit AWS account id"),
        (
            {"permissions_boundary": "arn:aws:iam::123456789012:role/admin"},
            "permissions_boundary='arn:aws:iam::123456789012:role/admin' is not a managed policy ARN "
            "(arn:aws:iam::...)",
        ),
    ],
)
def test_role_refuses_what_iam_refuses(props: dict[str, Any], problem: str) -> None:
    assert refusal(lambda stack: Role(stack, "worker", **{**ROLE, **props})) == f"bad/worker: {problem}"


def test_a_statement_needs_actions_and_resources(role: Role) -> None:
    with pytest.raises(ConstructPropError, match=r"^test/worker: statement=\(\(\), \('r',\)\) needs actions"):
        role.add([], ["r"])


# --- GpuInstances (not a construct: it only scopes grants) ---


@pytest.fixture(scope="module")
def gpu() -> GpuInstances:
    return GpuInstances(instance_ids=INSTANCES, region="us-east-1", account="123456789012")


@pytest.mark.parametrize(
    ("grant", "expected"),
    [
        (lambda g, r: g.grant_start(r), [(START_ACTIONS, INSTANCE_ARNS)]),
        (lambda g, r: g.grant_stop(r), [(STOP_ACTIONS, INSTANCE_ARNS)]),
        (lambda g, r: g.grant_describe(r), [(DESCRIBE_ACTIONS, ["*"])]),  # DescribeInstances takes no resource ARN
        (lambda g, r: g.grant(r, "ec2:RebootInstances"), [(["ec2:RebootInstances"], INSTANCE_ARNS)]),
    ],
    ids=["start", "stop", "describe", "generic"],
)
def test_gpu_grants(gpu: GpuInstances, grant: Any, expected: Any) -> None:
    assert_grant(fresh_stack(), lambda role: grant(gpu, role), expected)


def test_gpu_needs_an_instance() -> None:
    with pytest.raises(ConstructPropError, match="^GpuInstances: instance_ids=\\(\\) is empty"):
        GpuInstances(instance_ids=[], region="us-east-1", account="123456789012")


# --- GithubDeployAccess ---


@pytest.fixture(scope="module")
def access() -> GithubDeployAccess:
    return GithubDeployAccess(fresh_stack(), "github", repository=REPO, environments=["dev"], state_bucket_arn=STATE)


def test_access_generic_grant_is_on_its_roles(access: GithubDeployAccess) -> None:
    roles = [access.role_arns["dev"], access.plan_role_arns["dev"]]
    assert_grant(stack_of(access), lambda role: access.grant(role, "sts:AssumeRole"), [(["sts:AssumeRole"], roles)])


@pytest.mark.parametrize(
    ("props", "problem"),
    [
        ({"repository": "not-a-repo"}, "repository='not-a-repo' is not owner/name (GitHub repository)"),
        ({"environments": []}, "environments=[] must be a non-empty list without duplicates"),
        (
            {"environments": ["dev-plan"]},
            "environments='dev-plan' is not a plain lowercase name (1-31 of a-z0-9-, not *-plan)",
        ),
        (
            {"name_prefix": "p" * 54},
            f"name_prefix='{'p' * 54}' makes a role name for 'dev' that is not 1-64 "
            "characters of A-Za-z0-9+=,.@_- (IAM role name)",
        ),
        (
            {"state_bucket_arn": "gpu-state"},
            "state_bucket_arn='gpu-state' is not an S3 bucket ARN (arn:aws:s3:::<name>)",
        ),
        (
            {"existing_provider_arn": "arn:aws:iam::123456789012:oidc-provider/example.com"},
            "existing_provider_arn="
            "'arn:aws:iam::123456789012:oidc-provider/example.com' is not an IAM OIDC provider ARN for "
            "token.actions.githubusercontent.com",
        ),
    ],
)
def test_access_refuses_what_github_and_iam_refuse(props: dict[str, Any], problem: str) -> None:
    args = {"repository": REPO, "environments": ["dev"], "state_bucket_arn": STATE, **props}
    assert refusal(lambda stack: GithubDeployAccess(stack, "github", **args)) == f"bad/github: {problem}"


# --- the runtime roles as the stacks synthesize them ---

ACCOUNTS = {"local": "123456789012", "dev": "111111111111", "staging": "222222222222", "prod": "333333333333"}


@pytest.mark.parametrize("env", sorted(ACCOUNTS))
def test_every_runtime_role_trusts_its_service_for_its_account_and_carries_the_boundary(
    synthesized: Any, env: str
) -> None:
    """Remote environments: the boundary bootstrap made (modules/bootstrap.py); `local`, never bootstrapped: none."""
    iam = load(synthesized(env))["gpu-orchestrator-iam"]
    roles = list(iam["resource"]["aws_iam_role"].values())
    assert len(roles) == 5  # orchestrator, GPU instance, controller, task events, webhooks
    for body in roles:
        (statement,) = json.loads(body["assume_role_policy"])["Statement"]
        service = statement["Principal"]["Service"]
        expected = TRUST_CONDITIONS[service]
        if expected is not None:
            expected = json.loads(
                json.dumps(expected).replace("123456789012", ACCOUNTS[env]).replace("eu-west-1", "us-east-1")
            )
        assert statement.get("Condition") == expected, body["name"]
        if env == "local":
            assert "permissions_boundary" not in body
        else:
            assert body["permissions_boundary"] == boundary_arn(account=ACCOUNTS[env], environment=env)
