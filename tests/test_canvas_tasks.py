"""GPU tasks on canvas images, end to end: the canvas submits through the real orchestrator app (bearer mode), a
real adapter process runs the `thumbnail` workload on the image's S3 key, and the canvas shows the state and the
result URLs. Plus the workload itself, with and without Pillow."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
from PIL import Image

from localaws.server import background
from tests._adapter_support import wait_for, worker_env
from tests.test_canvas_support import Stack, auth_server, canvas_pg, canvas_stack, jpeg_with_gps, png_bytes, token

__all__ = ["auth_server", "canvas_pg", "canvas_stack"]  # fixtures, imported for this module
REPO = Path(__file__).resolve().parents[1]
WORKLOAD = REPO / "adapter" / "workloads" / "thumbnail.py"


def client(stack: Stack, user: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token(stack.auth, user)}"}
    return httpx.Client(base_url=stack.canvas_url, headers=headers, timeout=20)


@contextmanager
def adapter(stack: Stack, work: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m adapter` on the module's queue, as the GPU host runs it; killed with its jobs afterwards."""
    env = {**worker_env(stack.aws, work / "adapter"), "PYTHONPATH": str(REPO)}
    with background([sys.executable, "-m", "adapter"], env=env, log_path=work / "adapter.log") as proc:
        yield proc


def test_a_thumbnail_task_runs_on_the_image_and_its_result_is_shown(canvas_stack: Stack, tmp_path: Path) -> None:
    user = str(uuid.uuid4())
    with client(canvas_stack, user) as api:
        image = api.post("/images", files={"file": ("p.jpg", jpeg_with_gps(200, 100, orientation=1))}).json()
        submitted = api.post(f"/images/{image['id']}/tasks", json={"type": "thumbnail", "params": {"size": 50}})
        assert submitted.status_code == 202, submitted.text
        task = submitted.json()
        assert task["status"] == "QUEUED" and task["task_id"]
        listed = api.get(f"/images/{image['id']}/tasks").json()["items"]
        assert [t["task_id"] for t in listed] == [task["task_id"]]

        with adapter(canvas_stack, tmp_path):

            def finished() -> dict[str, Any] | None:
                (view,) = api.get(f"/images/{image['id']}/tasks").json()["items"]
                return view if view["status"] in ("SUCCEEDED", "FAILED") else None

            view = wait_for("the thumbnail task to finish", finished, timeout=60, every=0.5)
        assert view["status"] == "SUCCEEDED", (view, (tmp_path / "adapter.log").read_text()[-2000:])
        urls = {r["name"]: r["url"] for r in view["results"]}
        with Image.open(io.BytesIO(httpx.get(urls["thumbnail.png"], timeout=10).content)) as thumb:
            assert thumb.size == (50, 25)
        result = json.loads(httpx.get(urls["result.json"], timeout=10).content)
        assert result["device"] in ("cpu:pillow",) or result["device"].startswith("cuda:")
    with psycopg.connect(canvas_stack.database_url) as conn:
        found = conn.execute("select status from canvas_image_tasks where task_id = %s", (task["task_id"],)).fetchone()
    assert found == ("SUCCEEDED",)  # the last state seen is kept


def test_task_requests_are_checked_and_a_refused_submit_keeps_no_row(canvas_stack: Stack) -> None:
    user = str(uuid.uuid4())
    with client(canvas_stack, user) as api:
        image = api.post("/images", files={"file": ("p.png", png_bytes())}).json()
        path = f"/images/{image['id']}/tasks"
        assert api.post(path, json={"type": "matmul", "params": {"size": 2, "repeat": 1}}).status_code == 422
        assert api.post(path, json={"type": "thumbnail", "params": {"size": 10**6}}).status_code == 422
        taken = api.post(path, json={"type": "thumbnail", "params": {"size": 32, "input": "inputs/other"}})
        assert taken.status_code == 422
        assert api.get(path).json()["items"] == []
    with psycopg.connect(canvas_stack.database_url) as conn:
        assert conn.execute("select count(*) from canvas_image_tasks where owner = %s", (user,)).fetchone() == (0,)


def test_an_unreachable_orchestrator_is_503_and_keeps_no_row(canvas_stack: Stack) -> None:
    from canvas.tasks import ImageTasks, ImageTypes
    from orchestrator.client import Client

    deps = canvas_stack.deps
    user = str(uuid.uuid4())
    with client(canvas_stack, user) as api:
        image_id = api.post("/images", files={"file": ("p.png", png_bytes())}).json()["id"]
    image = deps.images.get(user, uuid.UUID(image_id))
    down = Client("http://127.0.0.1:9", "x", timeout_s=2)  # the discard port: nothing listens
    types = ImageTypes(down)
    types._cached, types._at = {"thumbnail": "input"}, float("inf")  # known types; only the submit must fail
    tasks = ImageTasks(deps.images.repo, down, types)
    from canvas.errors import ApiError

    try:
        tasks.submit(image, "thumbnail", {"size": 32})
    except ApiError as err:
        assert err.status == 503
    else:
        raise AssertionError("the submit should have failed")
    assert deps.images.repo.tasks_of(uuid.UUID(user), uuid.UUID(image_id)) == []


def test_the_workload_resizes_up_and_down(tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    src.write_bytes(png_bytes(30, 60))
    for size, expected in ((20, (10, 20)), (120, (60, 120))):
        out = tmp_path / f"out{size}"
        out.mkdir()
        done = subprocess.run(
            [sys.executable, str(WORKLOAD), str(src), "--size", str(size)],
            env={**os.environ, "OUTPUT_DIR": str(out)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        with Image.open(out / "thumbnail.png") as img:
            assert img.size == expected
        assert json.loads((out / "result.json").read_text())["width"] == expected[0]


def test_without_pillow_the_workload_fails_with_one_clear_line(tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    src.write_bytes(png_bytes())
    # -S: no site-packages, hence no Pillow, as on a GPU host whose Python lacks it
    done = subprocess.run(
        [sys.executable, "-S", str(WORKLOAD), str(src), "--size", "16"],
        env={"OUTPUT_DIR": str(tmp_path), "PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Pillow is not installed" in lines[0] and "pip install pillow" in lines[0]
