"""The history store: runs, their cases' figures and raw samples, in one database.

SQLite (a file, `results/history.sqlite` unless configured) or PostgreSQL (a URL, so that the CI
jobs of many machines write into one store), both through SQLAlchemy Core; PostgreSQL through
psycopg 3. Which one: `--db`, else `$BENCH_HISTORY_DB`, else `db` in `[tool.bench_lib.history]`
of pyproject.toml, else the SQLite file.

Tables (store schema history: bump `STORE_VERSION` and add a step to `_MIGRATIONS` when it changes):
  1: first version.

- `bench_lib_meta`: `application` and `schema_version`; a database with tables but without this
  one is foreign and never written to.
- `runs`: one row per run (`run_id` unique): its time, profile, machine fingerprint, git commit,
  branch, and a digest of its content, so that adding it again changes nothing.
- `cases`: the case keys (`bench_lib.records.cases.KEY_FIELDS`, unique) and their labels.
- `results`: one row per run and case: status, error, and the other per-case text columns.
- `figures`: one row per result and numeric report column (`metric`, `value` as a double; byte
  counts are exact below 2**53).
- `samples`: the raw per-round latencies of one worker process of one result, as little-endian
  float64 arrays in round order (`latency_ms`, `host_latency_ms`).

Concurrency: every run is added in one transaction (all of it or nothing). SQLite runs in WAL
mode with a busy timeout (the switch to WAL waits too), and writers take the lock when they begin
(`BEGIN IMMEDIATE`), so several processes can add runs at once, to a new file as well; on
PostgreSQL the unique keys settle races.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from bench_lib.config import tool_table
from bench_lib.errors import UserError
from bench_lib.records.cases import KEY_FIELDS

STORE_VERSION = 1
APPLICATION = "bench_lib history"
DEFAULT_DB = Path("results/history.sqlite")
ENV_DB = "BENCH_HISTORY_DB"
BUSY_TIMEOUT_MS = 60_000  # SQLite: how long a writer waits for another one
CONNECT_TIMEOUT_S = 10  # PostgreSQL: an unreachable server is an error after this
_LOCK_KEY = 0x62656E6368  # PostgreSQL advisory lock that serializes creating the tables

metadata = sa.MetaData()
meta = sa.Table(
    "bench_lib_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)
runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.String(128), nullable=False, unique=True),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("timestamp_utc", sa.DateTime, nullable=False, index=True),
    sa.Column("profile", sa.String(64), nullable=False),
    sa.Column("inject", sa.String(256), nullable=False),
    sa.Column("fingerprint", sa.String(32), nullable=False, index=True),
    sa.Column("machine_id", sa.String(32), nullable=False),
    sa.Column("hostname", sa.String(256), nullable=False),
    sa.Column("cpu_model", sa.String(256), nullable=False),
    sa.Column("cpu_count", sa.Integer),
    sa.Column("memory_total_bytes", sa.BigInteger),
    sa.Column("torch_threads", sa.Integer),
    sa.Column("cpu_malloc", sa.String(256), nullable=False),
    sa.Column("gpu_name", sa.String(256), nullable=False),
    sa.Column("gpu_count", sa.Integer),
    sa.Column("gpu_driver", sa.String(64), nullable=False),
    sa.Column("gpu_memory_total_bytes", sa.BigInteger),
    sa.Column("gpu_uuid", sa.String(128), nullable=False),
    sa.Column("gpu_mig_mode", sa.String(64), nullable=False),
    sa.Column("float32_defaults", sa.String(256), nullable=False),
    sa.Column("cuda_version", sa.String(64), nullable=False),
    sa.Column("cudnn_version", sa.String(64), nullable=False),
    sa.Column("torch_version", sa.String(64), nullable=False),
    sa.Column("python_version", sa.String(64), nullable=False),
    sa.Column("platform", sa.String(256), nullable=False),
    sa.Column("git_commit", sa.String(128), nullable=False),  # as the report has it, `-dirty` included
    sa.Column("commit", sa.String(64), nullable=False, index=True),  # without `-dirty`
    sa.Column("dirty", sa.Boolean, nullable=False),
    sa.Column("branch", sa.String(256), nullable=False, index=True),
    sa.Column("report_schema_version", sa.Integer, nullable=False),
    sa.Column("source", sa.String(1024), nullable=False),
    sa.Column("ingested_at", sa.DateTime, nullable=False),
)
cases = sa.Table(
    "cases",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    *(sa.Column(k, sa.Integer if k == "batch_size" else sa.String(256), nullable=False) for k in KEY_FIELDS),
    sa.Column("label", sa.String(512), nullable=False, index=True),
    sa.UniqueConstraint(*KEY_FIELDS, name="cases_key"),
)
results = sa.Table(
    "results",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("notes", sa.JSON, nullable=False),  # the other per-case text columns
    sa.UniqueConstraint("run", "case_id", name="results_run_case"),
)
figures = sa.Table(
    "figures",
    metadata,
    sa.Column("result", sa.Integer, sa.ForeignKey("results.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("metric", sa.String(64), primary_key=True),
    sa.Column("value", sa.Double, nullable=False),
)
samples = sa.Table(
    "samples",
    metadata,
    sa.Column("result", sa.Integer, sa.ForeignKey("results.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("process", sa.Integer, primary_key=True),
    sa.Column("latency_ms", sa.LargeBinary, nullable=False),
    sa.Column("host_latency_ms", sa.LargeBinary, nullable=False),
)
TABLES = tuple(t.name for t in metadata.sorted_tables)
# Steps from store version v to v + 1, each given a connection inside the upgrading transaction.
_MIGRATIONS: dict[int, Any] = {}


def configured_db(pyproject: Path | None = Path("pyproject.toml")) -> str | None:
    """The store named by `$BENCH_HISTORY_DB` or `[tool.bench_lib.history] db`; None: the default."""
    if os.environ.get(ENV_DB, "").strip():
        return os.environ[ENV_DB].strip()
    if pyproject is not None:
        value = tool_table(pyproject, "history").get("db")
        if value is not None and not isinstance(value, str):
            raise UserError(f"{pyproject}: [tool.bench_lib.history] db must be a string (a path or a URL)")
        return value or None
    return None


def database_url(db: str | Path | None, pyproject: Path | None = Path("pyproject.toml")) -> sa.URL:
    """The SQLAlchemy URL of a store given as a path, a `sqlite:///` or a `postgresql://` URL;
    None means the configured one, else `results/history.sqlite`."""
    value = str(db) if db else (configured_db(pyproject) or str(DEFAULT_DB))
    if "://" not in value:
        return sa.URL.create("sqlite", database=str(Path(value).expanduser().absolute()))
    try:
        url = sa.make_url(value)
    except sa_exc.ArgumentError:
        raise UserError(f"not a database URL: {value!r}") from None
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        if url.get_driver_name() not in ("psycopg", "postgres", "postgresql", "psycopg2"):
            raise UserError(
                f"{_shown(url)}: use postgresql:// (psycopg 3), not the {url.get_driver_name()} driver"
            )
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return url
    raise UserError(
        f"{_shown(url)}: unsupported database {backend!r} (use a file path, sqlite:/// or postgresql://)"
    )


def _shown(url: sa.URL) -> str:
    return url.render_as_string(hide_password=True)


def _reason(exc: BaseException) -> str:
    """The driver's own first line (e.g. "password authentication failed for user ...")."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


class Store:
    """One history database. Open it with `Store.open`; every method raises `UserError` on
    connection or schema problems (one line naming the database and the reason)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.url = engine.url
        self.is_sqlite = engine.dialect.name == "sqlite"
        self.name = str(engine.url.database) if self.is_sqlite else _shown(engine.url)
        self._checked = False

    @classmethod
    def open(cls, db: str | Path | None = None, pyproject: Path | None = Path("pyproject.toml")) -> Store:
        url = database_url(db, pyproject)
        if url.get_backend_name() == "sqlite":
            engine = sa.create_engine(url)
            _sqlite_settings(engine)
        else:
            engine = sa.create_engine(
                url, connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "bench_lib"}
            )
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path | None:
        """The SQLite file; None for a server."""
        return Path(self.url.database) if self.is_sqlite and self.url.database else None

    @contextmanager
    def reading(self) -> Iterator[sa.Connection]:
        """A read transaction on an existing store (`UserError` when there is none yet)."""
        if self.path is not None and not self.path.is_file():
            raise UserError(f"{self.path}: no history here yet (add runs with `history add REPORT`)")
        with self._errors(), self.engine.connect() as conn, conn.begin():
            if not self._checked:
                self._check(conn, create=False)
            yield conn

    @contextmanager
    def writing(self) -> Iterator[sa.Connection]:
        """A write transaction (SQLite: holding the write lock from its start); creates the tables
        of a new store."""
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._errors(), self.engine.connect() as conn:
            conn.execution_options(bench_write=True)
            with conn.begin():
                if not self._checked:
                    self._check(conn, create=True)
                yield conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sa_exc.IntegrityError:
            raise  # a race the caller settles
        except sa_exc.OperationalError as exc:
            raise UserError(f"{self.name}: cannot use the history database ({_reason(exc)})") from None
        except sa_exc.DatabaseError as exc:
            raise UserError(f"{self.name}: not a usable history database ({_reason(exc)})") from None

    def _check(self, conn: sa.Connection, create: bool) -> None:
        """Refuse a foreign or newer database; create the tables of an empty one (when writing)."""
        if create and not self.is_sqlite:  # two first writers must not both create the tables
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        names = set(sa.inspect(conn).get_table_names())
        if meta.name not in names:
            if names:
                shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
                raise UserError(
                    f"{self.name}: a foreign database (tables {shown}, no {meta.name}): use an empty database for the history"
                )
            if not create:
                raise UserError(f"{self.name}: no history here yet (add runs with `history add REPORT`)")
            metadata.create_all(conn)
            conn.execute(
                meta.insert(),
                [
                    {"key": "application", "value": APPLICATION},
                    {"key": "schema_version", "value": str(STORE_VERSION)},
                ],
            )
        info: dict[str, str] = {
            str(k): str(v) for k, v in cast(Any, conn.execute(sa.select(meta.c.key, meta.c.value)).all())
        }
        if info.get("application") != APPLICATION:
            raise UserError(f"{self.name}: {meta.name} does not belong to a bench_lib history")
        try:
            version = int(info.get("schema_version", ""))
        except ValueError:
            raise UserError(f"{self.name}: history schema_version missing or not a number") from None
        if version > STORE_VERSION:
            raise UserError(
                f"{self.name}: history schema_version {version} is newer than this bench_lib reads ({STORE_VERSION}); upgrade bench_lib"
            )
        if version < STORE_VERSION:
            if not create:
                raise UserError(
                    f"{self.name}: history schema_version {version} is older: `history add` upgrades it"
                )
            for v in range(version, STORE_VERSION):
                _MIGRATIONS[v](conn)
            conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(STORE_VERSION)))
        self._checked = True

    # --- writing -----------------------------------------------------------------------------

    def case_ids(self, keys: Sequence[tuple], labels: Sequence[str]) -> dict[tuple, int]:
        """The ids of these case keys, adding the new ones, in a transaction of its own (a case
        is harmless without runs, and the run's transaction stays short). Rows go in sorted, so
        that two PostgreSQL writers adding the same new cases wait for each other, never deadlock."""
        rows = [
            dict(zip(KEY_FIELDS, k, strict=True), label=lab)
            for k, lab in sorted(set(zip(keys, labels, strict=True)))
        ]
        with self.writing() as conn:
            conn.execute(_insert_ignoring(self, cases, list(KEY_FIELDS)), rows)
            found = conn.execute(sa.select(cases.c.id, *(cases.c[k] for k in KEY_FIELDS))).all()
        known = {tuple(r[1:]): r[0] for r in found}
        return {k: known[k] for k in keys}

    def add_run(
        self, run: Mapping[str, Any], results_rows: Sequence[Mapping[str, Any]], case_ids: Mapping[tuple, int]
    ) -> str:
        """Add one run atomically: "added", or "present" when a run with this `run_id` and the
        same digest is stored already. A stored run with other content is a `UserError`."""
        try:
            with self.writing() as conn:
                present = self._present(conn, run)
                if present:
                    return present
                run_pk: int = conn.execute(runs.insert().values(**run).returning(runs.c.id)).scalar_one()
                conn.execute(
                    results.insert(),
                    [
                        {"run": run_pk, "case_id": case_ids[r["key"]], "status": r["status"],
                         "error": r["error"], "notes": r["notes"]}
                        for r in results_rows
                    ],
                )  # fmt: skip
                ids: dict[Any, Any] = dict(
                    conn.execute(
                        sa.select(results.c.case_id, results.c.id).where(results.c.run == run_pk)
                    ).all()
                )
                figure_rows = [
                    {"result": ids[case_ids[r["key"]]], "metric": m, "value": v}
                    for r in results_rows
                    for m, v in r["figures"].items()
                ]
                if figure_rows:
                    conn.execute(figures.insert(), figure_rows)
                sample_rows = [
                    {
                        "result": ids[case_ids[r["key"]]],
                        "process": p,
                        "latency_ms": lat,
                        "host_latency_ms": host,
                    }
                    for r in results_rows
                    for p, (lat, host) in r["samples"].items()
                ]
                if sample_rows:
                    conn.execute(samples.insert(), sample_rows)
                return "added"
        except sa_exc.IntegrityError:  # another writer added the same run first
            with self.reading() as conn:
                present = self._present(conn, run)
            if present:
                return present
            raise

    def _present(self, conn: sa.Connection, run: Mapping[str, Any]) -> str | None:
        stored = conn.execute(
            sa.select(runs.c.digest).where(runs.c.run_id == run["run_id"])
        ).scalar_one_or_none()
        if stored is None:
            return None
        if stored != run["digest"]:
            raise UserError(
                f"run {run['run_id']} is in {self.name} already, with other content (from another report "
                f"of the same run?); remove it with `history remove {run['run_id']}` to replace it"
            )
        return "present"

    def remove_runs(self, run_ids: Sequence[str]) -> int:
        """Remove runs and everything of theirs; returns how many. `UserError`, and nothing
        removed, when one of them is not stored (a mistyped id removes nothing silently)."""
        with self.writing() as conn:
            found: dict[str, int] = dict(
                conn.execute(sa.select(runs.c.run_id, runs.c.id).where(runs.c.run_id.in_(run_ids))).all()
            )
            unknown = [r for r in dict.fromkeys(run_ids) if r not in found]
            if unknown:
                raise UserError(
                    f"{self.name}: no run {', '.join(unknown)} (nothing removed; `history runs` lists them)"
                )
            pks = list(found.values())
            if pks:
                res = sa.select(results.c.id).where(results.c.run.in_(pks))
                conn.execute(samples.delete().where(samples.c.result.in_(res)))
                conn.execute(figures.delete().where(figures.c.result.in_(res)))
                conn.execute(results.delete().where(results.c.run.in_(pks)))
                conn.execute(runs.delete().where(runs.c.id.in_(pks)))
        return len(pks)

    # --- reading -----------------------------------------------------------------------------

    def labels(self) -> dict[str, int]:
        """Every case label and its id."""
        with self.reading() as conn:
            return dict(conn.execute(sa.select(cases.c.label, cases.c.id)).all())

    def list_runs(self, **where: Any) -> list[dict[str, Any]]:
        """The stored runs (equality filters on `runs` columns), oldest first."""
        query = sa.select(runs).order_by(runs.c.timestamp_utc, runs.c.id)
        for column, value in where.items():
            query = query.where(runs.c[column] == value)
        with self.reading() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def series_rows(
        self,
        case_ids: Sequence[int],
        metrics: Sequence[str],
        run_pks: Sequence[int] | None = None,
        branch: str | None = None,
        fingerprint: str | None = None,
        with_injected: bool = False,
    ) -> list[dict[str, Any]]:
        """Figures of successful results: one mapping per run, case and metric, with the run's
        fingerprint, commit, branch and time; oldest first."""
        query = (
            sa.select(
                runs.c.id.label("run_pk"),
                runs.c.run_id,
                runs.c.timestamp_utc,
                runs.c.fingerprint,
                runs.c.machine_id,
                runs.c.hostname,
                runs.c.cpu_model,
                runs.c.torch_threads,
                runs.c.gpu_name,
                runs.c.commit,
                runs.c.dirty,
                runs.c.branch,
                runs.c.inject,
                cases.c.label,
                figures.c.metric,
                figures.c.value,
            )
            .select_from(figures.join(results).join(runs).join(cases))
            .where(results.c.case_id.in_(case_ids), figures.c.metric.in_(metrics), results.c.status == "ok")
            .order_by(runs.c.timestamp_utc, runs.c.id)
        )
        if run_pks is not None:
            query = query.where(runs.c.id.in_(run_pks))
        if branch is not None:
            query = query.where(runs.c.branch == branch)
        if fingerprint is not None:
            query = query.where(runs.c.fingerprint == fingerprint)
        if not with_injected:
            query = query.where(runs.c.inject == "")
        with self.reading() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def results_of(self, run_pks: Sequence[int]) -> list[dict[str, Any]]:
        """The results of these runs with their case keys, run columns and figures (one mapping
        per result, figures under "figures")."""
        with self.reading() as conn:
            rows = conn.execute(
                sa.select(
                    results.c.id.label("result"),
                    results.c.status,
                    results.c.error,
                    results.c.notes,
                    *(cases.c[k] for k in KEY_FIELDS),
                    runs,
                )
                .select_from(results.join(cases).join(runs))
                .where(results.c.run.in_(run_pks))
                .order_by(runs.c.timestamp_utc, runs.c.id, results.c.id)
            ).mappings()
            out = [dict(r) for r in rows]
            values: dict[int, dict[str, float]] = {}
            for result, metric, value in cast(
                Any,
                conn.execute(
                    sa.select(figures.c.result, figures.c.metric, figures.c.value)
                    .select_from(figures.join(results))
                    .where(results.c.run.in_(run_pks))
                ),
            ):
                values.setdefault(result, {})[metric] = value
        for row in out:
            row["figures"] = values.get(row["result"], {})
        return out

    def samples_of(self, result_ids: Sequence[int]) -> dict[int, dict[int, tuple[bytes, bytes]]]:
        """Raw samples per result and process (little-endian float64 arrays)."""
        out: dict[int, dict[int, tuple[bytes, bytes]]] = {}
        with self.reading() as conn:
            for result, process, lat, host in cast(
                Any,
                conn.execute(
                    sa.select(
                        samples.c.result, samples.c.process, samples.c.latency_ms, samples.c.host_latency_ms
                    ).where(samples.c.result.in_(result_ids))
                ),
            ):
                out.setdefault(result, {})[process] = (lat, host)
        return out

    def counts(self) -> dict[str, int]:
        """Rows per table."""
        with self.reading() as conn:
            return {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                    for t in (runs, cases, results, figures, samples)}  # fmt: skip


def _insert_ignoring(store: Store, table: sa.Table, unique: list[str]) -> Any:
    """INSERT that skips rows whose unique key exists (another writer added them first)."""
    if store.is_sqlite:
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table).on_conflict_do_nothing(index_elements=unique)
    from sqlalchemy.dialects import postgresql

    return postgresql.insert(table).on_conflict_do_nothing(index_elements=unique)


def _switch_to_wal(cursor: sqlite3.Cursor, timeout_s: float = BUSY_TIMEOUT_MS / 1000) -> None:
    """`PRAGMA journal_mode = WAL`, waiting for other writers as the busy timeout would. Switching
    a file's mode takes a read lock and then upgrades it, and SQLite does not wait (no busy
    handler) on an upgrade: of several first openers of a new file all but one got "database is
    locked" at once (4 writers at once: ~1 in 10 tries)."""
    deadline = time.monotonic() + timeout_s
    pause = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, 0.1)


def _sqlite_settings(engine: sa.Engine) -> None:
    """WAL (readers never wait for the writer), a busy timeout (writers wait for each other),
    foreign keys on, and transactions that take the write lock when they begin when they write,
    so that two writers never deadlock upgrading a read lock."""

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the "begin" hook below issues BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql(
            "BEGIN IMMEDIATE" if conn.get_execution_options().get("bench_write") else "BEGIN"
        )
