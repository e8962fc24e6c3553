"""The instance metadata service (IMDSv2) as the adapter reads it, and the watch that tells the worker its instance
is leaving service.

IMDSv2 (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-service.html): a session
token from PUT /latest/api/token with the header X-aws-ec2-metadata-token-ttl-seconds (1..21600), then every GET
with X-aws-ec2-metadata-token; without a valid token a GET is refused with 401 where tokens are required (the
launch template's http_tokens = required). `Metadata` keeps one token, renews it a minute before it expires and at
once on a 401, never goes through a proxy, and waits at most `timeout_s` per request.

What `MetadataWatch` reads, every METADATA_WATCH_SECONDS (AWS recommends checking for the interruption notice every
5 s, https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html):
- spot/instance-action: {"action": "hibernate"|"stop"|"terminate", "time": "...Z"}; 404 while there is no notice.
  EC2 interrupts the Spot instance about two minutes later.
- events/recommendations/rebalance: {"noticeTime": "...Z"}; 404 while there is none
  (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/rebalance-recommendations.html): the Spot instance is at an
  elevated risk of interruption; with Capacity Rebalancing the group launches a replacement and then takes this
  instance away.
- autoscaling/target-lifecycle-state, only in a group: the steady state Auto Scaling is moving the instance to
  (https://docs.aws.amazon.com/autoscaling/ec2/userguide/retrieving-target-lifecycle-state-through-imds.html).
  InService stays; anything else (Terminated, Warmed:Stopped on a return to the warm pool, Warmed:Terminated,
  Standby, Detached, ...) means the instance is leaving service. 404 (the item is not there) counts as staying.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from core import logs

log = logging.getLogger("adapter.metadata")

TOKEN_TTL_S = 21600  # the longest IMDSv2 allows: one token serves the whole watch
TOKEN_RENEW_EARLY_S = 60.0
IN_SERVICE = "InService"
# Target lifecycle states that leave service without the group taking the instance away: no termination hook waits.
SIDE_STATES = frozenset({IN_SERVICE, "Standby", "Detached"})


class MetadataUnavailable(Exception):
    """The metadata service could not be read (not on EC2, or it failed). str() is one line."""


class Metadata:
    """An IMDSv2 client for one instance's metadata service at `url` (http://169.254.169.254 on EC2)."""

    def __init__(self, url: str, *, timeout_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._clock = clock
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # link-local: never a proxy
        self._token: str | None = None
        self._token_until = 0.0
        self._lock = threading.Lock()

    def get(self, path: str) -> str | None:
        """The item at /latest/meta-data/<path>, None when the service answers 404 (the item is not there)."""
        for renew in (False, True):
            request = urllib.request.Request(
                f"{self.url}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": self._session(renew)}
            )
            try:
                with self._opener.open(request, timeout=self.timeout_s) as answer:
                    return str(answer.read().decode())
            except urllib.error.HTTPError as err:
                if err.code == 404:
                    return None
                if err.code == 401 and not renew:  # the token expired or the service restarted: a new one, once
                    continue
                raise MetadataUnavailable(f"GET {path}: HTTP {err.code}") from None
            except (OSError, ValueError) as err:
                raise MetadataUnavailable(f"GET {path}: {type(err).__name__}: {err}") from None
        raise MetadataUnavailable(f"GET {path}: HTTP 401 with a fresh token")

    def instance_id(self) -> str:
        found = self.get("instance-id")
        if not found:
            raise MetadataUnavailable("instance-id: not found")
        return found.strip()

    def _session(self, renew: bool) -> str:
        with self._lock:
            if renew or self._token is None or self._clock() >= self._token_until:
                request = urllib.request.Request(
                    f"{self.url}/latest/api/token",
                    method="PUT",
                    headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)},
                )
                try:
                    with self._opener.open(request, timeout=self.timeout_s) as answer:
                        token = answer.read().decode().strip()
                except urllib.error.HTTPError as err:
                    raise MetadataUnavailable(f"PUT api/token: HTTP {err.code}") from None
                except (OSError, ValueError) as err:
                    raise MetadataUnavailable(f"PUT api/token: {type(err).__name__}: {err}") from None
                self._token, self._token_until = token, self._clock() + TOKEN_TTL_S - TOKEN_RENEW_EARLY_S
            return self._token


@dataclass(frozen=True)
class Reading:
    """One look at the metadata: what, if anything, says this instance is leaving service."""

    spot_action: str | None = None  # "terminate at 2025-01-01T00:02:00Z"
    rebalance: str | None = None  # the recommendation's noticeTime
    target_state: str | None = None  # autoscaling/target-lifecycle-state; None where the item is not there

    def leaving(self) -> str | None:
        """Why the instance is leaving service, in words for the task's record; None while it stays."""
        if self.spot_action is not None:
            return f"spot interruption notice ({self.spot_action})"
        if self.target_state is not None and self.target_state != IN_SERVICE:
            return f"the group is moving the instance to {self.target_state}"
        if self.rebalance is not None:
            return f"spot rebalance recommendation (noticed {self.rebalance})"
        return None

    @property
    def removed_by_group(self) -> bool:
        """The group is taking the instance away (terminating it or returning it to the warm pool): its termination
        lifecycle hook may be waiting for us."""
        return self.target_state is not None and self.target_state not in SIDE_STATES


def read(metadata: Metadata, *, in_group: bool) -> Reading:
    """The three items (the target lifecycle state only `in_group`); MetadataUnavailable when one cannot be read."""
    action = _json(metadata.get("spot/instance-action"))
    rebalance = _json(metadata.get("events/recommendations/rebalance"))
    target = metadata.get("autoscaling/target-lifecycle-state") if in_group else None
    return Reading(
        spot_action=f"{action.get('action', '?')} at {action.get('time', '?')}" if action is not None else None,
        rebalance=str(rebalance.get("noticeTime", "?")) if rebalance is not None else None,
        target_state=target.strip() if target else None,
    )


def _json(body: str | None) -> dict[str, Any] | None:
    if body is None:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return {"action": body.strip()}  # present but not JSON: still a notice, said as it came
    return doc if isinstance(doc, dict) else {"action": str(doc)}


@dataclass(eq=False)  # a service object: compared by identity
class MetadataWatch:
    """A daemon thread that reads the metadata every `every_s` and hands each Reading to `on_reading`.

    `start()` takes the first reading before it returns, so the worker knows before its first receive whether the
    instance is leaving already (a first boot into the warm pool says Warmed:Stopped). A read that fails is logged
    once per run of failures and changes nothing: the last reading stands."""

    metadata: Metadata
    _: KW_ONLY
    every_s: float
    in_group: bool
    on_reading: Callable[[Reading], None]
    last: Reading | None = field(default=None, init=False)
    _failing: bool = field(default=False, init=False)
    _done: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="metadata-watch", daemon=True)

    def check(self) -> Reading | None:
        """One reading, passed on; None when the metadata could not be read."""
        try:
            reading = read(self.metadata, in_group=self.in_group)
        except MetadataUnavailable as err:
            if not self._failing:
                logs.event(log, "metadata_unreadable", logging.WARNING, error=str(err))
            self._failing = True
            return None
        if self._failing:
            logs.event(log, "metadata_readable_again")
        self._failing = False
        if reading != self.last:
            logs.event(log, "metadata_reading", leaving=reading.leaving(), target_state=reading.target_state)
        self.last = reading
        self.on_reading(reading)
        return reading

    def start(self) -> MetadataWatch:
        self.check()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * self.metadata.timeout_s + 1)

    def _run(self) -> None:
        while not self._done.wait(self.every_s):
            self.check()
