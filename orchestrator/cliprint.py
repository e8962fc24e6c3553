"""How `gpuq` shows what the service answers: a task, the logs, the types, the cost report (`--json` prints the
answer itself instead)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from core.contract import GPU_HOURLY_USD

PRICE = GPU_HOURLY_USD.name

TASK_FIELDS = (
    "task_id",
    "status",
    "type",
    "attempts",
    "result_uri",
    "error",
    "cancel_requested",
    "submitted_by",
    "notify_url",
    "gpu_seconds",
    "cost_usd",
)


def as_json(found: Any, out: TextIO) -> None:
    out.write(json.dumps(found, sort_keys=True) + "\n")


def utc(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def task(found: dict[str, Any], out: TextIO) -> None:
    for key in TASK_FIELDS:
        if found.get(key) is not None:
            out.write(f"{key}: {found[key]}\n")
    notify = found.get("notify")
    if notify:
        error = f" error={notify['error']}" if notify.get("error") else ""
        out.write(
            f"notify: {notify.get('state')} attempts={notify.get('attempts', 0)} at={utc(notify.get('at'))}{error}\n"
        )


def logs(found: dict[str, Any], out: TextIO) -> None:
    for stream in ("stdout", "stderr"):
        tail = found[stream]
        if not tail.get("present"):
            out.write(f"== {stream}: none\n")
            continue
        shown = len(tail["text"].encode())
        note = f", last {shown} bytes shown" if tail.get("truncated") else ""
        out.write(f"== {stream} ({tail['size']} bytes{note})\n{tail['text']}")
        if tail["text"] and not tail["text"].endswith("\n"):
            out.write("\n")


def types(found: dict[str, Any], out: TextIO) -> None:
    for spec in found["types"]:
        out.write(f"{spec['name']}: {spec['description']}\n")
        for p in spec["params"]:
            rules = [p["type"], "required" if p["required"] else "optional"]
            rules += [f"{k} {p[k]}" for k in ("min", "max", "max_length") if k in p]
            if p.get("s3_input"):
                rules.append(f"a file: --input {p['name']}=FILE")
            out.write(f"  -p {p['name']}=...  ({', '.join(str(r) for r in rules)})\n")


def _table(title: str, rows: Sequence[dict[str, Any]], total: dict[str, Any] | None, out: TextIO) -> None:
    lines = [(str(r["key"]) if r["key"] is not None else "(unknown)", r) for r in rows]
    if total is not None:
        lines.append(("total", total))
    width = max([len(title), *(len(name) for name, _ in lines)])
    out.write(f"{title:<{width}}  {'TASKS':>6}  {'GPU-SECONDS':>12}  {'COST USD':>10}\n")
    for name, r in lines:
        out.write(f"{name:<{width}}  {r['tasks']:>6}  {r['gpu_seconds']:>12.1f}  {r['cost_usd']:>10.4f}\n")


def cost(report: dict[str, Any], out: TextIO) -> None:
    whose = "every caller's tasks" if report["scope"] == "all" else "your tasks"
    out.write(f"tasks finished {utc(report['since'])} .. {utc(report['until'])} ({whose})\n")
    price = report["price"]
    if price["hourly_usd"] is None:
        out.write(f"price: unknown ({PRICE} is not set); task costs are as recorded when each task settled\n")
    else:
        out.write(f"price: {price['hourly_usd']} USD per instance-hour ({price['source']})\n")
    out.write("\n")
    total = {"tasks": report["tasks"], "gpu_seconds": report["used_gpu_seconds"], "cost_usd": report["cost_usd"]}
    _table("TYPE", report["by_type"], total, out)
    out.write("\n")
    _table("SUBMITTER", report["by_submitter"], None, out)
    unpriced = sum(r["unpriced"] for r in report["by_type"])
    if unpriced:
        out.write(f"{unpriced} task(s) used GPU time but carry no cost (settled while {PRICE} was unset)\n")
    out.write("\n")
    found = report.get("overhead")
    if found is None:
        out.write(f"idle overhead: {report['overhead_note']}\n")
        return
    billed_usd = "" if found["billed_usd"] is None else f", {found['billed_usd']:.4f} USD"
    idle_usd = "" if found["idle_usd"] is None else f", {found['idle_usd']:.4f} USD"
    out.write(
        f"billed:        {found['billed_gpu_seconds']:.1f} GPU-seconds in {found['intervals']} running "
        f"interval(s){billed_usd}\n"
    )
    out.write(f"used:          {report['used_gpu_seconds']:.1f} GPU-seconds\n")
    out.write(f"idle overhead: {found['idle_gpu_seconds']:.1f} GPU-seconds{idle_usd}\n")
