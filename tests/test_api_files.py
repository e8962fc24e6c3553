"""Files in and out against moto's S3: presigned uploads (posted with httpx, as the CLI does), the key fed to a
`digest` task, result listings whose presigned URLs really download, log tails, the type list; and in IAM mode,
that uploads land under the caller's own prefix and nobody can name someone else's input."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from botocore.config import Config
from mangum import Mangum

from core.store import TaskStore
from core.task_types import load_registry
from core.tasks import TaskStatus
from localaws.lambdas import LocalController
from orchestrator.app import create_app
from orchestrator.files import safe_name
from orchestrator.identity import Caller
from orchestrator.server import serve_in_thread
from orchestrator.settings import Clients, Settings
from tests.test_orchestrator_api import ALICE, BOB, CAROL, invoke, make_iam_app

TOKEN = "files-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DIGEST = load_registry().get("digest")


def s3_client(aws: Any) -> Any:
    return aws.client("s3", config=Config(signature_version="s3v4"))


def make_app(aws: Any, controller: LocalController, *, s3: bool = True, **env: str) -> Any:
    settings = Settings.from_env({**aws.env(), **controller.env(), "ORCHESTRATOR_TOKEN": TOKEN, **env})
    table = aws.resource("dynamodb").Table(settings.table_name)
    clients = Clients(
        sqs=aws.client("sqs"),
        ec2=aws.client("ec2"),
        lambda_=controller.client,
        table=table,
        s3=s3_client(aws) if s3 else None,
    )
    return create_app(settings, clients)


@pytest.fixture
def api(local_aws: Any, controller: LocalController) -> Iterator[httpx.Client]:
    with (
        serve_in_thread(make_app(local_aws, controller, LOG_TAIL_BYTES="1024", UPLOAD_MAX_BYTES="1000000")) as url,
        httpx.Client(base_url=url, timeout=10, headers=AUTH) as client,
    ):
        yield client


def store(aws: Any) -> TaskStore:
    return TaskStore(aws.resource("dynamodb").Table(aws.table_name))


def post_file(grant: dict[str, Any], content: bytes, name: str = "data.bin") -> httpx.Response:
    """What `gpuq` does with a grant: the form's fields, then the file as the last field."""
    return httpx.post(grant["url"], data=grant["fields"], files={"file": (name, content)}, timeout=10)


def test_a_presigned_upload_lands_in_s3_and_its_key_is_a_valid_digest_input(api: httpx.Client, local_aws: Any) -> None:
    content = b"one\ntwo\nthree\n"
    resp = api.post("/uploads", json={"name": "my data (v2).txt", "bytes": len(content)})
    assert resp.status_code == 200, resp.text
    grant = resp.json()
    assert re.fullmatch(r"inputs/local/[0-9A-HJKMNP-TV-Z]{26}/my_data__v2_\.txt", grant["key"]), grant["key"]
    assert grant["expires_in"] == 3600 and grant["max_bytes"] == len(content)
    policy = json.loads(base64.b64decode(grant["fields"]["policy"]))
    assert ["content-length-range", 0, len(content)] in policy["conditions"]
    assert {"key": grant["key"]} in policy["conditions"] and {"bucket": local_aws.bucket} in policy["conditions"]

    uploaded = post_file(grant, content)
    assert uploaded.status_code == 204, uploaded.text
    got = s3_client(local_aws).get_object(Bucket=local_aws.bucket, Key=grant["key"])["Body"].read()
    assert got == content

    # the key is exactly what the shipped digest type's s3_input param accepts
    assert DIGEST.validate({"input": grant["key"]}) == {"input": grant["key"]}
    task = api.post("/tasks", json={"type": "digest", "params": {"input": grant["key"]}})
    assert task.status_code == 202, task.text
    stored = store(local_aws).get(task.json()["task_id"])
    assert stored is not None and stored.params == {"input": grant["key"]} and stored.submitted_by == "local"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\report.csv", "report.csv"),
        ("a b..c.txt", "a_b.c.txt"),
        ("...hidden", "hidden"),
        ("--opt", "opt"),
        ("..", "input"),
        ("snow\u2603.json", "snow_.json"),
        ("x" * 300 + ".tar.gz", "x" * 197 + ".gz"),
    ],
)
def test_upload_names_become_one_safe_key_segment(raw: str, expected: str) -> None:
    assert safe_name(raw) == expected
    key = f"{Caller(ALICE).input_prefix}01ARZ3NDEKTSV4RRFFQ69G5FAV/{safe_name(raw)}"
    assert DIGEST.validate({"input": key}) == {"input": key}  # every such key fits the digest pattern and length


def test_caller_slugs_are_safe_distinct_and_short() -> None:
    slugs = {arn: Caller(arn).slug for arn in (ALICE, BOB, CAROL, ALICE.upper(), "arn:aws:iam::1:user/a..b")}
    assert len(set(slugs.values())) == len(slugs)
    for slug in slugs.values():
        assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", slug) and ".." not in slug and not slug.startswith((".", "-"))
    assert slugs[ALICE].startswith("assumed-role-Dev-alice-example.com-")
    assert Caller("local").slug == "local"


def test_upload_requests_are_checked(api: httpx.Client) -> None:
    too_big = api.post("/uploads", json={"name": "big.bin", "bytes": 1_000_001})
    assert too_big.status_code == 422 and too_big.json()["error"] == "upload_too_large"
    for body in (
        {"name": "", "bytes": 1},
        {"name": "a", "bytes": -1},
        {"name": "a"},
        {"name": "a", "bytes": 1, "x": 1},
    ):
        assert api.post("/uploads", json=body).status_code == 422, body
    assert (
        api.post("/uploads", json={"name": "a", "bytes": 1}, headers={"Authorization": "Bearer no"}).status_code == 401
    )


def finished_with_outputs(aws: Any, outputs: dict[str, bytes], status: TaskStatus = TaskStatus.SUCCEEDED) -> str:
    """A task the adapter ran: its outputs kept under results/<id>/, then finished (result_uri only on success)."""
    tasks = store(aws)
    task_id = tasks.create(task_type="noop", params={}).task_id
    held = tasks.claim(task_id, worker="gpu-1", stale_after_ms=60_000).held
    s3 = s3_client(aws)
    for name, body in outputs.items():
        s3.put_object(Bucket=aws.bucket, Key=f"results/{task_id}/{name}", Body=body)
    uri = f"s3://{aws.bucket}/results/{task_id}/" if status is TaskStatus.SUCCEEDED else None
    tasks.finish(held, status, result_uri=uri, error=None if uri else "exit code 1")
    return task_id


def test_results_list_every_output_with_urls_that_download(api: httpx.Client, local_aws: Any) -> None:
    outputs = {"result.json": b'{"ok": true}', "plots/a b.png": bytes(range(256)) * 40, "stdout.txt": b"hi\n"}
    task_id = finished_with_outputs(local_aws, outputs)
    listing = api.get(f"/tasks/{task_id}/results")
    assert listing.status_code == 200, listing.text
    body = listing.json()
    assert body["status"] == "SUCCEEDED" and body["expires_in"] == 900 and body["truncated"] is False
    assert sorted(o["name"] for o in body["objects"]) == sorted(outputs)
    for obj in body["objects"]:
        assert obj["key"] == f"results/{task_id}/{obj['name']}" and obj["size"] == len(outputs[obj["name"]])
        fetched = httpx.get(obj["url"], timeout=10)  # presigned: no credentials needed
        assert fetched.status_code == 200 and fetched.content == outputs[obj["name"]], obj["name"]
        assert "X-Amz-Expires=900" in obj["url"]

    # a failed attempt keeps its logs but gets no result_uri: they are listed all the same
    failed = finished_with_outputs(local_aws, {"stderr.txt": b"boom\n"}, TaskStatus.FAILED)
    assert [o["name"] for o in api.get(f"/tasks/{failed}/results").json()["objects"]] == ["stderr.txt"]
    queued = api.post("/tasks", json={"type": "noop"}).json()["task_id"]
    empty = api.get(f"/tasks/{queued}/results").json()
    assert empty["objects"] == [] and empty["result_uri"] is None
    assert api.get("/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV/results").status_code == 404

    # a result_uri outside this bucket's layout is never listed from
    tasks = store(local_aws)
    other = tasks.create(task_type="noop", params={}).task_id
    held = tasks.claim(other, worker="gpu-1", stale_after_ms=60_000).held
    tasks.finish(held, TaskStatus.SUCCEEDED, result_uri=f"s3://{local_aws.bucket}/results/{task_id}/")
    assert api.get(f"/tasks/{other}/results").status_code == 409


def test_logs_return_the_bounded_end_of_each_stream(api: httpx.Client, local_aws: Any) -> None:
    # 1024-byte tail (the fixture's LOG_TAIL_BYTES); the cut falls inside a 3-byte character
    stderr = ("x" * 2000 + "\u2603" * 400).encode()
    task_id = finished_with_outputs(local_aws, {"stdout.txt": b"small\n", "stderr.txt": stderr})
    logs = api.get(f"/tasks/{task_id}/logs")
    assert logs.status_code == 200, logs.text
    body = logs.json()
    assert body["stdout"] == {"text": "small\n", "size": 6, "truncated": False, "present": True}
    err = body["stderr"]
    assert err["truncated"] is True and err["size"] == len(stderr)
    assert err["text"] == "\u2603" * (1024 // 3) and "\ufffd" not in err["text"]  # the partial character dropped
    queued = api.post("/tasks", json={"type": "noop"}).json()["task_id"]
    none = api.get(f"/tasks/{queued}/logs").json()
    assert none["stdout"]["present"] is False and none["stderr"]["text"] == ""


def test_types_describe_params_but_not_what_runs(api: httpx.Client) -> None:
    resp = api.get("/types")
    assert resp.status_code == 200
    types = {t["name"]: t for t in resp.json()["types"]}
    assert {"matmul", "digest", "sleep", "noop", "infer"} <= set(types)
    [digest_input] = types["digest"]["params"]
    assert digest_input["s3_input"] is True and digest_input["required"] is True and digest_input["pattern"]
    assert {p["name"] for p in types["matmul"]["params"]} == {"size", "repeat"}
    text = resp.text
    assert "argv" not in text and "workloads" not in text and "127.0.0.1" not in text  # internals stay inside
    assert api.get("/types", headers={"Authorization": "Bearer no"}).status_code == 401


def test_file_endpoints_answer_503_without_a_bucket_or_s3_client(local_aws: Any, controller: LocalController) -> None:
    for app in (make_app(local_aws, controller, s3=False), make_app(local_aws, controller, ARTIFACTS_BUCKET="")):
        with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=10, headers=AUTH) as client:
            task_id = client.post("/tasks", json={"type": "noop"}).json()["task_id"]  # the rest still works
            for method, path, body in (
                ("POST", "/uploads", {"name": "a", "bytes": 1}),
                ("GET", f"/tasks/{task_id}/results", None),
                ("GET", f"/tasks/{task_id}/logs", None),
            ):
                resp = client.request(method, path, json=body)
                assert resp.status_code == 503 and resp.json()["error"] == "files_unavailable", path


def test_iam_uploads_go_under_the_callers_prefix_and_only_its_owner_may_use_one(
    local_aws: Any, controller: LocalController
) -> None:
    handler = Mangum(make_iam_app(local_aws, controller), lifespan="off")
    content = b"alice's data\n"
    status, grant = invoke(handler, "POST", "/uploads", arn=ALICE, body={"name": "d.txt", "bytes": len(content)})
    assert status == 200, grant
    assert grant["key"].startswith(f"inputs/{Caller(ALICE).slug}/") and grant["key"].endswith("/d.txt")
    assert post_file(grant, content).status_code == 204
    digest = {"type": "digest", "params": {"input": grant["key"]}}
    status, refused = invoke(handler, "POST", "/tasks", arn=BOB, body=digest)
    assert status == 422 and "not one of your uploads" in refused["message"]
    assert invoke(handler, "POST", "/tasks", arn=ALICE, body=digest)[0] == 202
    assert invoke(handler, "POST", "/tasks", arn=CAROL, body=digest)[0] == 202  # an admin may name any input

    task_id = finished_with_outputs(local_aws, {"result.json": hashlib.sha256(content).hexdigest().encode()})
    assert invoke(handler, "GET", f"/tasks/{task_id}/results", arn=CAROL)[0] == 200
    assert invoke(handler, "GET", f"/tasks/{task_id}/results", arn=ALICE)[0] == 404  # no owner: admins only
