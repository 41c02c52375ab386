import pytest
import torch

from bench_lib.errors import UserError
from bench_lib.models import ZOO, StagedModel, blocks_of, get_model


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_builds_and_runs_on_its_inputs(name):
    spec = ZOO[name]
    for batch_size in (1, 3):
        torch.manual_seed(0)
        instance = spec.instantiate(batch_size)
        out = instance.model.eval()(*instance.input_tuple())
        assert out.shape[0] == batch_size
        assert instance.iterations >= 1
        assert instance.items_per_batch == batch_size
        assert instance.trainable == (name != "polynomial")


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer"])
def test_staged_models_expose_blocks_and_forward_equals_stages(name):
    spec = ZOO[name]
    torch.manual_seed(0)
    model = spec.build().eval()
    assert isinstance(model, StagedModel)
    blocks = blocks_of(model)
    assert len(blocks) >= 3
    params = {id(p) for b in blocks for p in b.parameters()} | {id(p) for p in model.head.parameters()}
    assert params == {id(p) for p in model.parameters()}  # blocks + head cover the whole model
    (x,) = spec.make_inputs(4)
    with torch.no_grad():  # the transformer's fused fast path is taken here
        fused = model(x)
    staged = model.forward_stages(x)
    torch.testing.assert_close(fused, staged, rtol=1e-4, atol=1e-5)
    assert spec.make_target(4).shape == (4,)


def test_polynomial_net_has_no_blocks():
    assert blocks_of(ZOO["polynomial"].build()) == []


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="unknown model 'resnet9000' \\(known: mlp, cnn"):
        get_model("resnet9000")
