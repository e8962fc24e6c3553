"""The task type registry and the pure parts of the adapter: validation, argv building, config, retry policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapter.config import RetryBackoff, from_env
from core.message import MalformedMessage, TaskMessage
from core.task_types import InvalidParams, RegistryError, UnknownTaskType, load_registry


def write(tmp_path: Path, types: dict[str, Any]) -> Path:
    path = tmp_path / "types.json"
    path.write_text(json.dumps({"types": types}))
    return path


def test_bundled_registry_loads_with_the_required_kinds() -> None:
    registry = load_registry()
    kinds = {t.kind for t in registry.types.values()}
    assert kinds == {"command", "http"} and {"matmul", "sleep", "noop", "digest", "infer"} <= set(registry.types)


def test_params_become_whole_argv_items_never_shell_text() -> None:
    sleep = load_registry().get("sleep")
    argv = sleep.argv_for(sleep.validate({"seconds": 0.5, "exit_code": 0}), {"python": "/py", "workloads": "/w"})
    assert argv == ["/py", "/w/sleep.py", "0.5", "0"]
    digest = load_registry().get("digest")
    hostile = "/tmp/x; rm -rf / $(id)"
    assert digest.argv_for({"input": hostile}, {"python": "p", "workloads": "w"})[-1] == hostile  # one item


@pytest.mark.parametrize(
    ("type_name", "params", "error"),
    [
        ("sleep", {"seconds": 1}, "exit_code: required"),
        ("sleep", {"seconds": True, "exit_code": 0}, "seconds: expected number"),
        ("sleep", {"seconds": -1, "exit_code": 0}, "seconds: below minimum 0"),
        ("sleep", {"seconds": 1, "exit_code": 1.5}, "exit_code: expected integer"),
        ("sleep", {"seconds": 1, "exit_code": 0, "shell": "x"}, "shell: unexpected param"),
        ("matmul", {"size": 10**6, "repeat": 1}, "size: above maximum 16384"),
        ("digest", {"input": "inputs/../etc/passwd"}, "input: does not match"),
        ("digest", {"input": "elsewhere/a.txt"}, "input: does not match"),
        ("infer", {"prompt": "x" * 20001}, "prompt: longer than 20000"),
    ],
)
def test_invalid_params_are_rejected_with_reasons(type_name: str, params: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidParams) as err:
        load_registry().validate(type_name, params)
    assert error in str(err.value)


def test_unknown_type() -> None:
    with pytest.raises(UnknownTaskType):
        load_registry().validate("rm", {})


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"kind": "shell", "timeout_s": 1, "argv": ["x"]}, "kind"),
        (
            {
                "kind": "command",
                "timeout_s": 1,
                "argv": ["echo", "--x={v}"],
                "params": {"v": {"type": "string", "required": True}},
            },
            "whole argv item",
        ),
        ({"kind": "command", "timeout_s": 1, "argv": ["echo", "{v}"]}, "undeclared"),
        (
            {
                "kind": "command",
                "timeout_s": 1,
                "argv": ["echo", "{v}"],
                "params": {"v": {"type": "string", "required": False}},
            },
            "must be required",
        ),
        ({"kind": "http", "timeout_s": 1, "url": "http://example.com/x"}, "local inference server"),
        ({"kind": "command", "timeout_s": 0, "argv": ["x"]}, "timeout_s"),
    ],
)
def test_malformed_registry_fails_at_load(tmp_path: Path, spec: dict[str, Any], error: str) -> None:
    with pytest.raises(RegistryError) as err:
        load_registry(write(tmp_path, {"bad": spec}))
    assert error in str(err.value)


def test_retry_policy_backoff_and_last_receive() -> None:
    policy = RetryBackoff(max_receives=3, backoff_s=5, backoff_cap_s=12)
    assert [policy.delay_s(n) for n in (1, 2, 3)] == [5, 10, 12]
    assert [policy.is_last(n) for n in (1, 2, 3, 4)] == [False, False, True, True]


def test_config_takes_the_queue_settings_unless_overridden() -> None:
    env = {"TASK_QUEUE_URL": "q", "TASK_DLQ_URL": "d", "TASK_TABLE_NAME": "t", "ARTIFACTS_BUCKET": "b"}
    config = from_env(env, queue_visibility_s=300, queue_max_receives=5)
    assert (config.visibility_s, config.retry.max_receives, config.heartbeat_s) == (300, 5, 60.0)
    assert config.status_index == "status-created_at-index" and config.worker_id
    small = from_env(
        {**env, "VISIBILITY_TIMEOUT": "10", "WORKER_ID": "w"}, queue_visibility_s=300, queue_max_receives=None
    )
    assert (small.visibility_s, small.retry.max_receives, small.heartbeat_s, small.worker_id) == (10, 3, 2.0, "w")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{", "not valid JSON"),
        ("[1]", "not a JSON object"),
        ('{"v": 2, "task_id": "01ABC"}', "unknown message version"),
        ('{"task_id": 7}', "no task_id"),
        ('{"task_id": "idem#k"}', "no task_id"),
        ('{"task_id": ""}', "no task_id"),
    ],
)
def test_poison_bodies(body: str, reason: str) -> None:
    with pytest.raises(MalformedMessage) as err:
        TaskMessage.parse(body)
    assert reason in err.value.reason


def test_message_round_trips_and_reads_version_0() -> None:
    assert TaskMessage.parse(TaskMessage("01ABC", "e1").encode()) == TaskMessage("01ABC", "e1", version=1)
    # as queued before the version field existed: still read, so a rollout strands nothing
    assert TaskMessage.parse('{"task_id": "01ABC", "type": "noop"}') == TaskMessage("01ABC", None, version=0)
