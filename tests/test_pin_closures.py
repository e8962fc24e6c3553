"""The requirement files installed with `pip install --no-deps` must each be the whole closure of what they pin: the
images' `pip check` (canvas/Dockerfile, orchestrator/Dockerfile) and the Lambda layer (modules/layer.py) fail on a
missing dependency only where they are built, long after review. Checked here against the packages' own metadata,
as installed in this virtualenv from requirements.lock at the same versions (Python 3.11, as in the images and the
Lambda runtime)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
NO_DEPS_FILES = ("canvas/requirements.txt", "orchestrator/requirements.txt", "orchestrator/requirements-lambda.txt")


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if spec:
            name, sep, version = spec.partition("==")
            assert sep, f"{path.name}: {spec!r} is not an exact pin"
            found[canonicalize_name(name)] = version.strip()
    return found


def closure_gaps(pinned: dict[str, str]) -> list[str]:
    """What the pinned packages require (markers evaluated here, no extras) that the same file does not pin, or pins
    at a version the requirement excludes."""
    gaps = []
    for name, version in sorted(pinned.items()):
        installed = importlib.metadata.version(name)
        assert installed == version, f"{name}: {version} pinned, {installed} installed (requirements.lock differs)"
        for requirement in map(Requirement, importlib.metadata.requires(name) or []):
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            have = pinned.get(canonicalize_name(requirement.name))
            if have is None or not requirement.specifier.contains(have, prereleases=True):
                gaps.append(f"{name} {version} requires {requirement}, pinned: {have}")
    return gaps


@pytest.mark.parametrize("relative", NO_DEPS_FILES)
def test_each_no_deps_requirement_file_is_a_whole_closure(relative: str) -> None:
    assert closure_gaps(pins(ROOT / relative)) == []


def test_a_missing_dependency_is_named() -> None:
    """The check itself: fastapi without the OpenTelemetry API it imports (fastapi 0.165 requires it)."""
    pinned = pins(ROOT / "canvas" / "requirements.txt")
    del pinned["opentelemetry-api"]
    assert closure_gaps(pinned) == ["fastapi 0.165.0 requires opentelemetry-api>=1.44.0, pinned: None"]
