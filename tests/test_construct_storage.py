"""TaskQueue, TaskTable, PrivateBucket and AdapterRelease, each alone in a stack: its grants (through the shared
aws-cdk-style helper) and the AWS limits it refuses, with the one line synth fails with."""

from __future__ import annotations

from typing import Any

import pytest
from cdktf import TerraformStack

from modules.bucket import PrivateBucket
from modules.props import ConstructPropError
from modules.queue import CONSUME_ACTIONS, DEAD_LETTER_ACTIONS, SEND_ACTIONS, TaskQueue
from modules.rollout import AdapterRelease
from modules.table import SUBMIT_ACTIONS, WORKER_ACTIONS, TaskTable
from tests.infra_helpers import assert_grant, fresh_stack, one, refusal, synth

QUEUE: dict[str, Any] = {"name": "tasks", "dlq_name": "tasks_dlq"}
BUCKET = "gpu-orchestrator-artifacts-test-123456789012"


# --- TaskQueue ---


@pytest.fixture(scope="module")
def queue() -> TaskQueue:
    return TaskQueue(fresh_stack(), "tasks", **QUEUE)


def stack_of(construct: Any) -> TerraformStack:
    return TerraformStack.of(construct)


def test_queue_alone_synthesizes_the_documented_defaults(queue: TaskQueue) -> None:
    doc = synth(stack_of(queue))
    main = one(doc, "aws_sqs_queue", name="tasks")
    assert (main["visibility_timeout_seconds"], main["receive_wait_time_seconds"]) == (300, 20)
    assert main["message_retention_seconds"] == 86400
    assert one(doc, "aws_sqs_queue", name="tasks_dlq")["message_retention_seconds"] == 1209600


@pytest.mark.parametrize(
    ("grant", "expected"),
    [
        (lambda q, r: q.grant_send_messages(r), lambda q: [(SEND_ACTIONS, [q.arn])]),
        (lambda q, r: q.grant_consume_messages(r), lambda q: [(CONSUME_ACTIONS, [q.arn])]),
        (lambda q, r: q.grant_dead_letter_handling(r), lambda q: [(DEAD_LETTER_ACTIONS, [q.dlq_arn])]),
        (lambda q, r: q.grant_read_depth(r), lambda q: [(["sqs:GetQueueAttributes"], [q.arn])]),
        (
            lambda q, r: q.grant_read_depth(r, include_dlq=True),
            lambda q: [(["sqs:GetQueueAttributes"], [q.arn, q.dlq_arn])],
        ),
        (lambda q, r: q.grant(r, "sqs:PurgeQueue"), lambda q: [(["sqs:PurgeQueue"], [q.arn])]),
        (lambda q, r: q.grant(r, "sqs:PurgeQueue", on="dlq"), lambda q: [(["sqs:PurgeQueue"], [q.dlq_arn])]),
    ],
    ids=["send", "consume", "dead-letter", "read-depth", "read-depth-with-dlq", "generic", "generic-dlq"],
)
def test_queue_grants(queue: TaskQueue, grant: Any, expected: Any) -> None:
    assert_grant(stack_of(queue), lambda role: grant(queue, role), expected(queue))


def test_a_grant_refuses_another_services_actions(queue: TaskQueue) -> None:
    stack = stack_of(queue)
    with pytest.raises(ConstructPropError) as err:
        assert_grant(stack, lambda role: queue.grant(role, "s3:GetObject"), [])
    assert str(err.value) == (
        "test/tasks: actions=('s3:GetObject',) must be one or more sqs:* actions (the construct's own service)"
    )


@pytest.mark.parametrize(
    ("props", "problem"),
    [
        ({"visibility_timeout_seconds": 50000}, "visibility_timeout_seconds=50000 is outside 0..43200"),
        ({"visibility_timeout_seconds": -1}, "visibility_timeout_seconds=-1 is outside 0..43200"),
        ({"receive_wait_seconds": 21}, "receive_wait_seconds=21 is outside 0..20"),
        ({"retention_seconds": 59}, "retention_seconds=59 is outside 60..1209600"),
        ({"dlq_retention_seconds": 1209601}, "dlq_retention_seconds=1209601 is outside 60..1209600"),
        ({"max_receive_count": 0}, "max_receive_count=0 is outside 1..1000"),
        ({"max_receive_count": 1001}, "max_receive_count=1001 is outside 1..1000"),
        ({"name": "tasks.fifo"}, "name='tasks.fifo' is not 1-80 characters of A-Za-z0-9_- (SQS queue name)"),
        ({"dlq_name": "d" * 81}, f"dlq_name='{'d' * 81}' is not 1-80 characters of A-Za-z0-9_- (SQS queue name)"),
    ],
)
def test_queue_refuses_values_outside_sqs_limits(props: dict[str, Any], problem: str) -> None:
    message = refusal(lambda stack: TaskQueue(stack, "tasks", **{**QUEUE, **props}))
    assert message.startswith(f"bad/tasks: {problem}")


def test_queue_limit_messages_name_their_source() -> None:
    message = refusal(lambda stack: TaskQueue(stack, "tasks", **QUEUE, visibility_timeout_seconds=50000))
    assert message == "bad/tasks: visibility_timeout_seconds=50000 is outside 0..43200 (SQS VisibilityTimeout)"


def test_queue_accepts_the_limits_themselves() -> None:
    stack = fresh_stack("edges")
    TaskQueue(stack, "high", name="q" * 80, dlq_name="d" * 80, visibility_timeout_seconds=43200)
    TaskQueue(stack, "max", **QUEUE, receive_wait_seconds=20, retention_seconds=1209600, max_receive_count=1000)
    TaskQueue(stack, "min", **QUEUE, receive_wait_seconds=0, retention_seconds=60, dlq_retention_seconds=60)
    assert len(synth(stack)["resource"]["aws_sqs_queue"]) == 6


# --- TaskTable ---


@pytest.fixture(scope="module")
def table() -> TaskTable:
    return TaskTable(fresh_stack(), "tasks", name="task_store")


@pytest.mark.parametrize(
    ("grant", "expected"),
    [
        (
            lambda t, r: t.grant_submit(r),
            lambda t: [
                ([a for a in SUBMIT_ACTIONS if a != "dynamodb:Query"], [t.arn]),
                (["dynamodb:Query"], [t.index_arn]),
            ],
        ),
        (lambda t, r: t.grant_worker(r), lambda t: [(WORKER_ACTIONS, [t.arn])]),
        (lambda t, r: t.grant_index_read(r), lambda t: [(["dynamodb:Query"], [t.index_arn])]),
        (lambda t, r: t.grant(r, "dynamodb:BatchGetItem"), lambda t: [(["dynamodb:BatchGetItem"], [t.arn])]),
    ],
    ids=["submit", "worker", "index-read", "generic"],
)
def test_table_grants(table: TaskTable, grant: Any, expected: Any) -> None:
    assert_grant(stack_of(table), lambda role: grant(table, role), expected(table))


def test_table_index_arn_is_under_the_table(table: TaskTable) -> None:
    stack = stack_of(table)
    assert_grant(stack, table.grant_index_read, [(["dynamodb:Query"], [f"{table.arn}/index/status-created_at-index"])])


@pytest.mark.parametrize("name", ["ab", "t" * 256, "task store"])
def test_table_refuses_names_dynamodb_refuses(name: str) -> None:
    message = refusal(lambda stack: TaskTable(stack, "tasks", name=name))
    assert message == f"bad/tasks: name={name!r} is not 3-255 characters of A-Za-z0-9_.- (DynamoDB table name)"


# --- PrivateBucket ---


@pytest.fixture(scope="module")
def bucket() -> PrivateBucket:
    return PrivateBucket(fresh_stack(), "artifacts", name=BUCKET, expire_prefix="results/")


@pytest.mark.parametrize(
    ("grant", "expected"),
    [
        (lambda b, r: b.grant_read(r, "inputs/"), lambda b: [(["s3:GetObject"], [f"{b.arn}/inputs/*"])]),
        (lambda b, r: b.grant_write(r, "results/"), lambda b: [(["s3:PutObject"], [f"{b.arn}/results/*"])]),
        (lambda b, r: b.grant_read(r), lambda b: [(["s3:GetObject"], [f"{b.arn}/*"])]),
        (lambda b, r: b.grant(r, "s3:ListBucket", prefix=None), lambda b: [(["s3:ListBucket"], [b.arn])]),
        (
            lambda b, r: b.grant(r, "s3:DeleteObject", prefix="tmp/"),
            lambda b: [(["s3:DeleteObject"], [f"{b.arn}/tmp/*"])],
        ),
    ],
    ids=["read-prefix", "write-prefix", "read-all", "generic-bucket", "generic-objects"],
)
def test_bucket_grants(bucket: PrivateBucket, grant: Any, expected: Any) -> None:
    assert_grant(stack_of(bucket), lambda role: grant(bucket, role), expected(bucket))


@pytest.mark.parametrize(
    ("props", "problem"),
    [
        ({"name": "ab"}, "name='ab' is not 3-63 characters of a-z0-9.- starting and ending alphanumeric"),
        ({"name": "b" * 64}, f"name='{'b' * 64}' is not 3-63 characters of a-z0-9.- starting and ending alphanumeric"),
        ({"name": "Artifacts"}, "name='Artifacts' is not 3-63 characters of a-z0-9.- starting and ending alphanumeric"),
        ({"name": "my..bucket"}, "name='my..bucket' has two adjacent periods (S3 bucket naming rules)"),
        ({"name": "192.168.5.4"}, "name='192.168.5.4' is formatted as an IP address (S3 bucket naming rules)"),
        ({"name": "xn--bucket"}, "name='xn--bucket' starts with a prefix S3 reserves"),
        ({"name": "bucket-s3alias"}, "name='bucket-s3alias' ends with a suffix S3 reserves"),
        ({"expire_days": 0}, "expire_days=0 is outside 1.. (S3 lifecycle Expiration Days)"),
        ({"noncurrent_days": 0}, "noncurrent_days=0 is outside 1.. (S3 lifecycle NoncurrentDays)"),
        ({"sse_algorithm": "kms"}, "sse_algorithm='kms' is not one of AES256, aws:kms, aws:kms:dsse (S3 SSEAlgorithm)"),
        ({"expire_prefix": "p" * 1025}, f"expire_prefix='{'p' * 1025}' is not up to 1024 characters (S3 object key)"),
    ],
)
def test_bucket_refuses_what_s3_refuses(props: dict[str, Any], problem: str) -> None:
    assert refusal(lambda stack: PrivateBucket(stack, "b", **{"name": BUCKET, **props})) == f"bad/b: {problem}"


# --- AdapterRelease ---


@pytest.fixture(scope="module")
def release() -> AdapterRelease:
    stack = fresh_stack()
    artifacts = PrivateBucket(stack, "artifacts", name=BUCKET)
    return AdapterRelease(
        stack, "adapter", bucket=artifacts, parameter_prefix="/gpu-orchestrator/test", config={"A": "1"}, **WHERE
    )


WHERE = {"region": "us-east-1", "account": "123456789012"}
PARAMETERS = [
    f"arn:aws:ssm:us-east-1:123456789012:parameter/gpu-orchestrator/test/adapter/{p}" for p in ("bundle", "config")
]


def test_release_install_grant_reads_both_parameters_and_the_bundles(release: AdapterRelease) -> None:
    expected = [(["ssm:GetParameter"], PARAMETERS), (["s3:GetObject"], [f"{release.bucket.arn}/adapter/*"])]
    assert_grant(stack_of(release), release.grant_install, expected)


def test_release_generic_grant_is_on_its_parameters(release: AdapterRelease) -> None:
    assert_grant(
        stack_of(release), lambda role: release.grant(role, "ssm:GetParameters"), [(["ssm:GetParameters"], PARAMETERS)]
    )


@pytest.mark.parametrize(
    ("prefix", "problem"),
    [
        (
            "gpu-orchestrator/test",
            'is not "/"-separated levels of a-zA-Z0-9_.-, starting with "/" (SSM parameter name)',
        ),
        ("/gpu orchestrator", 'is not "/"-separated levels of a-zA-Z0-9_.-, starting with "/" (SSM parameter name)'),
        ("/aws-things/test", "starts with aws or ssm (SSM)"),
        ("/SSM/test", "starts with aws or ssm (SSM)"),
        ("/l" * 14, "has more than 13 levels (SSM: 15)"),
        ("/" + "p" * 1000, "makes an ARN over 1011 characters (SSM)"),
    ],
)
def test_release_refuses_parameter_names_ssm_refuses(prefix: str, problem: str) -> None:
    def build(stack: TerraformStack) -> None:
        artifacts = PrivateBucket(stack, "artifacts", name=BUCKET)
        AdapterRelease(stack, "adapter", bucket=artifacts, parameter_prefix=prefix, config={}, **WHERE)

    assert refusal(build) == f"bad/adapter: parameter_prefix={prefix!r} {problem}"
