"""The webhook signing key: Secrets Manager GetSecretValue's SecretString, kept for the execution environment's
life but read again after `ttl_s`, so a rotated key (put-secret-value) is used within minutes
(https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_GetSecretValue.html; the caching pattern:
https://docs.aws.amazon.com/secretsmanager/latest/userguide/retrieving-secrets_cache-python.html).

The stack creates the secret empty, so no key is ever in Terraform state; the first read finds no value
(ResourceNotFoundException: no AWSCURRENT version yet) and writes a random key with PutSecretValue under a fixed
ClientRequestToken. Two first reads racing write one version: "If a version with this value already exists and
the version of the SecretString ... values are different from those in the request, then the request fails"
(https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_PutSecretValue.html), and the loser reads the
winner's key.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

SECRET_TTL_S = 300.0  # how long a read key is used before Secrets Manager is asked again
INITIAL_KEY_TOKEN = "gpu-orchestrator-webhook-initial-key-v1"  # ClientRequestToken of the first key: 32-64 chars
INITIAL_KEY_BYTES = 32  # entropy of the generated key (HMAC-SHA256's block is 64 bytes: 32 random ones are plenty)


class SecretCache:
    def __init__(
        self, client: Any, secret_id: str, *, ttl_s: float = SECRET_TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.client, self.secret_id, self.ttl_s, self.clock = client, secret_id, ttl_s, clock
        self._value: bytes | None = None
        self._read_at = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> bytes:
        with self._lock:
            now = self.clock()
            if self._value is None or now - self._read_at >= self.ttl_s:
                self._value, self._read_at = self._read().encode(), now
            return self._value

    def _read(self) -> str:
        try:
            out = self.client.get_secret_value(SecretId=self.secret_id)
        except ClientError as err:
            if err.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
            self._initialize()  # raises ResourceNotFoundException itself when the secret does not exist at all
            out = self.client.get_secret_value(SecretId=self.secret_id)
        text = out.get("SecretString")
        if not text:
            raise ValueError(f"secret {self.secret_id} has no SecretString (the signing key must be text)")
        return str(text)

    def _initialize(self) -> None:
        try:
            self.client.put_secret_value(
                SecretId=self.secret_id,
                SecretString=secrets.token_urlsafe(INITIAL_KEY_BYTES),
                ClientRequestToken=INITIAL_KEY_TOKEN,
            )
        except ClientError as err:
            if err.response["Error"]["Code"] != "ResourceExistsException":
                raise
