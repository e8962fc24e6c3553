"""Liveness: the adapter's loop says it is turning, for the controller's stuck-worker rule.

With HOSTS_TABLE_NAME set, the loop records `seen_at` (and its worker id) on this instance's item of the GPU hosts
table (core/hosts.py `HostStore.seen`: one conditional UpdateItem) at most every LIVENESS_SECONDS, the first at
start. The write is made by the loop's own thread on its turns, never by a thread of its own, so a loop that hangs
stops writing and the controller sees it (STUCK_AFTER_SECONDS). While every slot runs a task the loop waits for one
to free, and the tasks' heartbeats (`worker` = the same id) show their progress too. A write that fails is logged and
tried again one interval later: liveness is never worth a task.

The instance id comes from the instance metadata service (IMDSv2, adapter/metadata.py) at start: `instance_id`
reads it, and a service that cannot be read is a one-line setting error naming INSTANCE_METADATA_URL, as in fleet
mode (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html). With HOSTS_TABLE_NAME
unset there is no liveness and the metadata service is not asked.

IAM: dynamodb:UpdateItem on the hosts table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

from core import contract as c
from core import logs
from core.hosts import HostStore
from core.tasks import now_ms

from .every import Every
from .metadata import Metadata, MetadataUnavailable

log = logging.getLogger("adapter.liveness")


def instance_id(metadata: Metadata, why: str) -> str:
    """This instance's id from its metadata service; SettingError (one line, naming INSTANCE_METADATA_URL) when the
    service cannot be read. `why`: what needs it, for the error."""
    try:
        return metadata.instance_id()
    except MetadataUnavailable as err:
        raise c.SettingError(
            c.INSTANCE_METADATA_URL.name, f"{why} needs this instance's id from {metadata.url}: {err}"
        ) from None


@dataclass(eq=False)  # a service object: compared by identity
class Liveness:
    """`tick()` from the loop: a `seen` write when LIVENESS_SECONDS have passed since the last one (or never was)."""

    hosts: HostStore
    _: KW_ONLY
    instance_id: str
    worker: str
    every_s: float
    clock: Callable[[], float] = time.monotonic
    wall_ms: Callable[[], int] = now_ms
    _due: Every = field(init=False)

    def __post_init__(self) -> None:
        self._due = Every(self.every_s, clock=self.clock)  # the first tick writes

    def tick(self) -> bool:
        """Write if due; True when a write was made and succeeded."""
        if not self._due.due():
            return False
        try:
            self.hosts.seen(self.instance_id, worker=self.worker, at_ms=self.wall_ms())
        except Exception as err:
            logs.event(log, "liveness_failed", logging.WARNING, error=f"{type(err).__name__}: {err}")
            return False
        return True
