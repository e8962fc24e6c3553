"""One creator per Terraform resource type we synthesize: resolved arguments in, AWS API calls out, the
attributes other resources may reference back. Each declares the arguments it understands; any other argument
is an error, so a new setting in the stacks cannot be silently dropped here."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localaws.tfjson import META_ARGUMENTS, UnsupportedTerraform

Clients = Callable[[str], Any]  # service name -> boto3 client bound to the local endpoint


@dataclass(frozen=True)
class Creator:
    arguments: frozenset[str]
    create: Callable[[Clients, dict[str, Any], Path], dict[str, Any]]


REGISTRY: dict[str, Creator] = {}


def creator(rtype: str, *arguments: str) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    def register(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        REGISTRY[rtype] = Creator(frozenset(arguments), fn)
        return fn

    return register


def create(rtype: str, clients: Clients, args: Mapping[str, Any], stack_dir: Path, where: str) -> dict[str, Any]:
    spec = REGISTRY.get(rtype)
    if spec is None:
        raise UnsupportedTerraform(f"{where}: resource type {rtype} is not modelled by the local AWS harness")
    unknown = sorted(set(args) - spec.arguments - META_ARGUMENTS)
    if unknown:
        raise UnsupportedTerraform(f"{where}: argument(s) {unknown} of {rtype} are not modelled")
    return spec.create(clients, {k: v for k, v in args.items() if k not in META_ARGUMENTS}, stack_dir)


def _one(block: Any) -> dict[str, Any]:
    """Nested blocks arrive as an object or a one-item list."""
    if isinstance(block, list):
        if len(block) != 1:
            raise UnsupportedTerraform(f"expected one block, got {len(block)}")
        return dict(block[0])
    return dict(block)


# -- SQS ---------------------------------------------------------------------------------------------------------
@creator(
    "aws_sqs_queue",
    "name",
    "visibility_timeout_seconds",
    "receive_wait_time_seconds",
    "message_retention_seconds",
    "sqs_managed_sse_enabled",
    "redrive_policy",
)
def _queue(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    names = {
        "visibility_timeout_seconds": "VisibilityTimeout",
        "receive_wait_time_seconds": "ReceiveMessageWaitTimeSeconds",
        "message_retention_seconds": "MessageRetentionPeriod",
        "sqs_managed_sse_enabled": "SqsManagedSseEnabled",
        "redrive_policy": "RedrivePolicy",
    }
    attrs = {names[k]: str(v).lower() if isinstance(v, bool) else str(v) for k, v in a.items() if k in names}
    url = c("sqs").create_queue(QueueName=a["name"], Attributes=attrs)["QueueUrl"]
    arn = c("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return {"id": url, "url": url, "arn": arn, "name": a["name"]}


@creator("aws_sqs_queue_redrive_allow_policy", "queue_url", "redrive_allow_policy")
def _redrive_allow(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    c("sqs").set_queue_attributes(QueueUrl=a["queue_url"], Attributes={"RedriveAllowPolicy": a["redrive_allow_policy"]})
    return {"id": a["queue_url"]}


# -- DynamoDB ----------------------------------------------------------------------------------------------------
@creator(
    "aws_dynamodb_table",
    "name",
    "billing_mode",
    "hash_key",
    "range_key",
    "attribute",
    "global_secondary_index",
    "point_in_time_recovery",
    "ttl",
    "server_side_encryption",
    "deletion_protection_enabled",
    "stream_enabled",
    "stream_view_type",
)
def _table(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    ddb = c("dynamodb")
    keys = [{"AttributeName": a["hash_key"], "KeyType": "HASH"}]
    if a.get("range_key"):
        keys.append({"AttributeName": a["range_key"], "KeyType": "RANGE"})
    gsis = []
    for g in a.get("global_secondary_index", []):
        unknown = set(g) - {"name", "hash_key", "range_key", "projection_type"}
        if unknown:
            raise UnsupportedTerraform(f"global_secondary_index argument(s) {sorted(unknown)} are not modelled")
        schema = [{"AttributeName": g["hash_key"], "KeyType": "HASH"}]
        if g.get("range_key"):
            schema.append({"AttributeName": g["range_key"], "KeyType": "RANGE"})
        gsis.append(
            {"IndexName": g["name"], "KeySchema": schema, "Projection": {"ProjectionType": g["projection_type"]}}
        )
    kwargs: dict[str, Any] = {
        "TableName": a["name"],
        "BillingMode": a["billing_mode"],
        "KeySchema": keys,
        "AttributeDefinitions": [{"AttributeName": x["name"], "AttributeType": x["type"]} for x in a["attribute"]],
        "DeletionProtectionEnabled": bool(a.get("deletion_protection_enabled", False)),
    }
    if gsis:
        kwargs["GlobalSecondaryIndexes"] = gsis
    if "server_side_encryption" in a:
        kwargs["SSESpecification"] = {"Enabled": bool(_one(a["server_side_encryption"])["enabled"])}
    if a.get("stream_enabled"):
        kwargs["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": a["stream_view_type"]}
    description = ddb.create_table(**kwargs)["TableDescription"]
    arn = description["TableArn"]
    if "point_in_time_recovery" in a:
        ddb.update_continuous_backups(
            TableName=a["name"],
            PointInTimeRecoverySpecification={
                "PointInTimeRecoveryEnabled": bool(_one(a["point_in_time_recovery"])["enabled"])
            },
        )
    if "ttl" in a:
        ttl = _one(a["ttl"])
        ddb.update_time_to_live(
            TableName=a["name"],
            TimeToLiveSpecification={"AttributeName": ttl["attribute_name"], "Enabled": bool(ttl["enabled"])},
        )
    return {"id": a["name"], "name": a["name"], "arn": arn, "stream_arn": description.get("LatestStreamArn", "")}


# -- S3 ----------------------------------------------------------------------------------------------------------
@creator("aws_s3_bucket", "bucket", "force_destroy")
def _bucket(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    c("s3").create_bucket(Bucket=a["bucket"])
    return {"id": a["bucket"], "bucket": a["bucket"], "arn": f"arn:aws:s3:::{a['bucket']}"}


@creator("aws_s3_bucket_versioning", "bucket", "versioning_configuration")
def _versioning(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    c("s3").put_bucket_versioning(
        Bucket=a["bucket"], VersioningConfiguration={"Status": _one(a["versioning_configuration"])["status"]}
    )
    return {"id": a["bucket"]}


@creator("aws_s3_bucket_server_side_encryption_configuration", "bucket", "rule")
def _encryption(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    rules = []
    for rule in a["rule"]:
        default = _one(rule["apply_server_side_encryption_by_default"])
        rules.append(
            {
                "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": default["sse_algorithm"]},
                "BucketKeyEnabled": bool(rule.get("bucket_key_enabled", False)),
            }
        )
    c("s3").put_bucket_encryption(Bucket=a["bucket"], ServerSideEncryptionConfiguration={"Rules": rules})
    return {"id": a["bucket"]}


@creator(
    "aws_s3_bucket_public_access_block",
    "bucket",
    "block_public_acls",
    "block_public_policy",
    "ignore_public_acls",
    "restrict_public_buckets",
)
def _public_access(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    c("s3").put_public_access_block(
        Bucket=a["bucket"],
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": a["block_public_acls"],
            "BlockPublicPolicy": a["block_public_policy"],
            "IgnorePublicAcls": a["ignore_public_acls"],
            "RestrictPublicBuckets": a["restrict_public_buckets"],
        },
    )
    return {"id": a["bucket"]}


@creator("aws_s3_bucket_ownership_controls", "bucket", "rule")
def _ownership(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    c("s3").put_bucket_ownership_controls(
        Bucket=a["bucket"], OwnershipControls={"Rules": [{"ObjectOwnership": _one(a["rule"])["object_ownership"]}]}
    )
    return {"id": a["bucket"]}


def _is_tls_only_deny(statement: Mapping[str, Any]) -> bool:
    return statement["Effect"] == "Deny" and "aws:SecureTransport" in json.dumps(statement.get("Condition", {}))


def _is_log_delivery_allow(statement: Mapping[str, Any]) -> bool:
    """S3 server access log delivery into this bucket, scoped to one source bucket and account."""
    condition = statement.get("Condition", {})
    return (
        statement["Effect"] == "Allow"
        and statement.get("Principal") == {"Service": "logging.s3.amazonaws.com"}
        and statement.get("Action") == "s3:PutObject"
        and "aws:SourceArn" in condition.get("ArnLike", {})
        and "aws:SourceAccount" in condition.get("StringEquals", {})
    )


@creator("aws_s3_bucket_policy", "bucket", "policy")
def _bucket_policy(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    """Validated, recorded, not installed. Our bucket policies deny requests without TLS, and (on the access-log
    bucket) let S3's log delivery write. moto serves plain HTTP here, and (5.2.5) evaluates a Deny whose condition
    does not match as a Deny anyway, so installing it would refuse every request, which real S3 over HTTPS would
    not. Tests read it back from `policy` to check it."""
    doc = json.loads(a["policy"])
    for statement in doc["Statement"]:
        if not (_is_tls_only_deny(statement) or _is_log_delivery_allow(statement)):
            raise UnsupportedTerraform(
                f"bucket policy statement {statement.get('Sid')!r} is neither the TLS-only "
                "deny nor the log-delivery allow the harness knows how to stand in for"
            )
    return {"id": a["bucket"], "policy": a["policy"]}


@creator("aws_s3_bucket_logging", "bucket", "target_bucket", "target_prefix")
def _bucket_logging(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    """Checked and recorded, not installed: moto accepts a logging target only once the target's bucket policy (or
    ACL) grants log delivery, and the harness cannot install bucket policies (see above). moto delivers no access
    logs anyway. The target must exist, as S3 requires."""
    c("s3").head_bucket(Bucket=a["target_bucket"])
    return {"id": a["bucket"], "target_bucket": a["target_bucket"], "target_prefix": a.get("target_prefix", "")}


@creator("aws_s3_bucket_lifecycle_configuration", "bucket", "rule")
def _lifecycle(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    rules = []
    for r in a["rule"]:
        rule: dict[str, Any] = {
            "ID": r["id"],
            "Status": r["status"],
            "Filter": {"Prefix": _one(r["filter"]).get("prefix", "")},
        }
        if r.get("expiration"):
            rule["Expiration"] = {"Days": _one(r["expiration"])["days"]}
        if r.get("noncurrent_version_expiration"):
            rule["NoncurrentVersionExpiration"] = {
                "NoncurrentDays": _one(r["noncurrent_version_expiration"])["noncurrent_days"]
            }
        if r.get("abort_incomplete_multipart_upload"):
            rule["AbortIncompleteMultipartUpload"] = {
                "DaysAfterInitiation": _one(r["abort_incomplete_multipart_upload"])["days_after_initiation"]
            }
        rules.append(rule)
    c("s3").put_bucket_lifecycle_configuration(Bucket=a["bucket"], LifecycleConfiguration={"Rules": rules})
    return {"id": a["bucket"]}


@creator("aws_s3_object", "bucket", "key", "source", "source_hash", "content_type")
def _object(c: Clients, a: dict[str, Any], stack_dir: Path) -> dict[str, Any]:
    body = (stack_dir / a["source"]).read_bytes()
    c("s3").put_object(
        Bucket=a["bucket"], Key=a["key"], Body=body, ContentType=a.get("content_type", "binary/octet-stream")
    )
    return {"id": a["key"], "bucket": a["bucket"], "key": a["key"]}


# -- SSM ---------------------------------------------------------------------------------------------------------
@creator("aws_ssm_parameter", "name", "type", "value", "description")
def _parameter(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    c("ssm").put_parameter(
        Name=a["name"], Type=a["type"], Value=a["value"], Description=a.get("description", ""), Overwrite=True
    )
    arn = c("ssm").get_parameter(Name=a["name"])["Parameter"]["ARN"]
    return {"id": a["name"], "name": a["name"], "arn": arn, "value": a["value"]}


# -- IAM ---------------------------------------------------------------------------------------------------------
@creator("aws_iam_role", "name", "description", "assume_role_policy", "max_session_duration")
def _role(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    role = c("iam").create_role(
        RoleName=a["name"],
        AssumeRolePolicyDocument=a["assume_role_policy"],
        Description=a.get("description", ""),
        MaxSessionDuration=int(a.get("max_session_duration", 3600)),
    )["Role"]
    return {"id": a["name"], "name": a["name"], "arn": role["Arn"], "unique_id": role["RoleId"]}


@creator("aws_iam_role_policy", "name", "role", "policy")
def _role_policy(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    json.loads(a["policy"])  # a policy that is not JSON would fail at apply: fail here too
    c("iam").put_role_policy(RoleName=a["role"], PolicyName=a["name"], PolicyDocument=a["policy"])
    return {"id": f"{a['role']}:{a['name']}"}


@creator("aws_iam_instance_profile", "name", "role")
def _profile(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    profile = c("iam").create_instance_profile(InstanceProfileName=a["name"])["InstanceProfile"]
    c("iam").add_role_to_instance_profile(InstanceProfileName=a["name"], RoleName=a["role"])
    return {"id": a["name"], "name": a["name"], "arn": profile["Arn"]}


# -- Lambda, logs, events, alarms --------------------------------------------------------------------------------
@creator("aws_cloudwatch_log_group", "name", "retention_in_days")
def _log_group(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    c("logs").create_log_group(logGroupName=a["name"])
    if "retention_in_days" in a:
        c("logs").put_retention_policy(logGroupName=a["name"], retentionInDays=int(a["retention_in_days"]))
    arn = c("logs").describe_log_groups(logGroupNamePrefix=a["name"])["logGroups"][0]["arn"].removesuffix(":*")
    return {"id": a["name"], "name": a["name"], "arn": arn}


@creator("aws_iam_policy", "name", "description", "policy")
def _managed_policy(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    json.loads(a["policy"])  # a policy that is not JSON would fail at apply: fail here too
    created = c("iam").create_policy(
        PolicyName=a["name"], PolicyDocument=a["policy"], Description=a.get("description", "")
    )["Policy"]
    return {"id": created["Arn"], "arn": created["Arn"], "name": a["name"], "policy_id": created["PolicyId"]}


@creator("aws_cloudwatch_event_rule", "name", "schedule_expression", "description")
def _rule(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    arn = c("events").put_rule(
        Name=a["name"], ScheduleExpression=a["schedule_expression"], Description=a.get("description", "")
    )["RuleArn"]
    return {"id": a["name"], "name": a["name"], "arn": arn}


@creator("aws_cloudwatch_event_bus", "name")
def _bus(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    arn = c("events").create_event_bus(Name=a["name"])["EventBusArn"]
    return {"id": a["name"], "name": a["name"], "arn": arn}


@creator("aws_secretsmanager_secret", "name", "description", "recovery_window_in_days")
def _secret(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    """Created without a value, as the stack does (the webhook function writes the first key)."""
    created = c("secretsmanager").create_secret(Name=a["name"], Description=a.get("description", ""))
    return {"id": created["ARN"], "arn": created["ARN"], "name": a["name"]}


@creator("aws_cloudwatch_event_target", "rule", "arn", "target_id")
def _target(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    c("events").put_targets(Rule=a["rule"], Targets=[{"Id": a["target_id"], "Arn": a["arn"]}])
    return {"id": f"{a['rule']}-{a['target_id']}"}


@creator(
    "aws_cloudwatch_metric_alarm",
    "alarm_name",
    "alarm_description",
    "comparison_operator",
    "threshold",
    "evaluation_periods",
    "datapoints_to_alarm",
    "metric_query",
    "treat_missing_data",
    "alarm_actions",
    "ok_actions",
)
def _alarm(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    queries = []
    for q in a["metric_query"]:
        query: dict[str, Any] = {"Id": q["id"], "ReturnData": bool(q.get("return_data", False))}
        if q.get("label"):
            query["Label"] = q["label"]
        if q.get("expression"):
            query["Expression"] = q["expression"]
        if q.get("metric"):
            m = _one(q["metric"])
            query["MetricStat"] = {
                "Metric": {
                    "Namespace": m["namespace"],
                    "MetricName": m["metric_name"],
                    "Dimensions": [{"Name": k, "Value": v} for k, v in m.get("dimensions", {}).items()],
                },
                "Period": int(m["period"]),
                "Stat": m["stat"],
            }
        queries.append(query)
    cw = c("cloudwatch")
    cw.put_metric_alarm(
        AlarmName=a["alarm_name"],
        AlarmDescription=a.get("alarm_description", ""),
        ComparisonOperator=a["comparison_operator"],
        Threshold=float(a["threshold"]),
        EvaluationPeriods=int(a["evaluation_periods"]),
        DatapointsToAlarm=int(a["datapoints_to_alarm"]),
        Metrics=queries,
        TreatMissingData=a["treat_missing_data"],
        AlarmActions=list(a.get("alarm_actions", [])),
        OKActions=list(a.get("ok_actions", [])),
    )
    arn = cw.describe_alarms(AlarmNames=[a["alarm_name"]])["MetricAlarms"][0]["AlarmArn"]
    return {"id": a["alarm_name"], "alarm_name": a["alarm_name"], "arn": arn}


# -- the alarm topic and the dashboard ----------------------------------------------------------------------------
@creator("aws_kms_key", "description", "policy", "enable_key_rotation", "deletion_window_in_days")
def _kms_key(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    kms = c("kms")
    key = kms.create_key(Description=a.get("description", ""), Policy=a["policy"])["KeyMetadata"]
    if a.get("enable_key_rotation"):
        kms.enable_key_rotation(KeyId=key["KeyId"])
    return {"id": key["KeyId"], "key_id": key["KeyId"], "arn": key["Arn"]}


@creator("aws_sns_topic", "name", "kms_master_key_id")
def _topic(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    attributes = {"KmsMasterKeyId": a["kms_master_key_id"]} if a.get("kms_master_key_id") else {}
    arn = c("sns").create_topic(Name=a["name"], Attributes=attributes)["TopicArn"]
    return {"id": arn, "arn": arn, "name": a["name"]}


@creator("aws_sns_topic_policy", "arn", "policy")
def _topic_policy(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    json.loads(a["policy"])  # a malformed document would fail the apply
    c("sns").set_topic_attributes(TopicArn=a["arn"], AttributeName="Policy", AttributeValue=a["policy"])
    return {"id": a["arn"]}


@creator("aws_sns_topic_subscription", "topic_arn", "protocol", "endpoint")
def _subscription(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    arn = c("sns").subscribe(TopicArn=a["topic_arn"], Protocol=a["protocol"], Endpoint=a["endpoint"])["SubscriptionArn"]
    return {"id": arn, "arn": arn}


@creator("aws_cloudwatch_dashboard", "dashboard_name", "dashboard_body")
def _dashboard(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    """PutDashboard validates the body (moto checks it is JSON); its validation messages would fail the apply."""
    out = c("cloudwatch").put_dashboard(DashboardName=a["dashboard_name"], DashboardBody=a["dashboard_body"])
    problems = out.get("DashboardValidationMessages", [])
    if problems:
        raise UnsupportedTerraform(f"dashboard {a['dashboard_name']}: {problems}")
    arn = c("cloudwatch").get_dashboard(DashboardName=a["dashboard_name"])["DashboardArn"]
    return {"id": a["dashboard_name"], "dashboard_name": a["dashboard_name"], "dashboard_arn": arn}
