"""The GitHub deploy role cannot make itself (or anything else) account admin: checked by an IAM-enforcing server.

A moto server that enforces IAM (localaws.authserver; localaws.enforce models resource ARNs, the request context
keys `iam:PermissionsBoundary` and `iam:PassedToService`, and permissions boundaries on role sessions) holds what
`make bootstrap ENV=dev` creates, synthesized for real in moto's account: the runtime boundary policy and the deploy
role with its inline policy. A user carrying exactly the deploy role's policies (read back from IAM) then

- is refused every escalation: an `Action: *` policy or a foreign trust on a runtime role without the boundary, a
  role outside the exact names, a role without the boundary or with another one, removing the boundary, editing the
  boundary policy, attaching a managed policy, touching the CI roles;
- is allowed a normal apply of the dev IAM stack, call by call as Terraform makes them (CreateRole with the
  boundary and tags, PutRolePolicy, the instance profile, tags, reads, updates, deletes), for all five roles (the
  core's three and the events layer's two), as dev adopts its instances and as dev would be in fleet mode (the roles
  then hold the Auto Scaling group's grants);
- passes each role to its own service only: the four Lambda roles to Lambda (CreateFunction of their functions), the
  GPU role into its instance profile;
- may create no service-linked role but Auto Scaling's;
- and whatever it writes on a runtime role stays inside the boundary: a session of a role it gave `Action: *` and a
  trust of its choosing can still do nothing in IAM and nothing outside the environment's resources.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import boto3
import pytest

import modules  # noqa: F401  (registers the provider package cheaply, before any cdktf import)
from localaws import authserver
from modules.deploy_policies import MANAGED_PARTS
from tests._least_privilege_support import refused as refused_with
from tests.infra_helpers import load, resources

ACCOUNT = "123456789012"  # moto's account: the policies are rendered for the account the server plays
FOREIGN = "999999999999"
ENV = "dev"
REGION = "us-east-1"
REPO = "example-org/gpu-orchestrator"
DEPLOY = f"gpu-orchestrator-deploy-{ENV}"
PLAN = f"gpu-orchestrator-plan-{ENV}"
BOUNDARY_NAME = f"gpu-orchestrator-boundary-{ENV}"
BOUNDARY = f"arn:aws:iam::{ACCOUNT}:policy/{BOUNDARY_NAME}"
ADMIN_POLICY = "arn:aws:iam::aws:policy/AdministratorAccess"
ORCHESTRATOR, GPU, SHUTDOWN, TASK_EVENTS, TASK_WEBHOOKS = (
    f"{n}-{ENV}"
    for n in (
        "orchestrator-task-role",
        "gpu-instance-role",
        "lambda-gpu-shutdown-role",
        "task-events-role",
        "task-webhooks-role",
    )
)
RUNTIME_ROLES = (ORCHESTRATOR, GPU, SHUTDOWN, TASK_EVENTS, TASK_WEBHOOKS)
LAMBDA_ROLES = {SHUTDOWN: "shutdown-gpu-lambda", ORCHESTRATOR: "gpu-orchestrator-api"}  # role -> its function
LAMBDA_ROLES |= {TASK_EVENTS: "gpu-task-events", TASK_WEBHOOKS: "gpu-task-webhooks"}
PROFILE = f"gpu-instance-profile-{ENV}"
DENIED = {"AccessDenied", "AccessDeniedException"}
EVERYTHING = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
TAGS = [{"Key": "project", "Value": "gpu-orchestrator"}, {"Key": "environment", "Value": ENV}]


def trust(principal: dict[str, Any]) -> str:
    statement = {"Effect": "Allow", "Principal": principal, "Action": "sts:AssumeRole"}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


LAMBDA_TRUST = trust({"Service": "lambda.amazonaws.com"})
FOREIGN_TRUST = trust({"AWS": f"arn:aws:iam::{FOREIGN}:root"})


def refused(call: Callable[[], Any]) -> str:
    """The server refuses `call` for want of permission (not a validation error, not a missing resource)."""
    return refused_with(call, DENIED)


# -- what `make bootstrap ENV=dev` and `make plan ENV=dev` synthesize, rendered for moto's account ------------------
def _config(**changes: Any) -> Any:
    from modules.config import load_config

    config = load_config(ENV, env={"CDK_DEFAULT_ACCOUNT": ACCOUNT})
    return replace(config, **changes)


def _resolve(text: str, state_bucket: str) -> str:
    """The bootstrap stack's three references, as Terraform resolves them in this account."""
    text = re.sub(r"\$\{data\.aws_caller_identity\.[^}]+\.account_id\}", ACCOUNT, text)
    text = re.sub(r"\$\{aws_s3_bucket\.[^}]+\.arn\}", f"arn:aws:s3:::{state_bucket}", text)
    provider = f"arn:aws:iam::{ACCOUNT}:oidc-provider/token.actions.githubusercontent.com"
    return re.sub(r"\$\{aws_iam_openid_connect_provider\.[^}]+\.arn\}", provider, text)


@dataclass(frozen=True)
class Bootstrap:
    boundary_policy: str  # the boundary's document
    deploy_trust: str
    deploy_policy: str


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Bootstrap:
    from cdktf import App, Testing

    from modules.bootstrap import BootstrapStack

    config = _config(github_repository=REPO)
    outdir = tmp_path_factory.mktemp("bootstrap")
    doc = json.loads(Testing.synth(BootstrapStack(App(outdir=str(outdir)), config=config, outdir=str(outdir))))
    (boundary,) = [p for p in resources(doc, "aws_iam_policy") if p["name"] == BOUNDARY_NAME]
    roles = {r["name"]: r for r in resources(doc, "aws_iam_role")}
    (deploy_policy,) = [p for p in resources(doc, "aws_iam_role_policy") if p["name"] == "deploy"]
    # What the deploy role holds: its inline policy and the managed parts bootstrap attaches to it
    # (modules/deploy_policies.py split), given to the test's deploy user as one document.
    parts = [p for p in resources(doc, "aws_iam_policy") if p["name"].startswith(f"{DEPLOY}-")]
    assert sorted(p["name"] for p in parts) == sorted(f"{DEPLOY}-{part}" for part in MANAGED_PARTS)
    merged = json.loads(deploy_policy["policy"])
    for part in parts:
        merged["Statement"] += json.loads(part["policy"])["Statement"]
    bucket = config.resolved_state_bucket
    return Bootstrap(
        _resolve(boundary["policy"], bucket),
        _resolve(roles[DEPLOY]["assume_role_policy"], bucket),
        _resolve(json.dumps(merged), bucket),
    )


@pytest.fixture(scope="module", params=["adopt", "fleet"])
def iam_stack(request: pytest.FixtureRequest, synthesized: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The dev IAM stack as `make plan ENV=dev` synthesizes it (golden inputs: account 111111111111), rendered for
    moto's account: only the account differs from what the deploy role applies in dev. `fleet`: dev switched to
    fleet mode (modules/config.py gpu_mode), synthesized here for moto's account."""
    if request.param == "adopt":
        text = json.dumps(load(synthesized(ENV))["gpu-orchestrator-iam"])
        return dict(json.loads(text.replace("111111111111", ACCOUNT)))
    from cdktf import App

    from main import compose
    from modules.config import validate

    config = _config(gpu_mode="fleet", gpu_instance_ids=(), fleet_max_size=4, gpus_per_instance=4)
    validate(config)
    outdir = tmp_path_factory.mktemp("fleet-dev")
    app = App(outdir=str(outdir))
    compose(app, config)
    app.synth()
    doc = load(outdir)["gpu-orchestrator-iam"]
    assert "autoscaling:SetDesiredCapacity" in json.dumps(doc)  # the fleet's grants are what gets applied
    return doc


# -- the server --------------------------------------------------------------------------------------------------
@dataclass
class World:
    endpoint: str
    admin: authserver.Keys
    deploy: authserver.Keys

    def client(self, who: str, service: str) -> Any:
        keys = {"admin": self.admin, "deploy": self.deploy}[who]
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
        )


@pytest.fixture(scope="module")
def world(bootstrap: Bootstrap, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    log_path = tmp_path_factory.mktemp("authserver") / "stderr.log"
    with log_path.open("w") as log, authserver.running(log=log, max_seconds=300) as endpoint:
        admin = authserver.bootstrap_admin(endpoint, REGION)
        world = World(endpoint, admin, admin)
        iam = world.client("admin", "iam")
        created = iam.create_policy(PolicyName=BOUNDARY_NAME, PolicyDocument=bootstrap.boundary_policy)
        assert created["Policy"]["Arn"] == BOUNDARY
        iam.create_role(RoleName=DEPLOY, AssumeRolePolicyDocument=bootstrap.deploy_trust)
        iam.put_role_policy(RoleName=DEPLOY, PolicyName="deploy", PolicyDocument=bootstrap.deploy_policy)
        iam.create_role(RoleName=PLAN, AssumeRolePolicyDocument=bootstrap.deploy_trust)
        world.deploy = authserver.user_like_role(iam, DEPLOY)
        sqs = world.client("admin", "sqs")
        for queue in (f"gpu_tasks_queue-{ENV}", "someone-elses-queue"):
            sqs.create_queue(QueueName=queue)
        yield world


@pytest.fixture
def fresh(world: World) -> World:
    """No runtime role and no instance profile: each test makes the ones it needs."""
    iam = world.client("admin", "iam")
    for name in (p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"]):
        for role in iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]:
            iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=role["RoleName"])
        iam.delete_instance_profile(InstanceProfileName=name)
    for role in iam.list_roles()["Roles"]:
        if role["RoleName"] in (DEPLOY, PLAN):
            continue
        for policy in iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]:
            iam.delete_role_policy(RoleName=role["RoleName"], PolicyName=policy)
        for attached in iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"]:
            iam.detach_role_policy(RoleName=role["RoleName"], PolicyArn=attached["PolicyArn"])
        iam.delete_role(RoleName=role["RoleName"])
    return world


def legacy_role(world: World, name: str) -> None:
    """A runtime role as an environment applied before the boundary existed: no boundary (made by the admin)."""
    world.client("admin", "iam").create_role(RoleName=name, AssumeRolePolicyDocument=LAMBDA_TRUST)


def bounded_role(world: World, name: str) -> None:
    """A runtime role as the deploy role creates it: with the boundary."""
    world.client("deploy", "iam").create_role(
        RoleName=name, AssumeRolePolicyDocument=LAMBDA_TRUST, PermissionsBoundary=BOUNDARY
    )


# -- escalations, each refused -----------------------------------------------------------------------------------
@pytest.mark.parametrize("role", RUNTIME_ROLES)
def test_a_policy_granting_everything_on_a_role_without_the_boundary_is_refused(fresh: World, role: str) -> None:
    legacy_role(fresh, role)
    message = refused(
        lambda: fresh.client("deploy", "iam").put_role_policy(
            RoleName=role, PolicyName="least-privilege", PolicyDocument=EVERYTHING
        )
    )
    assert "iam:PutRolePolicy" in message


@pytest.mark.parametrize("role", RUNTIME_ROLES)
def test_trusting_a_foreign_account_on_a_role_without_the_boundary_is_refused(fresh: World, role: str) -> None:
    legacy_role(fresh, role)
    iam = fresh.client("deploy", "iam")
    refused(lambda: iam.update_assume_role_policy(RoleName=role, PolicyDocument=FOREIGN_TRUST))
    assert fresh.client("admin", "iam").get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"] == json.loads(
        LAMBDA_TRUST
    )


@pytest.mark.parametrize(
    "name",
    [
        "orchestrator-task-role-evil-dev",  # what `orchestrator-task-role*-dev` admitted
        "gpu-instance-role-x-dev",
        "lambda-gpu-shutdown-role-dev2",
        "task-events-role-x-dev",
        "task-webhooks-role",  # no environment
        "orchestrator-task-role-staging",  # another environment's
        "admin-dev",
    ],
)
def test_a_role_outside_the_exact_names_is_refused_even_with_the_boundary(fresh: World, name: str) -> None:
    iam = fresh.client("deploy", "iam")
    refused(lambda: iam.create_role(RoleName=name, AssumeRolePolicyDocument=LAMBDA_TRUST, PermissionsBoundary=BOUNDARY))


@pytest.mark.parametrize(
    "boundary", [None, ADMIN_POLICY, f"arn:aws:iam::{ACCOUNT}:policy/gpu-orchestrator-boundary-prod"]
)
def test_a_runtime_role_without_this_boundary_is_refused(fresh: World, boundary: str | None) -> None:
    iam = fresh.client("deploy", "iam")
    extra = {"PermissionsBoundary": boundary} if boundary else {}
    refused(lambda: iam.create_role(RoleName=SHUTDOWN, AssumeRolePolicyDocument=LAMBDA_TRUST, **extra))
    bounded_role(fresh, GPU)
    if boundary:
        refused(lambda: iam.put_role_permissions_boundary(RoleName=GPU, PermissionsBoundary=boundary))
    assert iam.get_role(RoleName=GPU)["Role"]["PermissionsBoundary"]["PermissionsBoundaryArn"] == BOUNDARY


def test_the_boundary_can_never_be_removed(fresh: World) -> None:
    bounded_role(fresh, SHUTDOWN)
    legacy_role(fresh, GPU)
    iam = fresh.client("deploy", "iam")
    for role in (SHUTDOWN, GPU):
        assert "iam:DeleteRolePermissionsBoundary" in refused(
            partial(iam.delete_role_permissions_boundary, RoleName=role)
        )
    assert iam.get_role(RoleName=SHUTDOWN)["Role"]["PermissionsBoundary"]["PermissionsBoundaryArn"] == BOUNDARY


def test_the_boundary_policy_cannot_be_edited_replaced_or_deleted(fresh: World, bootstrap: Bootstrap) -> None:
    iam = fresh.client("deploy", "iam")
    refused(lambda: iam.create_policy_version(PolicyArn=BOUNDARY, PolicyDocument=EVERYTHING, SetAsDefault=True))
    refused(lambda: iam.set_default_policy_version(PolicyArn=BOUNDARY, VersionId="v1"))
    refused(lambda: iam.delete_policy_version(PolicyArn=BOUNDARY, VersionId="v1"))
    refused(lambda: iam.delete_policy(PolicyArn=BOUNDARY))
    refused(lambda: iam.tag_policy(PolicyArn=BOUNDARY, Tags=[{"Key": "k", "Value": "v"}]))
    refused(lambda: iam.create_policy(PolicyName="gpu-orchestrator-boundary-dev-2", PolicyDocument=EVERYTHING))
    version = fresh.client("admin", "iam").get_policy(PolicyArn=BOUNDARY)["Policy"]["DefaultVersionId"]
    assert version == "v1"
    current = fresh.client("admin", "iam").get_policy_version(PolicyArn=BOUNDARY, VersionId="v1")["PolicyVersion"]
    assert current["Document"] == json.loads(bootstrap.boundary_policy)


def test_no_managed_policy_can_be_attached_even_to_a_bounded_role(fresh: World) -> None:
    bounded_role(fresh, GPU)
    iam = fresh.client("deploy", "iam")
    refused(lambda: iam.attach_role_policy(RoleName=GPU, PolicyArn=ADMIN_POLICY))
    refused(lambda: iam.attach_role_policy(RoleName=GPU, PolicyArn=BOUNDARY))


def test_the_ci_roles_stay_out_of_reach(fresh: World) -> None:
    iam = fresh.client("deploy", "iam")
    for role in (DEPLOY, PLAN):
        refused(partial(iam.put_role_policy, RoleName=role, PolicyName="more", PolicyDocument=EVERYTHING))
        refused(partial(iam.update_assume_role_policy, RoleName=role, PolicyDocument=FOREIGN_TRUST))
        refused(partial(iam.put_role_permissions_boundary, RoleName=role, PermissionsBoundary=BOUNDARY))


def test_roles_are_passed_only_to_their_own_service(fresh: World) -> None:
    """iam:PassRole (checked on lambda:CreateFunction): the shutdown, orchestrator, task-events and task-webhooks roles
    to Lambda (each runs a function); the GPU instance's role never. And into the instance profile (EC2) only the GPU
    role: a Lambda role there is refused."""
    for role in RUNTIME_ROLES:
        bounded_role(fresh, role)
    lam = fresh.client("deploy", "lambda")

    def create(role: str, name: str = "shutdown-gpu-lambda") -> Any:
        return lam.create_function(
            FunctionName=f"{name}-{ENV}",
            Runtime="python3.11",
            Role=f"arn:aws:iam::{ACCOUNT}:role/{role}",
            Handler="shutdown.handler.handler",
            Code={"ZipFile": _zip()},
        )

    assert "iam:PassRole" in refused(lambda: create(GPU))
    for role, function in LAMBDA_ROLES.items():
        assert create(role, function)["Role"].endswith(f":role/{role}")
    iam = fresh.client("deploy", "iam")
    iam.create_instance_profile(InstanceProfileName=PROFILE)
    for role in LAMBDA_ROLES:
        assert "iam:PassRole" in refused(
            partial(iam.add_role_to_instance_profile, InstanceProfileName=PROFILE, RoleName=role)
        )
    iam.add_role_to_instance_profile(InstanceProfileName=PROFILE, RoleName=GPU)
    for function in LAMBDA_ROLES.values():  # a removed function is deleted by an apply, with the deploy role's key
        lam.delete_function(FunctionName=f"{function}-{ENV}")


def test_only_the_two_caller_policies_can_be_created_and_never_attached(fresh: World) -> None:
    """The API's submit and admin policies, by their exact names; any other managed policy (one CI could then attach
    to something) is refused, and so is attaching either, to a role, a user or a group."""
    iam = fresh.client("deploy", "iam")
    for name in (f"gpu-orchestrator-submit-{ENV}", f"gpu-orchestrator-admin-{ENV}"):
        created = iam.create_policy(PolicyName=name, PolicyDocument=EVERYTHING)["Policy"]
        refused(partial(iam.attach_role_policy, RoleName=DEPLOY, PolicyArn=created["Arn"]))
        refused(partial(iam.attach_user_policy, UserName="deploy", PolicyArn=created["Arn"]))
    for name in (f"gpu-orchestrator-submit-{ENV}-evil", f"gpu-orchestrator-power-{ENV}", "AdminEverything"):
        refused(partial(iam.create_policy, PolicyName=name, PolicyDocument=EVERYTHING))


def test_no_service_linked_role_but_auto_scalings(fresh: World) -> None:
    """iam:CreateServiceLinkedRole is allowed for Auto Scaling's role only (iam:AWSServiceName): a service-linked
    role of any other service, with whatever policy AWS gives that service, is refused."""
    iam = fresh.client("deploy", "iam")
    for service in ("elasticbeanstalk.amazonaws.com", "ecs.amazonaws.com", "spot.amazonaws.com"):
        assert "iam:CreateServiceLinkedRole" in refused(partial(iam.create_service_linked_role, AWSServiceName=service))


def _zip() -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("shutdown/handler.py", "def handler(event, context):\n    return None\n")
    return buffer.getvalue()


# -- a normal apply, allowed -------------------------------------------------------------------------------------
def test_a_normal_apply_of_the_iam_stack_is_allowed_call_by_call(fresh: World, iam_stack: dict[str, Any]) -> None:
    """The dev IAM stack's roles, policies and profile, created, read, updated and deleted as Terraform does it,
    with the deploy role's key only."""
    iam = fresh.client("deploy", "iam")
    roles = iam_stack["resource"]["aws_iam_role"]
    names = {f"${{aws_iam_role.{address}.id}}": body["name"] for address, body in roles.items()}
    names.update({f"${{aws_iam_role.{address}.name}}": body["name"] for address, body in roles.items()})
    assert sorted(body["name"] for body in roles.values()) == sorted(RUNTIME_ROLES)
    for body in roles.values():
        assert body["permissions_boundary"] == BOUNDARY
        iam.create_role(
            RoleName=body["name"],
            AssumeRolePolicyDocument=body["assume_role_policy"],
            Description=body["description"],
            MaxSessionDuration=body["max_session_duration"],
            PermissionsBoundary=body["permissions_boundary"],
            Tags=TAGS,  # the provider's default tags: CreateRole with tags also needs iam:TagRole
        )
    for body in iam_stack["resource"]["aws_iam_role_policy"].values():
        document = re.sub(r"\$\{[^}]+\}", f"arn:aws:sqs:{REGION}:{ACCOUNT}:resolved-at-apply", body["policy"])
        iam.put_role_policy(RoleName=names[body["role"]], PolicyName=body["name"], PolicyDocument=document)
    (profile,) = iam_stack["resource"]["aws_iam_instance_profile"].values()
    assert profile["name"] == PROFILE
    iam.create_instance_profile(InstanceProfileName=PROFILE, Tags=TAGS)
    iam.add_role_to_instance_profile(InstanceProfileName=PROFILE, RoleName=names[profile["role"]])

    # refresh (every plan), then the updates a later change makes
    for role in RUNTIME_ROLES:
        got = iam.get_role(RoleName=role)["Role"]
        assert got["PermissionsBoundary"]["PermissionsBoundaryArn"] == BOUNDARY
        for policy in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            iam.get_role_policy(RoleName=role, PolicyName=policy)
        iam.list_attached_role_policies(RoleName=role)
        iam.list_instance_profiles_for_role(RoleName=role)
        iam.list_role_tags(RoleName=role)
        iam.update_assume_role_policy(RoleName=role, PolicyDocument=json.dumps(got["AssumeRolePolicyDocument"]))
        iam.update_role(RoleName=role, MaxSessionDuration=7200)
        iam.update_role_description(RoleName=role, Description="changed by a later apply")
        iam.tag_role(RoleName=role, Tags=[{"Key": "owner", "Value": "ops"}])
        iam.untag_role(RoleName=role, TagKeys=["owner"])
        iam.put_role_policy(RoleName=role, PolicyName="least-privilege", PolicyDocument=EVERYTHING)  # capped
    iam.get_instance_profile(InstanceProfileName=PROFILE)
    iam.tag_instance_profile(InstanceProfileName=PROFILE, Tags=[{"Key": "owner", "Value": "ops"}])
    iam.untag_instance_profile(InstanceProfileName=PROFILE, TagKeys=["owner"])

    # destroy (make destroy runs with admin credentials, but a removed resource is deleted by an apply)
    iam.remove_role_from_instance_profile(InstanceProfileName=PROFILE, RoleName=GPU)
    iam.delete_instance_profile(InstanceProfileName=PROFILE)
    for role in RUNTIME_ROLES:
        for policy in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            iam.delete_role_policy(RoleName=role, PolicyName=policy)
        iam.delete_role(RoleName=role)
    assert {r["RoleName"] for r in fresh.client("admin", "iam").list_roles()["Roles"]} == {DEPLOY, PLAN}


def test_a_role_applied_before_the_boundary_existed_can_be_given_it_and_only_it(fresh: World) -> None:
    """The one write allowed on a role without the boundary: putting this boundary on it (the first apply after
    the upgrade does that before it may write anything else there)."""
    legacy_role(fresh, GPU)
    iam = fresh.client("deploy", "iam")
    iam.put_role_permissions_boundary(RoleName=GPU, PermissionsBoundary=BOUNDARY)
    iam.put_role_policy(RoleName=GPU, PolicyName="least-privilege", PolicyDocument=EVERYTHING)
    iam.update_assume_role_policy(RoleName=GPU, PolicyDocument=trust({"Service": "ec2.amazonaws.com"}))


# -- and what it writes stays inside the boundary ----------------------------------------------------------------
def test_what_the_deploy_role_writes_on_a_runtime_role_cannot_exceed_the_boundary(fresh: World) -> None:
    """The worst the deploy role can do to a runtime role: `Action: *` on it and a trust of its choosing (here the
    admin user, so a test can hold a session of it). That session is still capped by the boundary."""
    bounded_role(fresh, SHUTDOWN)
    iam = fresh.client("deploy", "iam")
    iam.put_role_policy(RoleName=SHUTDOWN, PolicyName="least-privilege", PolicyDocument=EVERYTHING)
    admin_arn = fresh.client("admin", "sts").get_caller_identity()["Arn"]
    iam.update_assume_role_policy(RoleName=SHUTDOWN, PolicyDocument=trust({"AWS": admin_arn}))
    credentials = fresh.client("admin", "sts").assume_role(
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/{SHUTDOWN}", RoleSessionName="probe"
    )["Credentials"]
    session = boto3.session.Session(
        region_name=REGION,
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
    )
    as_role = session.client("iam", endpoint_url=fresh.endpoint)
    refused(lambda: as_role.create_user(UserName="backdoor"))
    refused(lambda: as_role.put_role_policy(RoleName=DEPLOY, PolicyName="more", PolicyDocument=EVERYTHING))
    refused(lambda: as_role.delete_role_permissions_boundary(RoleName=SHUTDOWN))
    refused(lambda: as_role.attach_role_policy(RoleName=SHUTDOWN, PolicyArn=ADMIN_POLICY))
    sqs = session.client("sqs", endpoint_url=fresh.endpoint)
    other = fresh.client("admin", "sqs").get_queue_url(QueueName="someone-elses-queue")["QueueUrl"]
    refused(lambda: sqs.send_message(QueueUrl=other, MessageBody="exfiltrate"))
    own = fresh.client("admin", "sqs").get_queue_url(QueueName=f"gpu_tasks_queue-{ENV}")["QueueUrl"]
    sqs.send_message(QueueUrl=own, MessageBody="{}")  # inside the boundary: allowed
