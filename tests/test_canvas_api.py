"""The canvas API over HTTP, against a real PostgreSQL (one server per session, a database per module), the local
AWS in moto and the real orchestrator app, each on 127.0.0.1 (tests/test_canvas_support.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from PIL import Image

from canvas.reconcile import run_once
from tests.test_canvas_support import (
    Stack,
    auth_server,
    build_deps,
    canvas_pg,
    canvas_stack,
    jpeg_with_gps,
    png_bytes,
    token,
)

__all__ = ["auth_server", "canvas_pg", "canvas_stack"]  # fixtures, imported for this module


def client(stack: Stack, user: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token(stack.auth, user)}"} if user else {}
    return httpx.Client(base_url=stack.canvas_url, headers=headers, timeout=20)


def upload(api: httpx.Client, data: bytes, name: str = "pic.png") -> httpx.Response:
    return api.post("/images", files={"file": (name, data, "application/octet-stream")})


def objects(stack: Stack, prefix: str = "inputs/canvas/") -> list[str]:
    s3 = stack.aws.client("s3")
    return [o["Key"] for o in s3.list_objects_v2(Bucket=stack.aws.bucket, Prefix=prefix).get("Contents", [])]


def rows(stack: Stack, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(stack.database_url) as conn:
        return conn.execute(sql, args).fetchall()


def test_upload_get_download_and_delete(canvas_stack: Stack) -> None:
    user = str(uuid.uuid4())
    with client(canvas_stack, user) as api:
        made = upload(api, jpeg_with_gps(), "holiday photo.jpg")
        assert made.status_code == 201, made.text
        image = made.json()
        assert (image["content_type"], image["width"], image["height"]) == ("image/jpeg", 80, 40)
        assert image["name"] == "holiday photo.jpg"
        got = api.get(f"/images/{image['id']}").json()
        body = httpx.get(got["url"], timeout=10).content
        assert len(body) == image["bytes"] and b"CameraMaker" not in body
        assert hashlib.sha256(body).hexdigest() == image["sha256"]  # computed as the upload streamed in
        assert httpx.get(image["url"], timeout=10).content == body  # the upload answer carries a working URL too
        with Image.open(io.BytesIO(body)) as stored:
            assert not stored.getexif().get_ifd(0x8825)  # no GPS in what was stored
        (key,) = [k for k in objects(canvas_stack) if image["id"] in k]
        assert key == f"inputs/canvas/{user}/{image['id']}.jpg"

        assert api.delete(f"/images/{image['id']}").status_code == 204
        assert api.get(f"/images/{image['id']}").status_code == 404
        assert key not in objects(canvas_stack)
        ((state, deleted_at),) = rows(
            canvas_stack, "select state, deleted_at from canvas_images where id = %s", image["id"]
        )
        assert state == "deleted" and deleted_at is not None
        assert api.delete(f"/images/{image['id']}").status_code == 404


def test_an_uploads_working_folder_is_gone_by_the_answer_stored_or_refused(
    canvas_stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the service runs in this process (a thread)
    with client(canvas_stack, str(uuid.uuid4())) as api:
        assert upload(api, b"plain text, not an image", "x.png").status_code == 415
        assert list(tmp_path.iterdir()) == []
        assert upload(api, png_bytes()).status_code == 201
        assert list(tmp_path.iterdir()) == []


def test_listing_is_the_callers_own_newest_first_and_paged(canvas_stack: Stack) -> None:
    me, other = str(uuid.uuid4()), str(uuid.uuid4())
    with client(canvas_stack, me) as api, client(canvas_stack, other) as them:
        mine = [upload(api, png_bytes(10 + i, 10)).json()["id"] for i in range(5)]
        theirs = upload(them, png_bytes()).json()["id"]
        seen, cursor = [], None
        while True:
            page = api.get("/images", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
            assert len(page["items"]) <= 2
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == mine[::-1]
        assert api.get(f"/images/{theirs}").status_code == 404  # another user's image does not exist for me
        assert api.delete(f"/images/{theirs}").status_code == 404
        assert (
            api.post(f"/images/{theirs}/tasks", json={"type": "thumbnail", "params": {"size": 32}}).status_code == 404
        )
        assert api.get("/images/not-a-uuid").status_code == 404
        assert api.get("/images", params={"cursor": "!!"}).status_code == 400


@pytest.mark.parametrize("how", ["none", "garbage", "expired", "other_project"])
def test_requests_without_a_valid_token_are_401(canvas_stack: Stack, how: str) -> None:
    user = str(uuid.uuid4())
    header = {
        "none": {},
        "garbage": {"Authorization": "Bearer not.a.jwt"},
        "expired": {"Authorization": f"Bearer {token(canvas_stack.auth, user, exp_in=-300)}"},
        "other_project": {
            "Authorization": f"Bearer {token(canvas_stack.auth, user, iss='https://x.supabase.co/auth/v1')}"
        },
    }[how]
    with httpx.Client(base_url=canvas_stack.canvas_url, headers=header, timeout=10) as api:
        answer = api.get("/images")
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
        assert upload(api, png_bytes()).status_code == 401
    assert rows(canvas_stack, "select count(*) from canvas_images where owner = %s", user) == [(0,)]


def test_a_token_from_a_rotated_key_is_accepted_after_one_refetch(canvas_stack: Stack) -> None:
    """The event loop cannot fetch (canvas.app.user_of): a kid the cached set lacks is checked on a worker thread."""
    user = str(uuid.uuid4())
    with client(canvas_stack, user) as api:
        assert api.get("/images").status_code == 200
    canvas_stack.auth.rotate()
    with client(canvas_stack, user) as api:
        assert api.get("/images").status_code == 200
        assert upload(api, png_bytes()).status_code == 201


def test_refusals_leave_nothing_behind(canvas_stack: Stack) -> None:
    user = str(uuid.uuid4())
    with client(canvas_stack, user) as api:
        too_large = upload(api, b"\x89PNG\r\n\x1a\n" + b"\x00" * 2_100_000)
        assert too_large.status_code == 413
        assert upload(api, b"GIF89a" + b"\x00" * 100, "x.gif").status_code == 415
        assert upload(api, b"%PDF-1.4 hello", "x.png").status_code == 415
        truncated = png_bytes(300, 300, color="purple")
        assert upload(api, truncated[: len(truncated) // 2]).status_code == 422
        assert upload(api, png_bytes(3000, 2000)).status_code == 422  # 6 Mpx, over this stack's 4 Mpx
        assert api.post("/images", content=b"raw", headers={"Content-Type": "image/png"}).status_code == 415
        assert api.post("/images", files={"other": ("a.png", png_bytes())}).status_code == 422
    assert rows(canvas_stack, "select count(*) from canvas_images where owner = %s", user) == [(0,)]
    assert not [k for k in objects(canvas_stack) if user in k]


def test_direct_upload_is_checked_and_stripped_on_confirm(canvas_stack: Stack) -> None:
    user = str(uuid.uuid4())
    with client(canvas_stack, user) as api:
        data = jpeg_with_gps(120, 60)
        grant = api.post("/images/uploads", json={"name": "big.jpg", "bytes": len(data), "content_type": "image/jpeg"})
        assert grant.status_code == 201, grant.text
        form = grant.json()
        assert api.post(form["confirm"]).status_code == 409  # nothing uploaded yet
        sent = httpx.post(form["url"], data=form["fields"], files={"file": ("big.jpg", data)}, timeout=10)
        assert sent.status_code in (200, 204), sent.text
        assert api.get("/images").json()["items"] == []  # not listed before it is confirmed
        confirmed = api.post(form["confirm"])
        assert confirmed.status_code == 200, confirmed.text
        image = confirmed.json()
        assert (image["width"], image["height"]) == (120, 60)
        assert b"CameraMaker" not in httpx.get(image["url"], timeout=10).content
        assert api.post(form["confirm"]).json()["id"] == image["id"]  # a repeat answers the same

        # Announced as a PNG, sent as something else: refused on confirm, object and row removed.
        grant = api.post("/images/uploads", json={"name": "x.png", "bytes": 100, "content_type": "image/png"}).json()
        httpx.post(grant["url"], data=grant["fields"], files={"file": ("x.png", b"plain text, not a png")}, timeout=10)
        assert api.post(grant["confirm"]).status_code == 415
        assert not [k for k in objects(canvas_stack) if grant["image_id"] in k]
        assert rows(canvas_stack, "select count(*) from canvas_images where id = %s", grant["image_id"]) == [(0,)]

        too_big = {"name": "h.png", "bytes": 10**9, "content_type": "image/png"}
        assert api.post("/images/uploads", json=too_big).status_code == 413
        gif = {"name": "h.gif", "bytes": 10, "content_type": "image/gif"}
        assert api.post("/images/uploads", json=gif).status_code == 415


def test_a_failed_s3_write_leaves_no_row(canvas_stack: Stack) -> None:
    from canvas.app import create_app
    from orchestrator.server import serve_in_thread

    deps = build_deps(
        canvas_stack.aws,
        canvas_stack.database_url,
        canvas_stack.auth,
        canvas_stack.orchestrator_url,
        bucket="no-such-bucket",
    )
    user = str(uuid.uuid4())
    try:
        with serve_in_thread(create_app(deps)) as url:
            headers = {"Authorization": f"Bearer {token(canvas_stack.auth, user)}"}
            with httpx.Client(base_url=url, headers=headers, timeout=20) as api:
                failed = upload(api, png_bytes())
                assert failed.status_code == 503 and "nothing was kept" in failed.json()["message"]
    finally:
        deps.images.repo.pool.close()
    assert rows(canvas_stack, "select count(*) from canvas_images where owner = %s", user) == [(0,)]


def test_reconcile_removes_orphans_of_every_kind(canvas_stack: Stack) -> None:
    deps = canvas_stack.deps
    s3 = canvas_stack.aws.client("s3")
    bucket = canvas_stack.aws.bucket
    user = str(uuid.uuid4())
    with client(canvas_stack, user) as api:
        kept = upload(api, png_bytes()).json()
        abandoned = api.post("/images/uploads", json={"name": "a.png", "bytes": 999, "content_type": "image/png"})
        abandoned_id = abandoned.json()["image_id"]
        doomed = upload(api, png_bytes(20, 20)).json()
    (abandoned_key,) = rows(canvas_stack, "select s3_key from canvas_images where id = %s", abandoned_id)[0]
    s3.put_object(Bucket=bucket, Key=abandoned_key, Body=png_bytes())  # sent, never confirmed
    stray = f"inputs/canvas/{user}/{uuid.uuid4()}.png"  # an object whose row never got written
    s3.put_object(Bucket=bucket, Key=stray, Body=b"x")
    # a delete that stopped after hiding the row
    rows_sql = "update canvas_images set state = 'deleting', deleted_at = now() where id = %s returning id"
    rows(canvas_stack, rows_sql, doomed["id"])

    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    report = run_once(deps.images.repo, deps.images.storage, None, pending_ttl_s=3600, now=later)
    assert (report.abandoned, report.deletes_finished) == (1, 1)
    assert report.orphan_objects >= 1
    left = objects(canvas_stack, f"inputs/canvas/{user}/")
    assert left == [f"inputs/canvas/{user}/{kept['id']}.png"]
    states = dict(rows(canvas_stack, "select id::text, state from canvas_images where owner = %s", user))
    assert states == {kept["id"]: "ready", doomed["id"]: "deleted"}
    again = run_once(deps.images.repo, deps.images.storage, None, pending_ttl_s=3600, now=later)
    assert (again.abandoned, again.deletes_finished, again.orphan_objects) == (0, 0, 0)


def test_row_level_security_shows_the_front_end_only_its_users_rows(canvas_stack: Stack) -> None:
    """What Supabase's data API does per request: switch to `authenticated` with the token's claims set."""
    me, other = str(uuid.uuid4()), str(uuid.uuid4())
    with client(canvas_stack, me) as api, client(canvas_stack, other) as them:
        mine = upload(api, png_bytes()).json()["id"]
        upload(them, png_bytes()).json()
    with psycopg.connect(canvas_stack.database_url) as conn:
        conn.execute("set local role authenticated")
        conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps({"sub": me}),))
        visible = conn.execute("select id::text, owner::text from canvas_images").fetchall()
        assert visible == [(mine, me)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("delete from canvas_images")
    with psycopg.connect(canvas_stack.database_url) as conn:
        conn.execute("set local role anon")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from canvas_images")


def test_the_schema_is_versioned_and_a_changed_migration_stops_the_start(canvas_stack: Stack, tmp_path: Any) -> None:
    from canvas.db import MIGRATIONS, MigrationError, migrate

    applied = rows(canvas_stack, "select version from canvas_schema_migrations order by version")
    assert [v for (v,) in applied] == sorted(p.stem for p in MIGRATIONS.glob("*.sql"))
    changed = tmp_path / "migrations"
    changed.mkdir()
    for path in MIGRATIONS.glob("*.sql"):
        (changed / path.name).write_text(path.read_text() + ("\n-- edited\n" if path.name.startswith("0002") else ""))
    with psycopg.connect(canvas_stack.database_url) as conn, pytest.raises(MigrationError, match="0002"):
        migrate(conn, changed)


def test_a_failing_migration_leaves_nothing_on_the_services_autocommit_connections(
    canvas_stack: Stack, tmp_path: Any
) -> None:
    """The pool's connections autocommit (canvas.db.open_pool); each migration is still one transaction."""
    import shutil

    from canvas.db import MIGRATIONS, MigrationError, migrate, open_pool

    broken = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, broken)
    (broken / "9999_broken.sql").write_text("create table canvas_probe_half (x int);\nselect 1 / 0;\n")
    pool = open_pool(canvas_stack.database_url, max_size=1)
    try:
        with pool.connection() as conn:
            assert conn.autocommit
            with pytest.raises(MigrationError, match="9999_broken"):
                migrate(conn, broken)
    finally:
        pool.close()
    assert rows(canvas_stack, "select to_regclass('canvas_probe_half')") == [(None,)]
    assert rows(canvas_stack, "select count(*) from canvas_schema_migrations where version = '9999_broken'") == [(0,)]
