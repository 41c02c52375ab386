"""User models: `FILE.py:FUNCTION` / `package.module:FUNCTION` references, every mistake a user can
make as one line and exit 2, and the example in `examples/` measured end to end."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bench_lib.cli import main
from bench_lib.errors import UserError
from bench_lib.measure.devices import CpuDevice
from bench_lib.models import ModelInstance, get_model
from bench_lib.models.plugins import check_user_model, display_name
from bench_lib.records.schema import read_report
from bench_lib.session import RunConfig, default_models
from bench_lib.suites.finetune.measure import (
    NOGRAD,
    Strategy,
    TrainStep,
    nograd_mismatch,
    strategies,
    template,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "custom_model.py"
SIMPLE, TRAINABLE = f"{EXAMPLE}:make_model", f"{EXAMPLE}:make_trainable"


def user_file(tmp_path, body, name="net.py"):
    path = tmp_path / name
    path.write_text("import torch\nfrom torch import nn\n" + textwrap.dedent(body))
    return path


def test_the_simplest_factory_works_as_is():
    spec = check_user_model(SIMPLE)
    assert spec.name == "custom_model"
    instance = spec.instantiate(3)
    (ids,) = instance.input_tuple()
    assert ids.shape == (3, 64) and not instance.trainable
    assert instance.model(ids).shape == (3, 4)


def test_a_model_instance_makes_it_trainable():
    spec = check_user_model(TRAINABLE)
    assert spec.name == "custom_model.make_trainable"
    instance = spec.instantiate(2)
    assert instance.trainable and len(instance.blocks) == 4


def test_names_come_from_the_file_or_module_and_the_factory():
    assert display_name("/x/my_net.py:make_model") == "my_net"
    assert display_name("pkg.my_net:make_small") == "my_net.make_small"


def test_a_package_module_reference(tmp_path, monkeypatch):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    user_file(pkg, "def make_model(b):\n    return nn.Linear(3, 2), torch.randn(b, 3)\n", "nets.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert check_user_model("mypkg.nets:make_model").name == "nets"


def test_inputs_may_be_a_tuple_and_a_forward_may_take_several(tmp_path):
    path = user_file(
        tmp_path,
        """
        class Add(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(3, 3)
            def forward(self, a, b):
                return self.lin(a) + b
        def make_model(b):
            return Add(), (torch.randn(b, 3), torch.randn(b, 3))
        """,
    )
    instance = check_user_model(f"{path}:make_model").instantiate(2)
    assert len(instance.input_tuple()) == 2


BAD = {
    "missing file": ("{tmp}/nope.py:make_model", None, "file {tmp}/nope.py not found"),
    "missing module": ("no_such_pkg.nets:make_model", None, "module 'no_such_pkg.nets' not found"),
    "bad reference": ("{tmp}/net.py", "x = 1\n", "expected FILE.py:FUNCTION"),
    "import fails": ("{tmp}/net.py:make_model", "import no_such_dependency\n", "importing"),
    "syntax error": ("{tmp}/net.py:make_model", "def (:\n", "SyntaxError"),
    "no factory": ("{tmp}/net.py:make_model", "x = 1\n", "defines no 'make_model'"),
    "not callable": ("{tmp}/net.py:make_model", "make_model = 3\n", "make_model is a int, not a function"),
    "factory raises": (
        "{tmp}/net.py:make_model",
        "def make_model(b):\n    raise ValueError('need a GPU for this one')\n",
        "make_model(1) raised ValueError: need a GPU for this one",
    ),
    "wrong shape": (
        "{tmp}/net.py:make_model",
        "def make_model(b):\n    return nn.Linear(2, 2)\n",
        "must return (model, inputs) or a bench_lib.ModelInstance, got a torch.nn.modules.linear.Linear",
    ),
    "not a module": (
        "{tmp}/net.py:make_model",
        "def make_model(b):\n    return (lambda x: x), torch.ones(b, 2)\n",
        "the model is a function, not a torch.nn.Module",
    ),
    "inputs not tensors": (
        "{tmp}/net.py:make_model",
        "def make_model(b):\n    return nn.Linear(2, 2), [[1.0, 2.0]]\n",
        "inputs must be a tensor or a tuple of tensors",
    ),
    "inputs on another device": (
        "{tmp}/net.py:make_model",
        "def make_model(b):\n    return nn.Linear(2, 2), torch.ones(b, 2, device='meta')\n",
        "inputs must be on the CPU (the suite moves them to each device); input 0 is on meta",
    ),
    "model on another device": (
        "{tmp}/net.py:make_model",
        "def make_model(b):\n    return nn.Linear(2, 2, device='meta'), torch.ones(b, 2)\n",
        "the model must be on the CPU",
    ),
    "foreign block": (
        "{tmp}/net.py:make_model",
        "from bench_lib import ModelInstance\n"
        "def make_model(b):\n    return ModelInstance(nn.Linear(2, 2), torch.ones(b, 2), blocks=[nn.ReLU()])\n",
        "every block must be a submodule of the model",
    ),
    "lora targets a string": (
        "{tmp}/net.py:make_model",
        "from bench_lib import ModelInstance\n"
        "def make_model(b):\n    return ModelInstance(nn.Linear(2, 2), torch.ones(b, 2), lora_targets='lin')\n",
        "lora_targets must be a list of module names, got 'lin'",
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_each_user_mistake_is_one_line_and_exit_2(tmp_path, capsys, name):
    ref, body, message = BAD[name]
    if body is not None:
        user_file(tmp_path, body)
    assert main(["run", "--model", ref.format(tmp=tmp_path), "--profile", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert message.format(tmp=tmp_path) in err


def test_models_listed_in_pyproject_join_the_default_run(tmp_path):
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "custom_model.py").write_text(EXAMPLE.read_text())
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.bench_lib]\nmodels = ["examples/custom_model.py:make_trainable"]\n')
    models = default_models(pyproject)
    assert models[:4] == ("mlp", "cnn", "transformer", "polynomial")
    assert models[4] == f"{(tmp_path / 'examples' / 'custom_model.py').resolve()}:make_trainable"
    pyproject.write_text("[tool.bench_lib]\nmodels = 3\n")
    with pytest.raises(UserError, match="must be a list of strings"):
        default_models(pyproject)


def test_a_run_config_names_cases_after_the_model_and_sends_workers_the_reference():
    config = RunConfig.parse(profile="tiny", models=f"mlp,{TRAINABLE}", devices="cpu")
    assert config.model_names == ("mlp", "custom_model.make_trainable")
    assert config.model_reference("custom_model.make_trainable") == TRAINABLE
    finetune = config.cases_of("finetune")
    assert {c.strategy for c in finetune if c.model == "custom_model.make_trainable"} == {
        "full", "frozen_2", "frozen_4", "frozen_nograd", "checkpoint", "lora"
    }  # fmt: skip
    assert config.cases_of("inference")[0].batch_size == 1


def test_batch_sizes_override_the_profile():
    config = RunConfig.parse(profile="tiny", models="mlp", devices="cpu", batch_sizes="2,8,2")
    assert config.profile.batch_sizes == (2, 8)
    with pytest.raises(UserError, match="batch sizes must be an integer >= 1"):
        RunConfig.parse(profile="tiny", models="mlp", devices="cpu", batch_sizes="0")


def test_frozen_blocks_of_any_model_run_under_no_grad_by_hooks():
    """Not a StagedModel: frozen_nograd puts the frozen blocks under no_grad with forward hooks.
    It trains the same parameters as frozen_4, computes the same loss and gradients, and saves
    less for backward (nothing inside the frozen blocks)."""
    start = template(get_model(TRAINABLE), 4)
    device = CpuDevice()
    assert nograd_mismatch(start, device, "sgd", 4) is None
    mem = {}
    for strategy in (Strategy("frozen_4", 4), Strategy(NOGRAD, 4, nograd=True)):
        import copy

        step = TrainStep(copy.deepcopy(start), strategy, "sgd", device)
        step()
        mem[strategy.name] = step.measure_memory(device)
        assert torch.is_grad_enabled()  # the hooks restored grad mode
        assert {id(p) for p in step.trainable} == {id(p) for p in step.model.head.parameters()}
    assert mem[NOGRAD]["mem_activations_bytes"] <= mem["frozen_4"]["mem_activations_bytes"]
    assert NOGRAD in [s.name for s in strategies(4)]


def run_cli(*args, timeout=300):
    cmd = [sys.executable, "-m", "bench_lib", "run", "--profile", "tiny", "--devices", "cpu", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_the_example_runs_end_to_end(tmp_path):
    out = tmp_path / "my.csv"
    proc = run_cli("--model", "examples/custom_model.py:make_trainable", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[26/26] finetune-custom_model.make_trainable-cpu-b4-adamw-lora: ok" in proc.stdout
    report = read_report(out)
    assert set(report["status"]) == {"ok"} and len(report) == 2 * 3 + 2 * (
        2 * 4 + 2
    )  # checkpoint, lora: AdamW
    assert (out.parent / "my.samples.csv").is_file()
    assert not (tmp_path / "latest.csv").exists()


@pytest.mark.slow
def test_a_forward_that_fails_under_inference_mode_fails_only_those_cases(tmp_path):
    path = user_file(
        tmp_path,
        """
        class Picky(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(4, 4)
            def forward(self, x):
                if torch.is_inference_mode_enabled():
                    raise RuntimeError("Inference tensors cannot be saved for backward")
                return self.lin(x)
        def make_model(b):
            return Picky(), torch.randn(b, 4)
        """,
    )
    out = tmp_path / "picky.csv"
    proc = run_cli("--model", f"{path}:make_model", "--out", str(out))
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = read_report(out)
    failed = report[report["status"] != "ok"]
    assert set(failed["mode"]) == {"inference_mode"} and len(failed) == 2
    assert failed["error"].str.contains("RuntimeError: Inference tensors").all()
    assert "2 of 6 cases did not succeed" in proc.stdout


@pytest.mark.slow
def test_user_models_join_the_pytest_suite(tmp_path):
    cmd = [
        sys.executable, "-m", "pytest", "benchmarks/", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
        "--bench-profile=tiny", "--bench-devices=cpu", f"--bench-results-dir={tmp_path}",
        "--bench-models=mlp,examples/custom_model.py:make_model", "-k", "inference",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    report = read_report(tmp_path / "latest.csv")
    assert set(report["model"]) == {"mlp", "custom_model"} and set(report["status"]) == {"ok"}


def test_model_instance_is_public():
    import bench_lib

    assert bench_lib.ModelInstance is ModelInstance


def test_hf_models_without_the_extra_are_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if not installed
    assert main(["run", "--model", "bert-base", "--profile", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "need the hf extra: pip install -e '.[hf]'" in err


def test_hf_models_build_from_their_configs_without_downloads():
    pytest.importorskip("transformers")
    instance = get_model("bert-base").instantiate(2)
    assert sum(p.numel() for p in instance.model.parameters()) > 100_000_000  # BERT-base: 110M
    assert instance.trainable and len(instance.blocks) == 13  # embeddings + 12 layers
    (ids,) = instance.input_tuple()
    assert ids.shape == (2, 128) and ids.dtype == torch.int64


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--suites", "foo"], "unknown suite 'foo'"),
        (["--dtypes", "int8"], "unknown dtype 'int8'"),
        (["--batch-sizes", "x"], "batch sizes must be an integer >= 1"),
        (["--devices", "tpu"], "unknown device 'tpu'"),
        (["--model", "nope"], "unknown model 'nope'"),
        pytest.param(
            ["--devices", "cuda"],
            "nothing to measure",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA"),
        ),
    ],
)
def test_bad_run_options_are_one_line_and_exit_2(capsys, args, message):
    assert main(["run", "--profile", "tiny", *args]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: ") and message in err
