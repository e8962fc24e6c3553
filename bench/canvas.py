"""Canvas bench: upload throughput beside a bare boto3 upload of the same bytes to the same S3, and `GET /images`
latency with 10,000 rows beside the single indexed query it wraps, all in the same run.

Starts, on 127.0.0.1 and stopped at the end: moto's server (the S3) and `python -m canvas` as child processes (so
neither shares this process's interpreter lock with the client), a local PostgreSQL (canvas.localpg) and the dev
Auth (canvas.devauth). Series are interleaved so drift hits both alike.
- upload:   POST /images of a `--mb` MB PNG of noise (incompressible): stripped and checked as it streams to disk,
            S3 upload, two row writes; `boto3` is s3.upload_file of the same file to the same bucket (the floor).
            `canvas_cpu_ms_per_upload`: the service process's CPU time (all threads) over the upload series, per
            upload: steadier than wall time on a busy machine, and what a change to the service's own work moves.
- list:     GET /images?limit=50 for a user with `--rows` images (presigning 50 URLs included); `sql` is the one
            query it runs (canvas.db.LIST_FIRST), on its own connection; EXPLAIN shows the index it uses.

Usage: PYTHONPATH=. python bench/canvas.py [--uploads 20] [--mb 4] [--rows 10000] [--lists 300]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Runnable as a script: its own folder (first on sys.path then) holds this file, which would shadow the canvas
# package under the name `canvas`; the repository root takes its place.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def noise_png(mb: float) -> bytes:
    from PIL import Image

    side = int((mb * 1024 * 1024 / 3) ** 0.5)
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads so far (Linux /proc/<pid>/stat, fields 14-15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def seed_rows(database_url: str, owner: str, rows: int) -> None:
    import psycopg

    with psycopg.connect(database_url) as conn:
        conn.execute(
            "insert into canvas_images (id, owner, s3_key, name, content_type, bytes, width, height, sha256, state,"
            " created_at) select gen_random_uuid(), %s, 'inputs/canvas/' || %s || '/' || g || '.png', 'seed.png',"
            " 'image/png', 1000, 10, 10, repeat('a', 64), 'ready', now() - g * interval '1 second'"
            " from generate_series(1, %s) g",
            (owner, owner, rows),
        )
        conn.execute("analyze canvas_images")


def explain(database_url: str, owner: str) -> str:
    import psycopg

    from canvas.db import LIST_FIRST

    with psycopg.connect(database_url) as conn:
        plan = conn.execute("explain " + LIST_FIRST, (owner, 51)).fetchall()
    return " / ".join(line for (line,) in plan)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import boto3
    import httpx
    import psycopg
    from botocore.config import Config

    from bench.submit_latency import CREDS, child
    from canvas.db import LIST_FIRST
    from canvas.devauth import serve_dev_auth
    from canvas.localpg import local_postgres
    from localaws.server import free_port

    moto_port, canvas_port = free_port(), free_port()
    endpoint, url = f"http://127.0.0.1:{moto_port}", f"http://127.0.0.1:{canvas_port}"
    moto = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)]
    base_env = {"PATH": os.environ.get("PATH", ""), **CREDS}
    with (
        child(moto, base_env, f"{endpoint}/moto-api/"),
        local_postgres() as pg,
        serve_dev_auth() as auth,
        tempfile.TemporaryDirectory() as tmp,
    ):
        s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(signature_version="s3v4"))
        s3.create_bucket(Bucket="canvas-bench")
        database_url = pg.create_database("canvas_bench")
        canvas_env = {
            **base_env,
            "PYTHONPATH": str(REPO),
            "AWS_ENDPOINT_URL": endpoint,
            "SUPABASE_URL": auth.url,
            "DATABASE_URL": database_url,
            "S3_BUCKET": "canvas-bench",
            "ORCHESTRATOR_URL": "http://127.0.0.1:9",  # no tasks in this bench
            "ORCHESTRATOR_TOKEN": "unused",
            "CANVAS_PORT": str(canvas_port),
            "CANVAS_MAX_UPLOAD_BYTES": str(64 << 20),
            "CANVAS_MAX_PIXELS": str(10**8),
            "CANVAS_RECONCILE_EVERY_S": "0",
        }
        with child([sys.executable, "-m", "canvas"], canvas_env, f"{url}/livez") as service:
            data = noise_png(args.mb)
            path = Path(tmp) / "noise.png"
            path.write_bytes(data)
            user, lister = str(uuid.uuid4()), str(uuid.uuid4())
            seed_rows(database_url, lister, args.rows)
            upload_s, boto_s = [], []
            cpu_before = cpu_seconds(service.pid)
            with httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {auth.token(user)}"}, timeout=120
            ) as api:
                for n in range(args.uploads):
                    start = time.perf_counter()
                    s3.upload_file(str(path), "canvas-bench", f"bench/raw-{n}.png")
                    boto_s.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    with path.open("rb") as fh:
                        answer = api.post("/images", files={"file": ("noise.png", fh, "image/png")})
                    upload_s.append(time.perf_counter() - start)
                    answer.raise_for_status()
            upload_cpu_s = cpu_seconds(service.pid) - cpu_before
            list_ms, sql_ms = [], []
            headers = {"Authorization": f"Bearer {auth.token(lister)}"}
            with httpx.Client(base_url=url, headers=headers, timeout=30) as api, psycopg.connect(database_url) as conn:
                for _ in range(args.lists):
                    start = time.perf_counter()
                    page = api.get("/images", params={"limit": 50})
                    list_ms.append((time.perf_counter() - start) * 1000)
                    assert len(page.json()["items"]) == 50
                    start = time.perf_counter()
                    conn.execute(LIST_FIRST, (lister, 51)).fetchall()
                    sql_ms.append((time.perf_counter() - start) * 1000)
        mb = len(data) / (1024 * 1024)
        upload_rate, boto_rate = mb / statistics.median(upload_s), mb / statistics.median(boto_s)
        return {
            "upload": {
                "bytes": len(data),
                "n": args.uploads,
                "canvas_mb_s": round(upload_rate, 2),
                "boto3_mb_s": round(boto_rate, 2),
                "ratio": round(upload_rate / boto_rate, 3),
                "canvas_cpu_ms_per_upload": round(upload_cpu_s * 1000 / args.uploads, 1),
            },
            "list": {
                "rows": args.rows,
                "n": args.lists,
                "get_images_p50_ms": round(percentile(list_ms, 50), 2),
                "get_images_p99_ms": round(percentile(list_ms, 99), 2),
                "sql_p50_ms": round(percentile(sql_ms, 50), 3),
                "sql_p99_ms": round(percentile(sql_ms, 99), 3),
                "plan": explain(database_url, lister),
            },
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--mb", type=float, default=4.0)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--lists", type=int, default=300)
    print(json.dumps(measure(parser.parse_args(argv)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
