"""The one option table: pytest options, `run` arguments, environment variables and docs."""

import argparse
from pathlib import Path

import pytest

from bench_lib.options import BY_NAME, OPTIONS, add_run_arguments, documented, from_environment, run_values
from bench_lib.session import RunConfig

DOC = Path(__file__).resolve().parent.parent / "docs" / "options.md"


def test_docs_are_generated_from_the_table():
    text = DOC.read_text()
    assert documented(text) == text, "docs/options.md is stale: run `make docs`"
    for o in OPTIONS:
        assert f"`{o.pytest_flag}`" in text and f"`{o.env}`" in text


def test_every_option_is_a_run_config_keyword():
    import inspect

    keywords = set(inspect.signature(RunConfig.parse).parameters)
    assert {o.field for o in OPTIONS if o.run_config} == keywords


def run_args(*argv):
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return parser.parse_args(argv)


def test_run_arguments_win_over_the_environment_which_wins_over_defaults():
    env = {"BENCH_PROFILE": "tiny", "BENCH_THREADS": "2"}
    values = run_values(run_args("--threads", "3", "--model", "mlp", "--model", "cnn", "--compile"), env)
    assert values["threads"] == "3" and values["profile"] == "tiny"
    assert values["models"] == "mlp,cnn" and values["compile"] == "on"
    assert values["devices"] == BY_NAME["devices"].default
    assert from_environment(BY_NAME["profile"], {}) == "default"


@pytest.mark.parametrize("argv", [("--profile", "huge"), ("--threads", "zero")])
def test_bad_run_values_are_user_errors(argv):
    from bench_lib.errors import UserError

    with pytest.raises(UserError):
        RunConfig.parse(**run_values(run_args(*argv), {}))
