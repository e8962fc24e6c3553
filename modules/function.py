"""The shutdown Lambda: its deterministic code bundle, log group, dead-letter queue, and invoke permissions for its
triggers."""

from __future__ import annotations

from collections.abc import Mapping

from cdktf_cdktf_provider_aws.cloudwatch_log_group import CloudwatchLogGroup
from cdktf_cdktf_provider_aws.lambda_function import (
    LambdaFunction,
    LambdaFunctionDeadLetterConfig,
    LambdaFunctionEnvironment,
    LambdaFunctionTracingConfig,
)
from cdktf_cdktf_provider_aws.lambda_permission import LambdaPermission
from cdktf_cdktf_provider_aws.sqs_queue import SqsQueue
from constructs import Construct

from modules.assets import ZipAsset
from modules.config import ROOT
from modules.iam import Role

LOG_ACTIONS = ("logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents")
DEAD_LETTER_ACTIONS = ("sqs:SendMessage",)
# A year of the function's decisions (every stop and start, and why): the audit trail for "who stopped my GPU".
# The volume is a few lines per run, so a year of it costs cents; ingestion, not retention, is what CloudWatch bills.
LOG_RETENTION_DAYS = 365
DEAD_LETTER_RETENTION_SECONDS = 14 * 24 * 3600
# Keys the Lambda runtime sets itself; setting one makes the API reject the function at apply time.
RESERVED_ENV_KEYS = frozenset(
    {
        "_HANDLER",
        "_X_AMZN_TRACE_ID",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_EXECUTION_ENV",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_INITIALIZATION_TYPE",
        "AWS_LAMBDA_LOG_GROUP_NAME",
        "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_LAMBDA_RUNTIME_API",
        "LAMBDA_TASK_ROOT",
        "LAMBDA_RUNTIME_DIR",
    }
)


class PythonFunction(Construct):
    """A Python Lambda whose code is one package under functions/, zipped deterministically."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        name: str,
        package: str,
        handler: str,
        role: Role | str,
        environment: Mapping[str, str],
        region: str,
        account: str,
        memory_mb: int = 128,
        timeout_seconds: int = 60,
        runtime: str = "python3.11",
        reserved_concurrency: int | None = None,
        log_retention_days: int = LOG_RETENTION_DAYS,
        dead_letter_queue_name: str | None = None,
    ) -> None:
        super().__init__(scope, id)
        reserved = sorted(RESERVED_ENV_KEYS.intersection(environment))
        if reserved:
            raise ValueError(f"{name}: {', '.join(reserved)} is reserved by the Lambda runtime; do not set it")
        self.code = ZipAsset(self, "code", name=f"lambda-{package}", sources=[(ROOT / "functions", package)])
        self.log_group = CloudwatchLogGroup(
            self,
            "logs",
            name=f"/aws/lambda/{name}",
            retention_in_days=log_retention_days,
        )
        self.log_group_arn = f"arn:aws:logs:{region}:{account}:log-group:/aws/lambda/{name}"
        # Asynchronous invocations (the alarm's, the schedule's) that still fail after Lambda's two retries land
        # here instead of vanishing: a countable, inspectable record of every missed idle check. The role's grant
        # (grant_dead_letter) names this queue's ARN from its name, as grant_logs does for the log group, because
        # the role's stack is applied before this one.
        self.dead_letters = (
            SqsQueue(
                self,
                "dead-letters",
                name=dead_letter_queue_name,
                message_retention_seconds=DEAD_LETTER_RETENTION_SECONDS,
                sqs_managed_sse_enabled=True,
            )
            if dead_letter_queue_name
            else None
        )
        role_arn = role.arn if isinstance(role, Role) else role
        self.function = LambdaFunction(
            self,
            "function",
            function_name=name,
            role=role_arn,
            runtime=runtime,
            handler=handler,
            memory_size=memory_mb,
            timeout=timeout_seconds,
            filename=self.code.path,
            source_code_hash=self.code.bundle.base64_sha256,
            environment=LambdaFunctionEnvironment(variables=dict(sorted(environment.items()))),
            reserved_concurrent_executions=reserved_concurrency,
            tracing_config=LambdaFunctionTracingConfig(mode="PassThrough"),
            dead_letter_config=(
                LambdaFunctionDeadLetterConfig(target_arn=self.dead_letters.arn) if self.dead_letters else None
            ),
            depends_on=[self.log_group],
        )

    @property
    def arn(self) -> str:
        return self.function.arn

    @property
    def name(self) -> str:
        return self.function.function_name

    def allow_invoke(self, scope: Construct, id: str, *, principal: str, source_arn: str) -> LambdaPermission:
        """Let one AWS service invoke this function, for one source ARN only. The permission is created in the
        caller's scope (the trigger's stack), so the function's stack never depends on its triggers."""
        return LambdaPermission(
            scope,
            id,
            action="lambda:InvokeFunction",
            function_name=self.function.function_name,
            principal=principal,
            source_arn=source_arn,
        )


def grant_logs(role: Role, *, region: str, account: str, function_name: str) -> None:
    """Write access to one function's log group, nothing else in CloudWatch Logs."""
    group = f"arn:aws:logs:{region}:{account}:log-group:/aws/lambda/{function_name}"
    role.add(LOG_ACTIONS, [group, f"{group}:*"])


def grant_dead_letter(role: Role, *, region: str, account: str, queue_name: str) -> None:
    """SendMessage on one function's dead-letter queue: Lambda delivers failed async events with the function's
    own role, and refuses to create a function whose role cannot."""
    role.add(DEAD_LETTER_ACTIONS, [f"arn:aws:sqs:{region}:{account}:{queue_name}"])
