"""What each program reads from its environment (core/contract.py), as the stacks fill it in: the settings more
than one program shares are written once here, each by the function named for what it is."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core import contract
from modules.bucket import PrivateBucket
from modules.config import EnvironmentConfig
from modules.fleet import fleet_for
from modules.gpu import adapter_metrics_group
from modules.queue import TaskQueue
from modules.table import HostTable, TaskTable

if TYPE_CHECKING:
    from modules.stacks import GpuStack


def task_store(queue: TaskQueue, table: TaskTable, *, dlq: bool = True) -> dict[contract.Setting[Any], Any]:
    """Where the tasks are, as every program reads it: the queue (and, with `dlq`, its dead-letter queue), the table
    and its status index."""
    found: dict[contract.Setting[Any], Any] = {
        contract.TASK_QUEUE_URL: queue.url,
        contract.TASK_TABLE_NAME: table.name,
        contract.TASK_STATUS_INDEX: table.index_name,
    }
    if dlq:
        found[contract.TASK_DLQ_URL] = queue.dlq_url
    return found


def gpu_targets(gpu: GpuStack, program: tuple[contract.Setting[Any], ...]) -> dict[contract.Setting[Any], Any]:
    """Which GPUs `program` (contract.LAMBDA or contract.ORCHESTRATOR) works with: the instance ids, or in fleet mode
    the group's name (and, for the controller, the slots per instance it sizes the group by)."""
    if gpu.fleet is None:
        return {contract.GPU_INSTANCE_IDS: gpu.instance_ids}
    found: dict[contract.Setting[Any], Any] = {contract.GPU_FLEET_NAME: gpu.fleet.name}
    if program is contract.LAMBDA:
        found[contract.GPU_SLOTS] = gpu.fleet.slots
    return found


def runtime_environment(
    config: EnvironmentConfig,
    *,
    queue: TaskQueue,
    table: TaskTable,
    hosts: HostTable,
    bucket: PrivateBucket,
) -> dict[str, str]:
    """The environment the adapter runs with (published as an SSM parameter): the values known at synth time;
    every other setting takes its default from core/contract.py. In fleet mode also its group, slots and hand-back
    hook, by name (this stack comes before the gpu stack)."""
    fleet: dict[contract.Setting[Any], Any] = {}
    if config.gpu_mode == "fleet":
        group = fleet_for(config)
        fleet = {
            contract.GPU_FLEET_NAME: group.name,
            contract.GPU_SLOTS: config.gpus_per_instance,
            contract.TERMINATION_HOOK_NAME: group.hook_name,
        }
    return contract.render(
        {
            contract.AWS_DEFAULT_REGION: config.region,
            **task_store(queue, table),
            contract.ARTIFACTS_BUCKET: bucket.name,
            **idle_rule(config),
            **host_records(config, hosts),
            contract.METRICS_LOG_GROUP: adapter_metrics_group(config),
            **price(config),
            **fleet,
        },
        program=contract.ADAPTER,
    )


def idle_rule(config: EnvironmentConfig) -> dict[contract.Setting[Any], Any]:
    """When an idle GPU may stop: the controller and the adapter read the same window and minimum uptime."""
    return {
        contract.IDLE_WINDOW_SECONDS: config.idle_window_seconds,
        contract.MIN_UPTIME_SECONDS: config.min_uptime_minutes * 60,
    }


def host_records(config: EnvironmentConfig, hosts: HostTable) -> dict[contract.Setting[Any], Any]:
    """Where the programs record and read the GPU hosts (the hosts table) and their metrics (the namespace)."""
    return {contract.HOSTS_TABLE_NAME: hosts.name, contract.METRICS_NAMESPACE: config.metrics_namespace}


def price(config: EnvironmentConfig) -> dict[contract.Setting[Any], Any]:
    """GPU_HOURLY_USD where the environment sets one (0 means unknown: no cost is recorded, none is made up)."""
    return {contract.GPU_HOURLY_USD: config.gpu_hourly_usd} if config.gpu_hourly_usd > 0 else {}
