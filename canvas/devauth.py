"""A development stand-in for a Supabase project's Auth, for `make canvas` and the tests: an ES256 signing key (more
on rotation), its public JWKS served at `<url>/auth/v1/.well-known/jwks.json` on 127.0.0.1, and tokens minted with
the claims Supabase Auth writes (`sub`, `aud` "authenticated", `iss` `<url>/auth/v1`, `exp`, `role`;
https://supabase.com/docs/guides/auth/jwts). Never for production: whoever runs it can sign as anyone.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, OctKey

JWKS_PATH = "/auth/v1/.well-known/jwks.json"


@dataclass
class DevAuth:
    url: str = ""
    keys: list[ECKey] = field(default_factory=list)
    fetches: int = 0

    @property
    def issuer(self) -> str:
        return f"{self.url}/auth/v1"

    def rotate(self) -> ECKey:
        """A new signing key, published beside the old ones; tokens are signed with the newest."""
        key = ECKey.generate_key("P-256", parameters={"kid": uuid.uuid4().hex, "alg": "ES256", "use": "sig"})
        self.keys.append(key)
        return key

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.as_dict(private=False) for k in self.keys]}

    def token(
        self,
        sub: str,
        *,
        key: ECKey | None = None,
        exp_in: int = 3600,
        aud: str = "authenticated",
        iss: str | None = None,
    ) -> str:
        signing = key or self.keys[-1]
        now = int(time.time())
        claims = {"sub": sub, "aud": aud, "iss": iss or self.issuer, "exp": now + exp_in, "iat": now}
        claims["role"] = "authenticated"
        return jwt.encode({"alg": "ES256", "kid": signing.kid, "typ": "JWT"}, claims, signing)

    def hs256_token(self, sub: str, secret: str, *, exp_in: int = 3600) -> str:
        """A token signed the legacy way, with the project's shared secret."""
        now = int(time.time())
        claims = {"sub": sub, "aud": "authenticated", "iss": self.issuer, "exp": now + exp_in, "role": "authenticated"}
        return jwt.encode({"alg": "HS256", "typ": "JWT"}, claims, OctKey.import_key(secret))


@contextmanager
def serve_dev_auth(port: int = 0) -> Iterator[DevAuth]:
    """DevAuth with one key, its JWKS served on 127.0.0.1:`port` (0: a free one) until the block ends."""
    state = DevAuth()
    state.rotate()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path != JWKS_PATH:
                self.send_error(404)
                return
            state.fetches += 1
            body = json.dumps(state.jwks()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
