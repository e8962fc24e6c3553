"""Hostile or odd input answers 4xx with a message (never a 5xx), AWS failures on reads answer 503, the registry
refuses its traps at load, and /docs works with no network: all against the app under uvicorn and moto."""

from __future__ import annotations

import base64
import http.client
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from core.store import TaskStore
from core.task_types import InvalidParams, ParamSpec, RegistryError, load_registry
from core.tasks import TaskStatus
from localaws.lambdas import LocalController
from orchestrator.http_guards import DOCS_ASSETS
from orchestrator.service import ApiError, decode_cursor
from tests.test_orchestrator_api import AUTH, make_app, running

ULID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


def cursor_of(raw_json: str) -> str:
    return base64.urlsafe_b64encode(raw_json.encode()).decode().rstrip("=")


def key_json(created_at: str, status: str = "QUEUED") -> str:
    return f'{{"task_id": "{ULID}", "status": "{status}", "created_at": {created_at}}}'


OUT_OF_RANGE_CREATED_AT = ["1e400", "-1e400", "1e38", "-1e39", str(10**38), str(-(10**39)), "9" * 60]


def test_cursor_with_out_of_range_created_at_or_deep_nesting_is_400(
    local_aws: Any, controller: LocalController
) -> None:
    with running(make_app(local_aws, controller), headers=AUTH) as api:
        for created_at in OUT_OF_RANGE_CREATED_AT:
            resp = api.get("/tasks", params={"status": "QUEUED", "cursor": cursor_of(key_json(created_at))})
            assert resp.status_code == 400, (created_at, resp.text)
            assert resp.json()["error"] == "bad_cursor" and resp.json()["message"], created_at
        # as deep as fits in the cursor's 2048 characters: past the JSON parser's recursion limit
        deep = api.get("/tasks", params={"status": "QUEUED", "cursor": cursor_of("[" * 1536)})
        assert deep.status_code == 400 and deep.json()["error"] == "bad_cursor", deep.text
        # a cursor in range still works (the store answers an empty page)
        fine = api.get("/tasks", params={"status": "QUEUED", "cursor": cursor_of(key_json("1700000000000"))})
        assert fine.status_code == 200 and fine.json() == {"items": [], "next_cursor": None}


def test_decode_cursor_refuses_deep_nesting_and_huge_numbers_directly() -> None:
    for raw in ("[" * 100_000 + "]" * 100_000, key_json("1" + "0" * 5000), key_json("-1e39")):
        with pytest.raises(ApiError) as err:
            decode_cursor(cursor_of(raw), TaskStatus.QUEUED)
        assert err.value.status == 400 and err.value.code == "bad_cursor"
    assert decode_cursor(cursor_of(key_json("1700000000000")), TaskStatus.QUEUED)["created_at"] == 1700000000000


BAD_PARAMS: list[tuple[dict[str, Any], str]] = [
    ({"type": "sleep", "params": {"seconds": 1e-300, "exit_code": 0}}, "seconds: "),
    ({"type": "sleep", "params": {"seconds": 5e-324, "exit_code": 0}}, "seconds: "),
    ({"type": "infer", "params": {"prompt": "hi", "temperature": 1e-131}}, "temperature: "),
    ({"type": "infer", "params": {"prompt": "\ud800"}}, "prompt: "),
    ({"type": "infer", "params": {"prompt": "ok \udfff then"}}, "prompt: "),
    ({"type": "noop", "params": {"\ud800": 1}}, "unexpected param"),
    ({"type": "noop", "\ud800": 1}, "body"),
]


def test_numbers_dynamodb_cannot_store_and_lone_surrogates_are_422(local_aws: Any, controller: LocalController) -> None:
    with running(make_app(local_aws, controller), headers=AUTH) as api:
        for body, needle in BAD_PARAMS:
            # ensure_ascii: the surrogate travels as a valid \ud800 escape; the service must refuse it itself
            raw = json.dumps(body, ensure_ascii=True).encode()
            resp = api.post("/tasks", content=raw, headers={"Content-Type": "application/json"})
            assert resp.status_code == 422, (body, resp.status_code, resp.text)
            assert needle in resp.json()["message"], (body, resp.text)
        tiny = api.post("/tasks", json={"type": "sleep", "params": {"seconds": 1e-130, "exit_code": 0}})
        assert tiny.status_code == 202, tiny.text  # the smallest magnitude DynamoDB stores
    table = local_aws.resource("dynamodb").Table(local_aws.table_name)
    assert [i["params"]["seconds"] for i in table.scan()["Items"] if "status" in i] == [Decimal("1E-130")]


def test_reads_list_and_cancel_answer_503_when_the_table_is_unreachable(
    local_aws: Any, controller: LocalController
) -> None:
    with running(make_app(local_aws, controller, TASK_TABLE_NAME="no-such-table"), headers=AUTH) as api:
        cursor = cursor_of(key_json("1700000000000"))
        for method, path, params in (
            ("GET", f"/tasks/{ULID}", {}),
            ("GET", "/tasks", {"status": "QUEUED"}),
            ("GET", "/tasks", {"status": "QUEUED", "cursor": cursor}),
            ("POST", f"/tasks/{ULID}/cancel", {}),
        ):
            resp = api.request(method, path, params=params)
            assert resp.status_code == 503, (path, resp.text)
            assert resp.json()["error"] == "store_unavailable" and resp.json()["message"], path
        assert api.get("/tasks/not-an-id").status_code == 404  # never reaches the store


def test_livez_is_public_and_touches_no_aws(local_aws: Any, controller: LocalController) -> None:
    broken = {"TASK_TABLE_NAME": "no-such-table", "TASK_QUEUE_URL": local_aws.queue_url + "-missing"}
    with running(make_app(local_aws, controller, **broken)) as anonymous:
        resp = anonymous.get("/livez")
        assert resp.status_code == 200 and resp.json() == {"ok": True}
        assert anonymous.get("/healthz").status_code == 401  # the deep check still needs the token


def test_docs_are_served_without_any_cdn_and_openapi_declares_bearer(
    local_aws: Any, controller: LocalController
) -> None:
    with running(make_app(local_aws, controller)) as anonymous:
        html = anonymous.get("/docs")
        assert html.status_code == 200
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
        assert urls, html.text
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), url  # same origin only
            asset = anonymous.get(url)
            assert asset.status_code == 200 and len(asset.content) > 100, url
        assert "SwaggerUIBundle" in anonymous.get(next(u for u in urls if u.endswith(".js"))).text
        assert "http://" not in html.text and "https://" not in html.text
        redoc = anonymous.get("/redoc")
        [redoc_js] = re.findall(r"""<script src=["']([^"']+)["']""", redoc.text)
        assert redoc_js.startswith("/") and anonymous.get(redoc_js).status_code == 200

        spec = anonymous.get("/openapi.json").json()
        schemes = spec["components"]["securitySchemes"]
        [(name, scheme)] = schemes.items()
        assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
        protected = [("/tasks", "post"), ("/tasks", "get"), ("/tasks/{task_id}", "get"), ("/healthz", "get")]
        for path, op in [*protected, ("/tasks/{task_id}/cancel", "post")]:
            assert spec["paths"][path][op]["security"] == [{name: []}], (path, op)
        assert "security" not in spec["paths"]["/livez"]["get"]

        # the open asset prefix never lets a dot segment reach a protected route (http.client sends it as is)
        host, port = anonymous.base_url.host, anonymous.base_url.port
        conn = http.client.HTTPConnection(host, port, timeout=10)
        for path in (f"{DOCS_ASSETS}/../tasks?status=QUEUED", f"{DOCS_ASSETS}/../healthz"):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 401, (path, resp.status)
        conn.close()


# --- the registry ---------------------------------------------------------------------------------------------


def write(tmp_path: Path, types: dict[str, Any]) -> Path:
    path = tmp_path / "types.json"
    path.write_text(json.dumps({"types": types}))
    return path


def command(argv: list[str], **params: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "command", "timeout_s": 1, "argv": argv, "params": params}


@pytest.mark.parametrize("builtin", ["python", "workloads"])
def test_a_param_named_like_a_builtin_is_refused(tmp_path: Path, builtin: str) -> None:
    spec = command(["{python}", "{workloads}/x.py"], **{builtin: {"type": "string", "required": True}})
    with pytest.raises(RegistryError, match=f"param {builtin!r}.*builtin"):
        load_registry(write(tmp_path, {"t": spec}))


def test_an_unknown_placeholder_inside_an_argv_item_names_its_position(tmp_path: Path) -> None:
    spec = command(["{python}", "{workloads}/x.py", "--out={nope}"])
    with pytest.raises(RegistryError) as err:
        load_registry(write(tmp_path, {"t": spec}))
    message = str(err.value)
    assert "'nope'" in message and "argv[2]" in message and "offset 6" in message


def test_unpatterned_strings_refuse_a_leading_dash_unless_allowed(tmp_path: Path) -> None:
    registry = load_registry(
        write(
            tmp_path,
            {
                "plain": command(["echo", "{v}"], v={"type": "string", "required": True}),
                "dashes": command(["echo", "{v}"], v={"type": "string", "required": True, "allow_leading_dash": True}),
                "patterned": command(["echo", "{v}"], v={"type": "string", "required": True, "pattern": "-?[a-z]+"}),
            },
        )
    )
    with pytest.raises(InvalidParams, match="v: .*-"):
        registry.validate("plain", {"v": "--output=/etc/x"})
    assert registry.validate("plain", {"v": "a-b"}) == {"v": "a-b"}
    assert registry.validate("dashes", {"v": "--output=/etc/x"}) == {"v": "--output=/etc/x"}
    assert registry.validate("patterned", {"v": "-abc"}) == {"v": "-abc"}  # the pattern decides
    with pytest.raises(RegistryError, match="allow_leading_dash"):
        load_registry(write(tmp_path, {"t": command(["echo"], v={"type": "string", "allow_leading_dash": "yes"})}))


def test_the_shipped_registry_still_loads_and_keeps_its_rules() -> None:
    registry = load_registry()
    with pytest.raises(InvalidParams):
        registry.validate("digest", {"input": "-inputs/x"})
    # an http type's params are JSON fields, never argv items: a prompt may start with a dash
    assert registry.validate("infer", {"prompt": "- a list item"}) == {"prompt": "- a list item"}


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        (ParamSpec("n", "number", True), 1e-300),
        (ParamSpec("n", "number", True), -5e-324),
        (ParamSpec("n", "number", True), 1e126),
        (ParamSpec("n", "number", True), -1e130),
        (ParamSpec("n", "integer", True), 10**126),
        (ParamSpec("n", "integer", True), 10**38 + 1),  # 39 significant digits
        (ParamSpec("n", "integer", True), 10**40),  # boto3 refuses to round, trailing zeros or not
        (ParamSpec("s", "string", True), "a\ud800b"),
    ],
)
def test_param_check_refuses_what_dynamodb_cannot_store(spec: ParamSpec, value: Any) -> None:
    assert spec.check(value)


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        (ParamSpec("n", "number", True), 0.0),
        (ParamSpec("n", "number", True), -0.0),
        (ParamSpec("n", "number", True), 1e-130),
        (ParamSpec("n", "number", True), 9.9e125),
        (ParamSpec("n", "number", True), 0.1),
        (ParamSpec("n", "integer", True), 10**37),
        (ParamSpec("n", "integer", True), -(10**38 - 1)),
        (ParamSpec("s", "string", True), "snow \u2603 and \U0001f600"),
    ],
)
def test_param_check_accepts_what_dynamodb_stores(spec: ParamSpec, value: Any) -> None:
    assert spec.check(value) is None


def test_stored_params_round_trip_at_the_edges(local_aws: Any) -> None:
    """The edge values the check accepts really are accepted by DynamoDB (through the store's own write)."""
    store = TaskStore(local_aws.resource("dynamodb").Table(local_aws.table_name))
    params = {"small": 1e-130, "big": 9.9e125, "int": 10**37, "text": "snow \u2603"}
    assert all(
        ParamSpec(k, "number" if isinstance(v, float) else "integer" if isinstance(v, int) else "string", True).check(v)
        is None
        for k, v in params.items()
    )
    task = store.create(task_type="noop", params=params)
    got = store.get(task.task_id)
    assert got is not None and got.params["int"] == 10**37 and got.params["text"] == "snow \u2603"
