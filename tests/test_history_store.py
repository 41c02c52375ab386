"""The history store, the same tests on SQLite and on a real PostgreSQL server (see postgres.py)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from history_data import TEMPLATE, write_run
from postgres import Server, binaries

from bench_lib.cli import main
from bench_lib.errors import UserError
from bench_lib.history import store as store_module
from bench_lib.history.ingest import add_reports
from bench_lib.history.store import Store

DATA = Path(__file__).resolve().parent / "data"
CASES = 11  # rows of the template report
SAMPLED = 10  # of them with raw samples (the oom row has none), 2 processes each


@pytest.fixture(scope="session")
def pg_server():
    bin_dir = binaries()
    if bin_dir is None:
        pytest.skip(
            "no PostgreSQL binaries (initdb, pg_ctl) on this machine: the PostgreSQL store tests need them"
        )
    try:
        server = Server(bin_dir)
    except KeyError:
        pytest.skip("running as root, and there is no postgres user to run the PostgreSQL server as")
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "history.sqlite")
    return request.getfixturevalue("pg_server").new_database()


@pytest.fixture(scope="module")
def runs16(tmp_path_factory) -> list[str]:
    """16 runs of 16 commits (run 99 too, for the writers test), shared by both stores."""
    folder = tmp_path_factory.mktemp("runs")
    return [str(write_run(folder, i)) for i in (*range(16), 99)]


def counts(db: str) -> dict[str, int]:
    with Store.open(db) as store:
        return store.counts()


def run_counts(db: str) -> dict[str, tuple[int, int, int]]:
    """Per stored run: (results, figures, samples)."""
    out = {}
    with Store.open(db) as store, store.reading() as conn:
        for run_id, pk in conn.execute(sa.select(store_module.runs.c.run_id, store_module.runs.c.id)):
            res = sa.select(store_module.results.c.id).where(store_module.results.c.run == pk)
            out[run_id] = tuple(
                conn.execute(sa.select(sa.func.count()).select_from(t).where(where)).scalar_one()
                for t, where in (
                    (store_module.results, store_module.results.c.run == pk),
                    (store_module.figures, store_module.figures.c.result.in_(res)),
                    (store_module.samples, store_module.samples.c.result.in_(res)),
                )
            )
    return out


def test_adding_a_run_twice_changes_nothing(db, tmp_path):
    report = write_run(tmp_path, 1)
    copy = tmp_path / "latest.csv"
    copy.write_bytes(report.read_bytes())
    copy.with_name("latest.samples.csv").write_bytes(
        report.with_name(report.stem + ".samples.csv").read_bytes()
    )
    with Store.open(db) as store:
        first = add_reports(store, [report], branch="main")
        again = add_reports(store, [report, copy], branch="main")
    assert [a.outcome for a in first] == ["added"]
    assert [a.outcome for a in again] == ["present", "present"]
    assert counts(db) | {"figures": 0} == {
        "runs": 1,
        "cases": CASES,
        "results": CASES,
        "figures": 0,
        "samples": SAMPLED * 2,
    }
    assert next(iter(run_counts(db).values()))[2] == SAMPLED * 2


def test_the_same_run_with_other_content_is_refused(db, tmp_path):
    report = write_run(tmp_path, 1)
    with Store.open(db) as store:
        add_reports(store, [report], branch="main")
        write_run(tmp_path, 1, scale=2.0)  # same run id, other figures
        with pytest.raises(UserError, match="already, with other content"):
            add_reports(store, [report], branch="main")
        assert store.remove_runs([report.stem]) == 1
        assert [a.outcome for a in add_reports(store, [report], branch="main")] == ["added"]


def test_a_failing_ingest_leaves_no_half_run(db, tmp_path, monkeypatch):
    report = write_run(tmp_path, 1)
    original = sa.Connection.execute

    def execute(self, statement, *args, **kwargs):
        if getattr(statement, "table", None) is store_module.samples:
            raise RuntimeError("the ingest dies before the samples")
        return original(self, statement, *args, **kwargs)

    monkeypatch.setattr(sa.Connection, "execute", execute)
    with Store.open(db) as store, pytest.raises(RuntimeError):
        add_reports(store, [report], branch="main")
    monkeypatch.undo()
    assert {k: v for k, v in counts(db).items() if k != "cases"} == {
        "runs": 0,
        "results": 0,
        "figures": 0,
        "samples": 0,
    }
    with Store.open(db) as store:
        assert [a.outcome for a in add_reports(store, [report], branch="main")] == ["added"]


def _add_all(db: str, paths: list[str], barrier=None) -> None:
    if barrier is not None:
        barrier.wait()
    with Store.open(db) as store:
        add_reports(store, paths, branch="main")


def test_a_killed_ingest_leaves_only_whole_runs(db, runs16):
    reports = runs16[:16]
    child = multiprocessing.get_context("fork").Process(target=_add_all, args=(db, reports))
    child.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.is_alive():
        try:
            if counts(db)["runs"] >= 2:
                break
        except UserError:
            pass  # not created yet
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    stored = run_counts(db)
    assert 2 <= len(stored) < 16, "the child was killed in the middle of the ingest"
    assert set(stored.values()) == {next(iter(stored.values()))}  # every stored run whole
    whole = next(iter(stored.values()))
    assert whole[0] == CASES and whole[2] == SAMPLED * 2
    _add_all(db, reports)  # the rest; the stored ones are present
    assert len(run_counts(db)) == 16 and set(run_counts(db).values()) == {whole}


def test_several_writers_at_once_lose_and_duplicate_nothing(db, tmp_path):
    writers, each = 4, 4
    shared = str(write_run(tmp_path, 99))
    batches = [
        [str(write_run(tmp_path, w * each + i)) for i in range(each)] + [shared] for w in range(writers)
    ]
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(writers)
    procs = [ctx.Process(target=_add_all, args=(db, batch, barrier)) for batch in batches]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0] * writers
    stored = run_counts(db)
    assert len(stored) == writers * each + 1
    assert set(stored.values()) == {(CASES, stored[Path(shared).stem][1], SAMPLED * 2)}
    assert counts(db)["cases"] == CASES


def test_a_new_sqlite_file_waits_for_another_opener_switching_it_to_wal(tmp_path):
    """Switching to WAL upgrades a read lock, which SQLite's busy timeout does not cover: the
    second of two first openers of a new file got "database is locked" at once (a CI run, 4
    writers). Another connection holding the write lock of the empty file for 0.3 s stands in for
    the first opener; the store waits for it, and a lock held past the timeout is still an error."""
    path = tmp_path / "history.sqlite"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, other.rollback)
    release.start()
    try:
        with Store.open(str(path)) as store:
            assert [a.outcome for a in add_reports(store, [write_run(tmp_path, 1)], branch="main")] == [
                "added"
            ]
    finally:
        release.join()
    assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    other.close()

    stuck = sqlite3.connect(tmp_path / "stuck.sqlite", isolation_level=None)
    stuck.execute("BEGIN IMMEDIATE")
    opener = sqlite3.connect(tmp_path / "stuck.sqlite", isolation_level=None)
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        store_module._switch_to_wal(opener.cursor(), timeout_s=0.2)
    assert 0.1 < time.monotonic() - started < 5
    stuck.close()
    opener.close()


def test_older_report_schemas_are_migrated(db):
    with Store.open(db) as store:
        done = add_reports(store, [DATA / "small_v1.csv"], branch="main")
        assert [a.outcome for a in done] == ["added"]
        run = store.list_runs()[0]
    assert run["report_schema_version"] == 1 and run["commit"] == "abc123"


def test_history_show_lists_every_run(db, tmp_path, capsys):
    paths = [str(write_run(tmp_path, i)) for i in range(3)]
    assert main(["history", "add", *paths, "--db", db, "--branch", "main"]) == 0
    capsys.readouterr()
    assert main(["history", "show", "inference-mlp-cpu-b32-grad", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "inference-mlp-cpu-b32-grad on ci-host" in out and ": 3 runs" in out
    assert all(f"{i:04x}000000" in out for i in range(3))


def test_history_add_takes_a_folder_of_runs(db, tmp_path, capsys):
    for i in range(3):
        write_run(tmp_path / "runs", i)
    assert main(["history", "add", str(tmp_path / "runs"), "--db", db]) == 0
    assert "3 run(s) added" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert "no report in this folder" in one_line_error(
        capsys, ["history", "add", str(tmp_path / "empty"), "--db", db]
    )


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


def test_a_report_of_a_newer_schema_is_one_line_and_exit_2(db, tmp_path, capsys):
    newer = tmp_path / "newer.csv"
    text = TEMPLATE.read_text().splitlines()
    newer.write_text("\n".join([text[0], *("99" + line[line.index(",") :] for line in text[1:])]) + "\n")
    assert "newer than this bench_lib reads" in one_line_error(
        capsys, ["history", "add", str(newer), "--db", db]
    )


def test_a_foreign_database_is_one_line_and_exit_2(db, tmp_path, capsys):
    engine = sa.create_engine(store_module.database_url(db))
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE customers (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    line = one_line_error(capsys, ["history", "add", str(write_run(tmp_path, 1)), "--db", db])
    assert "a foreign database (tables customers" in line
    assert "foreign" in one_line_error(capsys, ["history", "show", "--db", db])


def test_a_history_of_a_newer_store_version_is_refused(db, tmp_path, capsys):
    with Store.open(db) as store:
        add_reports(store, [write_run(tmp_path, 1)], branch="main")
        with store.writing() as conn:
            conn.execute(
                store_module.meta.update()
                .values(value="99")
                .where(store_module.meta.c.key == "schema_version")
            )
    assert "schema_version 99 is newer" in one_line_error(capsys, ["history", "show", "--db", db])


def test_an_empty_history_is_one_line_and_exit_2(db, capsys):
    assert "no history here yet" in one_line_error(capsys, ["history", "show", "--db", db])


def test_a_sqlite_file_that_is_not_a_database_is_one_line(tmp_path, capsys):
    bad = tmp_path / "h.sqlite"
    bad.write_text("not a database\n" * 100)
    assert "not a usable history database" in one_line_error(capsys, ["history", "show", "--db", str(bad)])
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(bad).execute("select 1 from sqlite_master")


def test_an_unreachable_server_is_one_line_and_exit_2(capsys):
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    line = one_line_error(
        capsys, ["history", "show", "--db", f"postgresql://bench:x@127.0.0.1:{port}/history"]
    )
    assert "cannot use the history database" in line and "x@" not in line


def test_a_wrong_password_is_one_line_and_exit_2(pg_server, capsys):
    url = pg_server.url("postgres", password="wrong")
    line = one_line_error(capsys, ["history", "show", "--db", url])
    assert "password authentication failed" in line and "wrong" not in line


def test_the_store_comes_from_the_environment_then_pyproject(tmp_path, monkeypatch):
    config = tmp_path / "pyproject.toml"
    config.write_text('[tool.bench_lib.history]\ndb = "postgresql://ci@db.example/bench"\n')
    monkeypatch.delenv(store_module.ENV_DB, raising=False)
    assert store_module.database_url(None, config).drivername == "postgresql+psycopg"
    monkeypatch.setenv(store_module.ENV_DB, str(tmp_path / "env.sqlite"))
    assert store_module.database_url(None, config).database == str(tmp_path / "env.sqlite")
    assert store_module.database_url("x.sqlite", config).database.endswith("x.sqlite")
    monkeypatch.delenv(store_module.ENV_DB)
    assert store_module.database_url(None, tmp_path / "none.toml").database.endswith("results/history.sqlite")
    with pytest.raises(UserError, match="unsupported database 'mysql'"):
        store_module.database_url("mysql://u@h/db")
