"""The suite's pytest side is the `bench_lib.pytest_plugin` module (options, case
parametrization, fixtures, the report at session end). An installed bench_lib registers it
through the `pytest11` entry point; this line loads it where bench_lib is only on the path
(a plain checkout, e.g. `make gpu-check` on a GPU machine's own Python)."""

pytest_plugins = ["bench_lib.pytest_plugin"]
