"""IAM mode's request signing, checked the way a Lambda function URL checks it.

The CLI (in process) sends its requests to a recorder on 127.0.0.1; each captured request is then signed again,
independently, with botocore's SigV4 signer: the same method, URL, signed headers and the body's own sha256, the
same fixed credentials and the same fixed timestamp. The Authorization header must come out identical; with one
byte of the body changed it must not. No AWS verifies anything here: this shows the CLI signs what it sends, the
way AWS recomputes it (https://docs.aws.amazon.com/lambda/latest/dg/urls-invocation.html), not that a real
function URL accepts these credentials.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from orchestrator import cli

KEY_ID, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
REGION = "eu-west-1"
NOW = datetime.datetime(2026, 3, 4, 5, 6, 7)
TASK = {"task_id": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "status": "QUEUED", "type": "noop", "params": {}}


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A 127.0.0.1 server that keeps each request's method, path, headers and body and answers a task."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
            raw = json.dumps({**TASK, "items": [], "next_cursor": None}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = _record

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def fixed_identity(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Known credentials from the environment (botocore's first source), nothing from files, a frozen clock."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "ORCHESTRATOR_URL", "ORCHESTRATOR_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("GPUQ_CONFIG", str(tmp_path / "gpuq.toml"))
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: NOW)


def resign(method: str, url: str, headers: dict[str, str], body: bytes) -> str:
    """What the receiving side computes: the signed headers as sent, the hash of the body as received."""
    lowered = {k.lower(): v for k, v in headers.items()}
    signed = lowered["authorization"].split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";")
    kept = {name: lowered[name] for name in signed}
    kept["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
    request = AWSRequest(method=method, url=url, data=body, headers=kept)
    SigV4Auth(Credentials(KEY_ID, SECRET), "lambda", REGION).add_auth(request)
    return str(request.headers["Authorization"])


def run_cli(*args: str) -> int:
    return cli.main(list(args), out=io.StringIO(), err=io.StringIO())


@pytest.mark.usefixtures("fixed_identity")
def test_cli_requests_carry_a_sigv4_signature_that_recomputes_exactly(
    recorder: tuple[str, list[dict[str, Any]]],
) -> None:
    url, seen = recorder
    flags = ["--url", url, "--auth", "iam", "--region", REGION]
    assert run_cli("submit", "noop", "-p", "note=hi", "--idempotency-key", "k-1", *flags) == 0
    assert run_cli("list", "--status", "QUEUED", "--limit", "5", *flags) == 0
    assert run_cli("status", TASK["task_id"], *flags) == 0
    post, listing, get = seen
    assert post["method"] == "POST" and json.loads(post["body"])["params"] == {"note": "hi"}
    assert listing["path"] == "/tasks?status=QUEUED&limit=5"

    for request in seen:
        headers = request["headers"]
        lowered = {k.lower(): v for k, v in headers.items()}
        auth = lowered["authorization"]
        assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={KEY_ID}/20260304/{REGION}/lambda/aws4_request")
        assert lowered["x-amz-date"] == "20260304T050607Z"
        # the body hash is sent, and signed: function URLs need it for a request with a body
        assert lowered["x-amz-content-sha256"] == hashlib.sha256(request["body"]).hexdigest()
        signed = auth.split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";")
        assert {"host", "x-amz-date", "x-amz-content-sha256"} <= set(signed)
        assert "bearer" not in auth.lower()
        assert resign(request["method"], url + request["path"], headers, request["body"]) == auth

    tampered = post["body"].replace(b'"hi"', b'"ho"')
    assert resign("POST", url + post["path"], post["headers"], tampered) != lowered_auth(post)
    assert resign("GET", url + "/tasks?status=RUNNING&limit=5", listing["headers"], b"") != lowered_auth(listing)


def lowered_auth(request: dict[str, Any]) -> str:
    return str({k.lower(): v for k, v in request["headers"].items()}["authorization"])


@pytest.mark.usefixtures("fixed_identity")
def test_function_urls_are_signed_for_their_own_region_and_tokens_are_never_sent(
    recorder: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.client import lambda_url_region

    assert lambda_url_region("https://abcdefghij0123.lambda-url.ap-south-1.on.aws/") == "ap-south-1"
    assert lambda_url_region("https://example.com/") is None
    url, seen = recorder
    monkeypatch.setenv("ORCHESTRATOR_AUTH", "iam")
    monkeypatch.setenv("ORCHESTRATOR_TOKEN", "must-not-travel")
    monkeypatch.setenv("AWS_REGION", REGION)
    assert run_cli("status", TASK["task_id"], "--url", url) == 0  # mode and region from the environment
    [request] = seen
    assert "must-not-travel" not in json.dumps(request["headers"])
    assert resign("GET", url + request["path"], request["headers"], b"") == lowered_auth(request)


def test_iam_mode_without_credentials_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, recorder: tuple[str, list[dict[str, Any]]]
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance metadata lookup from a test
    monkeypatch.setenv("GPUQ_CONFIG", str(tmp_path / "gpuq.toml"))
    url, seen = recorder
    err = io.StringIO()
    code = cli.main(["status", TASK["task_id"], "--url", url, "--auth", "iam", "--region", REGION], err=err)
    assert code == 2 and "no AWS credentials" in err.getvalue() and len(err.getvalue().splitlines()) == 1
    assert seen == []
