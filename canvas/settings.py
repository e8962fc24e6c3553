"""Every setting the canvas service reads: declared once here, with its type, default and meaning.

The seed's names are kept (`SUPABASE_URL`, `S3_BUCKET`, `AWS_DEFAULT_REGION`); the names the rest of the system
already defines (`ARTIFACTS_BUCKET`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`, `ORCHESTRATOR_URL`,
`ORCHESTRATOR_TOKEN`) are core/contract.py's own declarations, not second copies. `Settings.from_env` reads and
checks them all at start: a missing or malformed one raises `SettingError`, whose str() is one line naming it.
`SUPABASE_SERVICE_ROLE_KEY` is not read: the service reaches Postgres with DATABASE_URL (README, "Why Postgres
directly").
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from core import contract as c
from core.contract import Setting, SettingError

MiB = 1024 * 1024


def _url(raw: str) -> str:
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http(s) URL such as https://<project>.supabase.co")
    return raw.rstrip("/")


def _postgres_url(raw: str) -> str:
    if urllib.parse.urlsplit(raw).scheme not in ("postgres", "postgresql"):
        raise ValueError("expected postgresql://user:password@host:port/dbname")
    return raw


def _positive(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _non_negative(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _prefix(raw: str) -> str:
    # The orchestrator's s3_input params must lie under inputs/ (core/task_types.json patterns); the owner id and
    # the image id are appended as further segments.
    if not re.fullmatch(r"inputs/(?:[A-Za-z0-9_-][A-Za-z0-9._-]*/)*", raw) or ".." in raw:
        raise ValueError("must be inputs/ or a folder under it ending in '/', e.g. inputs/canvas/")
    return raw


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be 0..65535")
    return value


def _text(raw: str) -> str:
    return raw


SUPABASE_URL = Setting("SUPABASE_URL", _url, c.REQUIRED, "the Supabase project URL; tokens are checked against it")
SUPABASE_JWT_SECRET = Setting(
    "SUPABASE_JWT_SECRET", _text, None, "the project's legacy shared JWT secret (HS256); unset: JWKS keys only"
)
SUPABASE_JWT_AUDIENCE = Setting("SUPABASE_JWT_AUDIENCE", _text, "authenticated", "the `aud` a user token must carry")
JWKS_CACHE_S = Setting("CANVAS_JWKS_CACHE_S", _positive, 600, "seconds the project's JWKS is used before a refetch")
DATABASE_URL = Setting(
    "DATABASE_URL", _postgres_url, c.REQUIRED, "the Supabase project's Postgres connection string (the service owns)"
)
DATABASE_POOL_MAX = Setting("CANVAS_DB_POOL_MAX", _positive, 10, "connections the service keeps open at most")
S3_BUCKET = Setting("S3_BUCKET", _text, None, "bucket the images go to; unset: ARTIFACTS_BUCKET")
S3_PREFIX = Setting("CANVAS_S3_PREFIX", _prefix, "inputs/canvas/", "key prefix of the images: <prefix><owner>/<id>")
HOST = Setting("CANVAS_HOST", _text, "127.0.0.1", "interface to listen on (0.0.0.0 in the container)")
PORT = Setting("CANVAS_PORT", _port, 9000, "port to listen on")
MAX_UPLOAD_BYTES = Setting(
    "CANVAS_MAX_UPLOAD_BYTES", _positive, 25 * MiB, "largest image POST /images takes through the service"
)
MAX_DIRECT_BYTES = Setting(
    "CANVAS_MAX_DIRECT_BYTES", _positive, 200 * MiB, "largest image a presigned direct upload may send to S3"
)
MAX_PIXELS = Setting("CANVAS_MAX_PIXELS", _positive, 50_000_000, "width x height above which an image is refused")
URL_EXPIRES_S = Setting("CANVAS_URL_EXPIRES_S", _positive, 300, "lifetime of presigned download and upload URLs")
PENDING_TTL_S = Setting(
    "CANVAS_PENDING_TTL_S", _positive, 3600, "age after which an unfinished upload is an orphan the reconcile removes"
)
RECONCILE_EVERY_S = Setting(
    "CANVAS_RECONCILE_EVERY_S", _non_negative, 900, "seconds between reconcile passes in the service; 0: never"
)

# The fields of Settings that are each one setting's value; `from_env` works out the others (bucket, region, the
# orchestrator's URL and token) from several.
FIELDS: dict[str, Setting[Any]] = {
    "supabase_url": SUPABASE_URL,
    "jwt_secret": SUPABASE_JWT_SECRET,
    "jwt_audience": SUPABASE_JWT_AUDIENCE,
    "jwks_cache_s": JWKS_CACHE_S,
    "database_url": DATABASE_URL,
    "pool_max": DATABASE_POOL_MAX,
    "prefix": S3_PREFIX,
    "host": HOST,
    "port": PORT,
    "max_upload_bytes": MAX_UPLOAD_BYTES,
    "max_direct_bytes": MAX_DIRECT_BYTES,
    "max_pixels": MAX_PIXELS,
    "url_expires_s": URL_EXPIRES_S,
    "pending_ttl_s": PENDING_TTL_S,
    "reconcile_every_s": RECONCILE_EVERY_S,
}
# Every setting the service reads (AWS_ENDPOINT_URL through boto3).
ALL = (
    *FIELDS.values(),
    S3_BUCKET,
    c.ARTIFACTS_BUCKET,
    c.AWS_DEFAULT_REGION,
    c.AWS_ENDPOINT_URL,
    c.ORCHESTRATOR_URL,
    c.ORCHESTRATOR_TOKEN,
    c.ORCHESTRATOR_AUTH,
)


@dataclass(frozen=True, kw_only=True)
class Settings:
    supabase_url: str
    jwt_secret: str | None
    jwt_audience: str
    jwks_cache_s: int
    database_url: str
    pool_max: int
    bucket: str
    prefix: str
    region: str
    orchestrator_url: str
    orchestrator_token: str | None  # None: IAM mode, requests signed with SigV4 (the service's own AWS identity)
    host: str = HOST.default or "127.0.0.1"
    port: int = PORT.default or 9000
    max_upload_bytes: int = MAX_UPLOAD_BYTES.default or 0
    max_direct_bytes: int = MAX_DIRECT_BYTES.default or 0
    max_pixels: int = MAX_PIXELS.default or 0
    url_expires_s: int = URL_EXPIRES_S.default or 0
    pending_ttl_s: int = PENDING_TTL_S.default or 0
    reconcile_every_s: int = RECONCILE_EVERY_S.default or 0

    @property
    def issuer(self) -> str:
        """The `iss` Supabase Auth writes: `<project URL>/auth/v1` (https://supabase.com/docs/guides/auth/jwts)."""
        return f"{self.supabase_url}/auth/v1"

    @property
    def jwks_url(self) -> str:
        """The project's published signing keys (https://supabase.com/docs/guides/auth/signing-keys)."""
        return f"{self.issuer}/.well-known/jwks.json"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        bucket = S3_BUCKET.read_optional(env) or c.ARTIFACTS_BUCKET.read_optional(env)
        if not bucket:
            raise SettingError(S3_BUCKET.name, f"not set, and neither is {c.ARTIFACTS_BUCKET.name} (the image bucket)")
        region = c.AWS_DEFAULT_REGION.read_optional(env) or c.AWS_REGION.read_optional(env)
        if not region:
            raise SettingError(c.AWS_DEFAULT_REGION.name, "not set (region of the S3 bucket)")
        if not c.ORCHESTRATOR_URL.read_optional(env):
            raise SettingError(c.ORCHESTRATOR_URL.name, "not set (the orchestrator API the image tasks go to)")
        # ORCHESTRATOR_AUTH=iam: the deployed API behind its function URL (AWS_IAM). The canvas submits for many
        # users, so its identity holds the stack's admin policy and calls the AdminApiUrl (docs/OPERATIONS.md).
        token = c.ORCHESTRATOR_TOKEN.read_optional(env)
        iam = c.ORCHESTRATOR_AUTH.read(env) == "iam"
        if iam and token:
            raise SettingError(c.ORCHESTRATOR_TOKEN.name, "not used with ORCHESTRATOR_AUTH=iam; unset it")
        if not iam and not token:
            raise SettingError(c.ORCHESTRATOR_TOKEN.name, "not set (the orchestrator's bearer token)")
        settings = cls(
            **{field: declared.read(env) for field, declared in FIELDS.items()},
            bucket=bucket,
            region=region,
            # The contract declares ORCHESTRATOR_URL as text; the service also needs an http(s) URL, checked here so
            # that it is reported after the settings read before it.
            orchestrator_url=replace(c.ORCHESTRATOR_URL, parse=_url).read(env),
            orchestrator_token=None if iam else token,
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Rules across settings and against S3's own limits."""
        if self.url_expires_s > 7 * 24 * 3600:  # SigV4 presigned URLs live at most 7 days
            raise SettingError(URL_EXPIRES_S.name, "must be at most 604800 (SigV4's longest presigned lifetime)")
        if self.max_direct_bytes > 5 * 1024**3:  # one S3 POST upload holds at most 5 GiB
            raise SettingError(MAX_DIRECT_BYTES.name, "must be at most 5 GiB (S3's limit for one POST upload)")
        if self.jwt_secret is not None and len(self.jwt_secret) < 32:
            raise SettingError(SUPABASE_JWT_SECRET.name, "shorter than 32 characters: not a Supabase JWT secret")
