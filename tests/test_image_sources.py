"""The container images copy only some of the repository (canvas/Dockerfile, orchestrator/Dockerfile): every
first-party import in what they copy, lazy ones inside functions included, must resolve inside what they copy, or the
image fails when that line first runs. Docker cannot run here, so the COPY lines are read and the imports followed
by their syntax trees."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = ("adapter", "bench", "canvas", "core", "functions", "localaws", "modules", "orchestrator", "scripts")
IMAGES = ("canvas/Dockerfile", "orchestrator/Dockerfile")


def copied_sources(dockerfile: Path) -> set[Path]:
    """The repository's .py files that the Dockerfile's COPY lines bring in (paths relative to the root)."""
    files: set[Path] = set()
    for line in dockerfile.read_text().splitlines():
        if not line.startswith("COPY "):
            continue
        words = shlex.split(line)
        if any(w.startswith("--") for w in words):  # --from=another stage, --chown: none here; refuse to guess
            raise AssertionError(f"{dockerfile.name}: unexpected COPY form {line!r}")
        for source in words[1:-1]:
            path = ROOT / source
            found = path.rglob("*.py") if path.is_dir() else [path]
            files.update(p.relative_to(ROOT) for p in found if p.suffix == ".py" and "__pycache__" not in p.parts)
    return files


def imported_modules(source: Path) -> set[str]:
    """Absolute names of the first-party modules `source` imports (relative imports resolved)."""
    package = list(source.parent.parts)  # what a relative import of level 1 names, for a module or an __init__
    names: set[str] = set()
    for node in ast.walk(ast.parse((ROOT / source).read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {n for n in names if n.split(".")[0] in FIRST_PARTY}


def module_name(path: Path) -> str:
    parts = path.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def missing_imports(copied: set[Path]) -> list[str]:
    """Imports of first-party modules (files in the repository) that are not among the copied files. A name that is
    no module file (a function or class taken `from module import name`) is the module's business, not the image's."""
    in_image = {module_name(p) for p in copied}
    in_repo = {module_name(p.relative_to(ROOT)) for top in FIRST_PARTY for p in (ROOT / top).rglob("*.py")}
    return [
        f"{source} imports {name}"
        for source in sorted(copied)
        for name in sorted(imported_modules(source))
        if name in in_repo and name not in in_image
    ]


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_an_image_carries_every_module_its_code_imports(dockerfile: str) -> None:
    copied = copied_sources(ROOT / dockerfile)
    assert copied and missing_imports(copied) == []


def test_a_module_left_out_of_the_image_is_named() -> None:
    """The check itself: the canvas image without orchestrator/client.py, which canvas/__main__.py imports lazily."""
    copied = copied_sources(ROOT / "canvas" / "Dockerfile") - {Path("orchestrator/client.py")}
    assert "canvas/__main__.py imports orchestrator.client" in missing_imports(copied)
