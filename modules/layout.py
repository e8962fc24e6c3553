"""Stack names and their order: plain data, importable without loading cdktf (scripts and tests use it)."""

SQS, DYNAMODB, ARTIFACTS, IAM, LAMBDA, ALARM = (
    "gpu-orchestrator-sqs",
    "gpu-orchestrator-dynamodb",
    "gpu-orchestrator-artifacts",
    "gpu-orchestrator-iam",
    "gpu-orchestrator-lambda",
    "gpu-orchestrator-alarm",
)
# A valid apply order (each stack after those it reads); destroy runs it backwards.
STACK_ORDER = (SQS, DYNAMODB, ARTIFACTS, IAM, LAMBDA, ALARM)
# Who reads whom, as the seed's diagram (plus artifacts): iam after sqs+dynamodb+artifacts, lambda after iam, ...
DEPENDENCIES = {
    SQS: set(),
    DYNAMODB: set(),
    ARTIFACTS: {SQS, DYNAMODB},
    IAM: {SQS, DYNAMODB, ARTIFACTS},
    LAMBDA: {IAM, SQS, DYNAMODB},
    ALARM: {LAMBDA, SQS},
}
BOOTSTRAP = "gpu-orchestrator-bootstrap"
