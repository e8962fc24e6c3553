"""`python3 -m adapter`: build the worker from env vars and run its loop until SIGTERM (or a new bundle).

Signals: the first SIGTERM/SIGINT asks the loop to stop - no new receive, every slot's running job is stopped, its
task goes back to QUEUED with a fresh message - and the process exits 0. A second one exits at once (143), killing
the jobs' process groups first. The handler only sets flags (logging from a signal handler can re-enter a
half-written line); the loop logs. It is installed before anything else (boto3's import and the first AWS calls
take a while): a stop that arrives while the worker is being built ends the start-up at once, with exit 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from core import contract as c
from core import logs

if TYPE_CHECKING:
    from .config import AdapterConfig
    from .fleet import Membership
    from .liveness import Liveness
    from .metadata import Metadata
    from .metrics import Meter
    from .worker import Worker

log = logging.getLogger("adapter")
EXIT_CONFIG = 2


def build(env: Mapping[str, str], session: Any = None) -> Worker:
    import boto3

    from core.store import TaskStore
    from core.task_types import load_registry

    from .config import from_env, read_queue_settings
    from .worker import Worker

    region = c.AWS_REGION.read_optional(env) or c.AWS_DEFAULT_REGION.read_optional(env)
    session = session or boto3.session.Session(region_name=region)
    # Honour the given mapping's endpoint (boto3 itself only reads os.environ): tests and the local demo.
    endpoint = c.AWS_ENDPOINT_URL.read_optional(env)
    kw = {"endpoint_url": endpoint} if endpoint else {}
    sqs = session.client("sqs", **kw)
    visibility, max_receives = read_queue_settings(sqs, c.TASK_QUEUE_URL.read(env))
    config = from_env(env, queue_visibility_s=visibility, queue_max_receives=max_receives)
    store = TaskStore(session.resource("dynamodb", **kw).Table(config.table_name), status_index=config.status_index)
    membership, metadata = _fleet(config, session, kw)
    liveness, meter = _observers(config, session, kw, membership.instance_id if membership is not None else None)
    autostop = None
    # Stopping is only right on the GPU instance: the systemd unit opts in with ADAPTER_POWEROFF=1, so
    # `python -m adapter` on a laptop or CI runner never shuts its host down, whatever IDLE_WINDOW_SECONDS says.
    if c.ADAPTER_POWEROFF.read(env) and c.IDLE_WINDOW_SECONDS.read(env) > 0:
        from .autostop import AutoStop, systemctl_poweroff

        autostop = AutoStop.from_env(
            env,
            sqs=sqs,
            dynamodb=session.client("dynamodb", **kw),
            poweroff=membership.leave if membership is not None else systemctl_poweroff,
            fleet=membership is not None,
        )
    return Worker(
        config=config,
        sqs=sqs,
        s3=session.client("s3", **kw),
        store=store,
        registry=load_registry(config.task_types_file),
        ssm=session.client("ssm", **kw) if config.bundle_param else None,
        autostop=autostop,
        running_env=env,
        membership=membership,
        metadata=metadata,
        liveness=liveness,
        meter=meter,
    )


def _fleet(config: AdapterConfig, session: Any, kw: dict[str, str]) -> tuple[Membership | None, Metadata | None]:
    """Fleet mode's membership and metadata (None, None without GPU_FLEET_NAME). Outside a fleet neither group nor
    Spot can apply (Spot capacity comes only as a fleet, in its group), so the metadata service is never read: a
    host off EC2 never waits on it. In a fleet, the instance id comes from the metadata before anything runs; a
    service that does not answer is a one-line setting error naming INSTANCE_METADATA_URL (systemd starts the
    adapter again 5 s later)."""
    if not config.fleet_name:
        return None, None
    from .fleet import Membership
    from .liveness import instance_id as read_instance_id
    from .metadata import Metadata

    metadata = Metadata(config.metadata_url)
    instance_id = read_instance_id(metadata, "fleet mode")
    autoscaling = session.client("autoscaling", **kw)
    membership = Membership(autoscaling, group=config.fleet_name, instance_id=instance_id, hook_name=config.hook_name)
    return membership, metadata


def _observers(
    config: AdapterConfig, session: Any, kw: dict[str, str], instance_id: str | None
) -> tuple[Liveness | None, Meter]:
    """The loop's liveness (HOSTS_TABLE_NAME set: the instance id from the metadata at start, unless fleet mode read
    it already; unset: the metadata service is not asked) and its metrics (METRICS_LOG_GROUP set: shipped to a
    stream named after the instance, else the worker; unset: stdout). Their clients wait at most seconds and retry
    once: the loop makes these calls itself, and must not hang on them."""
    from botocore.config import Config

    from core.metrics import LogShipper

    from .liveness import Liveness
    from .liveness import instance_id as read_instance_id
    from .metadata import Metadata
    from .metrics import Meter

    bounded = Config(connect_timeout=5, read_timeout=5, retries={"max_attempts": 2, "mode": "standard"})
    liveness = None
    if config.hosts_table:
        from core.hosts import HostStore

        if instance_id is None:
            instance_id = read_instance_id(Metadata(config.metadata_url), "liveness (HOSTS_TABLE_NAME)")
        hosts = HostStore(session.client("dynamodb", config=bounded, **kw), config.hosts_table)
        liveness = Liveness(hosts, instance_id=instance_id, worker=config.worker_id, every_s=config.liveness_s)
    shipper = None
    if config.metrics_log_group:
        logs_client = session.client("logs", config=bounded, **kw)
        shipper = LogShipper(logs_client, group=config.metrics_log_group, stream=instance_id or config.worker_id)
    meter = Meter(
        namespace=config.metrics_namespace,
        slots=config.slots,
        worker=config.worker_id,
        write=shipper,
        flush=_raising(shipper) if shipper is not None else None,
    )
    return liveness, meter


def _raising(shipper: Any) -> Any:
    """The shipper's flush, raising its error (the Meter logs it: metrics_flush_failed) when it sent nothing."""

    def flush() -> int:
        sent = int(shipper.flush())
        if shipper.last_error:
            raise RuntimeError(shipper.last_error)
        return sent

    return flush


class StoppedBeforeStart(BaseException):
    """The first stop signal arrived while the worker was still being built. A BaseException, like
    KeyboardInterrupt, so that no library's `except Exception` (botocore retries connection errors) swallows it."""


class Signals:
    """SIGTERM/SIGINT handling from the first moment of `main`, before the worker exists."""

    def __init__(self) -> None:
        self.worker: Worker | None = None
        self.received: list[int] = []

    def install(self) -> Signals:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        return self

    def attach(self, worker: Worker) -> None:
        self.worker = worker

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        worker = self.worker
        if len(self.received) == 1:
            if worker is None:
                raise StoppedBeforeStart  # unwinds the build (even a blocked AWS call); main exits 0
            worker.request_stop()
            return
        pgids = worker.job_pgids() if worker is not None else []
        for pgid in pgids:
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
        line = {
            "ts": round(time.time(), 3),
            "level": "warning",
            "logger": "adapter",
            "task_id": None,
            "worker": worker.config.worker_id if worker is not None else None,
            "event": "second_signal_exit_now",
            "killed_pgids": pgids,
        }
        os.write(1, (json.dumps(line) + "\n").encode())
        os._exit(128 + signum)


def main() -> int:
    signals = Signals().install()
    try:
        worker = build(os.environ)
        signals.attach(worker)
    except StoppedBeforeStart:
        print(json.dumps({"level": "info", "event": "stopped_before_start", "task_id": None}), flush=True)
        return 0
    except c.SettingError as bad:
        line = {"level": "error", "event": "config_invalid", "task_id": None, "name": bad.name, "error": str(bad)}
        print(json.dumps(line), flush=True)
        return EXIT_CONFIG
    logs.setup(c.LOG_LEVEL.read(os.environ), worker=worker.config.worker_id)
    if worker.autostop is None:
        logs.event(log, "autostop_off", reason="ADAPTER_POWEROFF is not 1 or IDLE_WINDOW_SECONDS <= 0")
    code = worker.run()
    logs.event(log, "exit", code=code)
    return code


if __name__ == "__main__":
    sys.exit(main())
