#!/bin/sh
# Make this host a GPU adapter host: install gpu-adapter.service, install.sh and install.env, then start the unit.
# The one installer of both gpu modes (modules/gpu.py GpuHost renders it with its parameters and the two files
# inline): EC2 runs it as user data on a created instance's first boot, an SSM association runs it on adopted ones.
#
#   bootstrap.sh [SSM_PREFIX [REGION]]      (or ADAPTER_SSM_PREFIX / AWS_DEFAULT_REGION in the environment)
#
# SSM_PREFIX is where the release lives (/gpu-orchestrator/<env>/adapter: install.sh reads <prefix>/bundle|config).
# The files come inline (GPU_ADAPTER_PAYLOAD=inline and a write_payload function, set by the rendering) or, run by
# hand, from beside this script (a checkout, or adapter/deploy/ of an unpacked bundle).
# POSIX sh: user data runs it by its shebang, the SSM agent's runShellScript with sh; both behave the same.
# Idempotent: a file is replaced only when its content differs; systemd is reloaded only when the unit changed, and
# the adapter restarted only when it was running and a file changed. install.sh is written only when absent: after
# the first install each release replaces it with its own (install.sh), so a bootstrap never downgrades it.
# Every path lies under GPU_ADAPTER_SYSROOT (default: /), and systemctl is whatever is first on PATH, so a test can
# run it unprivileged in a temp dir (localaws/host.py).
set -eu

prefix="${1:-${ADAPTER_SSM_PREFIX:-}}"
region="${2:-${AWS_DEFAULT_REGION:-}}"
sysroot="${GPU_ADAPTER_SYSROOT:-}"
unit_name=gpu-adapter

fail() {
  echo "bootstrap.sh: $1" >&2
  exit 2
}
case "$prefix" in
  /*[!A-Za-z0-9_./-]* | "" | [!/]*) fail "SSM prefix '$prefix' is not /<level>/... (argument 1 or ADAPTER_SSM_PREFIX)" ;;
esac
case "$region" in
  *[!a-z0-9-]*) fail "region '$region' is not an AWS region name" ;;
esac

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if [ "${GPU_ADAPTER_PAYLOAD:-}" = inline ]; then
  write_payload "$tmp"
else
  here="$(cd "$(dirname "$0")" && pwd)"
  cp "$here/gpu-adapter.service" "$here/install.sh" "$tmp/"
fi
{
  echo "# Written by bootstrap.sh: what install.sh (ExecStartPre of $unit_name.service) needs on the first boot."
  echo "ADAPTER_SSM_PREFIX=$prefix"
  if [ -n "$region" ]; then echo "AWS_DEFAULT_REGION=$region"; fi
} >"$tmp/install.env"

changed=""
place() { # source, destination, mode: replace atomically when the content differs
  if [ -f "$2" ] && cmp -s "$1" "$2"; then
    return 0
  fi
  mkdir -p "$(dirname "$2")"
  cp "$1" "$2.bootstrap.$$"
  chmod "$3" "$2.bootstrap.$$"
  mv -f "$2.bootstrap.$$" "$2"
  changed="$changed ${2#"$sysroot"}"
}

unit="$sysroot/etc/systemd/system/$unit_name.service"
before="$changed"
place "$tmp/gpu-adapter.service" "$unit" 644
unit_changed=""
if [ "$changed" != "$before" ]; then unit_changed=1; fi
place "$tmp/install.env" "$sysroot/etc/gpu-adapter/install.env" 644
if [ ! -f "$sysroot/opt/gpu-adapter/install.sh" ]; then
  place "$tmp/install.sh" "$sysroot/opt/gpu-adapter/install.sh" 755
fi

was_active=""
if systemctl is-active --quiet "$unit_name"; then was_active=1; fi
if [ -n "$unit_changed" ]; then systemctl daemon-reload; fi
systemctl enable --now "$unit_name"
if [ -n "$changed" ] && [ -n "$was_active" ]; then systemctl restart "$unit_name"; fi
printf '{"ts": %s, "logger": "adapter.bootstrap", "task_id": null, "event": "bootstrapped", "changed": "%s"}\n' \
  "$(date +%s)" "${changed# }"
