"""The report format: round trip, atomic writes, validation of bad input, and its documentation."""

import os
from pathlib import Path

import pandas as pd
import pytest

from bench_lib.errors import UserError
from bench_lib.measure.environment import collect_environment
from bench_lib.records.cases import Case
from bench_lib.records.results import CaseResult, ModuleMemory
from bench_lib.records.schema import (
    COLUMN_NAMES,
    MODULE_COLUMNS,
    MODULE_FILE_COLUMNS,
    SCHEMA_VERSION,
    documented,
    modules_path,
    read_modules,
    read_report,
    samples_path,
    to_frame,
    write_csv_atomic,
)
from bench_lib.records.stats import Samples
from bench_lib.session import ReportWriter

DOCS = Path(__file__).resolve().parent.parent / "docs" / "results.md"


def result(mode="grad", status="ok", error="", latency=(1.0, 2.0, 3.0)):
    case = Case("inference", "mlp", "cpu", mode, 32)
    if status != "ok":
        return CaseResult(case, status, error, metrics={"mem_peak_bytes": 10})
    samples = Samples(iterations=2, host_ms=latency, warmup_rounds=1)
    metrics = {"mem_peak_bytes": 1024, "mem_saved_for_backward_bytes": 512, "latency_ratio_to_grad": 1.0}
    return CaseResult(case, samples=samples, items_per_batch=32, metrics=metrics)


@pytest.fixture
def report(tmp_path):
    writer = ReportWriter(tmp_path, collect_environment(), "tiny")
    writer.add(result())
    writer.add(result("no_grad", "failed", "no_grad: output has a grad_fn"))
    writer.finish()
    return writer


def test_round_trip_keeps_values_and_types(report):
    frame = read_report(report.results_dir / "latest.csv")
    assert list(frame.columns) == list(COLUMN_NAMES)
    ok, failed = frame.iloc[0], frame.iloc[1]
    assert ok["schema_version"] == SCHEMA_VERSION and ok["status"] == "ok"
    assert ok["latency_ms_median"] == 2.0 and ok["rounds"] == 3 and ok["iterations"] == 2
    assert ok["throughput_items_per_s"] == pytest.approx(16000.0)
    assert ok["mem_peak_bytes"] == 1024 and str(frame["mem_peak_bytes"].dtype) == "Int64"
    assert ok["strategy"] == "" and ok["run_id"] == report.run_id
    assert failed["status"] == "failed" and failed["error"] == "no_grad: output has a grad_fn"
    assert pd.isna(failed["latency_ms_median"])


def test_raw_samples_are_kept_beside_the_report(report):
    samples = pd.read_csv(samples_path(report.path))
    assert list(samples["latency_ms"]) == [1.0, 2.0, 3.0]
    assert list(samples["round"]) == [0, 1, 2] and set(samples["mode"]) == {"grad"}


def test_report_is_rewritten_after_every_case(tmp_path):
    writer = ReportWriter(tmp_path, collect_environment(), "tiny")
    writer.add(result())
    assert len(read_report(writer.path)) == 1  # an interrupted run keeps this row
    writer.add(result("no_grad"))
    assert len(read_report(writer.path)) == 2
    assert not (tmp_path / "latest.csv").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "r.csv"
    write_csv_atomic(pd.DataFrame({"a": [1]}), path)

    class Exploding(pd.DataFrame):
        def to_csv(self, *args, **kwargs):
            raise OSError("disk full")

    with pytest.raises(OSError):
        write_csv_atomic(Exploding({"a": [2]}), path)
    assert path.read_text() == "a\n1\n" and len(list(tmp_path.iterdir())) == 1


def test_unknown_columns_are_refused():
    with pytest.raises(ValueError, match="not in the schema"):
        to_frame([{"latency_seconds": 1.0}])


def write(tmp_path, text, name="r.csv"):
    path = tmp_path / name
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return path


def valid_text(report):
    return (report.results_dir / "latest.csv").read_text()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp, rep: tmp / "missing.csv", "no such file"),
        (lambda tmp, rep: write(tmp, ""), "empty file"),
        (lambda tmp, rep: write(tmp, "name,score\nalice,3\n"), "no schema_version column"),
        (lambda tmp, rep: write(tmp, b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe"), "schema_version|not a CSV"),
        (
            lambda tmp, rep: write(tmp, valid_text(rep).replace(f"\n{SCHEMA_VERSION},", "\n99,")),
            "newer than this bench_lib",
        ),
        (
            lambda tmp, rep: write(tmp, "schema_version,model\n1,mlp\n"),
            "missing required columns: run_id, suite",
        ),
        (lambda tmp, rep: write(tmp, "schema_version,model\n0,mlp\n"), "unknown schema_version 0"),
        (
            lambda tmp, rep: write(tmp, valid_text(rep).replace(",1024,", ",-1024,")),
            "negative values in mem_peak_bytes",
        ),
        (lambda tmp, rep: write(tmp, valid_text(rep).replace(",ok,", ",great,")), "unknown status"),
        (
            lambda tmp, rep: write(tmp, valid_text(rep).replace(",1024,", ",nan,")),
            "NaN or infinite values in mem_peak_bytes",
        ),
        (lambda tmp, rep: write(tmp, valid_text(rep).replace(",1024,", ",lots,")), "wrong type"),
    ],
)
def test_bad_reports_give_one_clear_error_naming_the_file(tmp_path, report, make, message):
    path = make(tmp_path, report)
    with pytest.raises(UserError, match=message) as err:
        read_report(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_every_column_is_documented():
    doc = DOCS.read_text()
    missing = [c for c in COLUMN_NAMES if f"`{c}`" not in doc]
    assert missing == []
    assert documented(doc) == doc, "docs/results.md is stale: run `make docs`"


def test_version_1_reports_are_migrated():
    old = Path(__file__).parent / "data" / "small_v1.csv"
    assert "inject" not in old.read_text().splitlines()[0]
    frame = read_report(old)
    assert (frame["schema_version"] == SCHEMA_VERSION).all() and frame["inject"].isna().all()
    assert list(frame.columns) == list(COLUMN_NAMES)


def test_version_2_reports_are_migrated():
    old = Path(__file__).parent / "data" / "small_v2.csv"
    assert "energy_j_per_item" not in old.read_text().splitlines()[0]
    frame = read_report(old)
    assert (frame["schema_version"] == SCHEMA_VERSION).all()
    assert frame["energy_j_per_item"].isna().all() and frame["cuda_max_allocated_bytes"].isna().all()
    assert list(frame.columns) == list(COLUMN_NAMES)


def test_version_6_energy_is_read_at_the_timed_rounds_pace():
    """The H200 example (version 6) holds the energy phase's energy / calls; version 7 reads it
    as the row's power / throughput, as new rows are written (`CaseResult.row`)."""
    import pandas as pd

    path = Path(__file__).parent.parent / "results" / "examples" / "nvidia-h200" / "nvidia-h200.csv"
    raw = pd.read_csv(path)
    assert (raw["schema_version"] == 6).all()
    frame = read_report(path)
    cuda = frame["gpu_power_w"].notna()
    assert cuda.sum() == 108 and (frame["schema_version"] == SCHEMA_VERSION).all()
    expected = frame["gpu_power_w"] / frame["throughput_items_per_s"]
    assert (frame.loc[cuda, "energy_j_per_item"] - expected[cuda]).abs().max() < 1e-15
    moved = (frame["energy_j_per_item"] / raw["energy_j_per_item"] - 1).abs()
    assert moved.max() > 0.2  # the phase's own pace was far off the rounds' in some cases
    small = read_report(Path(__file__).parent / "data" / "small.csv")
    no_power = small["gpu_power_w"].isna()
    assert no_power.sum() == 10 and small.loc[no_power, "energy_j_per_item"].isna().all()  # nothing made up


def test_a_result_that_did_not_succeed_must_say_why():
    case = Case("finetune", "mlp", "cpu", "", 2, strategy="full", optimizer="sgd")
    with pytest.raises(ValueError, match="needs an error message"):
        CaseResult(case, "failed", "")
    with pytest.raises(ValueError, match="status must be one of"):
        CaseResult(case, "broken", "why")


def test_version_3_cpu_peaks_are_not_read_as_allocator_peaks():
    """Version 3 counted tensor storages on the CPU: another quantity than the allocator's
    high-water mark, so those figures are read as empty (CUDA's were the allocator's already)."""
    old = Path(__file__).parent / "data" / "small_v3.csv"
    assert old.read_text().splitlines()[1].startswith("3,")
    frame = read_report(old)
    assert (frame["schema_version"] == SCHEMA_VERSION).all()
    assert frame.loc[frame["device"] == "cpu", "mem_peak_bytes"].isna().all()
    assert frame.loc[frame["device"] == "cuda", "mem_peak_bytes"].tolist() == [99328]
    assert frame["mem_saved_for_backward_bytes"].notna().any()  # other memory columns kept


def test_module_rows_go_to_a_companion_file_beside_the_report(tmp_path):
    rows = (ModuleMemory("lin", "Linear", "lin", 512, 768), ModuleMemory("(root)", "Net", "(root)", 0, 256))
    measured = CaseResult(
        Case("inference", "mlp", "cpu", "grad", 32), metrics={"mem_peak_bytes": 1024}, modules=rows
    )
    writer = ReportWriter(tmp_path, collect_environment(), "tiny")
    writer.add(measured)
    writer.add(result("no_grad"))  # no module rows
    frame = read_modules(writer.path)
    assert list(frame.columns) == list(MODULE_FILE_COLUMNS)
    assert frame["module"].tolist() == ["lin", "(root)"] and frame["mem_peak_bytes"].sum() == 1024
    assert (frame["run_id"] == writer.run_id).all() and (frame["mode"] == "grad").all()
    writer.finish()
    assert read_modules(tmp_path / "latest.csv").equals(frame)
    assert read_modules(tmp_path / "nothing.csv") is None


def test_a_broken_modules_file_is_one_clear_error(tmp_path):
    report = tmp_path / "r.csv"
    modules_path(report).write_text("run_id,module\nx,y\n")
    with pytest.raises(UserError, match=r"r\.modules\.csv: missing columns"):
        read_modules(report)


def test_module_columns_are_documented():
    doc = DOCS.read_text()
    assert [c.name for c in MODULE_COLUMNS if f"`{c.name}`" not in doc] == []


def test_migrations_add_columns_by_name_not_by_position():
    """A column added to the schema later must not appear in a migrated old report's history
    through a positional slice of the column table."""
    from bench_lib.records import schema

    v2 = pd.DataFrame({"schema_version": ["2"], "device": ["cpu"], "mem_peak_bytes": [pd.NA]})
    migrated = schema._MIGRATIONS[2](v2)
    assert set(migrated.columns) - set(v2.columns) == set(schema.V3_ADDED)
    assert "mem_disagreement" not in migrated and "float32_defaults" not in migrated


def test_an_interrupt_between_the_first_writes_still_leaves_latest_csv(tmp_path, monkeypatch):
    """Ctrl-C can land after the report's first write and before its samples are written (seen in
    CI): the row on disk must still reach latest.csv, and no stale companion may stay beside it."""
    import bench_lib.session as session

    (tmp_path / "latest.samples.csv").write_text("stale")
    writes = []
    real = session.write_csv_atomic

    def interrupted(frame, path):
        writes.append(path)
        if len(writes) == 2:
            raise KeyboardInterrupt
        real(frame, path)

    monkeypatch.setattr(session, "write_csv_atomic", interrupted)
    writer = ReportWriter(tmp_path, collect_environment(), "tiny")
    with pytest.raises(KeyboardInterrupt):
        writer.add(result())
    assert writer.finish() == writer.path
    assert len(read_report(tmp_path / "latest.csv")) == 1
    assert not (tmp_path / "latest.samples.csv").exists()


def test_atomic_writes_follow_links_keep_modes_and_write_into_pipes(tmp_path):
    import os
    import threading

    from bench_lib.records.schema import write_text_atomic

    target = tmp_path / "real.md"
    target.write_text("old")
    target.chmod(0o640)
    link = tmp_path / "link.md"
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"  # the link stays, its target is replaced
    assert target.stat().st_mode & 0o777 == 0o640  # an existing file keeps its permissions
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    write_text_atomic(fifo, "through the pipe")
    reader.join(timeout=10)
    assert got == ["through the pipe"] and fifo.exists() and not fifo.is_file()  # not replaced by a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "link.md", "real.md"]


def test_a_pipe_whose_reader_leaves_early_is_one_line_naming_it(tmp_path):
    """`gate ... --md FIFO` whose reader closes before the end: an error naming the pipe (one
    line, exit 2, at the command line), not the quiet exit 141 of a closed standard output,
    which the gate's callers would not tell from a verdict they never saw. 1 MB fills the
    pipe's buffer, so the write waits for the reader and sees it go."""
    import os
    import threading

    from bench_lib.records.schema import write_text_atomic

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = threading.Thread(target=lambda: open(fifo).close())  # opens, reads nothing, leaves
    reader.start()
    with pytest.raises(UserError, match=f"{fifo}: its reader closed it before the end"):
        write_text_atomic(fifo, "x" * 2**20)
    reader.join(timeout=10)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\xff\xfe\x00binary", "not valid TOML (not UTF-8 text)"), (b"[tool\n", "not valid TOML")],
)
def test_a_settings_file_that_is_not_toml_is_one_line(tmp_path, capsys, content, message):
    from bench_lib.cli import main

    config = tmp_path / "c.toml"
    config.write_bytes(content)
    small = str(Path(__file__).parent / "data" / "small.csv")
    assert main(["gate", small, small, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    # not a regular file: a pipe (`--config <(...)`) would be read once of the several reads
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for other in (fifo, Path("/dev/null")):
        assert main(["gate", small, small, "--config", str(other)]) == 2
        assert f"--config {other}: not a regular file ('none' for the defaults)" in capsys.readouterr().err


def test_a_settings_section_that_is_not_a_table_is_one_line(tmp_path):
    from bench_lib.config import tool_table

    config = tmp_path / "c.toml"
    config.write_text("[tool.bench_lib]\ngate = 3\n")
    with pytest.raises(UserError, match=r"\[tool.bench_lib.gate\] must be a table"):
        tool_table(config, "gate")
    config.write_text('[tool]\nbench_lib = "x"\n')
    with pytest.raises(UserError, match=r"\[tool.bench_lib\] must be a table"):
        tool_table(config)
    assert tool_table(tmp_path / "missing.toml", "gate") == {}


def test_a_case_added_twice_is_one_row_with_its_samples_and_modules_once(tmp_path):
    """A write that failed half-way (the report written, its samples not) is tried again when a
    second test asks for the case: the report must still have one row per case."""
    rows = (ModuleMemory("lin", "Linear", "lin", 512, 768),)
    measured = CaseResult(
        Case("inference", "mlp", "cpu", "grad", 32), samples=Samples(iterations=2, host_ms=(1.0, 2.0, 3.0), warmup_rounds=1),
        metrics={"mem_peak_bytes": 1024}, modules=rows,
    )  # fmt: skip
    writer = ReportWriter(tmp_path, collect_environment(), "tiny")
    writer.add(measured)
    writer.add(result("no_grad"))
    writer.add(measured)
    assert len(read_report(writer.path)) == 2
    assert len(pd.read_csv(samples_path(writer.path)).query("mode == 'grad'")) == 3
    assert len(read_modules(writer.path)) == 1


def test_atomic_writes_reach_a_pipe_through_proc_fd(tmp_path):
    from bench_lib.records.schema import write_text_atomic

    r, w = os.pipe()
    try:
        write_text_atomic(Path(f"/proc/self/fd/{w}"), "piped")  # what /dev/stdout or >(...) is
        assert os.read(r, 100) == b"piped"
    finally:
        os.close(r)
        os.close(w)
