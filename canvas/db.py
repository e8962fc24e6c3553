"""The canvas's metadata in the Supabase project's Postgres: the migrations, a connection pool, and every query.

The service connects with the project's connection string (DATABASE_URL) through a psycopg pool. Supabase's
pooler in transaction mode (port 6543) does not keep prepared statements across transactions, so none are used
(`prepare_threshold=None`). Every query that reads or changes a user's rows names the owner: the service is the
table owner, which row-level security does not restrict, so the owner check is its own job (RLS guards the front
end's reads through Supabase's client, migrations/0002_images.sql).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK = 0x63616E766173  # pg_advisory_xact_lock key: two services starting at once migrate one at a time

R = TypeVar("R")  # the row class a query's rows are built as


class MigrationError(RuntimeError):
    """An applied migration's file changed, or one fails: the service must not start on that schema."""


@dataclass(frozen=True)
class NewImage:
    """The columns an image row is inserted with (the insert names its state)."""

    id: uuid.UUID
    owner: uuid.UUID
    s3_key: str
    name: str
    content_type: str
    bytes: int
    width: int | None = None
    height: int | None = None
    sha256: str | None = None


@dataclass(frozen=True, kw_only=True)
class ImageRow(NewImage):
    """A row as read: the fields it was inserted with, then its state and times."""

    state: str
    created_at: dt.datetime
    deleted_at: dt.datetime | None


@dataclass(frozen=True)
class TaskRow:
    id: uuid.UUID
    image_id: uuid.UUID
    owner: uuid.UUID
    type: str
    params: dict[str, Any]
    task_id: str | None
    status: str
    result_uri: str | None
    error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


# The columns a query returns, named by the fields of the row class it builds (class_row matches them by name).
IMAGE_COLUMNS = ", ".join(f.name for f in fields(ImageRow))
TASK_COLUMNS = ", ".join(f.name for f in fields(TaskRow))


def open_pool(database_url: str, *, max_size: int, min_size: int = 1, timeout_s: float = 10.0) -> ConnectionPool:
    """Connections in autocommit: every Repo method is one statement, so one transaction by itself, and saves the
    BEGIN and COMMIT round trips an implicit transaction adds; what needs more runs inside `conn.transaction()`
    (migrate)."""
    pool = ConnectionPool(
        database_url,
        min_size=min(min_size, max_size),
        max_size=max_size,
        timeout=timeout_s,
        kwargs={"prepare_threshold": None, "autocommit": True},
        open=False,
    )
    pool.open(wait=True, timeout=timeout_s)
    return pool


def migrate(conn: psycopg.Connection[Any], directory: Path = MIGRATIONS) -> list[str]:
    """Apply the migrations not applied yet, in file-name order, each in its own transaction; the versions
    applied now. A file already applied whose sha256 differs stops the start (schemas do not drift silently)."""
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute(
            "create table if not exists canvas_schema_migrations ("
            " version text primary key, sha256 text not null, applied_at timestamptz not null default now())"
        )
    for path in sorted(directory.glob("*.sql")):
        sql = path.read_text()
        digest = hashlib.sha256(sql.encode()).hexdigest()
        with conn.transaction():
            conn.execute("select pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            found = conn.execute(
                "select sha256 from canvas_schema_migrations where version = %s", (path.stem,)
            ).fetchone()
            if found is not None:
                if found[0] != digest:
                    raise MigrationError(f"migration {path.name} changed after it was applied; add a new one instead")
                continue
            try:
                conn.execute(sql.encode())
            except psycopg.Error as err:
                raise MigrationError(f"migration {path.name} failed: {err}") from err
            conn.execute("insert into canvas_schema_migrations (version, sha256) values (%s, %s)", (path.stem, digest))
            applied_now.append(path.stem)
    return applied_now


class Repo:
    """Typed queries over a pool. Each method is one statement, so one transaction (open_pool: autocommit)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        with self.pool.connection() as conn:
            yield conn

    def _rows(self, row: type[R], sql: str, params: Sequence[object]) -> list[R]:
        """The rows `sql` returns, as `row`s (one transaction)."""
        with self._conn() as conn, conn.cursor(row_factory=class_row(row)) as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def _row(self, row: type[R], sql: str, params: Sequence[object]) -> R | None:
        """The first row `sql` returns as a `row`, or None (one transaction)."""
        with self._conn() as conn, conn.cursor(row_factory=class_row(row)) as cur:
            cur.execute(sql, params)
            return cur.fetchone()

    # -- images ----------------------------------------------------------------------------------------------------
    def insert_image(self, new: NewImage, state: str) -> ImageRow:
        columns = [f.name for f in fields(NewImage)]  # the row's columns, by the dataclass's field names
        placeholders = ", ".join(["%s"] * (len(columns) + 1))
        return _one(
            self._row(
                ImageRow,
                f"insert into canvas_images ({', '.join(columns)}, state) values ({placeholders})"
                f" returning {IMAGE_COLUMNS}",
                (*(getattr(new, name) for name in columns), state),
            )
        )

    def settle_image(self, image_id: uuid.UUID, *, expect: str, new: NewImage | None = None) -> ImageRow | None:
        """`expect` -> ready (with the checked metadata of `new` when given); None if the row was not `expect`."""
        if new is None:
            return self._row(
                ImageRow,
                f"update canvas_images set state = 'ready' where id = %s and state = %s returning {IMAGE_COLUMNS}",
                (image_id, expect),
            )
        return self._row(
            ImageRow,
            f"update canvas_images set state = 'ready', content_type = %s, bytes = %s, width = %s,"
            f" height = %s, sha256 = %s where id = %s and state = %s returning {IMAGE_COLUMNS}",
            (new.content_type, new.bytes, new.width, new.height, new.sha256, image_id, expect),
        )

    def get_image(
        self, owner: uuid.UUID, image_id: uuid.UUID, *, states: Sequence[str] = ("ready",)
    ) -> ImageRow | None:
        return self._row(
            ImageRow,
            f"select {IMAGE_COLUMNS} from canvas_images where id = %s and owner = %s and state = any(%s)",
            (image_id, owner, list(states)),
        )

    def list_images(
        self, owner: uuid.UUID, limit: int, after: tuple[dt.datetime, uuid.UUID] | None = None
    ) -> list[ImageRow]:
        """One page of the owner's ready images, newest first: a range scan of canvas_images_owner_page."""
        if after is None:
            return self._rows(ImageRow, LIST_FIRST, (owner, limit))
        return self._rows(ImageRow, LIST_AFTER, (owner, after[0], after[1], limit))

    def mark_deleting(self, owner: uuid.UUID, image_id: uuid.UUID) -> ImageRow | None:
        return self._row(
            ImageRow,
            f"update canvas_images set state = 'deleting', deleted_at = now() where id = %s and owner = %s"
            f" and state = 'ready' returning {IMAGE_COLUMNS}",
            (image_id, owner),
        )

    def mark_deleted(self, image_id: uuid.UUID) -> None:
        with self._conn() as conn:
            conn.execute("update canvas_images set state = 'deleted' where id = %s and state = 'deleting'", (image_id,))

    def remove_image(self, image_id: uuid.UUID, *, states: Sequence[str]) -> bool:
        """Forget a row that never became ready (its upload failed or was abandoned)."""
        with self._conn() as conn:
            cur = conn.execute(
                "delete from canvas_images where id = %s and state = any(%s)"
                " and not exists (select 1 from canvas_image_tasks t where t.image_id = canvas_images.id)",
                (image_id, list(states)),
            )
            return cur.rowcount == 1

    def unsettled(self, older_than: dt.datetime) -> list[ImageRow]:
        return self._rows(ImageRow, UNSETTLED, (older_than,))

    def live_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of `keys` a row still claims (any state but deleted)."""
        with self._conn() as conn:
            rows = conn.execute(
                "select s3_key from canvas_images where s3_key = any(%s) and state <> 'deleted'", (list(keys),)
            ).fetchall()
            return {r[0] for r in rows}

    # -- tasks -----------------------------------------------------------------------------------------------------
    def insert_task(self, row_id: uuid.UUID, image: ImageRow, task_type: str, params: dict[str, Any]) -> TaskRow:
        return _one(
            self._row(
                TaskRow,
                f"insert into canvas_image_tasks (id, image_id, owner, type, params, status)"
                f" values (%s, %s, %s, %s, %s, 'SUBMITTING') returning {TASK_COLUMNS}",
                (row_id, image.id, image.owner, task_type, Jsonb(params)),
            )
        )

    def task_submitted(self, row_id: uuid.UUID, task_id: str, status: str) -> TaskRow:
        return _one(
            self._row(
                TaskRow,
                f"update canvas_image_tasks set task_id = %s, status = %s, updated_at = now() where id = %s"
                f" returning {TASK_COLUMNS}",
                (task_id, status, row_id),
            )
        )

    def task_status(self, row_id: uuid.UUID, status: str, result_uri: str | None, error: str | None) -> None:
        with self._conn() as conn:
            conn.execute(
                "update canvas_image_tasks set status = %s, result_uri = %s, error = %s, updated_at = now()"
                " where id = %s and task_id is not null",
                (status, result_uri, error, row_id),
            )

    def remove_task(self, row_id: uuid.UUID) -> None:
        with self._conn() as conn:
            conn.execute("delete from canvas_image_tasks where id = %s and status = 'SUBMITTING'", (row_id,))

    def tasks_of(self, owner: uuid.UUID, image_id: uuid.UUID, limit: int = 50) -> list[TaskRow]:
        return self._rows(
            TaskRow,
            f"select {TASK_COLUMNS} from canvas_image_tasks where image_id = %s and owner = %s"
            f" order by created_at desc, id desc limit %s",
            (image_id, owner, limit),
        )

    def submitting(self, older_than: dt.datetime) -> list[TaskRow]:
        return self._rows(TaskRow, SUBMITTING, (older_than,))

    def image_by_id(self, image_id: uuid.UUID) -> ImageRow | None:
        return self._row(ImageRow, f"select {IMAGE_COLUMNS} from canvas_images where id = %s", (image_id,))


LIST_FIRST = (
    f"select {IMAGE_COLUMNS} from canvas_images where owner = %s and state = 'ready'"
    f" order by created_at desc, id desc limit %s"
)
# Rows left in a passing state since before %s, oldest first, a bounded batch per reconcile pass.
UNSETTLED = (
    f"select {IMAGE_COLUMNS} from canvas_images where state in ('uploading', 'pending', 'deleting')"
    f" and created_at < %s order by created_at limit 1000"
)
SUBMITTING = (
    f"select {TASK_COLUMNS} from canvas_image_tasks where status = 'SUBMITTING' and created_at < %s"
    f" order by created_at limit 1000"
)
LIST_AFTER = (
    f"select {IMAGE_COLUMNS} from canvas_images where owner = %s and state = 'ready'"
    f" and (created_at, id) < (%s, %s) order by created_at desc, id desc limit %s"
)


def _one(row: Any) -> Any:
    if row is None:
        raise RuntimeError("the statement returned no row")
    return row
