"""Stack names and their order, and the environments that are synthesized: plain data, importable without loading
cdktf (scripts and tests use it)."""

SQS, DYNAMODB, ARTIFACTS, IAM, GPU, LAMBDA, API, EVENTS, ALARM = (
    "gpu-orchestrator-sqs",
    "gpu-orchestrator-dynamodb",
    "gpu-orchestrator-artifacts",
    "gpu-orchestrator-iam",
    "gpu-orchestrator-gpu",
    "gpu-orchestrator-lambda",
    "gpu-orchestrator-api",
    "gpu-orchestrator-events",
    "gpu-orchestrator-alarm",
)
# A valid apply order (each stack after those it reads); destroy runs it backwards.
STACK_ORDER = (SQS, DYNAMODB, ARTIFACTS, IAM, GPU, LAMBDA, API, EVENTS, ALARM)
# Who reads whom (remote state), as the seed's diagram plus artifacts, the GPU hosts and the API: iam after
# sqs+dynamodb+artifacts, the GPU hosts after iam (their instance profile; the bundle they install is named, not
# read), lambda after the GPU hosts (the instances it starts and stops; read in create mode), the API after lambda
# (the controller it invokes), the events layer after iam (its functions' roles) and dynamodb (the table's stream),
# the alarms after lambda (the controller the idle alarm invokes). Adopt mode reads the instance ids from its config
# instead of the gpu stack.
DEPENDENCIES = {
    SQS: set(),
    DYNAMODB: set(),
    ARTIFACTS: {SQS, DYNAMODB},
    IAM: {SQS, DYNAMODB, ARTIFACTS},
    GPU: {IAM},  # and, at run time not plan time, artifacts' bundle parameters (by name)
    LAMBDA: {IAM, SQS, DYNAMODB, GPU},
    API: {IAM, SQS, DYNAMODB, ARTIFACTS, GPU, LAMBDA},
    EVENTS: {IAM, DYNAMODB},
    ALARM: {LAMBDA, SQS},
}
BOOTSTRAP = "gpu-orchestrator-bootstrap"
# The environments of environments.toml that are synthesized, golden-tested and scanned (scripts/synth.py,
# scripts/scan.py): `local-fleet` is the emulated fleet-mode environment.
ENVIRONMENTS = ("local", "local-fleet", "dev", "staging", "prod")
