"""Find and settle what a failure left half-written, so that every `ready` row has its object and every object
under the prefix has a row.

One pass:
1. rows still `uploading` or `pending` after `pending_ttl_s` (an abandoned direct upload, a crash mid-store):
   their object, if any, is deleted, then the row;
2. rows `deleting` (a delete whose object removal failed): the object is deleted, the row becomes `deleted`;
3. objects under the prefix that no row claims, older than `grace_s` (the row of an upload in progress is always
   written before its object, so a young object without a row is one a cleanup is removing right now): deleted;
4. task rows still `SUBMITTING` after `grace_s`: submitted again under their idempotency key (canvas/tasks.py).

Run in the service every CANVAS_RECONCILE_EVERY_S seconds and by `python -m canvas reconcile`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .db import Repo
from .storage import Storage
from .tasks import ImageTasks

log = logging.getLogger("canvas.reconcile")
BATCH = 500


@dataclass
class Report:
    abandoned: int = 0  # unsettled rows removed with their object
    deletes_finished: int = 0
    orphan_objects: int = 0
    tasks_resubmitted: int = 0


def run_once(
    repo: Repo,
    storage: Storage,
    tasks: ImageTasks | None,
    *,
    pending_ttl_s: float,
    grace_s: float = 60.0,
    now: dt.datetime | None = None,
) -> Report:
    now = now or dt.datetime.now(dt.UTC)
    report = Report()
    for row in repo.unsettled(now - dt.timedelta(seconds=min(grace_s, pending_ttl_s))):
        if row.state == "deleting":
            storage.delete(row.s3_key)
            repo.mark_deleted(row.id)
            report.deletes_finished += 1
        elif row.created_at < now - dt.timedelta(seconds=pending_ttl_s):
            storage.delete(row.s3_key)
            if repo.remove_image(row.id, states=(row.state,)):
                report.abandoned += 1
    report.orphan_objects = _orphan_objects(repo, storage, now - dt.timedelta(seconds=grace_s))
    if tasks is not None:
        for task in repo.submitting(now - dt.timedelta(seconds=grace_s)):
            if tasks.resubmit(task) is not None:
                report.tasks_resubmitted += 1
    return report


def _orphan_objects(repo: Repo, storage: Storage, older_than: dt.datetime) -> int:
    removed = 0
    batch = []
    for obj in storage.listing():
        if obj.last_modified < older_than:
            batch.append(obj.key)
        if len(batch) == BATCH:
            removed += _remove_unclaimed(repo, storage, batch)
            batch = []
    if batch:
        removed += _remove_unclaimed(repo, storage, batch)
    return removed


def _remove_unclaimed(repo: Repo, storage: Storage, keys: list[str]) -> int:
    claimed = repo.live_keys(keys)
    orphans = [k for k in keys if k not in claimed]
    for key in orphans:
        storage.delete(key)
    return len(orphans)


class Periodic:
    """run_once every `every_s` seconds in a daemon thread, until stop(); a failed pass is logged and retried."""

    def __init__(self, every_s: float, run: Callable[[], object]) -> None:
        self.every_s = every_s
        self._run = run
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="canvas-reconcile", daemon=True)

    def start(self) -> None:
        if self.every_s > 0:
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                report = self._run()
                log.info("reconcile: %s", report)
            except Exception as err:
                log.warning("reconcile pass failed: %s", err)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
