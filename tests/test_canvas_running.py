"""How the canvas is run: `python -m canvas` as a process (settings from the environment, migrations at start, port
from CANVAS_PORT), and the compose file and Dockerfile beside it (Docker cannot run here: their content is checked).
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psycopg
import yaml

from canvas import settings as canvas_settings
from canvas.localpg import LocalPostgres
from localaws.server import background, free_port
from tests.test_canvas_support import AuthServer, auth_server, canvas_pg, token

__all__ = ["auth_server", "canvas_pg"]  # fixtures, imported for this module
REPO = Path(__file__).resolve().parents[1]
CANVAS = REPO / "canvas"


def test_python_m_canvas_migrates_and_serves_on_its_port(
    canvas_pg: LocalPostgres, auth_server: AuthServer, moto_endpoint: str, tmp_path: Path
) -> None:
    database = canvas_pg.create_database("canvas_proc_" + uuid.uuid4().hex[:8])
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO),
        "SUPABASE_URL": auth_server.url,
        "DATABASE_URL": database,
        "S3_BUCKET": "canvas-proc-test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "ORCHESTRATOR_URL": "http://127.0.0.1:9",
        "ORCHESTRATOR_TOKEN": "unused-here",
        "CANVAS_PORT": str(port),
    }
    base = f"http://127.0.0.1:{port}"
    with background([sys.executable, "-m", "canvas"], env=env, log_path=tmp_path / "canvas.log", stop_s=15) as proc:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/livez", timeout=2) as resp:
                    assert resp.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, (tmp_path / "canvas.log").read_text()
                assert time.monotonic() < deadline, "the service did not start"
                time.sleep(0.1)
        with urllib.request.urlopen(base + "/", timeout=5) as resp:
            assert b"canvas" in resp.read()
        request = urllib.request.Request(
            f"{base}/images", headers={"Authorization": f"Bearer {token(auth_server, str(uuid.uuid4()))}"}
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200  # a verified token and a migrated schema: an empty list
        try:
            urllib.request.urlopen(f"{base}/images", timeout=5)
            raise AssertionError("an unauthenticated request was served")
        except urllib.error.HTTPError as err:
            assert err.code == 401
    with psycopg.connect(database) as conn:
        assert conn.execute("select count(*) from canvas_schema_migrations").fetchone() == (2,)


def compose() -> dict[str, object]:
    loaded: dict[str, object] = yaml.safe_load((CANVAS / "compose.yaml").read_text())
    return loaded


def test_compose_runs_the_service_on_9000_from_the_repository_root() -> None:
    (name, service), *others = compose()["services"].items()  # type: ignore[attr-defined]
    assert name == "canvas" and not others
    assert service["ports"] == ["9000:9000"]
    build = service["build"]
    assert (CANVAS / build["context"] / build["dockerfile"]).resolve() == (CANVAS / "Dockerfile").resolve()
    assert (CANVAS / build["context"]).resolve() == REPO  # the Dockerfile copies core/ and orchestrator/client.py


def test_compose_sets_the_settings_the_service_reads_by_their_names() -> None:
    environment = compose()["services"]["canvas"]["environment"]  # type: ignore[index]
    known = {s.name for s in canvas_settings.ALL} | {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    assert set(environment) <= known, set(environment) - known
    # The seed's names, and every setting without a default, are there.
    assert {"SUPABASE_URL", "S3_BUCKET", "AWS_DEFAULT_REGION"} <= set(environment)
    required = {s.name for s in canvas_settings.ALL if repr(s.default) == "REQUIRED"} - {"ARTIFACTS_BUCKET"}
    assert required | {"ORCHESTRATOR_URL", "ORCHESTRATOR_TOKEN"} <= set(environment)  # S3_BUCKET stands in
    assert environment["CANVAS_HOST"] == "0.0.0.0" and str(environment["CANVAS_PORT"]) == "9000"


def test_the_dockerfile_installs_the_pinned_closure_and_runs_python_m_canvas() -> None:
    text = (CANVAS / "Dockerfile").read_text()
    assert 'CMD ["python", "-m", "canvas", "serve"]' in text and "EXPOSE 9000" in text
    assert "pip install --no-deps -r /app/requirements.txt && pip check" in text
    for copied in ("core/", "orchestrator/client.py", "canvas/"):
        assert copied in text
    pins = [line for line in (CANVAS / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    assert pins and all("==" in line for line in pins)
    lock = dict(_pin(line) for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line)
    differ = [p for p in pins if _pin(p)[0] in lock and lock[_pin(p)[0]] != _pin(p)[1]]
    assert differ == []  # where the lock has a package, the container pins the same version


def _pin(line: str) -> tuple[str, str]:
    name, _, version = line.partition("==")
    return name.strip().lower().replace("_", "-"), version.split()[0].strip().rstrip("\\")
