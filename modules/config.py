"""Per-environment settings: one typed, validated record per environment, read from environments.toml.

Everything is checked before any construct exists, so a bad setting stops synth before anything is written, with
one line naming the setting and the environment.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

# An SNS email endpoint: one address (the alarm topic's subscriptions check the same rule).
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENTS_FILE = ROOT / "environments.toml"
DEFAULT_ENVIRONMENT = "local"

INSTANCE_ID = re.compile(r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
_ACCOUNT = re.compile(r"^\d{12}$")
_REGION = re.compile(r"^[a-z]{2}(?:-gov)?-[a-z]+-\d$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SUFFIX = re.compile(r"^[A-Za-z0-9_-]{0,16}$")
_REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
# EC2 instance types are <family>.<size> (g5.xlarge, p4d.24xlarge, g6e.12xlarge); EC2 checks that the type exists.
INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
# An SSM parameter's fully qualified name: "/"-separated levels of a-zA-Z0-9_.- (PutParameter).
PARAMETER_NAME = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")
# subnet-<8 or 17 hex digits>, as EC2 names subnets (CreateSubnet's SubnetId).
SUBNET_ID = re.compile(r"^subnet-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
GPU_MODES = ("adopt", "create", "fleet")
# AWS's public parameter naming the latest "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)": the name is
# /aws/service/deeplearning/ami/<architecture>/<the AMI's name without "deep", "learning", "ami">/latest/ami-id
# (DLAMI Developer Guide, "Finding the ID of a DLAMI": https://docs.aws.amazon.com/dlami/latest/devguide/find-dlami-id.html).
DEFAULT_AMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
# Settings only some modes read: set in another mode they would be silently ignored, so that is an error.
READ_IN_MODES: dict[str, tuple[str, ...]] = {
    "instance_type": ("create", "fleet"),
    "root_volume_gb": ("create", "fleet"),
    "ami_parameter": ("create", "fleet"),
    "gpu_instance_count": ("create",),
    "fleet_max_size": ("fleet",),
    "gpus_per_instance": ("fleet",),
    "fleet_spot": ("fleet",),
    "spot_instance_types": ("fleet",),
    "handback_timeout_seconds": ("fleet",),
    "fleet_subnet_ids": ("fleet",),
}
LIST_SETTINGS = (
    "gpu_instance_ids",
    "spot_instance_types",
    "fleet_subnet_ids",
    "alarm_emails",
)  # TOML lists, held as tuples
# Inclusive ranges, each with the limit it comes from (the field docstrings say why).
RANGES: dict[str, tuple[int, int]] = {
    "gpu_instance_count": (1, 20),
    "root_volume_gb": (1, 16384),
    "fleet_max_size": (1, 100),
    "gpus_per_instance": (1, 8),
    "handback_timeout_seconds": (30, 7200),
}
# A mixed instances policy takes at most 40 instance types (Amazon EC2 Auto Scaling User Guide, "Auto Scaling groups
# with multiple instance types and purchase options": https://docs.aws.amazon.com/autoscaling/ec2/userguide/
# ec2-auto-scaling-mixed-instances-groups.html).
MAX_SPOT_TYPES = 40


class ConfigError(ValueError):
    """A setting is missing or invalid. str() is one line naming the environment and the setting."""

    def __init__(self, environment: str, setting: str, problem: str) -> None:
        self.environment, self.setting = environment, setting
        super().__init__(f"environment '{environment}': {setting}: {problem}")


@dataclass(frozen=True, kw_only=True)
class EnvironmentConfig:
    name: str
    """Environment name (local, dev, staging, prod); also the default resource-name suffix."""
    region: str = "us-east-1"
    account: str = ""
    """12-digit AWS account id. Terraform refuses to run against any other account (allowed_account_ids)."""
    gpu_mode: str = "adopt"
    """"adopt" (the seed's): the GPU instances exist and are listed in gpu_instance_ids; an SSM association installs
    the adapter on them. "create": the gpu stack launches gpu_instance_count instances from a launch template whose
    user data installs the adapter. "fleet": an EC2 Auto Scaling group from that launch template, 0..fleet_max_size
    instances, sized by the controller from the backlog (docs/OPERATIONS.md, "Fleet mode"). gpu_instance_ids must
    be empty in create and fleet mode."""
    gpu_instance_ids: tuple[str, ...] = ()
    """adopt mode: the GPU EC2 instance(s) the system starts and stops. Start/Stop permissions are scoped to exactly
    these (create mode scopes them by the environment tag instead)."""
    instance_type: str = "g5.xlarge"
    """create and fleet mode: the EC2 instance type (<family>.<size>; EC2 refuses types it does not offer). Default
    g5.xlarge (one NVIDIA A10G)."""
    gpu_instance_count: int = 1
    """create mode: how many GPU instances to launch, 1..20."""
    root_volume_gb: int = 100
    """create and fleet mode: the encrypted gp3 root volume in GiB, 1..16384 (EBS gp3 limits; EC2 also refuses less
    than the AMI's snapshot, about 75 GiB for the Deep Learning AMIs). A stopped fleet instance pays only this."""
    ami_parameter: str = DEFAULT_AMI_PARAMETER
    """create and fleet mode: the SSM parameter naming the AMI (read at plan time). Default: AWS's public parameter
    for the latest Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)."""
    fleet_max_size: int = 1
    """fleet mode: the group's MaxSize, 1..100: the most GPU instances that ever run at once, and (on demand) how
    many stopped instances the warm pool keeps ready. Auto Scaling's API takes any size; 100 is far above the default
    EC2 vCPU quota for GPU instance families, which is the real limit (raise the quota first). Default 1."""
    gpus_per_instance: int = 1
    """fleet mode: the slots of one instance, one task per GPU (GPU_SLOTS for the controller and the adapter),
    1..8 (8 is the most GPUs an EC2 instance type has: p4d/p5.48xlarge, g5/g6e.48xlarge). It must be the
    instance_type's GPU count: the controller sizes the group by it. Default 1."""
    fleet_spot: bool = False
    """fleet mode: Spot instances through a capacity-optimized mixed instances policy with capacity rebalancing.
    AWS allows no warm pool with Spot: every scale-out is a fresh launch from the AMI (minutes, not seconds).
    Default false (on demand, with the warm pool of stopped instances)."""
    spot_instance_types: tuple[str, ...] = ()
    """fleet mode with fleet_spot: the instance types the Spot group may launch (the mixed instances policy's
    overrides), 1..40 distinct types, each with gpus_per_instance GPUs. Default: [instance_type]."""
    handback_timeout_seconds: int = 300
    """fleet mode: how long a leaving instance may take to hand its tasks back (the termination lifecycle hook's
    heartbeat timeout), 30..7200 s (PutLifecycleHook HeartbeatTimeout). Default 300."""
    fleet_subnet_ids: tuple[str, ...] = ()
    """fleet mode: the subnets the group launches into (its VPCZoneIdentifier; the security group goes in their
    VPC). Default: none, every available Availability Zone of the region's default VPC."""
    remote_state: bool = True
    """S3 state (one key per stack) with S3-native locking. False: local state files (the `local` env only)."""
    state_bucket: str = ""
    """Defaults to gpu-orchestrator-tfstate-<env>-<account>-<region> (one per environment, so two environments can
    be bootstrapped in one account); `make bootstrap` creates it."""
    name_suffix: str | None = None
    """Appended to every resource name so environments can share an account; defaults to "-<name>"."""
    idle_window_minutes: int = 30
    """How long the system must be idle before the GPU is stopped (the seed's 30 minutes)."""
    min_uptime_minutes: int = 10
    """Never stop an instance that has run for less than this (it may still be booting into its first task)."""
    results_expire_days: int = 30
    """Task outputs under results/ expire after this many days (S3 lifecycle rule)."""
    artifacts_force_destroy: bool = False
    """Let `make destroy` delete the artifacts bucket with its objects (task results). Off where results matter."""
    gpu_hourly_usd: float = 0.0
    """What one GPU instance costs per hour in USD (EC2 On-Demand Linux price of the instance type in the region:
    https://aws.amazon.com/ec2/pricing/on-demand/, or your own negotiated rate), for each task's cost and
    `gpuq cost` (GPU_HOURLY_USD). 0..1000; 0: unknown, no costs are recorded (GPU-seconds still are)."""
    stuck_after_minutes: int = 10
    """A running GPU instance with work waiting and no claim, heartbeat or adapter liveness for this long is stuck:
    the controller reboots it once, then stops it and requeues its tasks (STUCK_AFTER_SECONDS). 2..1440; keep it
    above the adapter's boot and install time. Default 10."""
    oldest_message_alarm_minutes: int = 60
    """Alarm when the oldest task message has waited this long (SQS ApproximateAgeOfOldestMessage), 1..1440 (the
    queue's retention is a day). Default 60."""
    alarm_emails: tuple[str, ...] = ()
    """Email addresses subscribed to the alarm topic (each must confirm the subscription SNS mails it). Default:
    none; subscribe anything else to the AlarmTopicArn output."""
    github_repository: str = ""
    """owner/name of the repository whose workflows may deploy this environment (bootstrap's OIDC trust)."""
    github_oidc_provider_arn: str = ""
    """An account has one GitHub OIDC provider: the second environment bootstrapped there names the first's."""

    @property
    def suffix(self) -> str:
        return f"-{self.name}" if self.name_suffix is None else self.name_suffix

    @property
    def idle_window_seconds(self) -> int:
        return self.idle_window_minutes * 60

    @property
    def emulated(self) -> bool:
        """Runs on the local AWS only (local state): the local environments, whose tests and demo may do what no
        deployed environment may (webhooks to 127.0.0.1)."""
        return not self.remote_state

    @property
    def stuck_after_seconds(self) -> int:
        return self.stuck_after_minutes * 60

    @property
    def metrics_namespace(self) -> str:
        """The CloudWatch namespace every program of this environment publishes its metrics under."""
        return f"GpuOrchestrator/{self.name}"

    @property
    def resolved_state_bucket(self) -> str:
        return self.state_bucket or f"gpu-orchestrator-tfstate-{self.name}-{self.account}-{self.region}"

    @property
    def parameter_prefix(self) -> str:
        """Where this environment's SSM parameters live (the adapter's release under <prefix>/adapter/)."""
        return f"/gpu-orchestrator/{self.name}"

    @property
    def spot_types(self) -> tuple[str, ...]:
        """The Spot group's instance types: spot_instance_types, or the instance_type alone."""
        return self.spot_instance_types or (self.instance_type,)

    def name_of(self, base: str) -> str:
        """A resource name unique to this environment (two environments can share one account and region)."""
        return f"{base}{self.suffix}"

    def state_key(self, stack_name: str) -> str:
        return f"{self.name}/{stack_name}.tfstate"


def _read_file(path: Path) -> dict[str, dict[str, Any]]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("*", str(path.name), "file not found") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("*", str(path.name), f"not valid TOML ({err})") from None
    return data


def load_config(
    name: str | None = None, *, env: Mapping[str, str] | None = None, path: Path = ENVIRONMENTS_FILE
) -> EnvironmentConfig:
    """The validated settings of one environment: the file's table, then the seed's CDK_* overrides."""
    env = os.environ if env is None else env
    name = name or DEFAULT_ENVIRONMENT
    tables = _read_file(path)
    if name not in tables:
        known = ", ".join(sorted(tables))
        raise ConfigError(name, "environment", f"unknown (known: {known}; set ENV= or the `environment` context)")
    raw = dict(tables[name])
    allowed = {f.name for f in fields(EnvironmentConfig)} - {"name"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(name, unknown[0], f"unknown setting (allowed: {', '.join(sorted(allowed))})")
    if env.get("CDK_DEFAULT_ACCOUNT"):
        raw["account"] = env["CDK_DEFAULT_ACCOUNT"]
    if env.get("CDK_DEFAULT_REGION"):
        raw["region"] = env["CDK_DEFAULT_REGION"]
    if env.get("CDK_CONTEXT_GPU_INSTANCE_ID"):
        raw["gpu_instance_ids"] = [i.strip() for i in env["CDK_CONTEXT_GPU_INSTANCE_ID"].split(",") if i.strip()]
    for key in LIST_SETTINGS:
        if key in raw:
            if not isinstance(raw[key], list) or not all(isinstance(item, str) for item in raw[key]):
                raise ConfigError(name, key, "must be a list of strings")
            raw[key] = tuple(raw[key])
    _check_types(name, raw)
    config = EnvironmentConfig(name=name, **raw)
    validate(config)
    return config


def _check_types(name: str, raw: Mapping[str, Any]) -> None:
    defaults = EnvironmentConfig(name=name)
    for key, value in raw.items():
        expected = type(getattr(defaults, key))
        if key == "name_suffix":
            expected = str
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            continue  # TOML writes 2 for 2.0
        if expected is int and isinstance(value, bool) or not isinstance(value, expected):
            raise ConfigError(name, key, f"must be {expected.__name__}, got {value!r}")


def validate(c: EnvironmentConfig) -> None:
    if not _REGION.match(c.region):
        raise ConfigError(c.name, "region", f"{c.region!r} is not an AWS region (like us-east-1)")
    if not c.account:
        raise ConfigError(c.name, "account", "not set (set it in environments.toml or export CDK_DEFAULT_ACCOUNT)")
    if not _ACCOUNT.match(c.account):
        raise ConfigError(c.name, "account", f"{c.account!r} is not a 12-digit AWS account id")
    _validate_gpu(c)
    for instance in c.gpu_instance_ids:
        if not INSTANCE_ID.match(instance):
            raise ConfigError(
                c.name, "gpu_instance_ids", f"{instance!r} is not an EC2 instance id (i-0123456789abcdef0)"
            )
    if len(set(c.gpu_instance_ids)) != len(c.gpu_instance_ids):
        raise ConfigError(c.name, "gpu_instance_ids", "lists an instance twice")
    if c.remote_state and not _BUCKET.match(c.resolved_state_bucket):
        raise ConfigError(c.name, "state_bucket", f"{c.resolved_state_bucket!r} is not a valid S3 bucket name")
    if not _SUFFIX.match(c.suffix):
        raise ConfigError(c.name, "name_suffix", f"{c.suffix!r}: up to 16 letters, digits, '-' or '_'")
    for key, low, high in (
        ("idle_window_minutes", 5, 24 * 60),
        ("min_uptime_minutes", 0, 24 * 60),
        ("results_expire_days", 1, 3650),
        ("stuck_after_minutes", 2, 24 * 60),
        ("oldest_message_alarm_minutes", 1, 24 * 60),
        ("gpu_hourly_usd", 0, 1000),
    ):
        value = getattr(c, key)
        if not low <= value <= high:
            raise ConfigError(c.name, key, f"{value} is outside {low}..{high}")
    if c.idle_window_minutes % 5:
        # The alarm evaluates 5-minute periods; a window between them would silently round.
        raise ConfigError(c.name, "idle_window_minutes", f"{c.idle_window_minutes} is not a multiple of 5")
    for email in c.alarm_emails:
        if not EMAIL.fullmatch(email):
            raise ConfigError(c.name, "alarm_emails", f"{email!r} is not an email address")
    if c.github_repository and not _REPOSITORY.match(c.github_repository):
        raise ConfigError(c.name, "github_repository", f"{c.github_repository!r} is not owner/name")


def _validate_gpu(c: EnvironmentConfig) -> None:
    if c.gpu_mode not in GPU_MODES:
        raise ConfigError(c.name, "gpu_mode", f"{c.gpu_mode!r} is not one of {', '.join(GPU_MODES)}")
    defaults = EnvironmentConfig(name=c.name)
    for key, modes in READ_IN_MODES.items():
        if c.gpu_mode not in modes and getattr(c, key) != getattr(defaults, key):
            read = " or ".join(f'"{m}"' for m in modes)
            raise ConfigError(c.name, key, f"only read when gpu_mode = {read} (this environment's is {c.gpu_mode!r})")
    if c.gpu_mode == "adopt":
        if not c.gpu_instance_ids:
            raise ConfigError(
                c.name,
                "gpu_instance_ids",
                "none set (set them in environments.toml or export CDK_CONTEXT_GPU_INSTANCE_ID)",
            )
        return
    if c.gpu_instance_ids:
        raise ConfigError(
            c.name, "gpu_instance_ids", f'must be empty when gpu_mode = "{c.gpu_mode}" (the stacks launch them)'
        )
    if not INSTANCE_TYPE.match(c.instance_type):
        raise ConfigError(c.name, "instance_type", f"{c.instance_type!r} is not an EC2 instance type (g5.xlarge)")
    for key, (low, high) in RANGES.items():
        value = getattr(c, key)
        if (c.gpu_mode in READ_IN_MODES[key]) and not low <= value <= high:
            raise ConfigError(c.name, key, f"{value} is outside {low}..{high}")
    if not PARAMETER_NAME.match(c.ami_parameter):
        raise ConfigError(c.name, "ami_parameter", f"{c.ami_parameter!r} is not an SSM parameter name (/a/b/c)")
    if c.gpu_mode == "fleet":
        _validate_fleet(c)


def _validate_fleet(c: EnvironmentConfig) -> None:
    if c.spot_instance_types and not c.fleet_spot:
        raise ConfigError(c.name, "spot_instance_types", "only read when fleet_spot = true")
    for instance_type in c.spot_instance_types:
        if not INSTANCE_TYPE.match(instance_type):
            raise ConfigError(c.name, "spot_instance_types", f"{instance_type!r} is not an EC2 instance type")
    if len(set(c.spot_instance_types)) != len(c.spot_instance_types):
        raise ConfigError(c.name, "spot_instance_types", "lists an instance type twice")
    if len(c.spot_instance_types) > MAX_SPOT_TYPES:
        count = len(c.spot_instance_types)
        raise ConfigError(c.name, "spot_instance_types", f"{count} types: at most {MAX_SPOT_TYPES} (mixed instances)")
    for subnet in c.fleet_subnet_ids:
        if not SUBNET_ID.match(subnet):
            raise ConfigError(c.name, "fleet_subnet_ids", f"{subnet!r} is not a subnet id (subnet-0123456789abcdef0)")
    if len(set(c.fleet_subnet_ids)) != len(c.fleet_subnet_ids):
        raise ConfigError(c.name, "fleet_subnet_ids", "lists a subnet twice")
