"""hf_centered/fusion.py: the streamed fusions equal the explicit formulas, with and without autograd."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import FUSIONS
from reference import fuse
from torch.utils._python_dispatch import TorchDispatchMode

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


@pytest.mark.parametrize("autograd", [False, True], ids=["inference", "training"])
def test_gate_fusion_is_stable_for_extreme_logits(autograd):
    """The online softmax rescales its running sums, so logits far beyond float32's exp range still fuse."""
    fusion = _fusion("gate")
    with torch.no_grad():
        fusion.layer_bias.copy_(torch.tensor([0.0, 500.0, -300.0, 900.0, 899.0]))
    layers = [layer.requires_grad_(autograd) for layer in _layers()]
    with torch.set_grad_enabled(autograd):
        streamed = fusion(layers)
    expected = fuse(SimpleNamespace(fusion="gate"), fusion, layers)
    assert torch.isfinite(streamed).all()
    torch.testing.assert_close(streamed, expected)
    if autograd:
        inputs = [*layers, *fusion.parameters()]
        for got, want in zip(_gradients(streamed, inputs), _gradients(expected, inputs), strict=True):
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("autograd", [False, True], ids=["inference", "training"])
def test_max_fusion_propagates_nan_like_torch_maximum(autograd):
    layers = [layer.requires_grad_(autograd) for layer in _layers()]
    with torch.no_grad():
        layers[2][0, 0, 0] = float("nan")
    with torch.set_grad_enabled(autograd):
        fused = _fusion("max")(layers)
    assert torch.equal(fused.isnan(), fuse(SimpleNamespace(fusion="max"), None, layers).isnan())
    assert fused.isnan().sum() == 1


class _LayerSizedResults(TorchDispatchMode):
    """Logs every operation that makes a new tensor of the given shape (views and detaches excluded)."""

    def __init__(self, shape: torch.Size, log: list):
        super().__init__()
        self.shape, self.log = shape, log

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if isinstance(result, torch.Tensor) and result.shape == self.shape and not func.is_view:
            self.log.append(func)
        return result


@pytest.mark.parametrize("name", [name for name in FUSIONS if name != "none"])
def test_backward_gives_each_layer_its_gradient_when_it_reaches_that_layer(name):
    """The fusion's backward must not make all L layer-sized gradients at its start (they would all be alive at the
    peak of training memory): before the last layer's gradient is complete, only a few layer-sized results exist."""
    num_layers = 24
    fusion = REGISTRY[name](num_layers, WIDTH)
    fusion.reset_parameters()
    generator = torch.Generator().manual_seed(3)
    projections = [torch.randn(WIDTH, WIDTH, generator=generator) / WIDTH**0.5 for _ in range(num_layers)]
    first = torch.randn(BATCH, SEQ_LEN, WIDTH, generator=generator, requires_grad=True)
    log = []

    def layer_outputs():
        hidden = first
        for index, projection in enumerate(projections):
            hidden = torch.tanh(hidden @ projection)
            hidden.register_hook(lambda grad, index=index: log.append(index))  # runs once the gradient is complete
            yield hidden

    fused = fusion(layer_outputs())
    upstream = torch.ones_like(fused)
    with _LayerSizedResults(fused.shape, log):
        fused.backward(upstream)
    layer_sized_before_last_layer = log[: log.index(num_layers - 1)]
    assert len(layer_sized_before_last_layer) <= 8, layer_sized_before_last_layer
    assert sorted(entry for entry in log if isinstance(entry, int)) == list(range(num_layers))
