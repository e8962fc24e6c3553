"""The dependency layer (modules/layer.py): its cache key, its cache (a hit runs no pip), its determinism, its layout
and size, and that it is the whole closure: the Lambda entry point imports with nothing else on the path.

Cold builds run pip against the configured package index. The session fixture runs them once per session: two
cold builds into two temporary caches at different paths (what byte-identity needs), for this machine's
architecture, so the built layer can be imported here.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from modules.api import code_sources
from modules.assets import build_zip
from modules.layer import (
    MAX_DIRECT_UPLOAD_BYTES,
    MAX_UNZIPPED_BYTES,
    REQUIREMENTS,
    LayerBuildError,
    build_layer,
    cache_key,
    hashed,
    unzipped_size,
)

ROOT = Path(__file__).resolve().parent.parent
HOST_ARCHITECTURE = {"x86_64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine()]
VERSION = "3.11"
NO_PIP = ("/nonexistent/pip",)


def pins(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}


@pytest.fixture(scope="session")
def cold_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two cold builds of the real requirement file, each in its own empty cache."""
    first = build_layer(
        REQUIREMENTS, architecture=HOST_ARCHITECTURE, version=VERSION, cache_dir=tmp_path_factory.mktemp("cache-a")
    )
    deeper = tmp_path_factory.mktemp("cache-b") / "at" / "another" / "path"
    second = build_layer(REQUIREMENTS, architecture=HOST_ARCHITECTURE, version=VERSION, cache_dir=deeper)
    return first, second


# --- the key ---


def test_cache_key_is_stable_and_changes_with_every_input() -> None:
    base = cache_key(b"fastapi==0.165.0\n", "arm64", "3.11")
    assert base == cache_key(b"fastapi==0.165.0\n", "arm64", "3.11")
    others = {
        cache_key(b"fastapi==0.165.1\n", "arm64", "3.11"),
        cache_key(b"fastapi==0.165.0\n", "x86_64", "3.11"),
        cache_key(b"fastapi==0.165.0\n", "arm64", "3.12"),
    }
    assert base not in others and len(others) == 3


def test_requirements_are_the_container_pins_without_its_http_server() -> None:
    container = pins(ROOT / "orchestrator" / "requirements.txt")
    server_only = {p for p in container if p.split("==")[0] in {"uvicorn", "click", "h11"}}
    assert len(server_only) == 3
    assert pins(REQUIREMENTS) == container - server_only
    assert pins(REQUIREMENTS) <= pins(ROOT / "requirements.lock")


# --- the cache ---


def test_a_cache_hit_runs_no_pip(cold_builds: tuple[Path, Path]) -> None:
    built, _ = cold_builds
    before = built.read_bytes()
    again = build_layer(
        REQUIREMENTS, architecture=HOST_ARCHITECTURE, version=VERSION, cache_dir=built.parent, pip=NO_PIP
    )
    assert again == built and again.read_bytes() == before


def test_a_cold_build_without_pip_fails_in_one_line_naming_the_file(tmp_path: Path) -> None:
    """The same unavailable pip on an empty cache: what the cache hit above would have met had it run pip."""
    with pytest.raises(LayerBuildError) as err:
        build_layer(REQUIREMENTS, architecture="arm64", version=VERSION, cache_dir=tmp_path, pip=NO_PIP)
    assert str(err.value).startswith(f"{REQUIREMENTS}: cannot run pip (/nonexistent/pip)")
    assert "\n" not in str(err.value)
    assert [p.name for p in tmp_path.iterdir()] == []  # no half-built zip or temporary directory left behind


def test_a_pip_failure_names_the_file_and_pip_s_last_line(tmp_path: Path) -> None:
    failing_pip = (sys.executable, "-c", "import sys; print('Collecting nope==1'); sys.exit('ERROR: No matching x')")
    with pytest.raises(LayerBuildError) as err:
        build_layer(REQUIREMENTS, architecture="x86_64", version=VERSION, cache_dir=tmp_path, pip=failing_pip)
    assert str(err.value) == f"{REQUIREMENTS}: pip install for x86_64 failed: ERROR: No matching x"


def test_the_cache_holds_only_the_finished_zip(cold_builds: tuple[Path, Path]) -> None:
    built, _ = cold_builds
    key = cache_key(REQUIREMENTS.read_bytes(), HOST_ARCHITECTURE, VERSION)
    assert [p.name for p in built.parent.iterdir()] == [f"{key}.zip"]


# --- the zip ---


def test_two_cold_builds_are_byte_identical(cold_builds: tuple[Path, Path]) -> None:
    first, second = cold_builds
    assert first.parent != second.parent
    assert first.read_bytes() == second.read_bytes()


def test_layout_is_python_dir_without_scripts_or_bytecode(cold_builds: tuple[Path, Path]) -> None:
    with zipfile.ZipFile(cold_builds[0]) as archive:
        names = archive.namelist()
        records = [archive.read(n).decode() for n in names if n.endswith(".dist-info/RECORD")]
    assert names and all(n.startswith("python/") for n in names)
    assert {"python/fastapi/__init__.py", "python/mangum/__init__.py", "python/pydantic_core/__init__.py"} <= set(names)
    assert not [n for n in names if n.startswith("python/bin/") or "__pycache__" in n or n.endswith(".pyc")]
    assert len(records) == len(pins(REQUIREMENTS))
    assert not [line for record in records for line in record.splitlines() if line.startswith("../")]


def test_size_fits_lambda(cold_builds: tuple[Path, Path]) -> None:
    built, _ = cold_builds
    assert unzipped_size(built) < MAX_UNZIPPED_BYTES
    assert built.stat().st_size < MAX_DIRECT_UPLOAD_BYTES


def test_the_entry_point_imports_from_the_layer_and_the_code_zip_alone(
    cold_builds: tuple[Path, Path], tmp_path: Path
) -> None:
    """As on Lambda: /opt/python (the layer) and /var/task (the code), no site-packages (`-S`). The environment is
    the settings the app requires (core/contract.py ORCHESTRATOR without a default), in IAM mode."""
    opt, task = tmp_path / "opt", tmp_path / "task"
    zipfile.ZipFile(cold_builds[0]).extractall(opt)
    build_zip(tmp_path / "code.zip", code_sources())
    zipfile.ZipFile(tmp_path / "code.zip").extractall(task)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin"),
        "PYTHONPATH": f"{task}:{opt / 'python'}",
        "ORCHESTRATOR_AUTH": "iam",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "TASK_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/tasks",
        "TASK_DLQ_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/tasks-dlq",
        "TASK_TABLE_NAME": "tasks",
        "GPU_INSTANCE_IDS": "i-0123456789abcdef0",
        "CONTROLLER_FUNCTION_NAME": "gpu-orchestrator-shutdown",
    }
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE.format(task=str(task), opt=str(opt)))
    result = subprocess.run(
        [sys.executable, "-S", str(probe)], env=env, cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr.splitlines()[-1:]
    kind, origins = result.stdout.splitlines()
    assert kind == "Mangum"
    assert origins == repr(["code", "layer", "stdlib"])  # every module came from one of the three, nothing else


# Imports the entry point, then says where each loaded module's file lies.
PROBE = """
import sys, sysconfig
import orchestrator.lambda_handler as h
stdlib = (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])
def origin(path):
    if path.startswith("{task}/"):
        return "code"
    if path.startswith("{opt}/python/"):
        return "layer"
    return "stdlib" if path.startswith(stdlib) else path
print(type(h.handler).__name__)
files = {{getattr(m, "__file__", None) for m in list(sys.modules.values())}} - {{None, __file__}}
print(sorted({{origin(f) for f in files}}))
"""


def test_a_cached_zips_hash_is_kept_beside_it_and_recomputed_when_the_zip_is_newer(tmp_path: Path) -> None:
    zipped = tmp_path / "layer.zip"
    zipped.write_bytes(b"first")
    assert hashed(zipped).sha256_hex == hashlib.sha256(b"first").hexdigest()
    sidecar = tmp_path / "layer.zip.sha256"
    assert sidecar.read_text().strip() == hashlib.sha256(b"first").hexdigest()
    zipped.write_bytes(b"second")  # a rebuilt zip, newer than its sidecar
    os.utime(sidecar, ns=(zipped.stat().st_mtime_ns - 10**9,) * 2)
    assert hashed(zipped).sha256_hex == hashlib.sha256(b"second").hexdigest()
    sidecar.write_text("not hex\n")  # a damaged sidecar is recomputed, never trusted
    os.utime(sidecar, ns=(zipped.stat().st_mtime_ns + 10**9,) * 2)
    assert hashed(zipped).sha256_hex == hashlib.sha256(b"second").hexdigest()
