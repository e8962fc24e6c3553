"""The gpuq CLI's config file and `gpuq configure`: where the service of an environment is and how to call it.

The file is TOML (`url`, `auth`, `region`, `environment`), at $GPUQ_CONFIG or ~/.config/gpuq/config.toml. It holds
no secret: a bearer token stays in ORCHESTRATOR_TOKEN, AWS credentials in AWS's own chain.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core import contract as c

from .client import SetupError, lambda_url_region

API_STACK = "gpu-orchestrator-api"  # modules/layout.py API (the CLI ships without modules/)
# The api stack's outputs (modules/stacks.py ApiStack): the function URL every caller with the submit policy may
# call, and the `admin` alias's URL, which only holders of the admin policy may call (and which sees every task).
URL_OUTPUT, ADMIN_URL_OUTPUT = "ApiUrl", "AdminApiUrl"
KEYS = ("url", "auth", "region", "environment")
_ENV_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


def config_path(env: Mapping[str, str]) -> Path:
    explicit = c.GPUQ_CONFIG.read_optional(env)
    return Path(explicit).expanduser() if explicit else Path.home() / ".config" / "gpuq" / "config.toml"


def load(path: Path) -> dict[str, str]:
    """The file's settings; {} when there is no file. A malformed file is a SetupError naming it."""
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise SetupError(f"{path}: not a readable gpuq config ({err})") from None
    return {k: v for k, v in doc.items() if k in KEYS and isinstance(v, str)}


def _toml_string(value: str) -> str:
    """A TOML basic string: quote, backslash and control characters escaped (TOML allows no raw ones)."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def write(path: Path, values: Mapping[str, str], note: str) -> None:
    lines = [f"# {note}"] + [f"{k} = {_toml_string(values[k])}" for k in KEYS if values.get(k)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def stack_url(environment: str, project: Path, *, admin: bool = False, timeout_s: float = 120.0) -> str:
    """The API URL (with `admin`, the admin URL) from `terraform output -json` of the environment's api stack.
    SetupError says, in one line, what could not be found."""
    stack = project / "cdktf.out" / environment / "stacks" / API_STACK
    terraform = shutil.which("terraform")
    if terraform is None:
        raise SetupError(f"terraform is not on PATH, so the outputs of {API_STACK} ({environment}) cannot be read")
    if not stack.is_dir():
        raise SetupError(f"no synthesized {API_STACK} at {stack} (run `make synth ENV={environment}` there)")
    try:
        done = subprocess.run(
            [terraform, f"-chdir={stack}", "output", "-json"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SetupError(f"terraform output failed in {stack}: {err}") from None
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no message"])[0]
        raise SetupError(f"terraform output failed in {stack} (exit {done.returncode}): {first}")
    try:
        outputs: Any = json.loads(done.stdout or "{}")
    except ValueError:
        raise SetupError(f"terraform output in {stack} is not JSON") from None
    values = {k: v.get("value") for k, v in outputs.items() if isinstance(v, dict)} if isinstance(outputs, dict) else {}
    name = ADMIN_URL_OUTPUT if admin else URL_OUTPUT
    value = values.get(name)
    if isinstance(value, str) and value.startswith(("https://", "http://")):
        return value
    if not values:
        raise SetupError(f"{API_STACK} ({environment}) has no outputs: is it applied (`make apply ENV={environment}`)?")
    raise SetupError(f"{API_STACK} ({environment}) has no URL output {name}")


def configure(
    environment: str,
    *,
    url: str | None,
    auth: str | None,
    region: str | None,
    project: Path,
    path: Path,
    admin: bool = False,
) -> dict[str, str]:
    """Find the URL (given, else the stack's outputs), decide how to call it, write the file; returns what it wrote."""
    if not _ENV_NAME.match(environment):  # it names a folder under cdktf.out
        raise SetupError(f"{environment!r} is not an environment name")
    try:
        found = url or stack_url(environment, project, admin=admin)
    except SetupError as exc:
        raise SetupError(f"could not find the API URL of {environment}: {exc}; pass --url URL") from None
    mode = auth or ("iam" if lambda_url_region(found) else "token")
    values = {
        "url": found,
        "auth": mode,
        "region": region or lambda_url_region(found) or "",
        "environment": environment,
    }
    write(path, values, f"gpuq config for environment {environment} (written by `gpuq configure`)")
    return {k: v for k, v in values.items() if v}
