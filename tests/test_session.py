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
