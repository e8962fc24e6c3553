"""The stacks of one environment, one per layer, named as the seed's `cdk list` (plus artifacts, the GPU hosts and
the API).

Each takes the constructs it builds on; cdktf turns those references into outputs of the producing stack and
`terraform_remote_state` reads in the consuming one, so each stack has its own state and plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cdktf_cdktf_provider_aws.cloudwatch_log_group import CloudwatchLogGroup
from constructs import Construct

from core import contract
from modules.alarm import Schedule
from modules.api import OrchestratorApi
from modules.base import EnvironmentStack
from modules.bootstrap import boundary_for
from modules.bucket import INPUTS_PREFIX, RESULTS_PREFIX, PrivateBucket
from modules.canvas import CanvasAccess
from modules.config import EnvironmentConfig
from modules.fleet import FleetGroup, GpuFleet, fleet_for
from modules.function import FunctionSettings, PythonFunction, grant_dead_letter, grant_logs, package_function
from modules.gpu import (
    METRICS_LOG_ACTIONS,
    METRICS_LOG_DAYS,
    GpuHost,
    GpuInstances,
    adapter_metrics_group,
    bootstrap_document_name,
    grant_ssm_agent,
    instances_for,
)
from modules.iam import Role, arn
from modules.layout import API, ARTIFACTS, DYNAMODB, GPU, IAM, LAMBDA, SQS
from modules.program_env import gpu_targets, host_records, idle_rule, price, runtime_environment, task_store
from modules.queue import DAY, SEND_MESSAGE_ACTIONS, TaskQueue
from modules.rollout import AdapterRelease
from modules.stacks_events import EventsRoles
from modules.table import HostTable, TaskTable

SHUTDOWN_FUNCTION = "shutdown-gpu-lambda"
SHUTDOWN_DLQ = "shutdown-gpu-lambda-dlq"
API_FUNCTION = "gpu-orchestrator-api"
SUBMIT_POLICY, ADMIN_POLICY = "gpu-orchestrator-submit", "gpu-orchestrator-admin"
CANVAS_POLICY = "gpu-orchestrator-canvas"
ACCESS_LOG_DAYS = 365
CONTROLLER_INVOKE = ("lambda:InvokeFunction",)


class SqsStack(EnvironmentStack):
    def __init__(self, scope: Construct, *, config: EnvironmentConfig) -> None:
        super().__init__(scope, SQS, config=config)
        self.queue = TaskQueue(
            self, "tasks", name=self.name_of("gpu_tasks_queue"), dlq_name=self.name_of("gpu_tasks_queue_dlq")
        )
        self.output("QueueUrl", self.queue.url, "URL of the task queue")
        self.output("QueueArn", self.queue.arn, "ARN of the task queue")
        self.output("DLQUrl", self.queue.dlq_url, "URL of the dead-letter queue (retained on destroy)")


class DynamoDbStack(EnvironmentStack):
    def __init__(self, scope: Construct, *, config: EnvironmentConfig) -> None:
        super().__init__(scope, DYNAMODB, config=config)
        self.table = TaskTable(self, "tasks", name=self.name_of("task_store"))
        self.hosts = HostTable(self, "hosts", name=self.name_of("gpu_hosts"))
        self.output("TableName", self.table.name, "Name of the task table (retained on destroy)")
        self.output("TableArn", self.table.arn, "ARN of the task table")
        self.output("TableStreamArn", self.table.stream_arn, "The task table's stream (new and old images)")
        self.output("HostsTableName", self.hosts.name, "GPU hosts' liveness and billed running intervals (retained)")


class ArtifactsStack(EnvironmentStack):
    def __init__(
        self, scope: Construct, *, config: EnvironmentConfig, queue: TaskQueue, table: TaskTable, hosts: HostTable
    ) -> None:
        super().__init__(scope, ARTIFACTS, config=config)
        name = f"gpu-orchestrator-artifacts-{config.name}-{config.account}"
        # Who read or replaced an adapter bundle (code every GPU instance runs) or a task's inputs and results.
        # SSE-S3: S3's log delivery cannot write with the aws/s3 managed key the artifacts bucket uses.
        self.access_logs = PrivateBucket(
            self,
            "access-logs",
            name=f"{name}-logs",
            force_destroy=config.artifacts_force_destroy,
            expire_prefix="",
            expire_days=ACCESS_LOG_DAYS,
            sse_algorithm="AES256",
        )
        self.bucket = PrivateBucket(
            self,
            "artifacts",
            name=name,
            force_destroy=config.artifacts_force_destroy,
            expire_prefix=RESULTS_PREFIX,
            expire_days=config.results_expire_days,
        )
        self.bucket.log_access_to(self.access_logs, prefix="artifacts/", account=config.account)
        self.release = AdapterRelease(
            self,
            "adapter",
            bucket=self.bucket,
            parameter_prefix=config.parameter_prefix,
            region=config.region,
            account=config.account,
            config=runtime_environment(config, queue=queue, table=table, hosts=hosts, bucket=self.bucket),
        )
        # What the canvas image service may do (canvas/README.md): its image prefix only, for whoever runs it.
        self.canvas = CanvasAccess(self, "canvas", name=self.name_of(CANVAS_POLICY), bucket_arn=self.bucket.arn)
        self.output("BucketName", self.bucket.name, "Bucket for adapter bundles, task inputs and results")
        self.output("CanvasPolicyArn", self.canvas.arn, "Attach to the canvas service's identity (its image prefix)")
        self.output("AdapterBundleUri", self.release.uri, "The adapter bundle this apply released")


class IamStack(EnvironmentStack):
    """The three roles, each built from the grants of the constructs it uses, and the events layer's two, granted by
    modules/stacks_events.py EventsRoles.create. The GPU hosts are granted by what the roles' stack can know before
    the gpu stack exists: the instance ids (adopt), the environment tag (create), the group's name (fleet:
    modules/fleet.py FleetGroup)."""

    def __init__(
        self,
        scope: Construct,
        *,
        config: EnvironmentConfig,
        queue: TaskQueue,
        table: TaskTable,
        hosts: HostTable,
        artifacts: ArtifactsStack,
    ) -> None:
        super().__init__(scope, IAM, config=config)
        # Every role and every ARN it is granted by name live in the environment's region and account.
        self._where = {"region": config.region, "account": config.account}
        gpu = fleet_for(config) if config.gpu_mode == "fleet" else instances_for(config)
        self.orchestrator = self._orchestrator_role(gpu, queue, table, artifacts)
        self.gpu_instance = self._gpu_instance_role(gpu, queue, table, artifacts)
        self.shutdown = self._shutdown_role(gpu, queue, table)
        hosts.grant_report(self.orchestrator)  # gpuq cost: the billed running intervals
        hosts.grant_liveness(self.gpu_instance)
        hosts.grant_controller(self.shutdown)
        self.events = EventsRoles.create(self._role, config=config, table=table)
        assert self.gpu_instance.profile is not None
        self.output("OrchestratorRoleArn", self.orchestrator.arn, "Role of the orchestrator API function")
        self.output("GpuInstanceRoleArn", self.gpu_instance.arn, "Role of the GPU instance")
        self.output("LambdaRoleArn", self.shutdown.arn, "Role of the shutdown Lambda")
        self.output("InstanceProfileArn", self.gpu_instance.profile.arn, "Attach to the GPU instance")
        self.output("TaskEventsRoleArn", self.events.events.arn, "Role of the task-events function")
        self.output("TaskWebhooksRoleArn", self.events.webhooks.arn, "Role of the webhook function")

    def _role(self, id: str, **props: Any) -> Role:
        """Each role trusts its service for this account only, and carries the boundary bootstrap made for this
        environment (none in `local`, which has no bootstrap): modules/iam.py Role, modules/bootstrap.py."""
        config = self.config
        return Role(
            self, id, account=config.account, region=config.region, permissions_boundary=boundary_for(config), **props
        )

    def _orchestrator_role(
        self, gpu: GpuInstances | FleetGroup, queue: TaskQueue, table: TaskTable, artifacts: ArtifactsStack
    ) -> Role:
        role = self._role(
            "orchestrator",
            name=self.name_of("orchestrator-task-role"),
            assumed_by="lambda.amazonaws.com",
            description="The orchestrator API: accepts tasks, asks the controller to start GPUs, presigns files.",
        )
        queue.grant_send_messages(role)
        queue.grant_read_depth(role, include_dlq=True)  # /healthz reports both depths
        table.grant_submit(role)
        gpu.grant_describe(role)  # /healthz; starting is the controller's alone
        # One owner for starts and stops: the API asks the controller to reconcile now (an asynchronous invoke).
        # By name: the function's stack is applied after this one.
        role.add(CONTROLLER_INVOKE, [arn("lambda", f"function:{self.name_of(SHUTDOWN_FUNCTION)}", **self._where)])
        # Exactly what presigning needs: a presigned request carries the signer's rights, nothing more.
        artifacts.bucket.grant_write(role, INPUTS_PREFIX)  # POST /uploads
        artifacts.bucket.grant_read(role, RESULTS_PREFIX)  # GET /tasks/{id}/results and /logs
        artifacts.bucket.grant_list(role, RESULTS_PREFIX)  # one task's results (ListObjectsV2 under results/<id>/)
        grant_logs(role, **self._where, function_name=self.name_of(API_FUNCTION))
        return role

    def _gpu_instance_role(
        self, gpu: GpuInstances | FleetGroup, queue: TaskQueue, table: TaskTable, artifacts: ArtifactsStack
    ) -> Role:
        role = self._role(
            "gpu-instance",
            name=self.name_of("gpu-instance-role"),
            assumed_by="ec2.amazonaws.com",
            description="The adapter on the GPU instance: runs tasks, writes results.",
            instance_profile_name=self.name_of("gpu-instance-profile"),
        )
        queue.grant_consume_messages(role)
        # A stop hands its task back with a fresh message, so a stop never uses up a receive meant for failures.
        # The item stays the only authority: a message for a task that is not QUEUED, or not its current message,
        # runs nothing, so sending adds no way to run work that was not submitted.
        queue.grant(role, *SEND_MESSAGE_ACTIONS)
        queue.grant_dead_letter_handling(role)
        table.grant_worker(role)
        table.grant_index_read(role)  # its own idle check: any task RUNNING or QUEUED?
        artifacts.bucket.grant_read(role, INPUTS_PREFIX)
        artifacts.bucket.grant_write(role, RESULTS_PREFIX)
        artifacts.release.grant_install(role)
        grant_ssm_agent(role, **self._where, document_name=bootstrap_document_name(self.config))
        if isinstance(gpu, FleetGroup):
            gpu.grant_member(role)  # scale-in protection while busy, the hand-back hook, leaving when idle
        metrics = arn("logs", f"log-group:{adapter_metrics_group(self.config)}", **self._where)
        role.add(METRICS_LOG_ACTIONS, [f"{metrics}:*"])  # its metrics, shipped by itself (core.metrics.LogShipper)
        return role

    def _shutdown_role(self, gpu: GpuInstances | FleetGroup, queue: TaskQueue, table: TaskTable) -> Role:
        role = self._role(
            "shutdown",
            name=self.name_of("lambda-gpu-shutdown-role"),
            assumed_by="lambda.amazonaws.com",
            description="The shutdown Lambda: stops an idle GPU, starts one with work waiting.",
        )
        if isinstance(gpu, FleetGroup):
            # The desired capacity only: Auto Scaling starts, stops and terminates the instances with its own
            # service-linked role, so this role has no ec2:StartInstances/StopInstances in fleet mode.
            gpu.grant_scale(role)
            gpu.grant_recover(role, **self._where)  # a stuck member: reboot it, then have the group replace it
        else:
            gpu.grant_describe(role)
            gpu.grant_stop(role)
            gpu.grant_start(role)
            gpu.grant_reboot(role)  # a stuck worker's first recovery step
        queue.grant_read_depth(role)
        table.grant_index_read(role)
        # A stuck worker's tasks go back to the queue: a fresh message, then the item RUNNING -> QUEUED.
        queue.grant(role, *SEND_MESSAGE_ACTIONS)
        table.grant_worker(role)
        grant_logs(role, **self._where, function_name=self.name_of(SHUTDOWN_FUNCTION))
        grant_dead_letter(role, **self._where, queue_name=self.name_of(SHUTDOWN_DLQ))
        return role


class GpuStack(EnvironmentStack):
    """The GPU hosts: adopted instances bootstrapped by an SSM association, or instances created from a launch
    template whose user data bootstraps them (modules/gpu.py GpuHost), or, in fleet mode, an Auto Scaling group from
    that template (modules/fleet.py GpuFleet). None of them starts or stops an instance: the controller (the lambda
    stack) owns their state, in fleet mode through the group's desired capacity.

    Attributes: host (GpuHost, None in fleet mode), fleet (GpuFleet, None otherwise), instance_ids (the hosts'; empty
    in fleet mode, where the group's members come and go)."""

    def __init__(self, scope: Construct, *, config: EnvironmentConfig, iam: IamStack) -> None:
        super().__init__(scope, GPU, config=config)
        assert iam.gpu_instance.profile is not None
        profile = iam.gpu_instance.profile.name
        self.metrics_logs = CloudwatchLogGroup(
            self, "adapter-metrics", name=adapter_metrics_group(config), retention_in_days=METRICS_LOG_DAYS
        )
        self.host: GpuHost | None = None
        self.fleet: GpuFleet | None = None
        if config.gpu_mode == "fleet":
            self.fleet = GpuFleet.from_config(self, "gpu", config=config, instance_profile_name=profile)
            self.instance_ids: tuple[str, ...] = ()
            self.output("FleetName", self.fleet.group.name, "The GPU fleet's Auto Scaling group (GPU_FLEET_NAME)")
            self.output(
                "HandbackHookName",
                self.fleet.hook_name,
                "The fleet's termination lifecycle hook: a leaving instance hands its tasks back, then completes it",
            )
            self.output("LaunchTemplateId", self.fleet.launch_template.id, "The launch template of the GPU fleet")
            self.output("SecurityGroupId", self.fleet.security_group.id, "The GPU fleet's security group (no ingress)")
            return
        self.host = GpuHost.from_config(self, "gpu", config=config, instance_profile_name=profile)
        self.instance_ids = self.host.instance_ids
        # Joined in Python, not with Fn.join: each id stays a plain reference (what localaws resolves).
        self.output("GpuInstanceIds", ",".join(self.host.instance_ids), "The GPU instances, comma-separated")
        if self.host.mode == "adopt":
            self.output(
                "AttachProfileCommands",
                "\n".join(self.host.attach_profile_commands),
                "Run once per adopted instance (Terraform cannot attach a profile to an instance it does not manage)",
            )
            self.output("BootstrapDocumentName", self.host.document.name, "The SSM document that installs the adapter")
        else:
            self.output("LaunchTemplateId", self.host.launch_template.id, "The launch template of the GPU hosts")
            self.output("SecurityGroupId", self.host.security_group.id, "The GPU hosts' security group (no ingress)")


@dataclass(frozen=True, kw_only=True)
class Layers:
    """What both function stacks (LambdaStack, ApiStack) build on, each layer made once (main.py compose): the roles,
    the task queue, the task and hosts tables, and the GPU hosts their programs target."""

    iam: IamStack
    queue: TaskQueue
    table: TaskTable
    hosts: HostTable
    gpu: GpuStack


class LambdaStack(EnvironmentStack):
    def __init__(self, scope: Construct, *, config: EnvironmentConfig, layers: Layers) -> None:
        super().__init__(scope, LAMBDA, config=config)
        environment = contract.render(
            {
                **gpu_targets(layers.gpu, contract.LAMBDA),
                **task_store(layers.queue, layers.table, dlq=False),
                **idle_rule(config),
                **host_records(config, layers.hosts),
                # the queue's retention: older QUEUED items lost their message
                contract.QUEUED_TASK_MAX_AGE_SECONDS: DAY,
                contract.STUCK_AFTER_SECONDS: config.stuck_after_seconds,
            },
            program=contract.LAMBDA,
        )
        settings = FunctionSettings(
            name=self.name_of(SHUTDOWN_FUNCTION),
            role=layers.iam.shutdown,
            environment=environment,
            timeout_seconds=60,
            reserved_concurrency=1,  # one decision at a time: two runs can never race to start/stop
        )
        self.function = package_function(
            self, "shutdown", config=config, settings=settings, dead_letter_queue_name=self.name_of(SHUTDOWN_DLQ)
        )
        Schedule(
            self, "schedule", name=self.name_of("gpu-orchestrator-idle-check"), rate_minutes=1, target=self.function
        )
        self.output("FunctionArn", self.function.arn, "ARN of the shutdown Lambda")
        self.output("FunctionName", self.function.name, "Name of the shutdown Lambda")


class ApiStack(EnvironmentStack):
    """The orchestrator API: the FastAPI app as a Lambda behind IAM-authenticated function URLs (no load balancer,
    no VPC, nothing billed while idle), and the managed policies ops attach to the people who call it."""

    def __init__(
        self,
        scope: Construct,
        *,
        config: EnvironmentConfig,
        layers: Layers,
        artifacts: ArtifactsStack,
        controller: PythonFunction,
    ) -> None:
        super().__init__(scope, API, config=config)
        environment = contract.render(
            {
                **task_store(layers.queue, layers.table),
                **gpu_targets(layers.gpu, contract.ORCHESTRATOR),
                contract.ARTIFACTS_BUCKET: artifacts.bucket.name,
                contract.CONTROLLER_FUNCTION_NAME: controller.name,
                contract.ORCHESTRATOR_AUTH: "iam",
                **host_records(config, layers.hosts),
                **price(config),
                **({contract.WEBHOOK_ALLOW_LOOPBACK: True} if config.emulated else {}),
            },
            program=contract.ORCHESTRATOR,
        )
        self.api = OrchestratorApi(
            self,
            "api",
            settings=FunctionSettings(
                name=self.name_of(API_FUNCTION), role=layers.iam.orchestrator, environment=environment
            ),
            region=config.region,
            account=config.account,
            submit_policy_name=self.name_of(SUBMIT_POLICY),
            admin_policy_name=self.name_of(ADMIN_POLICY),
        )
        self.output("ApiUrl", self.api.url, "Function URL of the orchestrator API (AWS_IAM: callers sign with SigV4)")
        self.output("AdminApiUrl", self.api.admin_url, "Function URL of the API's admin alias (the admin policy only)")
        self.output("ApiFunctionName", self.api.name, "Name of the orchestrator API function")
        self.output("SubmitPolicyArn", self.api.submit_policy_arn, "Attach to whoever submits tasks (their own only)")
        self.output("AdminPolicyArn", self.api.admin_policy_arn, "Attach to whoever administers every task")
