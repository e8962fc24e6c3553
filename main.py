"""The CDKTF app: pick an environment, compose its stacks, synthesize. Everything else lives in modules/."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from modules.config import ConfigError, EnvironmentConfig, load_config

if TYPE_CHECKING:
    from constructs import Construct

# cdktf and the stacks load the jsii runtime (seconds): they are imported only once the configuration is valid,
# so a bad setting is reported at once and nothing is written.


def main() -> int:
    # The cdktf CLI hands cdktf.json's context over as CDKTF_CONTEXT_JSON; `make` sets ENV (which wins).
    context = json.loads(os.environ.get("CDKTF_CONTEXT_JSON") or "{}")
    overrides = dict(os.environ)
    if not overrides.get("CDK_CONTEXT_GPU_INSTANCE_ID") and context.get("gpu_instance_id"):
        overrides["CDK_CONTEXT_GPU_INSTANCE_ID"] = str(context["gpu_instance_id"])
    try:
        config = load_config(os.environ.get("ENV") or context.get("environment"), env=overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2

    bootstrap = os.environ.get("GPU_ORCH_BOOTSTRAP") == "1"  # `make bootstrap`: only the state bucket stack
    default_outdir = f"cdktf.out/bootstrap-{config.name}" if bootstrap else f"cdktf.out/{config.name}"
    outdir = Path(os.environ.get("CDKTF_OUTDIR") or default_outdir)
    outdir.mkdir(parents=True, exist_ok=True)  # cdktf creates only the last level
    from cdktf import App

    from modules.bootstrap import BootstrapStack

    app = App(outdir=str(outdir))
    if bootstrap:
        BootstrapStack(app, config=config, outdir=str(outdir))
    else:
        compose(app, config)
    app.synth()
    return 0


def compose(app: Construct, config: EnvironmentConfig) -> None:
    """The stacks of one environment and how they depend on each other (the seed's diagram)."""
    from modules import stacks, stacks_events

    sqs = stacks.SqsStack(app, config=config)
    dynamodb = stacks.DynamoDbStack(app, config=config)
    queue, table, hosts = sqs.queue, dynamodb.table, dynamodb.hosts
    artifacts = stacks.ArtifactsStack(app, config=config, queue=queue, table=table, hosts=hosts)
    iam = stacks.IamStack(app, config=config, queue=queue, table=table, hosts=hosts, artifacts=artifacts)
    gpu = stacks.GpuStack(app, config=config, iam=iam)
    layers = stacks.Layers(iam=iam, queue=queue, table=table, hosts=hosts, gpu=gpu)
    controller = stacks.LambdaStack(app, config=config, layers=layers).function
    stacks.ApiStack(app, config=config, layers=layers, artifacts=artifacts, controller=controller)
    stacks_events.EventsStack(app, config=config, table=table, roles=iam.events)
    stacks_events.AlarmStack(app, config=config, function=controller, queue=queue)


if __name__ == "__main__":
    sys.exit(main())
