#!/usr/bin/env bash
# Install the adapter bundle named by SSM and write the adapter's environment: ExecStartPre of gpu-adapter.service,
# so it runs on every boot and on every restart (the adapter exits 75 between tasks when the bundle parameter moved).
#
# Reads, with the instance role:   ${ADAPTER_SSM_PREFIX}/bundle  = s3://<bucket>/adapter/adapter-<sha256-16>.zip
#                                  ${ADAPTER_SSM_PREFIX}/config  = JSON object of the adapter's env vars
# Installs:  ${ADAPTER_ROOT}/releases/<sha256-16>/   (zip verified against the hash in its name, unpacked aside,
#            then renamed into place), flips ${ADAPTER_ROOT}/current atomically (rename of a new symlink), writes
#            ${ADAPTER_ENV_FILE} atomically (config + ADAPTER_BUNDLE_URI/_PARAM, ADAPTER_CONFIG_PARAM), keeps the newest
#            ${ADAPTER_KEEP_RELEASES} releases, and updates ${ADAPTER_ROOT}/install.sh from the new release.
# If SSM/S3 cannot be read or the bundle is bad but a release is already installed, it keeps that one and exits 0:
# the instance keeps serving, and the adapter's rollout check brings the unit back here about once a minute.
# Needs python3 with boto3 (the adapter's own runtime, $ADAPTER_PYTHON), not the AWS CLI.
#
# The job user: with JOB_USER set (the unit sets gpu-job; the adapter reads the same variable and runs every job as
# that user), it first makes sure that user exists - a system account with no home and no login shell, so nothing a
# job writes in a home outlives its attempt - and that its packets to the instance metadata service are rejected:
#     iptables  -I OUTPUT -d 169.254.169.254 -m owner --uid-owner $JOB_USER -j REJECT
#     ip6tables -I OUTPUT -d fd00:ec2::254   -m owner --uid-owner $JOB_USER -j REJECT
# The metadata service hands the instance role's credentials to any local process that asks; the adapter needs them,
# a job must not have them. Rules are not persistent, so every start adds them again; `-C` first keeps that
# idempotent, and `-I` (not -A) puts them ahead of any ACCEPT already in the chain. The adapter checks the very same
# rules with `iptables -C` (adapter/procs.py: metadata_block_rule) and logs job_metadata_block_missing at its first
# attempt if one is absent. Where a rule cannot be added (no iptables - on Amazon Linux 2023 install iptables-nft -,
# or not root) this logs job_metadata_block_missing and goes on: the adapter still starts, and says so too.
# A failed useradd fails the start: jobs could not run as a user that does not exist.
set -euo pipefail

: "${ADAPTER_SSM_PREFIX:?set ADAPTER_SSM_PREFIX (e.g. /gpu-orchestrator/dev/adapter) in /etc/gpu-adapter/install.env}"
ADAPTER_ROOT="${ADAPTER_ROOT:-/opt/gpu-adapter}"
ADAPTER_ENV_FILE="${ADAPTER_ENV_FILE:-/etc/gpu-adapter/adapter.env}"
ADAPTER_KEEP_RELEASES="${ADAPTER_KEEP_RELEASES:-3}"
PYTHON="${PYTHON:-${ADAPTER_PYTHON:-python3}}"
JOB_USER="${JOB_USER:-}"

log_line() { # event, then key=value pairs whose values are safe in a JSON string (checked by the callers)
  local event="$1" fields="" pair
  shift
  for pair in "$@"; do fields+=", \"${pair%%=*}\": \"${pair#*=}\""; done
  printf '{"ts": %s, "logger": "adapter.install", "task_id": null, "event": "%s"%s}\n' "$(date +%s)" "$event" "$fields"
}

if [[ -n "$JOB_USER" ]]; then
  # A name useradd accepts and that needs no quoting anywhere (JSON, iptables, the adapter's lookup).
  if [[ ! "$JOB_USER" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]]; then
    echo "install.sh: JOB_USER must be a plain user name ([a-z_][a-z0-9_-]*), not '$JOB_USER'" >&2
    exit 1
  fi
  if ! id -u "$JOB_USER" >/dev/null 2>&1; then
    nologin="$(command -v nologin || echo /bin/false)"
    useradd --system --user-group --no-create-home --home-dir /nonexistent --shell "$nologin" "$JOB_USER"
    log_line job_user_created job_user="$JOB_USER"
  fi
  for pair in iptables=169.254.169.254 ip6tables=fd00:ec2::254; do
    tool="${pair%%=*}"
    rule=(OUTPUT -d "${pair#*=}" -m owner --uid-owner "$JOB_USER" -j REJECT)
    if "$tool" -w 5 -C "${rule[@]}" >/dev/null 2>&1; then
      continue
    fi
    if ! error="$("$tool" -w 5 -I "${rule[@]}" 2>&1)"; then
      error="${error:-$tool failed}"
      error="${error##*$'\n'}"         # its last line,
      error="${error//[^[:print:]]/ }" # printable,
      error="${error//[\"\\]/}"        # with nothing that would need escaping in JSON
      log_line job_metadata_block_missing job_user="$JOB_USER" tool="$tool" error="$error"
    fi
  done
fi

mkdir -p "$ADAPTER_ROOT/releases" "$(dirname "$ADAPTER_ENV_FILE")"
exec "$PYTHON" - "$ADAPTER_ROOT" "$ADAPTER_ENV_FILE" "${ADAPTER_SSM_PREFIX%/}" "$ADAPTER_KEEP_RELEASES" <<'PY'
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

root, env_file, prefix, keep = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
releases = root / "releases"
BUNDLE = re.compile(r"s3://([a-z0-9.-]+)/((?:[^/]+/)*adapter-([0-9a-f]{16})\.zip)")


def log(event, **fields):
    print(json.dumps({"ts": round(time.time(), 3), "logger": "adapter.install", "task_id": None, "event": event,
                      **fields}), flush=True)


def region():
    """The instance's region from IMDSv2 when the environment names none (first boot, before any env file)."""
    found = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if found:
        return found
    token = urllib.request.urlopen(urllib.request.Request(
        "http://169.254.169.254/latest/api/token", method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}), timeout=2).read().decode()
    return urllib.request.urlopen(urllib.request.Request(
        "http://169.254.169.254/latest/meta-data/placement/region",
        headers={"X-aws-ec2-metadata-token": token}), timeout=2).read().decode()


def env_line(key, value):
    """systemd EnvironmentFile syntax: KEY="value" with \\ and " escaped; one line per variable."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or "\n" in str(value):
        raise ValueError(f"config entry {key!r} cannot go into an environment file")
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'{key}="{text}"\n'


def replace_atomically(path, data, mode):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def unpack(bucket, key, short, uri, s3):
    """releases/<short>, complete or absent: download, verify, extract aside, mark, rename into place."""
    target = releases / short
    if (target / ".installed").is_file():
        return target
    work = Path(tempfile.mkdtemp(dir=releases, prefix=f".{short}-"))
    try:
        archive = work / "bundle.zip"
        s3.download_file(bucket, key, str(archive))
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if not digest.startswith(short):
            raise ValueError(f"sha256 {digest} does not match the bundle's name (adapter-{short}.zip)")
        tree = work / "tree"
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if name.startswith("/") or ".." in Path(name).parts:
                    raise ValueError(f"unsafe path in bundle: {name}")
            zf.extractall(tree)
        (tree / ".installed").write_text(json.dumps({"bundle": uri, "sha256": digest}))
        if target.exists():
            shutil.rmtree(target)  # an earlier attempt that never got its marker
        os.rename(tree, target)
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def prune(current):
    olds = sorted((p for p in releases.iterdir() if p.is_dir() and not p.name.startswith(".") and p != current),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for old in olds[max(0, keep - 1):]:
        shutil.rmtree(old, ignore_errors=True)


def main():
    has_release = (root / "current" / ".installed").is_file() and env_file.is_file()
    try:
        import boto3

        session = boto3.session.Session(region_name=region())
        ssm, s3 = session.client("ssm"), session.client("s3")
        uri = ssm.get_parameter(Name=f"{prefix}/bundle")["Parameter"]["Value"]
        config = json.loads(ssm.get_parameter(Name=f"{prefix}/config")["Parameter"]["Value"])
        match = BUNDLE.fullmatch(uri)
        if not match or not isinstance(config, dict):
            raise ValueError(f"bundle parameter {uri!r} or config parameter is not in the expected shape")
        bucket, key, short = match.groups()
        release = unpack(bucket, key, short, uri, s3)
        env = "".join(env_line(k, v) for k, v in sorted(config.items()))
        env += env_line("ADAPTER_BUNDLE_URI", uri) + env_line("ADAPTER_BUNDLE_PARAM", f"{prefix}/bundle")
        env += env_line("ADAPTER_CONFIG_PARAM", f"{prefix}/config")
    except Exception as err:
        log("install_failed", error=f"{type(err).__name__}: {err}", kept_current=has_release)
        return 0 if has_release else 1
    link = root / f".current-{os.getpid()}"
    link.unlink(missing_ok=True)
    os.symlink(f"releases/{release.name}", link)
    os.replace(link, root / "current")  # atomic: the next start sees the old tree or the new one, never a mix
    replace_atomically(env_file, env, 0o640)
    installer = release / "adapter" / "deploy" / "install.sh"
    if installer.is_file():  # the next boot runs the installer that shipped with this release
        replace_atomically(root / "install.sh", installer.read_text(), 0o755)
    prune(release)
    log("installed", bundle=uri, release=str(release))
    return 0


sys.exit(main())
PY
