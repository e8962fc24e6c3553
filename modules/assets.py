"""Deterministic zip bundles for Terraform assets.

cdktf 0.21's ARCHIVE assets stamp each entry with the file's mtime, so a fresh checkout changes the zip, its hash
and the plan although no source changed. We build the zip ourselves: sorted entries, a fixed timestamp, fixed
permissions and no compression (zlib's output may differ between versions), then hand cdktf a FILE asset. The same
sources give the same bytes, the same hash and the same plan on any machine.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from cdktf import AssetType, TerraformAsset
from constructs import Construct

from modules.config import ROOT

BUILD_DIR = ROOT / "build" / "assets"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", "tests"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}


def _files(root: Path, package: str) -> Iterable[tuple[Path, str]]:
    base = root / package
    if base.is_file():  # one module of a shared package (see core_sources)
        yield base, base.relative_to(root).as_posix()
        return
    if not base.is_dir():
        raise FileNotFoundError(f"asset source {base} is not a directory")
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.suffix in _SKIP_SUFFIXES or name.startswith("."):
                continue
            yield path, path.relative_to(root).as_posix()


SHARED_PACKAGE = "core"
# Data files a core module reads at run time, shipped with it.
_DATA_FILES = {"task_types": ("task_types.json",)}


def _statements(tree: ast.AST) -> Iterable[ast.AST]:
    """Every statement, at any depth (imports may sit inside functions, ifs and trys); expressions are skipped: an
    import is always a statement, and not visiting expressions keeps this several times faster than ast.walk."""
    todo = list(getattr(tree, "body", []))
    while todo:
        node = todo.pop()
        yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            todo.extend(getattr(node, field, None) or [])


class _ImportsCache:
    """What `_scan_core_imports` found per file, kept by content in build/assets: parsing every program and core file
    took about 170 ms of each synth, and the answer depends only on the file's bytes, whether it sits inside core,
    and this module's own code (an edit here starts a fresh cache). A missing or unreadable cache is rebuilt; it is
    written atomically, so concurrent synths never read half of one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.salt = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
        self.entries: dict[str, list[str]] | None = None
        self.dirty = False

    def get(self, path: Path, *, inside_core: bool) -> frozenset[str]:
        if self.entries is None:
            self.entries = self._load()
        data = path.read_bytes()
        key = f"{int(inside_core)}:{hashlib.sha256(data).hexdigest()}"
        found = self.entries.get(key)
        if found is None:
            found = sorted(_scan_core_imports(data.decode(), str(path), inside_core=inside_core))
            self.entries[key], self.dirty = found, True
        return frozenset(found)

    def save(self) -> None:
        if not self.dirty or self.entries is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.path, json.dumps({"salt": self.salt, "entries": self.entries}, sort_keys=True))
        self.dirty = False

    def _load(self) -> dict[str, list[str]]:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        entries = doc.get("entries") if isinstance(doc, dict) and doc.get("salt") == self.salt else None
        return dict(entries) if isinstance(entries, dict) else {}


_IMPORTS = _ImportsCache(BUILD_DIR / "core-imports.json")


@cache  # core's own modules are read once per synth, not once per artifact that imports them
def _core_imports(path: Path, *, inside_core: bool) -> frozenset[str]:
    return _IMPORTS.get(path, inside_core=inside_core)


def _scan_core_imports(text: str, filename: str, *, inside_core: bool) -> set[str]:
    """The core modules one file imports (`from core.x import`, `from core import x`, `import core.x`, and within
    core itself the relative forms)."""
    found: set[str] = set()
    for node in _statements(ast.parse(text, filename)):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith(SHARED_PACKAGE + ".")}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 and inside_core or node.level == 0 and module.split(".")[0] == SHARED_PACKAGE:
                parts = module.split(".") if node.level else module.split(".")[1:]
                found |= {parts[0]} if parts and parts[0] else {a.name for a in node.names}
    return found


def core_sources(program_dirs: Iterable[Path]) -> list[tuple[Path, str]]:
    """The zip sources for exactly the core modules a program imports, directly or through other core modules
    (read from the source, not by importing it), so each artifact carries what it uses and nothing more."""
    core_dir = ROOT / SHARED_PACKAGE
    todo = {
        name
        for directory in program_dirs
        for path in sorted(directory.rglob("*.py"))
        if not any(part in _SKIP_DIRS for part in path.parts)
        for name in _core_imports(path, inside_core=False)
    }
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or not (core_dir / f"{name}.py").is_file():
            continue
        seen.add(name)
        todo |= _core_imports(core_dir / f"{name}.py", inside_core=True)
    _IMPORTS.save()
    files = (
        ["__init__.py"] + [f"{n}.py" for n in sorted(seen)] + [d for n in sorted(seen) for d in _DATA_FILES.get(n, ())]
    )
    return [(ROOT, f"{SHARED_PACKAGE}/{f}") for f in files]


def write_text_atomically(path: Path, text: str) -> None:
    """Write whole or not at all: to a temporary file beside `path` (per process, so concurrent synths never share
    one), then renamed over it, so a reader never sees half of it."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def build_zip(out: Path, sources: Iterable[tuple[Path, str]]) -> bytes:
    """Zip `(root, package)` pairs: each package folder is stored under its own name at the zip's root."""
    entries = sorted(entry for root, package in sources for entry in _files(root, package))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")  # concurrent synths never share a temp file
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        for path, arcname in sorted(entries, key=lambda e: e[1]):
            info = zipfile.ZipInfo(arcname, date_time=_FIXED_TIME)
            mode = 0o755 if os.access(path, os.X_OK) else 0o644
            info.external_attr = (0o100000 | mode) << 16
            info.create_system = 3  # unix, whatever the building OS, so the attributes above are read back
            archive.writestr(info, path.read_bytes())
    tmp.replace(out)
    return out.read_bytes()


@dataclass(frozen=True)
class Bundle:
    """A built zip and the hashes Terraform needs."""

    path: Path
    sha256_hex: str
    base64_sha256: str  # what aws_lambda_function.source_code_hash compares

    @property
    def short_hash(self) -> str:
        return self.sha256_hex[:16]


def bundle(name: str, sources: Iterable[tuple[Path, str]], *, out_dir: Path = BUILD_DIR) -> Bundle:
    data = build_zip(out_dir / f"{name}.zip", sources)
    digest = hashlib.sha256(data).digest()
    return Bundle(out_dir / f"{name}.zip", digest.hex(), base64.b64encode(digest).decode())


class ZipAsset(Construct):
    """A deterministic zip of some of the repo's packages, copied into the stack's output as a Terraform asset."""

    def __init__(self, scope: Construct, id: str, *, name: str, sources: Iterable[tuple[Path, str]]) -> None:
        super().__init__(scope, id)
        self.bundle = bundle(name, sources)
        # The hash is known: passing it spares cdktf reading the file again.
        self.asset = TerraformAsset(
            self, "asset", path=str(self.bundle.path), type=AssetType.FILE, asset_hash=self.bundle.sha256_hex
        )

    @property
    def path(self) -> str:
        """The asset's path as Terraform sees it (relative to the stack's working directory)."""
        return self.asset.path
