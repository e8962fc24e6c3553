"""The orchestrator's third-party dependencies as a Lambda layer, built for the Lambda platform and cached by content.

The layer is `pip install --target ... --no-deps --only-binary=:all: --platform manylinux2014_<machine>
--implementation cp --python-version 3.N --abi cp3N -r <requirements>`: wheels for Lambda's Amazon Linux, whatever
machine synthesizes. Lambda extracts a layer into /opt and puts /opt/python on sys.path for Python runtimes, so
the zip holds `python/...` ("Packaging your layer content", https://docs.aws.amazon.com/lambda/latest/dg/
packaging-layers.html). It is zipped with modules/assets.py's rules (sorted entries, fixed time and modes, stored):
the same requirement file gives the same bytes, hash and plan on any machine.

A pip run costs seconds and the network, so the zip is cached under `build/layers/<key>.zip`, where the key is the
sha256 of what decides its content: the requirement file's bytes, the architecture, the Python version and this
builder's FORMAT_VERSION (bump it when the build steps below change). A cache hit runs no pip at all. A cold build
installs and zips inside a temporary directory next to the cache and renames the finished zip into place, so a
concurrent synth sees either no zip or a whole one.

Two steps make pip's output machine-independent: the console scripts pip writes (`bin/`, whose first line names the
building interpreter) are dropped, with their lines in each RECORD; and `--no-compile` writes no bytecode.

Limits checked after a build (Lambda quotas, https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html):
the unzipped layer must fit the 250 MB a function and its layers share, and the zip the 50 MB of a direct upload
(Terraform sends `filename` inline to PublishLayerVersion).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from cdktf import AssetType, TerraformAsset
from cdktf_cdktf_provider_aws.lambda_layer_version import LambdaLayerVersion
from constructs import Construct

from modules.assets import Bundle, build_zip, write_text_atomically
from modules.config import ROOT
from modules.function import PYTHON_RUNTIME
from modules.props import check_in, check_pattern
from modules.resource import ResourceConstruct

FORMAT_VERSION = 1  # part of the cache key: bump when the steps of `_install` or `_normalize` change
CACHE_DIR = ROOT / "build" / "layers"
REQUIREMENTS = ROOT / "orchestrator" / "requirements-lambda.txt"
# Lambda's instruction set architectures and the manylinux platform tag of their wheels (Lambda Developer Guide,
# "Selecting and configuring an instruction set architecture"; Amazon Linux 2 and 2023 are glibc >= 2.17).
PLATFORMS = {"arm64": "manylinux2014_aarch64", "x86_64": "manylinux2014_x86_64"}
# PublishLayerVersion LayerName: 1-140 characters of A-Za-z0-9-_ (Lambda API Reference).
LAYER_NAME = re.compile(r"[A-Za-z0-9_-]{1,140}")
MAX_UNZIPPED_BYTES = 250 * 1024 * 1024
MAX_DIRECT_UPLOAD_BYTES = 50 * 1024 * 1024
DEFAULT_PIP: tuple[str, ...] = (sys.executable, "-m", "pip")


class LayerBuildError(RuntimeError):
    """A layer could not be built; str() is one line naming the requirement file."""


def python_version(runtime: str) -> str:
    """`python3.11` -> `3.11`."""
    return runtime.removeprefix("python")


def cache_key(requirements: bytes, architecture: str, version: str) -> str:
    """sha256 over everything that decides the layer's bytes, each part length-prefixed so no two inputs collide."""
    digest = hashlib.sha256()
    for part in (str(FORMAT_VERSION).encode(), architecture.encode(), version.encode(), requirements):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def hashed(path: Path) -> Bundle:
    """A built zip with the hashes Terraform compares (aws_lambda_layer_version.source_code_hash). The sha256 is
    kept beside a cached zip (`<zip>.sha256`, written after it), so a warm synth does not read 36 MB to learn it;
    a sidecar older than its zip is ignored."""
    sidecar = path.with_name(path.name + ".sha256")
    try:
        fresh = sidecar.stat().st_mtime_ns >= path.stat().st_mtime_ns
        digest = bytes.fromhex(sidecar.read_text().strip()) if fresh else b""
    except (OSError, ValueError):
        digest = b""
    if len(digest) != hashlib.sha256().digest_size:
        digest = hashlib.sha256(path.read_bytes()).digest()
        write_text_atomically(sidecar, digest.hex() + "\n")
    return Bundle(path, digest.hex(), base64.b64encode(digest).decode())


def unzipped_size(path: Path) -> int:
    with zipfile.ZipFile(path) as archive:
        return sum(info.file_size for info in archive.infolist())


def build_layer(
    requirements: Path,
    *,
    architecture: str,
    version: str,
    cache_dir: Path = CACHE_DIR,
    pip: Sequence[str] = DEFAULT_PIP,
) -> Path:
    """The cached layer zip for these inputs, built first if absent. `pip` is the command that runs pip."""
    key = cache_key(requirements.read_bytes(), architecture, version)
    out = cache_dir / f"{key}.zip"
    if out.is_file():
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=f".{key[:12]}-") as tmp:
        work = Path(tmp)
        _install(requirements, work / "python", architecture, version, pip)
        _normalize(work / "python")
        built = work / "layer.zip"
        build_zip(built, [(work, "python")])
        _check_limits(requirements, built)
        os.replace(built, out)  # atomic within one filesystem: readers see no zip or the whole zip
    return out


def _install(requirements: Path, target: Path, architecture: str, version: str, pip: Sequence[str]) -> None:
    abi = "cp" + version.replace(".", "")
    command = [
        *pip,
        *("install", "--quiet", "--no-compile", "--disable-pip-version-check", "--no-deps", "--only-binary=:all:"),
        *("--target", str(target), "--platform", PLATFORMS[architecture], "--implementation", "cp"),
        *("--python-version", version, "--abi", abi, "-r", str(requirements)),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as err:
        raise LayerBuildError(f"{requirements}: cannot run pip ({pip[0]}): {err.strerror}") from None
    if result.returncode != 0:
        # pip reports the failure last on stderr; progress and warnings before it are not the cause.
        lines = [line.strip() for out in (result.stdout, result.stderr) for line in out.splitlines() if line.strip()]
        errors = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        last = (errors or lines or [f"exit status {result.returncode}"])[-1]
        raise LayerBuildError(f"{requirements}: pip install for {architecture} failed: {last}")


def _normalize(site: Path) -> None:
    """Drop what depends on the building machine: console scripts (their shebang names its interpreter; nothing
    on Lambda runs them) and their RECORD lines, which carry those scripts' hashes."""
    shutil.rmtree(site / "bin", ignore_errors=True)
    for record in sorted(site.glob("*.dist-info/RECORD")):
        lines = record.read_text().splitlines(keepends=True)
        record.write_text("".join(line for line in lines if not line.startswith("../")))


def _check_limits(requirements: Path, built: Path) -> None:
    size = unzipped_size(built)
    if size > MAX_UNZIPPED_BYTES:
        raise LayerBuildError(f"{requirements}: layer unzips to {size} bytes, over Lambda's 250 MB")
    if built.stat().st_size > MAX_DIRECT_UPLOAD_BYTES:
        raise LayerBuildError(f"{requirements}: layer zip is {built.stat().st_size} bytes, over the 50 MB upload")


class DependencyLayer(ResourceConstruct):
    """A Lambda layer of pinned third-party packages, built for the function's platform and cached by content.

    Args:
        name: LayerName: 1-140 characters of A-Za-z0-9_- (PublishLayerVersion). Required.
        requirements: a requirement file of exact pins, installed with --no-deps (so it must be the complete
            closure). Default orchestrator/requirements-lambda.txt.
        architecture: "arm64" or "x86_64", the functions' instruction set (Lambda Architectures; AWS default
            x86_64). Default "arm64": Graviton costs less per GB-second.
        runtime: a python3.N runtime; picks the wheels' Python version and ABI. Default python3.11.
        cache_dir: where built zips are kept, by cache key. Default build/layers.
    """

    SERVICE = "lambda"

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        name: str,
        requirements: Path = REQUIREMENTS,
        architecture: str = "arm64",
        runtime: str = "python3.11",
        cache_dir: Path = CACHE_DIR,
    ) -> None:
        super().__init__(scope, id)
        check_pattern(self, "name", name, LAYER_NAME, "1-140 characters of A-Za-z0-9_- (Lambda LayerName)")
        check_in(self, "architecture", architecture, tuple(PLATFORMS), "Lambda Architectures")
        check_pattern(self, "runtime", runtime, PYTHON_RUNTIME, "a Python runtime (python3.N)")
        zipped = build_layer(
            requirements, architecture=architecture, version=python_version(runtime), cache_dir=cache_dir
        )
        self.bundle = hashed(zipped)
        # The hash is known: passing it spares cdktf re-reading the file (about 0.1 s for 36 MB on every synth).
        self.asset = TerraformAsset(
            self, "asset", path=str(zipped), type=AssetType.FILE, asset_hash=self.bundle.sha256_hex
        )
        self.layer = LambdaLayerVersion(
            self,
            "layer",
            layer_name=name,
            filename=self.asset.path,
            source_code_hash=self.bundle.base64_sha256,
            compatible_runtimes=[runtime],
            compatible_architectures=[architecture],
        )
        self.arn = self.layer.arn  # the layer version's ARN (`...:layer:<name>:<version>`): what `layers` lists
        self.name = self.layer.layer_name
