"""The runtime contract: every environment variable any program reads, declared once with its type, default and
meaning (in the spirit of rq's defaults.py).

`modules/` renders the values it knows at synth time (`render`) into the Lambda's environment, the adapter's SSM
config parameter and the orchestrator's settings; each program reads its own settings from there with
`Setting.read`. A setting with a default needs no rendering: adding one touches this file and the program that reads
it, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .tasks import STATUS_INDEX

T = TypeVar("T")


class SettingError(ValueError):
    """A runtime setting is missing or malformed. str() is one line naming it."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        super().__init__(f"{name}: {problem}")


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def _text(raw: str) -> str:
    return raw


def _number(raw: str) -> float:
    value = float(raw)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("not a finite number")
    return value


def _integer(raw: str) -> int:
    return int(raw)


def _flag(raw: str) -> bool:
    if raw not in ("0", "1"):
        raise ValueError("must be 0 or 1")
    return raw == "1"


def _ids(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class Setting(Generic[T]):
    name: str
    parse: Callable[[str], T]
    default: T | None
    meaning: str

    def read(self, env: Mapping[str, str], default: T | None = None) -> T:
        """The value in `env`, else `default` (a caller's runtime default, e.g. the queue's own timeout), else the
        declared default. An empty value counts as unset."""
        raw = env.get(self.name)
        if raw is None or raw == "":
            fallback = default if default is not None else self.default
            if fallback is REQUIRED:
                raise SettingError(self.name, f"not set ({self.meaning})")
            return fallback  # type: ignore[return-value]
        try:
            return self.parse(raw)
        except ValueError as err:
            raise SettingError(self.name, f"{raw!r} is not valid: {err}") from None

    def read_optional(self, env: Mapping[str, str]) -> T | None:
        raw = env.get(self.name)
        return self.read(env) if raw not in (None, "") else None


def setting(name: str, parse: Callable[[str], T], default: T | None, meaning: str) -> Setting[T]:
    found = Setting(name, parse, default, meaning)
    if name in SETTINGS:
        raise ValueError(f"setting {name} declared twice")
    SETTINGS[name] = found
    return found


SETTINGS: dict[str, Setting[Any]] = {}

# -- resources every program finds the system by ---------------------------------------------------------------------
TASK_QUEUE_URL = setting("TASK_QUEUE_URL", _text, REQUIRED, "URL of the task queue")
TASK_DLQ_URL = setting("TASK_DLQ_URL", _text, REQUIRED, "URL of the task queue's dead-letter queue")
TASK_TABLE_NAME = setting("TASK_TABLE_NAME", _text, REQUIRED, "name of the task table")
TASK_STATUS_INDEX = setting("TASK_STATUS_INDEX", _text, STATUS_INDEX, "the task table's status-created_at GSI")
ARTIFACTS_BUCKET = setting("ARTIFACTS_BUCKET", _text, REQUIRED, "bucket of task inputs, results and bundles")
_NO_IDS: tuple[str, ...] = ()
GPU_INSTANCE_IDS = setting(
    "GPU_INSTANCE_IDS", _ids, _NO_IDS, "the GPU instances, comma-separated (adopt, create modes; empty in fleet mode)"
)
GPU_FLEET_NAME = setting(
    "GPU_FLEET_NAME", _text, None, "fleet mode: the GPU fleet's Auto Scaling group (unset: the GPU_INSTANCE_IDS)"
)
GPU_SLOTS = setting(
    "GPU_SLOTS",
    _integer,
    None,
    "tasks one instance runs at once, one per GPU (adapter default: nvidia-smi's GPU count, 1 without a GPU; "
    "controller default: 1)",
)
TASK_TYPES_FILE = setting("TASK_TYPES_FILE", _text, None, "task type registry to load instead of the bundled one")
AWS_ENDPOINT_URL = setting("AWS_ENDPOINT_URL", _text, None, "AWS endpoint override (the local AWS in tests/demo)")
LOG_LEVEL = setting("LOG_LEVEL", _text, "INFO", "logging level of the structured logs")
AWS_DEFAULT_REGION = setting("AWS_DEFAULT_REGION", _text, None, "region of the AWS clients (Lambda sets AWS_REGION)")
AWS_REGION = setting("AWS_REGION", _text, None, "region of the AWS clients, as the Lambda runtime sets it")

# -- the idle rule (core.idle.Policy), the same for the shutdown Lambda and the adapter's autostop ---------------------
IDLE_WINDOW_SECONDS = setting("IDLE_WINDOW_SECONDS", _number, 1800.0, "idle this long before a GPU is stopped")
MIN_UPTIME_SECONDS = setting("MIN_UPTIME_SECONDS", _number, 600.0, "never stop an instance up for less than this")
QUEUED_TASK_MAX_AGE_SECONDS = setting(
    "QUEUED_TASK_MAX_AGE_SECONDS", _number, 86400.0, "an older QUEUED task with an empty queue lost its message"
)
HEARTBEAT_STALE_SECONDS = setting(
    "HEARTBEAT_STALE_SECONDS", _number, 900.0, "a RUNNING task with an older heartbeat has a dead worker"
)
STOPPING_WAIT_SECONDS = setting(
    "STOPPING_WAIT_SECONDS", _number, 40.0, "how long the Lambda waits for a stopping instance to start it"
)

# -- the adapter -------------------------------------------------------------------------------------------------------
VISIBILITY_TIMEOUT = setting(
    "VISIBILITY_TIMEOUT", _integer, None, "override of the queue's VisibilityTimeout (default: read from the queue)"
)
MAX_RECEIVES = setting(
    "MAX_RECEIVES", _integer, 3, "override of the queue's maxReceiveCount (default: its RedrivePolicy, else 3)"
)
RETRY_BACKOFF_SECONDS = setting("RETRY_BACKOFF_SECONDS", _number, 5.0, "first retry delay of a failed attempt")
RETRY_BACKOFF_CAP_SECONDS = setting("RETRY_BACKOFF_CAP_SECONDS", _number, 300.0, "longest retry delay")
WAIT_TIME_SECONDS = setting("WAIT_TIME_SECONDS", _integer, 20, "SQS long-poll wait of each receive")
HEARTBEAT_SECONDS = setting(
    "HEARTBEAT_SECONDS", _number, None, "heartbeat interval (default: a fifth of the visibility, 0.2..60 s)"
)
STOP_GRACE_SECONDS = setting("STOP_GRACE_SECONDS", _number, 20.0, "SIGTERM -> SIGKILL for a job on cancel or stop")
CLAIM_GRACE_SECONDS = setting(
    "CLAIM_GRACE_SECONDS", _number, 5.0, "wait this long for a dead holder's heartbeat to turn stale"
)
WORK_DIR = setting("WORK_DIR", _text, "/var/lib/gpu-adapter/work", "where attempts keep their inputs and outputs")
WORKER_ID = setting("WORKER_ID", _text, None, "this worker's name on the items it claims (default: host-pid)")
ADAPTER_BUNDLE_PARAM = setting("ADAPTER_BUNDLE_PARAM", _text, None, "SSM parameter naming the bundle to run")
ADAPTER_BUNDLE_URI = setting("ADAPTER_BUNDLE_URI", _text, None, "the bundle install.sh installed")
ADAPTER_CONFIG_PARAM = setting("ADAPTER_CONFIG_PARAM", _text, None, "SSM parameter holding this environment as JSON")
ROLLOUT_CHECK_SECONDS = setting("ROLLOUT_CHECK_SECONDS", _number, 60.0, "how often to look for a new bundle/config")
DLQ_SWEEP_SECONDS = setting("DLQ_SWEEP_SECONDS", _number, 60.0, "how often to settle tasks whose message SQS moved")
INSTANCE_METADATA_URL = setting(
    "INSTANCE_METADATA_URL", _text, "http://169.254.169.254", "the instance metadata service (IMDSv2) the adapter reads"
)
METADATA_WATCH_SECONDS = setting(
    "METADATA_WATCH_SECONDS",
    _number,
    5.0,
    "how often the adapter reads the metadata for a spot interruption notice, a rebalance recommendation or the "
    "group's target lifecycle state (AWS recommends every 5 s)",
)
TERMINATION_HOOK_NAME = setting(
    "TERMINATION_HOOK_NAME", _text, None, "fleet mode: the group's termination lifecycle hook the adapter completes"
)
ADAPTER_POWEROFF = setting(
    "ADAPTER_POWEROFF",
    _flag,
    False,
    "1: stop the host when idle - power it off, or in fleet mode leave through the group (only the unit sets it)",
)

# -- what happened: events, webhooks, metrics, stuck workers, cost (docs/OBSERVABILITY.md) --------------------------
TASK_EVENT_BUS = setting("TASK_EVENT_BUS", _text, REQUIRED, "EventBridge bus the task state-change events go to")
WEBHOOK_QUEUE_URL = setting("WEBHOOK_QUEUE_URL", _text, REQUIRED, "queue of pending webhook deliveries")
WEBHOOK_SECRET_ARN = setting(
    "WEBHOOK_SECRET_ARN", _text, REQUIRED, "Secrets Manager secret holding the environment's webhook signing key"
)
WEBHOOK_MAX_ATTEMPTS = setting("WEBHOOK_MAX_ATTEMPTS", _integer, 8, "deliveries tried before a webhook is FAILED")
WEBHOOK_TIMEOUT_SECONDS = setting("WEBHOOK_TIMEOUT_SECONDS", _number, 10.0, "connect + read timeout of one delivery")
WEBHOOK_ALLOW_LOOPBACK = setting(
    "WEBHOOK_ALLOW_LOOPBACK",
    _flag,
    False,
    "1: webhooks may target 127.0.0.1/::1 (the local environments' tests and demo only; never rendered elsewhere)",
)
WEBHOOK_CA_FILE = setting("WEBHOOK_CA_FILE", _text, None, "extra CA bundle trusted for webhook TLS (local tests)")
HOSTS_TABLE_NAME = setting(
    "HOSTS_TABLE_NAME", _text, REQUIRED, "table of the GPU hosts' liveness and billed running intervals (core/hosts.py)"
)
LIVENESS_SECONDS = setting("LIVENESS_SECONDS", _number, 60.0, "how often the adapter records that its loop is alive")
STUCK_AFTER_SECONDS = setting(
    "STUCK_AFTER_SECONDS",
    _number,
    600.0,
    "a running GPU with work waiting and no claim, heartbeat or liveness for this long has a dead or hung adapter",
)
GPU_HOURLY_USD = setting(
    "GPU_HOURLY_USD", _number, None, "the GPU instance type's hourly price in USD (unset: costs are not recorded)"
)
METRICS_NAMESPACE = setting("METRICS_NAMESPACE", _text, "GpuOrchestrator", "CloudWatch namespace of the metrics")
METRICS_LOG_GROUP = setting(
    "METRICS_LOG_GROUP", _text, None, "the adapter's metrics log group (PutLogEvents, EMF); unset: metrics on stdout"
)

# -- the orchestrator --------------------------------------------------------------------------------------------------
ORCHESTRATOR_TOKEN = setting("ORCHESTRATOR_TOKEN", _text, None, "bearer token callers must present")
ORCHESTRATOR_INSECURE = setting("ORCHESTRATOR_INSECURE", _flag, False, "1: serve without a token (local only)")
MAX_BODY_BYTES = setting("MAX_BODY_BYTES", _integer, 64 * 1024, "largest request body accepted")
CONTROLLER_FUNCTION_NAME = setting(
    "CONTROLLER_FUNCTION_NAME",
    _text,
    REQUIRED,
    "the function that starts and stops GPUs (the shutdown Lambda), invoked asynchronously after each submit",
)
ORCHESTRATOR_URL = setting("ORCHESTRATOR_URL", _text, None, "the CLI's orchestrator base URL")


def _auth_mode(raw: str) -> str:
    if raw not in ("token", "iam"):
        raise ValueError("must be token or iam")
    return raw


ORCHESTRATOR_AUTH = setting(
    "ORCHESTRATOR_AUTH",
    _auth_mode,
    "token",
    "how callers are identified: token (bearer, one caller 'local') or iam (behind a Lambda function URL, AWS_IAM)",
)
ORCHESTRATOR_ADMIN_ARNS = setting(
    "ORCHESTRATOR_ADMIN_ARNS", _ids, _NO_IDS, "IAM callers who see every task: ARNs, or ARN prefixes ending in '/'"
)
UPLOAD_MAX_BYTES = setting("UPLOAD_MAX_BYTES", _integer, 5 * 1024**3, "largest input file one presigned upload takes")
UPLOAD_URL_EXPIRES_S = setting("UPLOAD_URL_EXPIRES_S", _integer, 3600, "lifetime of a presigned upload, seconds")
RESULT_URL_EXPIRES_S = setting("RESULT_URL_EXPIRES_S", _integer, 900, "lifetime of a presigned result download, s")
LOG_TAIL_BYTES = setting("LOG_TAIL_BYTES", _integer, 64 * 1024, "how much of the end of each log the API returns")
GPUQ_CONFIG = setting("GPUQ_CONFIG", _text, None, "the gpuq CLI's config file (default ~/.config/gpuq/config.toml)")

# -- what a job sees (the runner sets these for every attempt) ---------------------------------------------------------
JOB_TASK_ID, JOB_INPUT_DIR, JOB_OUTPUT_DIR = "TASK_ID", "INPUT_DIR", "OUTPUT_DIR"
JOB_PASSED_ENV = ("PATH", "HOME", "LANG")  # also from the adapter's env; nothing else of it reaches a job
JOB_PASSED_ENV_PREFIXES = ("CUDA_", "NVIDIA_")  # the GPU's: CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES, ...
JOB_USER = setting("JOB_USER", _text, None, "run jobs as this unprivileged user (the unit: gpu-job); unset: as ours")

# -- what the programs tell each other outside the environment ---------------------------------------------------------
# The `source` of the event the API sends the controller after a submit; the controller logs such a run as trigger
# "api". Asynchronous invoke: https://docs.aws.amazon.com/lambda/latest/dg/invocation-async.html
API_EVENT_SOURCE = "gpu-orchestrator.api"
# The API function's alias whose function URL only admins may call (the stack's admin policy allows
# lambda:InvokeFunctionUrl on that alias only): a request that came in through it is an admin's
# (orchestrator/identity.py). Function URLs on an alias: https://docs.aws.amazon.com/lambda/latest/dg/urls-configuration.html
ADMIN_ALIAS = "admin"

# Which program reads which settings (documentation, and what `render` checks a program's rendering against).
LAMBDA = (
    TASK_QUEUE_URL,
    TASK_TABLE_NAME,
    TASK_STATUS_INDEX,
    GPU_INSTANCE_IDS,
    GPU_FLEET_NAME,
    GPU_SLOTS,
    IDLE_WINDOW_SECONDS,
    MIN_UPTIME_SECONDS,
    QUEUED_TASK_MAX_AGE_SECONDS,
    HEARTBEAT_STALE_SECONDS,
    STOPPING_WAIT_SECONDS,
    LOG_LEVEL,
    HOSTS_TABLE_NAME,
    STUCK_AFTER_SECONDS,
    METRICS_NAMESPACE,
)
ADAPTER = (
    TASK_QUEUE_URL,
    TASK_DLQ_URL,
    TASK_TABLE_NAME,
    TASK_STATUS_INDEX,
    ARTIFACTS_BUCKET,
    TASK_TYPES_FILE,
    AWS_ENDPOINT_URL,
    AWS_DEFAULT_REGION,
    AWS_REGION,
    LOG_LEVEL,
    IDLE_WINDOW_SECONDS,
    MIN_UPTIME_SECONDS,
    QUEUED_TASK_MAX_AGE_SECONDS,
    HEARTBEAT_STALE_SECONDS,
    VISIBILITY_TIMEOUT,
    MAX_RECEIVES,
    RETRY_BACKOFF_SECONDS,
    RETRY_BACKOFF_CAP_SECONDS,
    WAIT_TIME_SECONDS,
    HEARTBEAT_SECONDS,
    STOP_GRACE_SECONDS,
    CLAIM_GRACE_SECONDS,
    WORK_DIR,
    WORKER_ID,
    ADAPTER_BUNDLE_PARAM,
    ADAPTER_BUNDLE_URI,
    ADAPTER_CONFIG_PARAM,
    ROLLOUT_CHECK_SECONDS,
    DLQ_SWEEP_SECONDS,
    ADAPTER_POWEROFF,
    JOB_USER,
    GPU_FLEET_NAME,
    GPU_SLOTS,
    INSTANCE_METADATA_URL,
    METADATA_WATCH_SECONDS,
    TERMINATION_HOOK_NAME,
    HOSTS_TABLE_NAME,
    LIVENESS_SECONDS,
    GPU_HOURLY_USD,
    METRICS_NAMESPACE,
    METRICS_LOG_GROUP,
)
ORCHESTRATOR = (
    TASK_QUEUE_URL,
    TASK_DLQ_URL,
    TASK_TABLE_NAME,
    TASK_STATUS_INDEX,
    GPU_INSTANCE_IDS,
    GPU_FLEET_NAME,
    TASK_TYPES_FILE,
    AWS_DEFAULT_REGION,
    AWS_REGION,
    ORCHESTRATOR_TOKEN,
    ORCHESTRATOR_INSECURE,
    MAX_BODY_BYTES,
    CONTROLLER_FUNCTION_NAME,
    ORCHESTRATOR_AUTH,
    ORCHESTRATOR_ADMIN_ARNS,
    ARTIFACTS_BUCKET,
    UPLOAD_MAX_BYTES,
    UPLOAD_URL_EXPIRES_S,
    RESULT_URL_EXPIRES_S,
    LOG_TAIL_BYTES,
    HOSTS_TABLE_NAME,
    GPU_HOURLY_USD,
    METRICS_NAMESPACE,
    WEBHOOK_ALLOW_LOOPBACK,
)
# The task-events function (functions/events): the table's stream -> EventBridge, and webhook deliveries queued.
EVENTS = (TASK_EVENT_BUS, WEBHOOK_QUEUE_URL, LOG_LEVEL)
# The webhook function (functions/webhooks): one delivery per message, its state on the task item.
WEBHOOKS = (
    WEBHOOK_QUEUE_URL,
    WEBHOOK_SECRET_ARN,
    WEBHOOK_MAX_ATTEMPTS,
    WEBHOOK_TIMEOUT_SECONDS,
    WEBHOOK_ALLOW_LOOPBACK,
    WEBHOOK_CA_FILE,
    TASK_TABLE_NAME,
    LOG_LEVEL,
)
# The gpuq CLI (orchestrator/cli.py): where the service is and how to sign for it.
GPUQ = (ORCHESTRATOR_URL, ORCHESTRATOR_TOKEN, ORCHESTRATOR_AUTH, GPUQ_CONFIG, AWS_REGION, AWS_DEFAULT_REGION)


def render(values: Mapping[Setting[Any], Any], *, program: tuple[Setting[Any], ...]) -> dict[str, str]:
    """Environment variables for one program, sorted by name. Values may be Terraform tokens (strings)."""
    stray = [s.name for s in values if s not in program]
    if stray:
        raise ValueError(f"{', '.join(stray)}: not read by this program")
    return {s.name: _render(v) for s, v in sorted(values.items(), key=lambda kv: kv[0].name)}
