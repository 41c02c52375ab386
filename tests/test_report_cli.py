"""`python -m bench_lib report | compare`: renderers, the join, and every bad input."""

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench_lib.analysis.compare import compare, summary, view
from bench_lib.analysis.report import noise_view, render_markdown, where_memory_goes_table
from bench_lib.cli import load_results, main
from bench_lib.errors import UserError
from bench_lib.records.schema import SCHEMA_VERSION, read_modules, read_report

DATA = Path(__file__).parent / "data"
SMALL = DATA / "small.csv"


def test_markdown_report_matches_the_golden_file():
    assert render_markdown(read_report(SMALL)) == (DATA / "small_report.md").read_text()


def test_noise_section_flags_spread_few_rounds_and_failures():
    flags = noise_view(read_report(SMALL))
    assert ("inference-mlp-cpu-b32-inference_mode", "noisy") in set(
        zip(flags["case"], flags["flag"], strict=True)
    )
    assert "p99 from only 50 rounds" in set(flags["why"])
    assert "no_grad: output has a grad_fn" in set(flags["why"])
    cuda = flags[flags["case"] == "inference-mlp-cuda-b32-bfloat16-no_grad"]
    assert {"disturbed", "throttled"} <= set(cuda["flag"])
    assert "memory varies" not in set(flags["flag"])
    varied = read_report(SMALL)
    varied.loc[0, "mem_disagreement"] = "mem_peak_bytes: 512 vs 1024"
    flags = noise_view(varied)
    assert flags[flags["flag"] == "memory varies"]["why"].tolist() == [
        "worker processes measured different bytes: mem_peak_bytes: 512 vs 1024"
    ]


def test_html_report_has_findings_first_every_section_and_embedded_plots(tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", str(SMALL), "--format", "html", "--out", str(out)]) == 0
    page = out.read_text()
    titles = [
        "Findings",
        "Environment",
        "Inference",
        "Fine-tuning",
        "Where the memory goes",
        "GPU",
        "Noise and failures",
    ]
    positions = [page.index(f"<h2>{title}</h2>") for title in titles]
    assert positions == sorted(positions)  # Findings first
    # every contents link has its target: sections and the collapsible model sections
    for target in re.findall(r'href="#([^"]+)"', page):
        assert f'id="{target}"' in page, target
    assert '<details id="inference-mlp" open>' in page and 'href="#fine-tuning-mlp"' in page
    # forest plots of the ratios with memory (mlp cpu, mlp cuda bf16; the transformer has no ratio
    # but grad's), fine-tuning (mlp cpu), where the memory goes (mlp cpu batch 32, small.modules.csv)
    assert page.count('src="data:image/png;base64,') == 2 + 1 + 1
    assert "http" not in page and "<script" not in page  # self-contained and offline
    # the interval rule in the tables: no_grad's interval contains 1.0, inference_mode's does not
    est = '<span class="v">{}</span> <span class="ci">{}</span>'  # the interval may go under its figure
    assert est.format("0.980", "±0.030") + '<span class="tag">no measurable difference</span>' in page
    assert est.format("0.960", "±0.020") + "</td>" in page
    # the best fine-tuning cells (shortest step, smallest total) are marked
    assert '<td class="num best est">' + est.format("0.950", "±0.010") + "</td>" in page
    assert '<td class="num best">2.65</td>' in page
    assert (
        '<table class="wrap-ci">' not in page
    )  # a report's figures stay on one line (a comparison's may wrap)
    assert "<th>grad peak (MiB)</th>" in page  # units in the headers


def test_console_report_defaults_to_latest(tmp_path, monkeypatch, capsys):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "latest.csv").write_text(SMALL.read_text())
    monkeypatch.chdir(tmp_path)
    assert main(["report"]) == 0
    out = capsys.readouterr().out
    assert "Inference:" in out and "Fine-tuning:" in out and "Example CPU 9000" in out
    assert "Frozen blocks run in eval(): their BatchNorm statistics" in out  # the BN policy


def other_machine(tmp_path, speed=2.0, drop_model=None, add_row=False):
    frame = read_report(SMALL)
    frame["cpu_model"] = "Other CPU"
    for column in ("latency_ms_median", "latency_ms_median_ci_low", "latency_ms_median_ci_high"):
        frame[column] = frame[column] * speed
    if drop_model:
        frame = frame[frame["model"] != drop_model]
    if add_row:
        extra = frame.iloc[[0]].copy()
        extra["batch_size"] = 1
        frame = pd.concat([frame, extra])
    path = tmp_path / "other.csv"
    frame.to_csv(path, index=False)
    return path


def test_compare_joins_on_the_case_key_and_lists_one_sided_cases(tmp_path):
    other = other_machine(tmp_path, drop_model="transformer", add_row=True)
    result = compare([read_report(SMALL), read_report(other)])
    assert result.labels == ("Example CPU 9000 / torch 2.13.0+cpu", "Other CPU / torch 2.13.0+cpu")
    ratio = result.table["latency_ms_median ratio [Other CPU / torch 2.13.0+cpu]"]
    assert len(result.table) == 9 and (ratio == 2.0).all()  # 6 ok cases of mlp (1 on CUDA), 3 rulers
    assert list(result.only_in) == ["Example CPU 9000 / torch 2.13.0+cpu", "Other CPU / torch 2.13.0+cpu"]
    assert set(result.only_in["Example CPU 9000 / torch 2.13.0+cpu"]["model"]) == {"transformer"}
    assert list(result.only_in["Other CPU / torch 2.13.0+cpu"]["batch_size"]) == [1]


@pytest.mark.parametrize("fmt", ["console", "csv", "md", "html"])
def test_compare_formats(tmp_path, capsys, fmt):
    assert main(["compare", str(SMALL), str(other_machine(tmp_path)), "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert ("latency_ms_median" if fmt == "csv" else "median ms A") in out and "Other CPU" in out


def test_compare_marks_changes_whose_intervals_do_not_overlap(tmp_path):
    """Twice as slow: the mlp's intervals (3 processes) move apart; the transformer ran in one
    process, so its change is not marked either way."""
    result = compare([read_report(SMALL), read_report(other_machine(tmp_path, speed=2.0))])
    table = result.table.set_index(["model", "device", "mode", "strategy"])
    label = "Other CPU / torch 2.13.0+cpu"
    overlap = table[f"latency_ms_median overlap [{label}]"]
    assert not overlap[("mlp", "cpu", "grad", "")] and not overlap[("mlp", "cpu", "", "frozen_3")]
    assert pd.isna(overlap[("transformer", "cpu", "grad", "")])
    shown = view(result).set_index(["model", "device", "mode", "strategy"])["median ms B/A"]
    assert shown[("mlp", "cpu", "grad", "")] == "2.000 (non-overlapping intervals)"
    assert shown[("transformer", "cpu", "grad", "")] == "2.000"  # no interval: no claim
    # the input that must fail the mark: a change inside the noise overlaps
    close = compare([read_report(SMALL), read_report(other_machine(tmp_path, speed=1.005))])
    shown = view(close).set_index(["model", "device", "mode", "strategy"])["median ms B/A"]
    assert shown[("mlp", "cpu", "grad", "")] == "1.005 (overlapping intervals)"
    assert "5 of 5 cases with intervals in both have non-overlapping intervals" in summary(result)[0]
    assert "0 of 5 cases with intervals in both have non-overlapping intervals" in summary(close)[0]


def test_same_machine_twice_is_told_apart_by_run():
    frame = read_report(SMALL)
    result = compare([frame, frame])
    assert result.labels[0] != result.labels[1] and "20260101T000000Z" in result.labels[0]


def test_load_results_concatenates_reports():
    assert len(load_results([SMALL, SMALL])) == 2 * len(read_report(SMALL))


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (lambda t: ["report", str(t / "nope.csv")], "no such file"),
        (lambda t: ["report", write(t, "e.csv", "")], "empty file"),
        (lambda t: ["report", write(t, "x.csv", "a,b\n1,2\n")], "no schema_version column"),
        (
            lambda t: [
                "report",
                write(t, "v.csv", SMALL.read_text().replace("\n5,", f"\n{SCHEMA_VERSION + 1},")),
            ],
            "newer",
        ),
        (lambda t: ["report", write(t, "n.csv", SMALL.read_text().replace(",262144,", ",-5,"))], "negative"),
        (lambda t: ["report", write(t, "m.csv", "schema_version,suite\n1,inference\n")], "missing required"),
        (lambda t: ["report", str(SMALL), "--format", "html"], "--format html needs --out"),
        (lambda t: ["report", "--format", "pdf"], "invalid choice"),
        (lambda t: ["compare", str(SMALL)], "at least two reports"),
        (
            lambda t: ["compare", str(SMALL), str(other_machine(t, drop_model="mlp").with_name("o.csv"))],
            "no such file",
        ),
        (lambda t: ["frobnicate"], "invalid choice"),
        # a report cut off mid-row: pandas would fill the row's missing fields with nothing
        (
            lambda t: ["report", write(t, "cut.csv", SMALL.read_text()[:-200])],
            "line 12 has 59 fields, the header 96",
        ),
        (
            lambda t: ["gate", write(t, "cut.csv", SMALL.read_text()[:-200]), str(SMALL)],
            "a truncated or damaged report",
        ),
        (lambda t: ["report", edited(t, 2, status="")], "row 3 has no status"),
        (lambda t: ["gate", edited(t, 3, model=""), str(SMALL)], "row 4 has no model"),
        (
            lambda t: ["history", "add", edited(t, 3, model=""), "--db", str(t / "h.sqlite")],
            "row 4 has no model",
        ),
        (lambda t: ["compare", duplicated(t), str(SMALL)], "has 2 rows (row 11, row 12): one row per case"),
        (lambda t: ["report", with_cut_modules(t)], "a truncated or damaged modules file"),
        # lines ended by a lone CR (pandas splits them so too), cut off mid-row
        (
            lambda t: ["report", write(t, "cr.csv", SMALL.read_text().replace("\n", "\r")[:-200])],
            "line 12 has 59 fields",
        ),
        # compressed: the bytes checked are the bytes parsed (no decompression by suffix)
        (lambda t: ["report", gzipped(t, SMALL.read_text()[:-200])], "cut.csv.gz: "),
        # after blank lines the header is still the header: the cut row is what is named
        (
            lambda t: ["report", write(t, "b.csv", "\n\n" + SMALL.read_text()[:-200])],
            "line 14 has 59 fields, the header 96",
        ),
        (lambda t: ["report", write(t, "q.csv", '""\n')], "q.csv: "),
        # not a report at all, and no line end either: what it is comes first
        (
            lambda t: ["report", write(t, "nr.csv", "a,b\n1,2")],
            "nr.csv: no schema_version column: not a bench_lib",
        ),
        # cut inside the last field ("glibc pin" of "glibc pinned"), or right after the last comma:
        # as many fields as the header, only the line end is missing
        (
            lambda t: ["report", write(t, "f.csv", SMALL.read_text()[:-4])],
            "f.csv: the last line has no line end",
        ),
        (
            lambda t: ["gate", str(SMALL), write(t, "c.csv", SMALL.read_text().rsplit(",", 1)[0] + ",")],
            "the last line has no line end: a truncated report",
        ),
        (lambda t: ["report", str(SMALL), str(SMALL)], "is given twice"),
        (lambda t: ["report", str(SMALL), another_run(t)], "both measured inference-mlp-cpu-b32-grad"),
        # one file that holds two runs is named alone, with or without another file beside it
        (lambda t: ["report", two_runs(t)], "two.csv holds runs 20260101T000000Z_0123456789ab and 20260102"),
        (
            lambda t: ["report", two_runs(t), another_run(t)],
            "two.csv holds runs 20260101T000000Z_0123456789ab",
        ),
        (lambda t: ["precision", str(SMALL), str(SMALL)], "hold the same run 20260101T000000Z_0123456789ab"),
        (lambda t: ["report", write(t, "h.csv", "schema_version,run_id\n")], "h.csv: a header and no rows"),
        (lambda t: ["report", str(t)], "a folder, not a report"),
        # OS errors: one line naming the path, not a traceback
        (lambda t: ["report", str(SMALL), "--format", "md", "--out", str(t)], "{t}: Is a directory"),
        (lambda t: ["report", str(SMALL), "--out", f"{SMALL}/x.md"], f"{SMALL}: a file, not a folder"),
        (lambda t: ["compare", str(SMALL), another_run(t), "--out", str(t)], "Is a directory"),
        # a results folder that is a link to nothing: not "a file"
        (
            lambda t: ["history", "add", str(SMALL), "--db", f"{dangling(t)}/h.sqlite"],
            "{t}/gone: a link to {t}/nowhere/x, which does not exist",
        ),
        (
            lambda t: ["report", str(SMALL), "--format", "md", "--out", f"{dangling(t)}/x.md"],
            "{t}/gone: a link to {t}/nowhere/x, which does not exist",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert main(argv(tmp_path)) == 2
    err = capsys.readouterr().err
    assert message.replace("{t}", str(tmp_path)) in err and err.count("\n") == 1, err


def edited(tmp_path, row, **values):
    """SMALL with `values` set in one row (0-based), as text."""
    frame = pd.read_csv(SMALL, dtype=str, keep_default_na=False)
    for column, value in values.items():
        frame.loc[row, column] = value
    frame.to_csv(tmp_path / "edited.csv", index=False)
    return str(tmp_path / "edited.csv")


def dangling(tmp_path):
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere" / "x")
    return tmp_path / "gone"


def test_a_results_folder_that_is_a_link_to_nothing_is_named_so(tmp_path):
    from bench_lib.errors import UserError
    from bench_lib.records.schema import check_writable

    with pytest.raises(UserError, match=r"a link to .*nowhere/x, which does not exist"):
        check_writable(dangling(tmp_path))
    with pytest.raises(UserError, match="a file, not a folder"):
        check_writable(Path(write(tmp_path, "f", "")))


def test_a_report_is_not_written_through_a_link_to_nothing(tmp_path):
    """`report --out LINK/sub/x.md`, LINK a link to a folder that does not exist: refused as
    `check_writable` refuses it for a run, and no folder made at the link's target."""
    assert main(["report", str(SMALL), "--format", "md", "--out", f"{dangling(tmp_path)}/sub/x.md"]) == 2
    assert not (tmp_path / "nowhere").exists()
    # a link to a file is followed, its folder made (as a run's report given so: test_suites)
    (tmp_path / "file-link.md").symlink_to(tmp_path / "made" / "x.md")
    assert main(["report", str(SMALL), "--format", "md", "--out", str(tmp_path / "file-link.md")]) == 0
    assert (tmp_path / "made" / "x.md").is_file() and (tmp_path / "file-link.md").is_symlink()
    folder = tmp_path / "real"
    folder.mkdir()
    (tmp_path / "alive").symlink_to(folder)  # a link to a folder that exists is followed
    assert main(["report", str(SMALL), "--format", "md", "--out", f"{tmp_path}/alive/sub/x.md"]) == 0
    assert (folder / "sub" / "x.md").read_text().startswith("# bench_lib report")


def gzipped(tmp_path, text):
    import gzip

    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress(text.encode()))
    return str(tmp_path / "cut.csv.gz")


def duplicated(tmp_path):
    lines = SMALL.read_text().splitlines()
    return write(tmp_path, "dup.csv", "\n".join([*lines, lines[-1]]) + "\n")


def with_cut_modules(tmp_path):
    report = Path(write(tmp_path, "r.csv", SMALL.read_text()))
    report.with_name("r.modules.csv").write_text(SMALL.with_name("small.modules.csv").read_text()[:-30])
    return str(report)


def two_runs(tmp_path):
    """SMALL and a second run of its cases in one file."""
    lines = SMALL.read_text().replace("20260101T000000Z_", "20260102T000000Z_").splitlines()[1:]
    return write(tmp_path, "two.csv", SMALL.read_text() + "\n".join(lines) + "\n")


def another_run(tmp_path):
    """SMALL as a second run of the same cases (another run id)."""
    return write(tmp_path, "b.csv", SMALL.read_text().replace("20260101T000000Z_", "20260102T000000Z_"))


def test_the_row_checks_pass_every_committed_report():
    examples = Path("results/examples").rglob("*.csv")
    for path in (*DATA.glob("small*.csv"), *Path("results/baseline").glob("*.csv"), *examples):
        if not path.name.endswith((".samples.csv", ".modules.csv")):
            assert not read_report(path).empty


def test_reports_of_different_cases_still_combine(tmp_path, capsys):
    frame = read_report(SMALL)
    inference, finetune = frame[frame["suite"] != "finetune"], frame[frame["suite"] == "finetune"]
    inference.to_csv(tmp_path / "i.csv", index=False)
    finetune.assign(run_id="20260102T000000Z_0123456789ab").to_csv(tmp_path / "f.csv", index=False)
    assert main(["report", str(tmp_path / "i.csv"), str(tmp_path / "f.csv")]) == 0
    out = capsys.readouterr().out
    assert "frozen_3" in out and "no_grad" in out


def test_a_closed_pipe_ends_quietly():
    """`report | head`: the reader has gone when the report is written; no traceback, no
    "Exception ignored" at exit, exit 141 (a shell's code for a writer stopped by a closed pipe;
    no verdict of the gate's)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench_lib", "report", str(SMALL)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the report is rendered (importing pandas alone takes longer)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == "", err


def test_files_written_atomically_get_the_usual_permissions(tmp_path):
    import os

    out = tmp_path / "r.md"
    assert main(["report", str(SMALL), "--format", "md", "--out", str(out)]) == 0
    mask = os.umask(0o022)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # mkstemp alone gives 0600
    assert [p.name for p in tmp_path.iterdir()] == ["r.md"]  # no temporary file left


@pytest.mark.parametrize("interval", [True, False])  # a run of one process records none
def test_compare_shows_the_references_own_ratio_as_the_reference(tmp_path, interval):
    frame = read_report(SMALL)
    grad = frame["mode"] == "grad"
    frame.loc[grad, ["latency_ratio_to_grad_ci_low", "latency_ratio_to_grad_ci_high"]] = (
        1.0 if interval else None
    )
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.assign(run_id="20260102T000000Z_0123456789ab").to_csv(tmp_path / "b.csv", index=False)
    table = view(compare([read_report(tmp_path / "a.csv"), read_report(tmp_path / "b.csv")]))
    rows = table[(table["mode"] == "grad") & (table["model"] == "mlp") & (table["device"] == "cpu")]
    assert rows.filter(like="/ grad").iloc[0].tolist() == ["1 (reference)", "1 (reference)"]
    assert "±0.000" not in table.to_string()


def test_reports_without_common_cases(tmp_path):
    frame = read_report(SMALL)
    frame["model"] = frame["model"] + "_other"  # still one row per case
    path = tmp_path / "o.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(UserError, match="no case in common"):
        compare([read_report(SMALL), read_report(path)])


def test_the_module_entry_point_exits_2_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench_lib", "report", str(tmp_path / "missing.csv")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {tmp_path / 'missing.csv'}: no such file"


def test_where_the_memory_goes_splits_each_case_by_block_and_type_summing_to_its_figures():
    frame, modules = read_report(SMALL), read_modules(SMALL)
    table = where_memory_goes_table(modules)
    key = ("mlp", "cpu", "float32", 32)
    blocks = table.loc[key].xs("block")
    cases = frame[(frame["model"] == "mlp") & (frame["device"] == "cpu")].set_index(["mode", "strategy"])
    total = blocks.loc["(total)"]
    assert total["grad peak"] == cases.loc[("grad", ""), "mem_peak_bytes"]
    assert total["grad saved"] == cases.loc[("grad", ""), "mem_saved_for_backward_bytes"]
    assert total["no_grad peak"] == cases.loc[("no_grad", ""), "mem_peak_bytes"]
    assert total["full peak"] == cases.loc[("", "full"), "mem_peak_bytes"]
    assert total["frozen_3 peak"] == cases.loc[("", "frozen_3"), "mem_peak_bytes"]
    parts = blocks.drop(index="(total)").sum()
    assert (parts == total).all()  # the blocks add up to the case
    types = table.loc[key].xs("type")
    assert (types.sum() == total).all()  # so do the module types
    assert types.loc["Linear", "full peak"] == 526336 + 2 * 1050624 + 20520  # the gradients
    # what freezing the first three blocks saves, block by block
    assert blocks.loc["trunk_blocks.1", "full peak"] == 1050624
    assert pd.isna(blocks.loc["trunk_blocks.1", "frozen_3 peak"])


def test_markdown_report_shows_where_the_memory_goes_when_given_module_rows():
    text = render_markdown(read_report(SMALL), modules=read_modules(SMALL))
    assert "## Where the memory goes" in text and "| trunk_blocks.1 " in text and "| (total) " in text
    assert "## Where the memory goes" not in render_markdown(read_report(SMALL))


@pytest.mark.parametrize("name", ["small.csv", "small_v1.csv", "small_v2.csv", "small_v3.csv"])
@pytest.mark.parametrize("form", ["console", "md", "html"])
def test_every_committed_report_renders_in_every_format(tmp_path, capsys, name, form):
    """Old formats too: version 3 CPU peaks read as empty, which the HTML plots once tripped on."""
    assert main(["report", str(DATA / name), "--format", form, "--out", str(tmp_path / f"r.{form}")]) == 0


@pytest.mark.parametrize(
    ("edit", "rows"),
    [
        (lambda t: t.replace("\n", "\r\n"), 11),  # CRLF
        (lambda t: "\ufeff" + t, 11),  # a byte-order mark
        (lambda t: t + "\n   \n\n", 11),  # blank and whitespace-only lines, as pandas skips them
        (lambda t: "\n  \n" + t, 11),  # blank lines before the header too
        (lambda t: t.replace("output has a grad_fn", 'output has a grad_fn,\n""twice""'), 11),  # quoted
    ],
)
def test_legitimate_variants_of_a_report_are_read(tmp_path, edit, rows):
    text = SMALL.read_text()
    if "grad_fn" in text:
        text = text.replace("no_grad: output has a grad_fn", '"no_grad: output has a grad_fn"', 1)
    path = tmp_path / "r.csv"
    path.write_text(edit(text), newline="")
    frame = read_report(path)
    assert len(frame) == rows and frame["status"].notna().all()


def test_a_duplicate_names_the_rows_of_its_own_case_only(tmp_path, capsys):
    lines = SMALL.read_text().splitlines()
    path = write(tmp_path, "d.csv", "\n".join([*lines, lines[3], lines[9]]) + "\n")  # two cases again
    assert main(["report", path]) == 2
    err = capsys.readouterr().err
    assert "has 2 rows (row 3, row 12)" in err


def test_a_report_without_run_ids_is_one_line(tmp_path, capsys):
    read_report(SMALL).drop(columns="run_id").to_csv(tmp_path / "n.csv", index=False)
    assert main(["precision", str(tmp_path / "n.csv"), str(tmp_path / "n.csv")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'n.csv'}: missing required columns: run_id\n"


def test_comparison_rows_name_the_dtype_where_a_models_cases_differ_in_it():
    """The two H200 runs: every case in four dtypes; the comparison's plot labelled each model's
    rows without the dtype ("finetune b32 adamw full" four times over)."""
    from bench_lib.analysis.plots import case_names

    example = Path("results/examples/nvidia-h200")
    table = compare(
        [read_report(example / "first-run" / "nvidia-h200.csv"), read_report(example / "nvidia-h200.csv")]
    ).table
    for model, group in table.groupby("model", sort=False):
        names = case_names(group)
        assert len(set(names)) == len(names) == len(group), model
    mlp = case_names(table[table["model"] == "mlp"])
    assert "inference b32 bfloat16 inference_mode" in mlp and "finetune b32 float16 adamw lora" in mlp
    one_dtype = table[(table["model"] == "mlp") & (table["dtype"] == "float32")]
    assert "inference b32 grad" in case_names(one_dtype)  # said only where it tells cases apart


def test_a_memory_figure_is_shown_once_only_where_every_report_measured_it_to_the_byte(tmp_path):
    """`compare --format html`: peak bytes equal in both reports become one `peak (A = B)`
    column without its B/A; one byte apart in one row (the same "2.5 MiB" on screen) keeps
    A, B and B/A, as does a figure only one report has."""
    from bench_lib.analysis.compare import compare, letters, same_memory_once, view

    a = read_report(SMALL)
    b = a.copy()
    first = compare([a, b], names=["a", "b"])
    rows = view(first)
    merged = same_memory_once(rows, first)
    assert "peak (A\u00a0=\u00a0B)" in merged and "peak A" not in merged and "peak B/A" not in merged
    assert list(merged["peak (A\u00a0=\u00a0B)"]) == list(rows["peak A"])
    assert letters(first) == ["A", "B"]
    ok = b["mem_peak_bytes"].notna()
    b.loc[b.index[ok][0], "mem_peak_bytes"] += 1
    apart = compare([a, b], names=["a", "b"])
    kept = same_memory_once(view(apart), apart)
    assert {"peak A", "peak B", "peak B/A"} <= set(kept.columns)
    assert "activations (A\u00a0=\u00a0B)" in kept  # the others still merge
    b = a.copy()
    b.loc[b.index[ok][0], "mem_peak_bytes"] = pd.NA  # measured in A only: no agreement either
    lacking = compare([a, b], names=["a", "b"])
    assert {"peak A", "peak B", "peak B/A"} <= set(same_memory_once(view(lacking), lacking).columns)
