"""Creators for the Lambda resource types (functions, their permissions, layers, aliases, function URLs and event
source mappings), registered with localaws.resources.creator. Strict like localaws/resources.py: an argument that
is not modelled is an error. A function's or layer's zip is read from the synthesized stack's assets and refused
when its bytes do not match the `source_code_hash` the plan carries, as Terraform would plan a change."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from localaws.resources import Clients, _one, creator
from localaws.tfjson import UnsupportedTerraform


def _checked_zip(stack_dir: Path, filename: str, source_code_hash: str, what: str) -> bytes:
    """The asset's bytes, refused (as Terraform would plan a change) when they are not what the hash says."""
    code = (stack_dir / filename).read_bytes()
    if base64.b64encode(hashlib.sha256(code).digest()).decode() != source_code_hash:
        raise UnsupportedTerraform(f"{what}: source_code_hash does not match {filename}")
    return code


@creator(
    "aws_lambda_function",
    "function_name",
    "role",
    "runtime",
    "handler",
    "memory_size",
    "timeout",
    "filename",
    "source_code_hash",
    "environment",
    "reserved_concurrent_executions",
    "tracing_config",
    "dead_letter_config",
    "layers",
    "architectures",
    "publish",
)
def _function(c: Clients, a: dict[str, Any], stack_dir: Path) -> dict[str, Any]:
    """moto checks that each layer version ARN exists (CreateFunction refuses an unknown one) and, with `publish`,
    publishes version 1 as Lambda does; the version and the qualified ARN come back as Terraform's attributes."""
    kwargs: dict[str, Any] = {
        "FunctionName": a["function_name"],
        "Role": a["role"],
        "Runtime": a["runtime"],
        "Handler": a["handler"],
        "Code": {"ZipFile": _checked_zip(stack_dir, a["filename"], a["source_code_hash"], a["function_name"])},
        "MemorySize": int(a["memory_size"]),
        "Timeout": int(a["timeout"]),
        "Environment": {"Variables": dict(_one(a.get("environment", {"variables": {}}))["variables"])},
        "Layers": list(a.get("layers", [])),
        "Architectures": list(a.get("architectures", ["x86_64"])),
        "Publish": bool(a.get("publish", False)),
    }
    if "tracing_config" in a:
        kwargs["TracingConfig"] = {"Mode": _one(a["tracing_config"])["mode"]}
    if "dead_letter_config" in a:
        # moto keeps no dead-letter config; what the harness can check is that the target queue exists.
        target = _one(a["dead_letter_config"])["target_arn"]
        if not target.startswith("arn:aws:sqs:"):
            raise UnsupportedTerraform(f"{a['function_name']}: dead-letter target {target} is not an SQS queue")
        c("sqs").get_queue_url(QueueName=target.rsplit(":", 1)[1])
        kwargs["DeadLetterConfig"] = {"TargetArn": target}
    fn = c("lambda").create_function(**kwargs)
    if a.get("reserved_concurrent_executions") is not None:
        c("lambda").put_function_concurrency(
            FunctionName=a["function_name"], ReservedConcurrentExecutions=int(a["reserved_concurrent_executions"])
        )
    return {
        "id": a["function_name"],
        "function_name": a["function_name"],
        "arn": fn["FunctionArn"],
        "version": fn["Version"],
        "qualified_arn": f"{fn['FunctionArn']}:{fn['Version']}",
        "layers": [layer["Arn"] for layer in fn.get("Layers", [])],
        "architectures": fn["Architectures"],
        "environment": kwargs["Environment"]["Variables"],
        "dead_letter_target_arn": kwargs.get("DeadLetterConfig", {}).get("TargetArn", ""),
    }


@creator("aws_lambda_permission", "action", "function_name", "principal", "source_arn")
def _permission(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    import hashlib

    sid = "allow-" + a["principal"].split(".")[0] + "-" + hashlib.sha256(a["source_arn"].encode()).hexdigest()[:12]
    c("lambda").add_permission(
        FunctionName=a["function_name"],
        StatementId=sid,
        Action=a["action"],
        Principal=a["principal"],
        SourceArn=a["source_arn"],
    )
    return {"id": sid}


@creator(
    "aws_lambda_layer_version",
    "layer_name",
    "filename",
    "source_code_hash",
    "compatible_runtimes",
    "compatible_architectures",
)
def _layer_version(c: Clients, a: dict[str, Any], stack_dir: Path) -> dict[str, Any]:
    layer = c("lambda").publish_layer_version(
        LayerName=a["layer_name"],
        Content={"ZipFile": _checked_zip(stack_dir, a["filename"], a["source_code_hash"], a["layer_name"])},
        CompatibleRuntimes=list(a.get("compatible_runtimes", [])),
        CompatibleArchitectures=list(a.get("compatible_architectures", [])),
    )
    return {
        "id": layer["LayerVersionArn"],
        "arn": layer["LayerVersionArn"],
        "layer_arn": layer["LayerArn"],
        "layer_name": a["layer_name"],
        "version": str(layer["Version"]),
        "code_size": layer["Content"]["CodeSize"],
    }


@creator("aws_lambda_alias", "name", "function_name", "function_version", "description")
def _alias(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    alias = c("lambda").create_alias(
        FunctionName=a["function_name"],
        Name=a["name"],
        FunctionVersion=a["function_version"],
        Description=a.get("description", ""),
    )
    return {
        "id": alias["AliasArn"],
        "arn": alias["AliasArn"],
        "name": a["name"],
        "function_name": a["function_name"],
        "function_version": alias["FunctionVersion"],
    }


FUNCTION_URL_AUTH_TYPES = ("AWS_IAM", "NONE")  # CreateFunctionUrlConfig AuthType (Lambda API Reference)


@creator("aws_lambda_function_url", "function_name", "authorization_type", "qualifier")
def _function_url(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    """An unqualified URL is moto's (create_function_url_config). A URL on an alias is modelled here: moto 5.2.5
    ignores CreateFunctionUrlConfig's Qualifier and would replace the function's own URL with it. What is modelled:
    the alias must exist (GetAlias), AuthType must be one Lambda accepts, and the URL has the form Lambda gives
    (`https://<32 lowercase alphanumerics>.lambda-url.<region>.on.aws/`, here derived from the alias ARN so it is the
    same on every build), with the alias ARN as its function_arn. moto serves neither kind of URL over HTTP."""
    import hashlib

    auth = a["authorization_type"]
    if auth not in FUNCTION_URL_AUTH_TYPES:
        raise UnsupportedTerraform(f"{a['function_name']}: function URL auth type {auth} is not AWS_IAM or NONE")
    qualifier = a.get("qualifier")
    if not qualifier:
        url = c("lambda").create_function_url_config(FunctionName=a["function_name"], AuthType=auth)
        return {"id": a["function_name"], "function_url": url["FunctionUrl"], "function_arn": url["FunctionArn"]}
    alias_arn = c("lambda").get_alias(FunctionName=a["function_name"], Name=qualifier)["AliasArn"]
    url_id = hashlib.sha256(alias_arn.encode()).hexdigest()[:32]
    region = alias_arn.split(":")[3]
    return {
        "id": f"{a['function_name']}/{qualifier}",
        "function_url": f"https://{url_id}.lambda-url.{region}.on.aws/",
        "function_arn": alias_arn,
        "url_id": url_id,
        "qualifier": qualifier,
        "authorization_type": auth,
    }


@creator(
    "aws_lambda_event_source_mapping",
    "function_name",
    "event_source_arn",
    "batch_size",
    "function_response_types",
    "starting_position",
    "maximum_retry_attempts",
    "bisect_batch_on_function_error",
    "destination_config",
)
def _event_source_mapping(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    """moto records the mapping (localaws/streams.py runs its polling); the on-failure destination must exist."""
    kwargs: dict[str, Any] = {
        "FunctionName": a["function_name"],
        "EventSourceArn": a["event_source_arn"],
        "BatchSize": int(a["batch_size"]),
        "FunctionResponseTypes": list(a.get("function_response_types", [])),
    }
    for arg, key in (("starting_position", "StartingPosition"), ("maximum_retry_attempts", "MaximumRetryAttempts")):
        if arg in a:
            kwargs[key] = int(a[arg]) if arg == "maximum_retry_attempts" else a[arg]
    if "bisect_batch_on_function_error" in a:
        kwargs["BisectBatchOnFunctionError"] = bool(a["bisect_batch_on_function_error"])
    if "destination_config" in a:
        target = _one(_one(a["destination_config"])["on_failure"])["destination_arn"]
        if not target.startswith("arn:aws:sqs:"):
            raise UnsupportedTerraform(f"{a['function_name']}: on-failure destination {target} is not an SQS queue")
        c("sqs").get_queue_url(QueueName=target.rsplit(":", 1)[1])
        kwargs["DestinationConfig"] = {"OnFailure": {"Destination": target}}
    # The moto server runs with localaws.streams.install(): the mapping is kept from moto's own (Docker) delivery.
    created = c("lambda").create_event_source_mapping(**kwargs)
    return {"id": created["UUID"], "uuid": created["UUID"], "function_arn": created["FunctionArn"]}
