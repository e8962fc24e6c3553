"""Who is calling: a Supabase user, proven by the access token (a JWT) every request carries.

Supabase Auth signs access tokens either with the project's asymmetric signing keys (ES256 or RS256, public keys
published at `<project>/auth/v1/.well-known/jwks.json`) or, for projects still on the legacy shared secret, with
HS256 (https://supabase.com/docs/guides/auth/signing-keys, https://supabase.com/docs/guides/auth/jwts). Tokens are
verified here, locally, without a call to Supabase per request:

- the JWKS is fetched once and kept `jwks_cache_s` seconds; a token naming a `kid` the cached set lacks triggers
  one refetch (the project rotated its keys), at most once per `min_refetch_s`, so forged kids cannot make the
  service hammer the endpoint;
- HS256 is accepted only when SUPABASE_JWT_SECRET is set, and only for tokens whose header says HS256 (an
  asymmetric public key is never used as an HMAC secret: the algorithm list is fixed per key type);
- `exp` (and `nbf`, `iat` when present), `aud` (SUPABASE_JWT_AUDIENCE, "authenticated") and `iss`
  (`<project>/auth/v1`) are checked; `sub` is the user's id, a UUID, and owns what the user uploads.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OctKey

ASYMMETRIC = ("ES256", "RS256")
LEEWAY_S = 30  # clock skew between Supabase Auth and this host


class Unauthorized(Exception):
    """The token is missing, malformed, forged, expired or for another project: HTTP 401."""


class KeysNeedFetch(Exception):
    """The cached key set cannot answer without a fetch (or one is under way): verify again where blocking is
    allowed."""


@dataclass(frozen=True)
class User:
    id: str  # the token's `sub`: a UUID in canonical form
    role: str | None = None


def fetch_json(url: str, timeout_s: float = 5.0) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (the URL is configuration)
        return dict(json.loads(resp.read()))


class JwksCache:
    """The project's key set, refetched when stale or when a token names a key it does not hold."""

    def __init__(
        self,
        url: str,
        *,
        max_age_s: float,
        min_refetch_s: float = 10.0,
        fetch: Callable[[str], dict[str, object]] = fetch_json,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.max_age_s = max_age_s
        self.min_refetch_s = min_refetch_s
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: KeySet | None = None
        self._kids: frozenset[str] = frozenset()
        self._fetched_at = float("-inf")
        self.fetches = 0

    def keys_for(self, kid: str | None, *, may_fetch: bool = True) -> KeySet:
        """The key set to check a token naming `kid` against. `may_fetch=False` (on the event loop) never blocks:
        it raises KeysNeedFetch instead of fetching, or of waiting for a fetch another thread is making."""
        if not self._lock.acquire(blocking=may_fetch):
            raise KeysNeedFetch(self.url)
        try:
            now = self._clock()
            stale = now - self._fetched_at > self.max_age_s
            unknown = kid is not None and kid not in self._kids
            if self._keys is None or stale or (unknown and now - self._fetched_at > self.min_refetch_s):
                if not may_fetch:
                    raise KeysNeedFetch(self.url)
                self._refresh(now)
            if self._keys is None:
                raise Unauthorized("the project's signing keys could not be fetched")
            return self._keys
        finally:
            self._lock.release()

    def _refresh(self, now: float) -> None:
        try:
            doc = self._fetch(self.url)
            listed = doc.get("keys")
            raw_keys = [k for k in listed if isinstance(k, dict)] if isinstance(listed, list) else []
            usable = [k for k in raw_keys if k.get("kty") in ("EC", "RSA")]
            keys = KeySet.import_key_set({"keys": usable})
        except (OSError, ValueError, JoseError):
            # Keep the last good set: a brief outage of the endpoint must not log every user out.
            self._fetched_at = now if self._keys is not None else float("-inf")
            return
        self._keys = keys
        self._kids = frozenset(str(k.get("kid")) for k in usable if k.get("kid"))
        self._fetched_at = now
        self.fetches += 1


class Verifier:
    def __init__(
        self, *, issuer: str, audience: str, jwks: JwksCache, secret: str | None, clock: Callable[[], float] = time.time
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.jwks = jwks
        self.secret = OctKey.import_key(secret) if secret else None
        self._clock = clock

    def verify(self, token: str, *, may_fetch: bool = True) -> User:
        """The token's user. `may_fetch=False`: raise KeysNeedFetch rather than block on the JWKS endpoint."""
        header = _header(token)
        alg = header.get("alg")
        try:
            if alg == "HS256":
                if self.secret is None:
                    raise Unauthorized("HS256 tokens are not accepted (no SUPABASE_JWT_SECRET)")
                decoded = jwt.decode(token, self.secret, algorithms=["HS256"])
            elif alg in ASYMMETRIC:
                kid = header.get("kid")
                keys = self.jwks.keys_for(kid if isinstance(kid, str) else None, may_fetch=may_fetch)
                decoded = jwt.decode(token, keys, algorithms=[alg])
            else:
                raise Unauthorized(f"unsupported token algorithm {alg!r}")
            registry = jwt.JWTClaimsRegistry(
                now=int(self._clock()),
                leeway=LEEWAY_S,
                exp={"essential": True},
                aud={"essential": True, "value": self.audience},
                iss={"essential": True, "value": self.issuer},
                sub={"essential": True},
            )
            registry.validate(decoded.claims)
        except JoseError as err:
            raise Unauthorized(f"invalid token: {err.error}") from None
        return User(id=_user_id(decoded.claims.get("sub")), role=_text_or_none(decoded.claims.get("role")))


def _header(token: str) -> dict[str, object]:
    import base64

    parts = token.split(".")
    if len(parts) != 3:
        raise Unauthorized("not a JWT")
    try:
        raw = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4))
        header = json.loads(raw)
    except (ValueError, TypeError):
        raise Unauthorized("not a JWT") from None
    if not isinstance(header, dict):
        raise Unauthorized("not a JWT")
    return header


def _user_id(sub: object) -> str:
    """Supabase user ids are UUIDs; the id becomes a key segment and a uuid column, so nothing else passes."""
    try:
        return str(uuid.UUID(str(sub)))
    except ValueError:
        raise Unauthorized("the token's sub is not a Supabase user id") from None


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("no Authorization header (Bearer <Supabase access token>)")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header is not `Bearer <token>`")
    return token.strip()
