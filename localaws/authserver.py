"""`python -m localaws.authserver`: a moto server on 127.0.0.1 that enforces IAM, with resource-level checks.

Resources, identity-policy conditions and permissions boundaries are evaluated as `localaws.enforce` models them (its
docstring says exactly what is and is not modelled).

Its own process, because moto reads INITIAL_NO_AUTH_ACTION_COUNT from the environment when it is imported and
keeps the request count in class state, and because `localaws.enforce` patches moto's response classes: neither
may leak into the session moto server the other tests share.

It prints one JSON line `{"port": N}` once it listens (port 0 = the OS picks a free one, so there is no race over
a port chosen in advance), and it stops when its stdin reaches EOF (the parent closed it, or died), on SIGTERM, or
after --max-seconds, whichever comes first: it can never outlive the tests that started it by more than that.

The first --no-auth-count requests are let through unauthenticated (moto's INITIAL_NO_AUTH_ACTION_COUNT), enough to
create an admin user and its access key; every later request must be signed by a known key and allowed by its
policies. `POST /moto-api/reset-auth` (moto's own) sets the count again after a `/moto-api/reset`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
ADMIN_POLICY = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
BOOTSTRAP_REQUESTS = 3  # CreateUser, PutUserPolicy, CreateAccessKey: exactly what `bootstrap_admin` sends
Keys = dict[str, str]  # {"AWS_ACCESS_KEY_ID": ..., "AWS_SECRET_ACCESS_KEY": ...}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument(
        "--no-auth-count", type=int, default=BOOTSTRAP_REQUESTS, help="requests let through before enforcing"
    )
    parser.add_argument("--max-seconds", type=float, default=600.0, help="exit after this long regardless")
    args = parser.parse_args(argv)

    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = str(args.no_auth_count)  # read by moto.settings at import
    from moto.server import ThreadedMotoServer

    from localaws import autoscaling, dynamodb_atomic, enforce, streams

    enforce.install()
    autoscaling.install()  # the Auto Scaling model (warm pool, hooks) in IAM-enforcing servers too
    streams.install()  # and no event source mapping delivered by moto itself
    dynamodb_atomic.install()  # and DynamoDB requests applied one at a time
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    done = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        done.set()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at EOF
        done.set()

    signal.signal(signal.SIGTERM, on_term)
    threading.Thread(target=watch_stdin, daemon=True).start()
    print(json.dumps({"port": server.get_host_and_port()[1]}), flush=True)
    try:
        with autoscaling.ticking():
            done.wait(args.max_seconds)
    finally:
        server.stop()
    return 0


# -- the parent's side ------------------------------------------------------------------------------------------
def _first_line(stream: IO[str], timeout_s: float) -> str:
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            raise TimeoutError(f"the enforcing moto server did not report its port within {timeout_s}s")
    return stream.readline()


@contextmanager
def running(
    *,
    no_auth_count: int = BOOTSTRAP_REQUESTS,
    max_seconds: float = 300.0,
    start_timeout_s: float = 60.0,
    log: TextIO | None = None,
    lenient_purge: bool = True,
) -> Iterator[str]:
    """Start `python -m localaws.authserver` and yield its endpoint; stop it (EOF on stdin, then kill) on exit.

    `lenient_purge` lifts moto's one-purge-a-minute rule in that process, so tests can empty the queues between
    cases; no runtime code purges a queue. `log` receives the server's stderr (default: discarded)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if lenient_purge:
        env["MOTO_SQS_ENFORCE_STRICT_QUEUE_PURGE_BEHAVIOUR"] = "false"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localaws.authserver",
            "--no-auth-count",
            str(no_auth_count),
            "--max-seconds",
            str(max_seconds),
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log if log is not None else subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = _first_line(proc.stdout, start_timeout_s)
        if not line:
            raise RuntimeError(f"the enforcing moto server exited with {proc.wait(5)} before listening")
        yield f"http://127.0.0.1:{json.loads(line)['port']}"
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _iam(endpoint: str, region: str, keys: Keys) -> Any:
    import boto3

    return boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
    )


def _keys(iam: Any, user: str) -> Keys:
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def bootstrap_admin(endpoint: str, region: str, user: str = "admin") -> Keys:
    """The server's first BOOTSTRAP_REQUESTS requests (not yet checked): a user allowed everything, and its key."""
    iam = _iam(endpoint, region, {"AWS_ACCESS_KEY_ID": "bootstrap", "AWS_SECRET_ACCESS_KEY": "bootstrap"})
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="admin", PolicyDocument=ADMIN_POLICY)
    return _keys(iam, user)


def user_like_role(iam: Any, role: str, user: str | None = None) -> Keys:
    """An IAM user carrying exactly `role`'s policies, read back from IAM (what the harness created from the
    synthesized JSON): its inline documents copied, its managed policies attached. Returns the user's key.

    A user rather than sts:AssumeRole, because our roles trust only AWS services (lambda, ec2, ecs-tasks): real IAM
    refuses a user that assumes them, and moto 5.2.5 answers 500 (its trust check knows only "AWS" principals), so
    no session of the role is available to a test. The user's policies are the role's, so IAM decides the same."""
    user = user or f"{role}-as-user"
    iam.create_user(UserName=user)
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        doc = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]  # botocore decodes it
        text = doc if isinstance(doc, str) else json.dumps(doc)
        iam.put_user_policy(UserName=user, PolicyName=name, PolicyDocument=text)
    for attached in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
        iam.attach_user_policy(UserName=user, PolicyArn=attached["PolicyArn"])
    return _keys(iam, user)


if __name__ == "__main__":
    sys.exit(main())
