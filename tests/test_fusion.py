"""hf_centered/fusion.py: the streamed fusions equal the explicit formulas, with and without autograd."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import FUSIONS
from reference import fuse

from hf_centered.fusion import FUSIONS as REGISTRY

NUM_LAYERS, BATCH, SEQ_LEN, WIDTH = 5, 3, 7, 11


def _fusion(name: str) -> torch.nn.Module:
    fusion = REGISTRY[name](NUM_LAYERS, WIDTH)
    fusion.reset_parameters()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in fusion.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return fusion


def _layers(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(BATCH, SEQ_LEN, WIDTH, generator=generator) for _ in range(NUM_LAYERS)]


def _gradients(output: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    upstream = torch.randn(output.shape, generator=torch.Generator().manual_seed(2))
    return torch.autograd.grad(output, inputs, upstream)


@pytest.mark.parametrize("name", [name for name in FUSIONS if name != "none"])
@pytest.mark.parametrize("frozen_layers", [False, True], ids=["trained", "frozen"])
def test_streamed_fusion_equals_explicit_formula_with_and_without_autograd(name, frozen_layers):
    """`frozen`: the layer outputs need no gradient (a frozen backbone) while the fusion's own parameters do."""
    fusion = _fusion(name)
    config = SimpleNamespace(fusion=name)
    layers = [layer.requires_grad_(not frozen_layers) for layer in _layers()]
    expected = fuse(config, fusion, layers)
    actual = fusion(layers)
    torch.testing.assert_close(actual, expected)
    if actual.requires_grad:
        inputs = [*([] if frozen_layers else layers), *fusion.parameters()]
        for got, want in zip(_gradients(actual, inputs), _gradients(expected, inputs), strict=True):
            torch.testing.assert_close(got, want)
    else:  # max has no parameters: nothing to differentiate when its inputs are frozen
        assert name == "max" and frozen_layers
    with torch.no_grad():
        streamed = fusion([layer.clone() for layer in layers])
    torch.testing.assert_close(streamed, expected.detach())
    assert all(torch.equal(layer, original) for layer, original in zip(layers, _layers(), strict=True))


@pytest.mark.parametrize("name", [name for name in FUSIONS if name != "none"])
def test_fusion_refuses_a_wrong_number_of_layers(name):
    with pytest.raises(ValueError, match=f"fuses {NUM_LAYERS} layers, got {NUM_LAYERS - 1}"):
        _fusion(name)(_layers()[1:])


def test_max_fusion_gives_a_tied_maximum_to_the_first_layer():
    layers = [torch.ones(BATCH, SEQ_LEN, WIDTH, requires_grad=True) for _ in range(NUM_LAYERS)]
    fused = _fusion("max")(layers)
    gradients = torch.autograd.grad(fused.sum(), layers)
    assert torch.equal(gradients[0], torch.ones_like(fused))
    assert all(not gradient.any() for gradient in gradients[1:])


def test_gate_fusion_without_autograd_is_stable_for_extreme_logits():
    """The online softmax rescales its running sums, so logits far beyond float32's exp range still fuse."""
    fusion = _fusion("gate")
    with torch.no_grad():
        fusion.layer_bias.copy_(torch.tensor([0.0, 500.0, -300.0, 900.0, 899.0]))
        layers = _layers()
        streamed = fusion(layers)
    expected = fuse(SimpleNamespace(fusion="gate"), fusion, layers)
    assert torch.isfinite(streamed).all()
    torch.testing.assert_close(streamed, expected)
