"""The shutdown Lambda: its deterministic code bundle, log group, dead-letter queue, and invoke permissions for its
triggers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

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

from modules.assets import ZipAsset, core_sources
from modules.config import ROOT, EnvironmentConfig
from modules.iam import Role, Statement, arn
from modules.props import (
    QUEUE_NAME,
    QUEUE_NAME_RULE,
    ConstructPropError,
    check_in,
    check_pattern,
    check_range,
)
from modules.resource import ResourceConstruct

LOG_ACTIONS = ("logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents")
DEAD_LETTER_ACTIONS = ("sqs:SendMessage",)
# A year of the function's decisions (every stop and start, and why): the audit trail for "who stopped my GPU".
# The volume is a few lines per run, so a year of it costs cents; ingestion, not retention, is what CloudWatch bills.
LOG_RETENTION_DAYS = 365
# PutRetentionPolicy's retentionInDays values (CloudWatch Logs API Reference); the provider adds 0 for "never expire".
LOG_RETENTION_CHOICES = (
    *(0, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731),
    *(1096, 1827, 2192, 2557, 2922, 3288, 3653),
)
# Lambda quotas and CreateFunction (Lambda Developer Guide / API Reference): FunctionName 1-64 of A-Za-z0-9-_;
# MemorySize 128..10240 MB (default 128); Timeout 1..900 s (default 3); ReservedConcurrentExecutions >= 0 (the
# account's limit bounds it above); Handler up to 128 non-space characters; environment variable keys start with a
# letter, then letters, digits and underscores.
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
HANDLER = re.compile(r"[^\s]{1,128}")
PYTHON_RUNTIME = re.compile(r"python3\.\d+")
ENV_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
MIN_MEMORY_MB, MAX_MEMORY_MB = 128, 10240
MAX_TIMEOUT_SECONDS = 900
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


class PythonFunction(ResourceConstruct):
    """A Python Lambda whose code is one package under functions/, zipped deterministically, with its log group and
    (optionally) a dead-letter queue for failed asynchronous invocations.

    Args:
        settings: what the function runs with (FunctionSettings: name, role, environment, memory, timeout, runtime,
            reserved concurrency, log retention); unset memory_mb is 128 here, unset timeout_seconds 60. Required.
        package: the folder under functions/ that is zipped as the code. Required.
        handler: `module.function` inside the package, up to 128 non-space characters (Lambda Handler). Required.
        region, account: where the function runs. Required; the resources take both from the provider.
        dead_letter_queue_name: create an SQS dead-letter queue of this name (1-80 characters of A-Za-z0-9_-) for
            asynchronous invocations that still fail after Lambda's two retries. Default None: no queue.
    """

    SERVICE = "lambda"

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: FunctionSettings,
        package: str,
        handler: str,
        region: str,
        account: str,
        dead_letter_queue_name: str | None = None,
    ) -> None:
        super().__init__(scope, id)
        settings = settings.or_defaults(memory_mb=128, timeout_seconds=60)
        settings.check(self)
        check_pattern(self, "handler", handler, HANDLER, "up to 128 non-space characters (Lambda Handler)")
        check_pattern(self, "dead_letter_queue_name", dead_letter_queue_name, QUEUE_NAME, QUEUE_NAME_RULE)
        program = ROOT / "functions" / package
        sources = [(ROOT / "functions", package), *core_sources([program])]
        self.code = ZipAsset(self, "code", name=f"lambda-{package}", sources=sources)
        self.dead_letters = self._dead_letter_queue(dead_letter_queue_name)
        self.log_group, self.function = logged_function(self, settings, handler=handler, **self._code_and_wiring())
        self.arn = self.function.arn
        self.name = self.function.function_name

    def _code_and_wiring(self) -> dict[str, Any]:
        """The function's settings that come from its own parts: the zip and the dead-letter queue."""
        return {
            "filename": self.code.path,
            "source_code_hash": self.code.bundle.base64_sha256,
            "dead_letter_config": (
                LambdaFunctionDeadLetterConfig(target_arn=self.dead_letters.arn) if self.dead_letters else None
            ),
        }

    def _dead_letter_queue(self, name: str | None) -> SqsQueue | None:
        """Asynchronous invocations (the alarm's, the schedule's) that still fail after Lambda's two retries land
        here instead of vanishing: a countable, inspectable record of every missed idle check. The role's grant
        (grant_dead_letter) names this queue's ARN from its name, as grant_logs does for the log group, because the
        role's stack is applied before this one."""
        if not name:
            return None
        return SqsQueue(
            self,
            "dead-letters",
            name=name,
            message_retention_seconds=DEAD_LETTER_RETENTION_SECONDS,
            sqs_managed_sse_enabled=True,
        )

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


def package_function(
    scope: Construct,
    package: str,
    *,
    config: EnvironmentConfig,
    settings: FunctionSettings,
    dead_letter_queue_name: str | None = None,
) -> PythonFunction:
    """The function of functions/<package> (construct id `package`, handler `<package>.handler.handler`) in the
    environment's region and account: how each stack makes its functions (shutdown, events, webhooks)."""
    return PythonFunction(
        scope,
        package,
        settings=settings,
        package=package,
        handler=f"{package}.handler.handler",
        region=config.region,
        account=config.account,
        dead_letter_queue_name=dead_letter_queue_name,
    )


@dataclass(frozen=True, kw_only=True)
class FunctionSettings:
    """What a Python function here runs with, beside its code: the props PythonFunction and modules/api.py
    OrchestratorApi share. The construct that takes them runs `check` before any resource exists, so a refusal
    names it; `logged_function` builds from them.

    Fields:
        name: FunctionName: 1-64 characters of A-Za-z0-9_- (Lambda quotas); also names the log group
            `/aws/lambda/<name>`. Required.
        role: the execution role. Required.
        environment: variables for the code; keys are letters, digits and underscores, starting with a letter, and
            none the Lambda runtime reserves (AWS_REGION, ...). Required.
        memory_mb: MemorySize, 128..10240 MB (AWS default 128). Default None: the construct's (PythonFunction 128,
            OrchestratorApi 512).
        timeout_seconds: Timeout, 1..900 s (AWS default 3). Default None: the construct's (PythonFunction 60,
            OrchestratorApi 29).
        runtime: a python3.N runtime. Default python3.11 (the API's layer is built for it).
        reserved_concurrency: ReservedConcurrentExecutions, >= 0 (0 stops every invocation). Default None: the
            function shares the account's unreserved pool.
        log_retention_days: one of CloudWatch Logs' retention values (1, 3, 5, ... 3653; 0 never expires). Default
            365: a year of the function's decisions (every stop and start, and why) costs cents.
    """

    name: str
    role: Role
    environment: Mapping[str, str]
    memory_mb: int | None = None
    timeout_seconds: int | None = None
    runtime: str = "python3.11"
    reserved_concurrency: int | None = None
    log_retention_days: int = LOG_RETENTION_DAYS

    def or_defaults(self, *, memory_mb: int, timeout_seconds: int) -> FunctionSettings:
        """These settings with a construct's own defaults where memory_mb or timeout_seconds is unset."""
        return replace(
            self,
            memory_mb=memory_mb if self.memory_mb is None else self.memory_mb,
            timeout_seconds=timeout_seconds if self.timeout_seconds is None else self.timeout_seconds,
        )

    def check(self, scope: Construct) -> None:
        check_pattern(scope, "name", self.name, FUNCTION_NAME, "1-64 characters of A-Za-z0-9_- (Lambda FunctionName)")
        check_pattern(scope, "runtime", self.runtime, PYTHON_RUNTIME, "a Python runtime (python3.N)")
        check_environment(scope, self.environment)
        check_range(scope, "memory_mb", self.memory_mb, MIN_MEMORY_MB, MAX_MEMORY_MB, "Lambda MemorySize")
        check_range(scope, "timeout_seconds", self.timeout_seconds, 1, MAX_TIMEOUT_SECONDS, "Lambda Timeout")
        concurrency, retention = self.reserved_concurrency, self.log_retention_days
        check_range(scope, "reserved_concurrency", concurrency, 0, None, "Lambda ReservedConcurrentExecutions")
        check_in(scope, "log_retention_days", retention, LOG_RETENTION_CHOICES, "CloudWatch Logs retention")


def logged_function(
    scope: Construct, settings: FunctionSettings, *, handler: str, **code: Any
) -> tuple[CloudwatchLogGroup, LambdaFunction]:
    """A function (id "function") and its log group `/aws/lambda/<name>` (id "logs"), created first so the runtime
    never creates it without a retention; X-Ray tracing passes through. `handler` and `code` are the function's own
    arguments (its handler, zip, layers, architectures, dead-letter queue...). The caller has run `settings.check`
    (and `or_defaults`)."""
    name = settings.name
    log_group = CloudwatchLogGroup(
        scope, "logs", name=f"/aws/lambda/{name}", retention_in_days=settings.log_retention_days
    )
    function = LambdaFunction(
        scope,
        "function",
        function_name=name,
        role=settings.role.arn,
        runtime=settings.runtime,
        handler=handler,
        memory_size=settings.memory_mb,
        timeout=settings.timeout_seconds,
        environment=LambdaFunctionEnvironment(variables=dict(sorted(settings.environment.items()))),
        reserved_concurrent_executions=settings.reserved_concurrency,
        tracing_config=LambdaFunctionTracingConfig(mode="PassThrough"),
        depends_on=[log_group],
        **code,
    )
    return log_group, function


def grant_logs(role: Role, *, region: str, account: str, function_name: str) -> list[Statement]:
    """Write access to one function's log group, nothing else in CloudWatch Logs. By name, not by reference: the
    role's stack is applied before the function's."""
    group = arn("logs", f"log-group:/aws/lambda/{function_name}", region=region, account=account)
    return [role.add(LOG_ACTIONS, [group, f"{group}:*"])]


def grant_dead_letter(role: Role, *, region: str, account: str, queue_name: str) -> list[Statement]:
    """SendMessage on one function's dead-letter queue: Lambda delivers failed async events with the function's
    own role, and refuses to create a function whose role cannot."""
    return [role.add(DEAD_LETTER_ACTIONS, [arn("sqs", queue_name, region=region, account=account)])]


def check_environment(scope: Construct, environment: Mapping[str, str]) -> None:
    """A function's environment: no key the Lambda runtime reserves, every key a valid variable name."""
    reserved = sorted(RESERVED_ENV_KEYS.intersection(environment))
    if reserved:
        raise ConstructPropError(
            scope, "environment", f"environment: {', '.join(reserved)} is reserved by the Lambda runtime; do not set it"
        )
    for key in environment:
        check_pattern(
            scope, "environment", key, ENV_KEY, "an environment variable name (Lambda: [A-Za-z][A-Za-z0-9_]*)"
        )
