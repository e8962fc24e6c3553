"""core/: the typed record, the runtime contract, and what each artifact carries of it."""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from core import contract
from core.contract import SettingError
from core.setting_fields import read_fields, setting_field
from core.tasks import TaskRecord, TaskStatus

REPO = Path(__file__).resolve().parent.parent
# What a job sees (set by the runner for every attempt), read by the shipped workloads.
JOB_NAMES = {contract.JOB_TASK_ID, contract.JOB_INPUT_DIR, contract.JOB_OUTPUT_DIR, "PATH", "HOME", "LANG"}


def test_record_round_trips_an_item_and_drops_absent_attributes() -> None:
    item = {
        "task_id": "01ABC",
        "status": "RUNNING",
        "type": "sleep",
        "params": {"seconds": Decimal("1.5"), "exit_code": Decimal("0")},
        "created_at": Decimal("10"),
        "attempts": Decimal("2"),
        "cancel_requested": True,
        "some_future_attribute": "x",
    }
    record = TaskRecord.from_item(item)
    assert record.status is TaskStatus.RUNNING and record.attempts == 2 and record.params["seconds"] == 1.5
    out = record.to_item()
    assert out["status"] == "RUNNING" and out["cancel_requested"] is True
    assert "worker" not in out and "some_future_attribute" not in out  # sparse: absent stays absent
    assert TaskRecord.from_item(out) == record


def test_settings_read_with_their_declared_defaults_and_name_bad_values() -> None:
    assert contract.IDLE_WINDOW_SECONDS.read({}) == 1800.0
    assert contract.GPU_INSTANCE_IDS.read({"GPU_INSTANCE_IDS": "i-1, i-2"}) == ("i-1", "i-2")
    with pytest.raises(SettingError, match=r"^TASK_QUEUE_URL: not set"):
        contract.TASK_QUEUE_URL.read({})
    with pytest.raises(SettingError, match=r"^MAX_BODY_BYTES: 'big' is not valid"):
        contract.MAX_BODY_BYTES.read({"MAX_BODY_BYTES": "big"})
    with pytest.raises(SettingError, match="must be 0 or 1"):
        contract.ADAPTER_POWEROFF.read({"ADAPTER_POWEROFF": "yes"})


@dataclass(frozen=True)
class _FromEnv:
    queue_url: str = setting_field(contract.TASK_QUEUE_URL)
    log_level: str = setting_field(contract.LOG_LEVEL)
    given: int = 0


def test_setting_fields_take_their_settings_defaults_and_read_from_the_environment() -> None:
    assert _FromEnv("q") == _FromEnv("q", "INFO", 0)  # the contract's default; a REQUIRED one has none
    with pytest.raises(TypeError):
        _FromEnv()
    env = {"TASK_QUEUE_URL": "https://q", "LOG_LEVEL": "DEBUG"}
    assert read_fields(_FromEnv, env, given=7) == _FromEnv("https://q", "DEBUG", 7)
    assert read_fields(_FromEnv, {"TASK_QUEUE_URL": "https://q"}).log_level == "INFO"
    with pytest.raises(SettingError, match=r"^TASK_QUEUE_URL: not set"):
        read_fields(_FromEnv, {})


def test_render_refuses_a_setting_the_program_does_not_read() -> None:
    assert contract.render({contract.GPU_INSTANCE_IDS: ("i-1", "i-2")}, program=contract.LAMBDA) == {
        "GPU_INSTANCE_IDS": "i-1,i-2"
    }
    with pytest.raises(ValueError, match="ARTIFACTS_BUCKET: not read by this program"):
        contract.render({contract.ARTIFACTS_BUCKET: "b"}, program=contract.LAMBDA)


def test_every_environment_variable_a_program_reads_is_declared_in_the_contract() -> None:
    """Programs read settings through the contract: no literal os.environ/env lookups of other names remain."""
    declared = set(contract.SETTINGS)
    lookup = re.compile(r"""(?:environ|env)(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]+)["']""")
    undeclared = {}
    for program in ("adapter", "orchestrator", "functions", "core"):
        for path in sorted((REPO / program).rglob("*.py")):
            names = set(lookup.findall(path.read_text())) - declared - JOB_NAMES
            if names:
                undeclared[str(path.relative_to(REPO))] = sorted(names)
    assert undeclared == {}


def test_no_program_reaches_into_another() -> None:
    imports = re.compile(r"^\s*(?:from|import)\s+(adapter|functions|orchestrator)\b", re.M)
    for program, others in (("orchestrator", {"adapter", "functions"}), ("adapter", {"functions", "orchestrator"})):
        for path in (REPO / program).rglob("*.py"):
            assert not set(imports.findall(path.read_text())) & others, path
    for path in (REPO / "functions").rglob("*.py"):
        assert not set(imports.findall(path.read_text())) & {"adapter", "orchestrator"}, path
    for path in (REPO / "core").rglob("*.py"):
        assert not imports.findall(path.read_text()), path


def test_each_artifact_carries_exactly_the_core_it_imports(synthesized) -> None:  # type: ignore[no-untyped-def]
    out = synthesized("local")
    (lambda_zip,) = out.glob("stacks/gpu-orchestrator-lambda/assets/**/*.zip")
    (adapter_zip,) = out.glob("stacks/gpu-orchestrator-artifacts/assets/**/*.zip")
    lambda_names = set(zipfile.ZipFile(lambda_zip).namelist())
    adapter_names = set(zipfile.ZipFile(adapter_zip).namelist())
    assert "shutdown/handler.py" in lambda_names and "core/idle.py" in lambda_names
    assert not {n for n in lambda_names if n.startswith(("adapter/", "orchestrator/"))}
    # The controller requeues a stuck worker's tasks (store, message), knows each type's timeout (the registry),
    # and records liveness-based recovery and billed time (hosts) and metrics; it never needs the webhook rule.
    assert {
        "core/store.py",
        "core/message.py",
        "core/task_types.json",
        "core/hosts.py",
        "core/metrics.py",
    } <= lambda_names
    assert "core/webhook.py" not in lambda_names and "core/cost.py" not in lambda_names
    assert "adapter/worker.py" in adapter_names and {"core/store.py", "core/task_types.json"} <= adapter_names
    assert not {n for n in adapter_names if n.startswith(("functions/", "shutdown/", "orchestrator/"))}
