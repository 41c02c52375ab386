"""The seed example's autograd facts, and the per-mode semantic checks."""

import pytest
import torch
from torch import nn

from bench_lib.measure.modes import MODES, outputs_mismatch, semantics_violation
from bench_lib.models.polynomial import PolynomialNet


def test_seed_example_loss_16_and_gradient_88():
    model = PolynomialNet()
    x = torch.tensor([2.0], requires_grad=True)
    y = model(x)
    assert y.item() == 14.0  # 3 * 2 + 2 * 2^2
    loss = nn.MSELoss()(y, torch.tensor([10.0]))
    assert loss.item() == 16.0  # (14 - 10)^2, no factor 1/2
    loss.backward()
    assert x.grad.item() == 88.0  # 2 (y - 10) (3 + 4x) = 8 * 11
    # and the weights: d loss / d w1 = 2 (y - 10) x = 16, d loss / d w2 = 2 (y - 10) x^2 = 32
    assert model.w1.grad.item() == 16.0 and model.w2.grad.item() == 32.0


def test_rebinding_under_no_grad_makes_a_new_tensor_without_grad():
    a = torch.tensor([1.0], requires_grad=True)
    (a * 2).sum().backward()
    with torch.no_grad():
        b = a + 1
    assert b is not a and not b.requires_grad and b.grad is None


def test_in_place_under_no_grad_keeps_the_leaf_and_its_grad():
    a = torch.tensor([1.0], requires_grad=True)
    (a * 2).sum().backward()
    leaf = a
    with torch.no_grad():
        a += 1
    assert a is leaf and a.requires_grad
    assert torch.equal(a.grad, torch.tensor([2.0])) and a.item() == 2.0


def test_retain_grad_on_a_leaf_is_a_no_op():
    a = torch.tensor([3.0], requires_grad=True)
    a.retain_grad()
    (a * a).sum().backward()
    assert a.grad.item() == 6.0


def test_inference_tensors_cannot_be_saved_for_backward():
    with torch.inference_mode():
        t = torch.ones(3)
    assert t.is_inference()
    w = torch.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"[Ii]nference tensors cannot be saved for backward"):
        (w * t).sum()


def test_no_grad_tensors_can_enter_autograd_later():
    with torch.no_grad():
        t = torch.ones(3) * 2
    w = torch.ones(3, requires_grad=True)
    (w * t).sum().backward()
    assert torch.equal(w.grad, t)


def test_semantics_pass_for_a_real_model_under_each_mode():
    model = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    for mode, ctx in MODES.items():
        with ctx():
            y = model(x)
        saved = 48 if mode == "grad" else 0
        assert semantics_violation(mode, y, saved, has_trainable_params=True) is None


def test_semantics_violations_are_named():
    with torch.enable_grad():
        y = nn.Linear(3, 2)(torch.randn(4, 3))
    assert "grad_fn" in semantics_violation("no_grad", y, 0, True)
    assert "saved" in semantics_violation("no_grad", y.detach(), 48, True)
    assert "inference tensor" in semantics_violation("inference_mode", y.detach(), 0, True)
    assert "grad_fn" in semantics_violation("grad", y.detach(), 48, True)
    assert "nothing was saved" in semantics_violation("grad", y, 0, True)
    assert semantics_violation("grad", y.detach(), 0, has_trainable_params=False) is None
    assert "no tensor" in semantics_violation("no_grad", None, 0, True)


def test_outputs_mismatch():
    a = torch.ones(2, 3)
    assert outputs_mismatch(a, a + 1e-7) is None
    assert "differs" in outputs_mismatch(a, a + 1)
    assert "shape" in outputs_mismatch(a, torch.ones(3, 2))
    assert "tensors" in outputs_mismatch((a, a), a)
