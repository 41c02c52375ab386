"""The suite registry: a new suite is one package under bench_lib/suites/, found on first use,
and the run, the worker, the pytest plugin's fixtures and the report all pick it up."""

import sys
import textwrap

import pytest

import bench_lib.suites as suites
from bench_lib.session import RunConfig

NEW_SUITE = '''
"""A suite written for this test: one case per model and batch size, "measured" as fixed samples."""

from bench_lib.records.cases import Case
from bench_lib.records.results import CaseResult
from bench_lib.records.stats import Samples
from bench_lib.suites import Suite, register


class EchoSuite(Suite):
    name = "echo"
    order = 50

    def cases(self, config):
        return [Case("echo", m, d, "once", b) for m in config.model_names for d in config.devices
                for b in config.profile.batch_sizes]

    def measure(self, group, cases, request, device):
        return {c: CaseResult(c, samples=Samples(iterations=1, host_ms=(1.0, 2.0, 3.0)), items_per_batch=1)
                for c in cases}

    def report_sections(self, frame):
        rows = frame[frame["suite"] == "echo"][["model", "latency_ms_median"]]
        return [("Echo", "The test suite's median.", rows)]


register(EchoSuite())
'''


@pytest.fixture
def echo_suite(tmp_path, monkeypatch):
    """`bench_lib.suites` with one more package in it, as if a developer had added the module."""
    package = tmp_path / "echo"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(NEW_SUITE))
    monkeypatch.setattr(suites, "__path__", [*suites.__path__, str(tmp_path)])
    monkeypatch.setattr(suites._Registry, "_loaded", False)
    yield suites.SUITES
    suites._REGISTRY.pop("echo", None)
    suites._Registry._loaded = False
    sys.modules.pop("bench_lib.suites.echo", None)  # the next test's echo registers itself again


def test_the_built_in_suites_are_registered_in_order():
    assert list(suites.SUITES) == ["ruler", "inference", "finetune"]


def test_a_new_suite_module_joins_the_run_the_worker_and_the_report(echo_suite, tmp_path):
    assert list(echo_suite) == ["ruler", "inference", "finetune", "echo"]
    config = RunConfig.parse(profile="tiny", models="mlp", devices="cpu", results_dir=str(tmp_path))
    echo = config.cases_of("echo")
    assert [c.id for c in echo] == ["mlp-cpu-b1-once", "mlp-cpu-b4-once"]
    assert echo[0] in config.cases()

    from bench_lib.analysis.report import render_markdown
    from bench_lib.session import BenchSession

    config = RunConfig.parse(
        profile="tiny", models="mlp", devices="cpu", processes="0", results_dir=str(tmp_path)
    )
    session = BenchSession(config)
    result = session.result(echo[0])  # through the worker's dispatch, in this process
    assert result.ok and result.samples.stats().median == 2.0
    assert "## Echo" in render_markdown(session.writer.frame())


def test_a_report_given_through_a_link_keeps_its_companions_beside_it(echo_suite, tmp_path):
    from bench_lib.session import BenchSession

    config = RunConfig.parse(
        profile="tiny", models="mlp", devices="cpu", processes="0", results_dir=str(tmp_path)
    )
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "other" / "real.csv")  # a folder not made yet
    session = BenchSession(config, out=link)
    assert session.result(config.cases_of("echo")[0]).ok
    session.close()
    names = sorted(p.name for p in (tmp_path / "other").iterdir())
    assert names == ["real.csv", "real.modules.csv", "real.samples.csv"]
    assert not (tmp_path / "link.samples.csv").exists()


def test_two_suites_with_one_name_are_refused():
    class Twin(suites.Suite):
        name = "inference"

    with pytest.raises(ValueError, match="two suites are called 'inference'"):
        suites.register(Twin())
