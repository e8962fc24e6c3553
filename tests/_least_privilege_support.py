"""Fixtures and drivers for tests/test_least_privilege.py: an IAM-enforcing moto server holding the synthesized
`local` environment, a key per component that carries exactly its role's policies, and each component built the
way it runs (the orchestrator's app, the adapter's worker, the Lambda's handler) with that key and nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

import localaws
from localaws import authserver
from modules import deploy_resources as names

REPO = Path(__file__).resolve().parents[1]
REGION = localaws.DEFAULT_REGION
TOKEN = "least-privilege-token-0123"
DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}
# Each runtime role by its name (modules/deploy_resources.py holds the names; all but the adapter's trust Lambda).
COMPONENT_OF = {
    f"{names.ORCHESTRATOR_ROLE}-local": "orchestrator",
    f"{names.INSTANCE_ROLE}-local": "adapter",
    f"{names.SHUTDOWN_ROLE}-local": "lambda",
    f"{names.EVENTS_ROLE}-local": "events",
    f"{names.WEBHOOK_ROLE}-local": "webhooks",
}
# The Lambda's own windows shrunk, so a test needs no waiting (what tests/test_shutdown_moto.py shrinks too).
LAMBDA_OVERRIDES = {"IDLE_WINDOW_SECONDS": "0", "MIN_UPTIME_SECONDS": "0", "STOPPING_WAIT_SECONDS": "0"}


@dataclass
class World:
    aws: localaws.LocalAws  # signed by the admin user: setup and inspection only
    keys: dict[str, authserver.Keys]  # component -> key of a user carrying exactly its role's policies
    other_instance: str  # an instance that is not a GPU of this environment
    bundle_param: str

    def session(self, who: str) -> boto3.session.Session:
        k = self.keys[who]
        return boto3.session.Session(
            region_name=REGION,
            aws_access_key_id=k["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=k["AWS_SECRET_ACCESS_KEY"],
        )

    def client(self, who: str, service: str) -> Any:
        return self.session(who).client(service, endpoint_url=self.aws.endpoint_url)

    def state(self, instance_id: str) -> str:
        out = self.aws.client("ec2").describe_instances(InstanceIds=[instance_id])
        return str(out["Reservations"][0]["Instances"][0]["State"]["Name"])

    def depth(self, url: str) -> tuple[int, int]:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attrs = self.aws.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
        return int(attrs[names[0]]), int(attrs[names[1]])

    def item(self, task_id: str) -> dict[str, Any]:
        return dict(self.aws.resource("dynamodb").Table(self.aws.table_name).get_item(Key={"task_id": task_id})["Item"])


@pytest.fixture(scope="module")
def world(synthesized: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One enforcing server per module: admin first (the only unchecked requests), then the stacks, then the users."""
    log_path = tmp_path_factory.mktemp("authserver") / "stderr.log"
    with log_path.open("w") as log, authserver.running(log=log, max_seconds=300) as endpoint:
        aws = localaws.build(synthesized("local"), endpoint, credentials=authserver.bootstrap_admin(endpoint, REGION))
        iam = aws.client("iam")
        keys = {}
        for role in aws.of_type("aws_iam_role").values():
            keys[COMPONENT_OF[role["name"]]] = authserver.user_like_role(iam, role["name"])
        assert sorted(keys) == sorted(COMPONENT_OF.values())
        other = aws.client("ec2").run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]
        (bundle,) = [p["name"] for p in aws.of_type("aws_ssm_parameter").values() if p["name"].endswith("/bundle")]
        yield World(aws, keys, other["InstanceId"], bundle)


@pytest.fixture
def fresh(world: World) -> World:
    """The dynamic state back to as-built: empty queues, empty table, GPU stopped (the stacks stay)."""
    aws = world.aws
    for url in (aws.queue_url, aws.dlq_url):
        aws.client("sqs").purge_queue(QueueUrl=url)
    table = aws.resource("dynamodb").Table(aws.table_name)
    with table.batch_writer() as batch:
        for item in table.scan(ProjectionExpression="task_id")["Items"]:
            batch.delete_item(Key={"task_id": item["task_id"]})
    aws.client("ec2").stop_instances(InstanceIds=aws.instance_ids)
    return world


def warnings(caplog: pytest.LogCaptureFixture, component: str) -> list[tuple[str, Any]]:
    """What `component` logged at WARNING or above: where its code swallows an AWS error, a refusal shows here."""
    return [
        (r.getMessage(), getattr(r, "fields", None))
        for r in caplog.records
        if r.name.startswith(component) and r.levelno >= logging.WARNING
    ]


def refused(call: Callable[[], Any], denied: frozenset[str] | set[str] = DENIED) -> str:
    """Run `call`; the server must refuse it (an authorization error in the response, not a client-side check):
    its error code one of `denied`."""
    with pytest.raises(ClientError) as info:
        call()
    error = info.value.response["Error"]
    assert error["Code"] in denied, error
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] in (400, 403)
    return str(error.get("Message", ""))


# -- the components, each with its own key -----------------------------------------------------------------------
@contextmanager
def orchestrator(world: World) -> Iterator[Any]:
    """The orchestrator's app (what uvicorn serves) over clients signed with its role's key, in a test client; the
    controller it nudges runs in-process (localaws.lambdas) with the Lambda's own key, drained on the way out."""
    from fastapi.testclient import TestClient

    from localaws.lambdas import LocalController
    from orchestrator.app import create_app
    from orchestrator.settings import Clients, Settings

    settings = Settings.from_env({**world.aws.env(), "ORCHESTRATOR_TOKEN": TOKEN})
    session = world.session("orchestrator")
    with LocalController(world.aws, env=LAMBDA_OVERRIDES, run_as=world.keys["lambda"]) as controller:
        clients = Clients(
            sqs=world.client("orchestrator", "sqs"),
            ec2=world.client("orchestrator", "ec2"),
            lambda_=controller.client,
            table=session.resource("dynamodb", endpoint_url=world.aws.endpoint_url).Table(world.aws.table_name),
            s3=world.client("orchestrator", "s3"),
        )
        with TestClient(create_app(settings, clients), headers={"Authorization": f"Bearer {TOKEN}"}) as api:
            api.controller = controller
            yield api
        controller.drain()


def submit(world: World, task_type: str, params: dict[str, Any]) -> str:
    """As a client does it: through the orchestrator, which uses only its own key."""
    with orchestrator(world) as api:
        resp = api.post("/tasks", json={"type": task_type, "params": params})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["task_id"])


def install_adapter(world: World, root: Path) -> dict[str, str]:
    """adapter/deploy/install.sh as the instance runs it at boot, with the GPU role's key: reads the bundle and config
    parameters, downloads and unpacks the bundle; returns the environment file it writes for the adapter."""
    prefix = world.bundle_param.rsplit("/", 1)[0]
    env = {
        "PATH": os.environ["PATH"],
        "PYTHON": sys.executable,
        "AWS_ENDPOINT_URL": world.aws.endpoint_url,
        "AWS_REGION": REGION,
        **world.keys["adapter"],
        "ADAPTER_SSM_PREFIX": prefix,
        "ADAPTER_ROOT": str(root / "opt"),
        "ADAPTER_ENV_FILE": str(root / "adapter.env"),
    }
    done = subprocess.run(
        ["bash", str(REPO / "adapter" / "deploy" / "install.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = {}
    for line in (root / "adapter.env").read_text().splitlines():  # KEY="value", with \ and " escaped
        key, quoted = line.split("=", 1)
        out[key] = re.sub(r"\\(.)", r"\1", quoted[1:-1])
    return out


def adapter_worker(world: World, env: dict[str, str], work_dir: Path) -> Any:
    """`python -m adapter`'s worker, built from the installed environment with a session of the GPU role's key;
    times shrunk, the on-node autostop off (it would power the machine off), the rollout check due at once."""
    from adapter.__main__ import build

    env = {
        **env,
        "AWS_ENDPOINT_URL": world.aws.endpoint_url,
        "AWS_REGION": REGION,
        "WORK_DIR": str(work_dir),
        "WAIT_TIME_SECONDS": "1",
        "HEARTBEAT_SECONDS": "0.2",
        "IDLE_WINDOW_SECONDS": "0",
        "DLQ_SWEEP_SECONDS": "3600",
        "WORKER_ID": "gpu-1",
        "ROLLOUT_CHECK_SECONDS": "0",
    }
    return build(env, session=world.session("adapter"))


def invoke_lambda(world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """The handler in-process, with the synthesized Lambda environment and its role's key in os.environ (where the
    runtime puts them; the handler builds its clients from the default chain)."""
    from functions.shutdown.handler import handler

    env = {
        **world.aws.lambda_env,
        **world.keys["lambda"],
        **LAMBDA_OVERRIDES,
        "AWS_ENDPOINT_URL": world.aws.endpoint_url,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # no credentials cached by an earlier default session
    capsys.readouterr()
    out = handler({"source": "aws.events"}, None)
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "error" not in record, record
    return dict(out)
