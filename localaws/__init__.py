"""A local AWS built from the synthesized stacks: a test harness, not a replacement for Terraform.

`build()` reads every `cdk.tf.json` of one synthesized environment and creates each resource it declares in a moto
server (queues with their redrive policy, the table with its attributes and index, roles with their trust and
policy documents, the instance profile, both Lambdas from their zipped assets, the API's layer, alias, function
URLs and managed policies, the GPU host's SSM document and association or its security group, launch template and
instances, the alarm, the bucket...), resolving the references between resources and between stacks the way
Terraform would. An argument it does not model is an error, so the harness cannot drift from the stacks. It does
not plan, diff, or destroy, and it knows only the resource types our stacks use. What moto lacks and the harness
models instead is said where it is modelled: localaws/resources.py (the alias's function URL),
localaws/gpu_resources.py (associations, launch-template profiles, AWS's public AMI parameters),
localaws/autoscaling.py (the fleet's Auto Scaling group: warm pool, protection, the terminating hook; its creator is
localaws/fleet_resources.py), localaws/lambdas.py (asynchronous invoke), localaws/host.py (an instance booting its
bootstrap).

Adopted GPU instances (the default mode) are inputs to the stacks, not resources of them: the harness launches a
moto instance for each configured id and substitutes the new ids throughout before creating anything. Created
ones (create mode) are `aws_instance` resources like any other; either way they are left stopped. In fleet mode
the group's warm pool holds them, stopped, and the group starts them (`LocalAws.fleet_name`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from core import contract
from localaws import fleet_resources, gpu_resources, lambda_resources  # noqa: F401  (register their creators)
from localaws.gpu_resources import DataResolver, escape_literals
from localaws.resources import create
from localaws.tfjson import Stack, load_stacks, resource_order, stack_order
from modules.layout import ARTIFACTS, DYNAMODB, LAMBDA, SQS, STACK_ORDER

DEFAULT_REGION = "us-east-1"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@dataclass
class LocalAws:
    endpoint_url: str
    region: str
    outputs: dict[str, dict[str, Any]]
    attributes: dict[str, dict[str, Any]]
    instance_ids: list[str]
    instance_id_map: dict[str, str]
    queue_url: str = ""
    queue_arn: str = ""
    dlq_url: str = ""
    dlq_arn: str = ""
    table_name: str = ""
    hosts_table_name: str = ""  # gpu_hosts (see env())
    status_index: str = ""
    bucket: str = ""
    visibility_timeout: int = 0
    max_receive_count: int = 0
    lambda_env: dict[str, str] = field(default_factory=dict)
    idle_window_seconds: int = 0
    fleet_name: str = ""  # fleet mode: the GPU fleet's Auto Scaling group ("" in adopt and create modes)
    credentials: dict[str, str] = field(default_factory=lambda: dict(FAKE_CREDENTIALS))

    def _connection(self) -> dict[str, Any]:
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": self.credentials["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": self.credentials["AWS_SECRET_ACCESS_KEY"],
        }

    def client(self, service: str, **kwargs: Any) -> Any:
        return boto3.client(service, **self._connection(), **kwargs)

    def resource(self, service: str) -> Any:
        return boto3.resource(service, **self._connection())

    def env(self) -> dict[str, str]:
        """The runtime environment variables (contract names) pointing at this local AWS. Not HOSTS_TABLE_NAME
        (`hosts_table_name`): an adapter given it records liveness, for which it asks its instance's metadata
        service, and a process on this machine is on no instance (an emulated host's adapter reads the name from
        its SSM config and has a metadata service of its own: localaws/host.py)."""
        names = {
            contract.AWS_ENDPOINT_URL: self.endpoint_url,
            contract.AWS_DEFAULT_REGION: self.region,
            contract.AWS_REGION: self.region,
            contract.TASK_QUEUE_URL: self.queue_url,
            contract.TASK_DLQ_URL: self.dlq_url,
            contract.TASK_TABLE_NAME: self.table_name,
            contract.TASK_STATUS_INDEX: self.status_index,
            contract.ARTIFACTS_BUCKET: self.bucket,
            contract.GPU_INSTANCE_IDS: ",".join(self.instance_ids),
            contract.CONTROLLER_FUNCTION_NAME: self.outputs[LAMBDA]["FunctionName"],
        }
        if self.fleet_name:
            names[contract.GPU_FLEET_NAME] = self.fleet_name
        return {**self.credentials, **{setting.name: value for setting, value in names.items()}}

    def adapter_env(self, work_dir: str | Path) -> dict[str, str]:
        """What `python -m adapter` needs on this machine beside `env()`: a work dir it may write (the default is
        the instance's /var/lib path), and unbuffered output, so its lines reach a log file or pipe as they happen
        (as journald gets them on the instance) rather than when a buffer fills or the process exits."""
        return {**self.env(), "PYTHONUNBUFFERED": "1", contract.WORK_DIR.name: str(work_dir)}

    def of_type(self, rtype: str) -> dict[str, dict[str, Any]]:
        """Created resources of one Terraform type: '<stack>/<type>.<name>' -> attributes."""
        return {k: v for k, v in self.attributes.items() if k.split("/", 1)[1].startswith(rtype + ".")}


def _substitute(value: Any, mapping: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for old, new in mapping.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, Mapping):
        return {k: _substitute(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, mapping) for v in value]
    return value


@functools.lru_cache(maxsize=64)
def _build_client(service: str, endpoint_url: str, region: str, key_id: str, secret: str) -> Any:
    """The build's own clients, kept across builds: a test suite rebuilds the environment for every test, and a
    fresh session loads every service model again (about a second of each build). Only `build()` uses them and it
    registers no event hooks on them, so one build cannot leave anything on the next one's clients."""
    session = boto3.session.Session(region_name=region, aws_access_key_id=key_id, aws_secret_access_key=secret)
    return session.client(service, endpoint_url=endpoint_url)


def _configured_instances(stacks: Mapping[str, Any]) -> list[str]:
    """The adopted instances (inputs to the stacks, not resources of them), from the controller's environment; none
    when the stacks create their instances (create mode: `aws_instance` resources)."""
    if any(res.type == "aws_instance" for stack in stacks.values() for res in stack.resources()):
        return []
    for res in stacks[LAMBDA].resources():
        if res.type == "aws_lambda_function":
            # Read with the contract's own parser: the Lambda's environment must be what the Lambda reads.
            return list(contract.GPU_INSTANCE_IDS.read(res.body["environment"]["variables"]))
    raise ValueError("no shutdown function in the synthesized stacks: cannot tell the GPU instance ids")


def build(
    outdir: Path,
    endpoint_url: str,
    *,
    region: str = DEFAULT_REGION,
    instance_state: str = "stopped",
    credentials: Mapping[str, str] | None = None,
) -> LocalAws:
    """Create every resource of the environment synthesized under `outdir` in the moto server at `endpoint_url`.

    `credentials` ({"AWS_ACCESS_KEY_ID": ..., "AWS_SECRET_ACCESS_KEY": ...}) sign the build's requests and stay
    on the result (its client(), resource(), env()): a server that enforces IAM needs a real key, e.g. an admin's.
    """
    creds = dict(credentials or FAKE_CREDENTIALS)
    stacks = load_stacks(outdir)

    def client(service: str) -> Any:
        return _build_client(service, endpoint_url, region, creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"])

    configured = _configured_instances(stacks)
    mapping: dict[str, str] = {}
    if configured:
        launched = client("ec2").run_instances(
            ImageId="ami-12c6146b", MinCount=len(configured), MaxCount=len(configured), InstanceType="g5.xlarge"
        )["Instances"]
        mapping = {old: inst["InstanceId"] for old, inst in zip(configured, launched, strict=True)}
        if instance_state == "stopped":
            client("ec2").stop_instances(InstanceIds=list(mapping.values()))

    resolver = DataResolver(client)
    for name in stack_order(stacks, STACK_ORDER):
        original = stacks[name]
        stack = escape_literals(Stack(name, original.directory, _substitute(original.doc, mapping)))
        resolver.bind(stack)
        for res in resource_order(stack):
            args = resolver.resolve(name, res.body)
            resolver.attributes[res.key] = create(res.type, client, args, stack.directory, res.key)
        resolver.record_outputs(stack)

    created = [a["id"] for k, a in resolver.attributes.items() if k.split("/", 1)[1].startswith("aws_instance.")]
    if created and instance_state == "stopped":  # as an adopted instance is found: stopped until work arrives
        client("ec2").stop_instances(InstanceIds=created)
    local = LocalAws(
        endpoint_url=endpoint_url,
        region=region,
        outputs=resolver.outputs,
        attributes=resolver.attributes,
        instance_ids=list(mapping.values()) or created,
        instance_id_map=mapping,
        credentials=creds,
    )
    _describe(local, client)
    return local


def _describe(local: LocalAws, client: Any) -> None:
    """Fill the convenience attributes from what was created (not from a second copy of the settings)."""
    sqs_out = local.outputs[SQS]
    local.queue_url, local.queue_arn, local.dlq_url = sqs_out["QueueUrl"], sqs_out["QueueArn"], sqs_out["DLQUrl"]
    attrs = client("sqs").get_queue_attributes(QueueUrl=local.queue_url, AttributeNames=["All"])["Attributes"]
    local.visibility_timeout = int(attrs["VisibilityTimeout"])
    redrive = json.loads(attrs["RedrivePolicy"])
    local.max_receive_count = int(redrive["maxReceiveCount"])
    local.dlq_arn = redrive["deadLetterTargetArn"]
    local.table_name = local.outputs[DYNAMODB]["TableName"]
    local.hosts_table_name = local.outputs[DYNAMODB]["HostsTableName"]
    table = client("dynamodb").describe_table(TableName=local.table_name)["Table"]
    local.status_index = table["GlobalSecondaryIndexes"][0]["IndexName"]
    local.bucket = local.outputs[ARTIFACTS]["BucketName"]
    (function,) = [a for k, a in local.of_type("aws_lambda_function").items() if k.startswith(f"{LAMBDA}/")]
    local.lambda_env = dict(function["environment"])
    local.idle_window_seconds = int(local.lambda_env["IDLE_WINDOW_SECONDS"])
    groups = list(local.of_type("aws_autoscaling_group").values())
    if len(groups) > 1:
        raise ValueError(f"{len(groups)} Auto Scaling groups in the synthesized stacks: the harness models one fleet")
    local.fleet_name = groups[0]["name"] if groups else ""
