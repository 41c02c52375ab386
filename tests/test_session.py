import pytest
import torch

from bench_lib.errors import UserError
from bench_lib.measure.environment import torch_threads
from bench_lib.session import DEFAULT_THREADS, RunConfig


def test_defaults():
    config = RunConfig.parse()
    assert config.profile.name == "default" and config.threads == DEFAULT_THREADS
    assert config.models == ("mlp", "cnn", "transformer", "polynomial")
    assert config.devices == ("cpu", "cuda") and config.modes == ("grad", "no_grad", "inference_mode")


def test_selection_and_case_expansion():
    config = RunConfig.parse(profile="tiny", models="transformer,mlp", devices="cpu", modes="no_grad")
    cases = config.cases_of("inference")
    assert [c.id for c in cases] == [
        "transformer-cpu-b1-no_grad",
        "transformer-cpu-b4-no_grad",
        "mlp-cpu-b1-no_grad",
        "mlp-cpu-b4-no_grad",
    ]
    assert config.threads == 1 and RunConfig.parse(threads="default").threads is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"profile": "huge"}, "unknown profile 'huge'"),
        ({"models": "mlp,resnet"}, "unknown model 'resnet'"),
        ({"devices": "tpu"}, "unknown device 'tpu'"),
        ({"modes": "eval"}, "unknown mode 'eval'"),
        ({"threads": "0"}, "threads must be an integer >= 1"),
        ({"threads": "many"}, "threads must be an integer >= 1"),
        ({"malloc": "jemalloc"}, "unknown malloc setting"),
        ({"start_method": "fork"}, "unknown start method 'fork'"),
        ({"optimizers": "lbfgs"}, "unknown optimizer 'lbfgs'"),
        ({"processes": "-1"}, "processes must be an integer >= 0"),
    ],
)
def test_bad_options_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        RunConfig.parse(**kwargs)


def test_torch_threads_are_restored():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_effort_comes_from_options_then_pyproject_then_the_profile(tmp_path):
    from bench_lib.records.cases import PROFILES
    from bench_lib.session import _with_effort

    default = PROFILES["default"]
    assert _with_effort(default, None, None, None, None, tmp_path / "none.toml") == default
    toml = tmp_path / "pyproject.toml"
    toml.write_text("[tool.bench_lib]\nci_target = 0.005\nmax_processes = 30\ngroup_budget_s = 60\n")
    configured = _with_effort(default, None, None, None, None, toml)
    assert (configured.ci_target, configured.max_processes, configured.group_budget_s) == (0.005, 30, 60.0)
    given = _with_effort(default, None, "20", "0.02", "", toml)
    assert (given.ci_target, given.max_processes, given.group_budget_s) == (0.02, 20, 60.0)
    fixed = _with_effort(default, "5", None, None, None, toml)
    assert (fixed.processes, fixed.max_processes) == (5, 0)  # --bench-processes alone: exactly 5
    assert _with_effort(default, "5", "9", None, None, toml).max_processes == 9
    toml.write_text("[tool.bench_lib]\nmax_processes = 3\n")  # below the full profile's 5
    assert _with_effort(PROFILES["full"], None, None, None, None, toml).max_processes == 5
    # the spread between runs added to ratio intervals: option, then pyproject, then the profile
    assert (default.run_sd("inference"), default.run_sd("finetune")) == (0.008, 0.012)
    toml.write_text("[tool.bench_lib]\nci_run_sd = 0.02\n")
    assert _with_effort(default, None, None, None, None, toml).ci_run_sd == 0.02
    # one number is every suite's, the profile's inference value included
    assert _with_effort(default, None, None, None, None, toml).run_sd("inference") == 0.02
    assert _with_effort(default, None, None, None, None, toml, ci_run_sd="0").ci_run_sd == 0.0
    with pytest.raises(UserError, match="ci_run_sd must be a number >= 0"):
        _with_effort(default, None, None, None, None, toml, ci_run_sd="-0.01")


def test_the_spread_between_runs_can_be_set_per_suite(tmp_path):
    """`suite=value` pairs (option or environment) or an inline table in pyproject.toml set the
    named suites; a suite not named keeps the profile's; a typo in a suite's name or a bad
    number is one clear error."""
    from bench_lib.records.cases import PROFILES
    from bench_lib.session import _with_effort

    default = PROFILES["default"]
    pair = _with_effort(default, None, None, None, None, tmp_path / "none", ci_run_sd="finetune=0.02")
    assert (pair.run_sd("inference"), pair.run_sd("finetune")) == (0.008, 0.02)
    both = _with_effort(
        default, None, None, None, None, tmp_path / "none", ci_run_sd=" inference=0 , finetune=0.03"
    )
    assert (both.run_sd("inference"), both.run_sd("finetune")) == (0.0, 0.03)
    toml = tmp_path / "pyproject.toml"
    toml.write_text("[tool.bench_lib]\nci_run_sd = {inference = 0.005, finetune = 0.01}\n")
    table = _with_effort(default, None, None, None, None, toml)
    assert (table.run_sd("inference"), table.run_sd("finetune")) == (0.005, 0.01)
    over = _with_effort(default, None, None, None, None, toml, ci_run_sd="inference=0.004")  # on top
    assert (over.run_sd("inference"), over.run_sd("finetune")) == (0.004, 0.01)
    with pytest.raises(
        UserError, match=r"ci_run_sd: unknown suite 'inferense' in 'inferense=0.01' \(known: "
    ):
        _with_effort(default, None, None, None, None, tmp_path / "none", ci_run_sd="inferense=0.01")
    with pytest.raises(UserError, match="unknown suite 'ruler'"):  # no ratio to widen
        _with_effort(default, None, None, None, None, tmp_path / "none", ci_run_sd="ruler=0.01")
    with pytest.raises(UserError, match="ci_run_sd for finetune must be a number >= 0, got 'x'"):
        _with_effort(default, None, None, None, None, tmp_path / "none", ci_run_sd="finetune=x")
    trailing = _with_effort(default, None, None, None, None, tmp_path / "none", ci_run_sd="finetune=-0,")
    assert str(trailing.run_sd("finetune")) == "0.0"  # a trailing comma is nothing; -0 is 0
    with pytest.raises(UserError, match="ci_run_sd: inference is named twice"):
        _with_effort(
            default, None, None, None, None, tmp_path / "none", ci_run_sd="inference=0.01,inference=0.02"
        )
    # pyproject.toml: a bad value is named with the file, and one number given replaces it
    for bad, said in (('"x"', "got 'x'"), ("{inferense = 0.01}", "unknown suite 'inferense'"),
                      ('{inference = "0.008"}', "got inference = '0.008'"), ("{}", "got an empty table"),
                      ("{inference = {a = 1}}", "got inference = {'a': 1}")):  # fmt: skip
        toml.write_text(f"[tool.bench_lib]\nci_run_sd = {bad}\n")
        with pytest.raises(UserError, match=f"{toml}: \\[tool.bench_lib\\] .*{said}"):
            _with_effort(default, None, None, None, None, toml)
        # one number given replaces pyproject's setting, bad or not
        assert (
            _with_effort(default, None, None, None, None, toml, ci_run_sd="0.01").run_sd("finetune") == 0.01
        )
    toml.write_text("[tool.bench_lib]\nci_target = {inference = 0.01}\n")  # a table only for ci_run_sd
    with pytest.raises(
        UserError, match=r"pyproject.toml: \[tool.bench_lib\] ci_target must be a number, got a table"
    ):
        _with_effort(default, None, None, None, None, toml)
    with pytest.raises(UserError, match=r"ci_run_sd: inference needs a value \(inference=0.008\)"):
        _with_effort(default, None, None, None, None, tmp_path / "none", ci_run_sd="inference")
    with pytest.raises(UserError, match="ci_run_sd for finetune must be a finite number >= 0, got 'inf'"):
        _with_effort(default, None, None, None, None, tmp_path / "none", ci_run_sd="finetune=inf")


def test_a_run_does_not_make_folders_through_a_link_to_nothing(tmp_path):
    """`run --out LINK/r.csv`, LINK a folder link to nothing: one error naming the link, as
    `report --out` gives and as a results folder that is such a link gets, and no folder made at
    its target."""
    from bench_lib.session import BenchSession

    (tmp_path / "gone").symlink_to(tmp_path / "nowhere" / "x")
    config = RunConfig.parse("tiny", models="mlp", devices="cpu", results_dir=tmp_path)
    with pytest.raises(UserError, match=r"gone: a link to .*nowhere/x, which does not exist"):
        BenchSession(config, out=tmp_path / "gone" / "r.csv")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((None, "x", None, None), "max_processes must be an integer"),
        ((None, None, "0", None), "ci_target must be a number > 0"),
        ((None, None, "-1", None), "ci_target must be a number > 0"),
        ((None, None, None, "inf"), "group budget must be a finite number >= 0"),
        (("6", "4", None, None), r"max_processes \(4\) is below processes \(6\)"),
    ],
)
def test_bad_effort_settings_are_one_line_errors(tmp_path, args, message):
    from bench_lib.records.cases import PROFILES
    from bench_lib.session import _with_effort

    with pytest.raises(UserError, match=message):
        _with_effort(PROFILES["default"], *args, tmp_path / "none.toml")


def test_each_suites_ratio_intervals_are_widened_by_that_suites_value(tmp_path, monkeypatch):
    """Every process measures the same ratio (0.9 to grad, 0.5 to full), so the processes' own
    interval has no width and the reported log half-width is exactly 1.96 x the suite's
    ci_run_sd: 0.02 for inference, 0.03 for fine-tuning (as a whole run's rows record them)."""
    import numpy as np

    from bench_lib import session as session_module
    from bench_lib.measure.runner import pool
    from bench_lib.records.results import CaseResult
    from bench_lib.records.stats import Samples

    def reference(case):
        return case.mode == "grad" or case.strategy == "full"

    def fake_run_group(request, cases, effort, start_method, assess=None):
        def part(scale):
            return {
                v: CaseResult(c, samples=Samples(iterations=1, host_ms=(scale * (1.0 if reference(c) else 0.9 if c.suite == "inference" else 0.5),) * 5), items_per_batch=1)
                for v, c in cases.items()
            }  # fmt: skip

        return pool([part(1.0), part(1.3)]), "fixed", 2

    monkeypatch.setattr(session_module, "run_group", fake_run_group)
    config = RunConfig.parse(
        "tiny", models="mlp", devices="cpu", results_dir=tmp_path, ci_run_sd="inference=0.02,finetune=0.03"
    )
    bench = session_module.BenchSession(config)
    for suite, figure, sd in (
        ("inference", "latency_ratio_to_grad", 0.02),
        ("finetune", "latency_ratio_to_full", 0.03),
    ):
        case = next(c for c in config.cases_of(suite) if not reference(c))
        metrics = bench.result(case).metrics
        assert metrics["ci_run_sd"] == sd
        value, high = metrics[figure], metrics[f"{figure}_ci_high"]
        assert value == pytest.approx(0.9 if suite == "inference" else 0.5)
        assert np.log(high / value) == pytest.approx(1.959964 * sd, rel=1e-5), suite
