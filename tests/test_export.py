"""Tests for lightning_prune.export on small real networks (no mocks)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from lightning_prune.export import (
    compact,
    export_onnx,
    load_sparse,
    make_permanent,
    measure_latency,
    measure_onnx_latency,
    run_onnx,
    save_sparse,
    size_report,
)


def lenet300() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, 10),
    )


def vgg_small() -> nn.Module:
    def block(cin: int, cout: int, padding: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=padding), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 16, 1),
        nn.MaxPool2d(2),
        *block(16, 32, 1),
        nn.MaxPool2d(2),
        *block(32, 32, 0),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomise_batchnorm(model: nn.Module) -> None:
    """Non-trivial BN statistics, so a dead conv channel leaves BN with a nonzero output."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-1, 1)


def kill_units(model: nn.Module, fraction: float, zero_bias: bool = False) -> dict[str, int]:
    """Zero the weights of a fraction of output units of every Linear/Conv but the last."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)][:-1]
    killed = {}
    with torch.no_grad():
        for i, layer in enumerate(layers):
            n_out = layer.weight.shape[0]
            idx = torch.randperm(n_out)[: int(n_out * fraction)]
            layer.weight[idx] = 0
            if zero_bias:
                layer.bias[idx] = 0
            killed[str(i)] = len(idx)
    return killed


def assert_same_state(model: nn.Module, other: nn.Module) -> None:
    expected, got = model.state_dict(), other.state_dict()
    assert list(expected) == list(got)
    for name, tensor in expected.items():
        assert tensor.dtype == got[name].dtype and torch.equal(tensor, got[name]), name


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("zero_bias", [False, True])
def test_compact_mlp_drops_dead_neurons_and_keeps_outputs(zero_bias: bool) -> None:
    model = lenet300().eval()
    kill_units(model, 0.5, zero_bias=zero_bias)
    x = torch.randn(16, 1, 28, 28)

    small = compact(model, x)

    linears = [m for m in small.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 150), (150, 50), (50, 10)]
    torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)
    fresh = torch.randn(4, 1, 28, 28)  # folded biases are exact for any input, not just x
    torch.testing.assert_close(small(fresh), model(fresh), rtol=1e-4, atol=1e-5)


def test_compact_folds_constant_of_dead_neuron_with_positive_bias() -> None:
    model = lenet300().eval()
    with torch.no_grad():
        model[1].weight[:10] = 0
        model[1].bias[:10] = 1.0  # dead neurons emitting relu(1) = 1 into the next layer
    x = torch.randn(8, 1, 28, 28)

    small = compact(model, x)

    assert small[1].out_features == 290
    torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)


def test_compact_lenet5_conv_flatten_linear() -> None:
    model = lenet5().eval()
    kill_units(model, 0.75)
    x = torch.randn(8, 1, 28, 28)

    small = compact(model, x)

    convs = [m for m in small.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [5, 13]
    assert small[7].in_features == 13 * 16
    assert small[9].out_features == 10  # the logits layer never shrinks
    assert n_params(small) < n_params(model) / 10
    torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)


def test_compact_vgg_with_batchnorm() -> None:
    model = vgg_small()
    randomise_batchnorm(model)
    model.eval()
    kill_units(model, 0.5)
    x = torch.randn(8, 1, 28, 28)

    small = compact(model, x)

    bns = [m for m in small.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in small.modules() if isinstance(m, nn.Conv2d)]
    assert all(bn.num_features == c.out_channels for bn, c in zip(bns, convs, strict=True))
    # the last conv feeds a Linear through pooling: all its dead channels are folded away;
    # channels feeding a padded conv go only where their constant reaches it as zero
    assert convs[-1].out_channels == 16
    assert n_params(small) < n_params(model)
    torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)


def test_compact_without_dead_units_is_a_same_size_copy() -> None:
    model = lenet5().eval()
    x = torch.randn(2, 1, 28, 28)
    small = compact(model, x)
    assert small is not model
    assert n_params(small) == n_params(model)
    torch.testing.assert_close(small(x), model(x))


def test_size_report_and_sparse_round_trip(tmp_path) -> None:
    model = lenet300()
    dense_report = size_report(model)
    assert dense_report["sparse_bytes"] >= 0.95 * dense_report["dense_bytes"]

    with torch.no_grad():
        for param in model.parameters():
            param.mul_(torch.rand_like(param) > 0.95)
    report = size_report(model)

    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    assert report["nonzero_params"] == nonzero
    assert report["total_params"] == n_params(model)
    assert report["sparsity"] == pytest.approx(1 - nonzero / n_params(model))
    assert report["dense_bytes"] >= 4 * n_params(model)
    assert report["sparse_bytes"] < report["dense_bytes"] / 5
    assert report["compression_rate"] == report["dense_bytes"] / report["sparse_bytes"]

    path = save_sparse(model, tmp_path / "model.npz")
    assert path.stat().st_size == report["sparse_bytes"]
    restored = load_sparse(path, lenet300())
    assert_same_state(model, restored)


def test_sparse_round_trip_with_batchnorm_buffers(tmp_path) -> None:
    model = vgg_small()
    randomise_batchnorm(model)
    kill_units(model, 0.5)
    restored = load_sparse(save_sparse(model, tmp_path / "vgg.npz"), vgg_small())
    assert_same_state(model, restored)


def test_onnx_export_of_compacted_model_matches_torch(tmp_path) -> None:
    model = vgg_small()
    randomise_batchnorm(model)
    model.eval()
    kill_units(model, 0.5)
    small = compact(model, torch.randn(4, 1, 28, 28))

    path = export_onnx(small, tmp_path / "vgg.onnx", torch.randn(2, 1, 28, 28))

    batch = torch.randn(7, 1, 28, 28)  # a different batch size: the batch axis is dynamic
    with torch.no_grad():
        expected = model(batch).numpy()
    got = run_onnx(path, batch.numpy())
    assert got.shape == (7, 10)
    assert abs(got - expected).max() < 1e-4


def test_make_permanent_removes_torch_prune_reparametrisation() -> None:
    model = lenet5()
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    prune.ln_structured(model[3], "weight", amount=0.5, n=2, dim=0)
    prune.l1_unstructured(model[3], "weight", amount=0.3)  # a PruningContainer
    expected = {k: v.clone() for k, v in model.state_dict().items() if "_orig" not in k}

    make_permanent(model)

    names = dict(model.named_parameters())
    assert "0.weight" in names and "0.weight_orig" not in names
    assert not any("_mask" in k or "_orig" in k for k in model.state_dict())
    assert not model[0]._forward_pre_hooks
    assert (model[0].weight == 0).float().mean() == pytest.approx(0.5, abs=0.01)
    fresh = lenet5()
    fresh.load_state_dict(model.state_dict())  # strict: no extra or missing keys
    for name, param in fresh.named_parameters():
        masked = model.state_dict()[name]
        assert torch.equal(param, masked), name
    assert torch.equal(fresh[3].weight, model[3].weight)
    assert torch.equal(expected["3.bias"], fresh[3].bias)


def test_make_permanent_applies_masks_with_prefixed_names() -> None:
    model = lenet300()
    original = model[1].weight.detach().clone()
    mask = torch.rand(300, 784) > 0.8
    make_permanent(model, {"net.1.weight": mask})  # names as taken on a LightningModule
    assert not model[1].weight[~mask].any()
    assert torch.equal(model[1].weight[mask], original[mask])
    with pytest.raises(ValueError, match="shape"):
        make_permanent(model, {"1.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(KeyError, match="no parameter"):
        make_permanent(model, {"missing.weight": mask})


def test_latency_torch_and_onnx(tmp_path) -> None:
    model = lenet5().eval()
    result = measure_latency(model, (1, 28, 28), batch_size=4, repeats=5, threads=1)
    assert result["median_ms"] > 0 and result["repeats"] == 5 and result["threads"] == 1
    assert result["throughput_per_s"] == pytest.approx(4 / result["median_ms"] * 1e3)
    path = export_onnx(model, tmp_path / "lenet5.onnx", torch.randn(1, 1, 28, 28))
    onnx_result = measure_onnx_latency(path, (1, 28, 28), batch_size=4, repeats=5)
    assert onnx_result["median_ms"] > 0
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(model, (1, 28, 28), repeats=0)


def test_compact_keeps_dead_channel_whose_constant_meets_padding() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 3),
    ).eval()
    with torch.no_grad():
        model[0].weight[:2] = 0
        model[0].bias[0] = 0.5  # relu(0.5) != 0 would hit the zero padding: must stay
        model[0].bias[1] = -0.5  # relu(-0.5) == 0: removable
    x = torch.randn(4, 1, 8, 8)

    small = compact(model, x)

    assert small[0].out_channels == 3 and small[2].in_channels == 3
    torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)


def test_compact_adds_bias_to_a_bias_free_consumer() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 3),
    ).eval()
    with torch.no_grad():
        model[0].weight[1] = 0
        model[0].bias[1] = 0.7  # constant 0.7 into an unpadded conv: folded into a new bias
    x = torch.randn(4, 1, 8, 8)

    small = compact(model, x)

    assert small[0].out_channels == 3 and small[2].bias is not None
    assert model[2].bias is None  # the original is untouched
    torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)


class Residual(nn.Module):
    """Two layers whose outputs are added: their units are coupled."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 6)
        self.b = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        return self.head(torch.relu(self.b(h) + h))


def test_compact_respects_coupled_residual_units() -> None:
    model = Residual().eval()
    with torch.no_grad():
        model.a.weight[[0, 1]] = 0  # unit 0 dead in both coupled layers, unit 1 only in `a`
        model.b.weight[0] = 0
    x = torch.randn(16, 8)

    small = compact(model, x)

    assert (small.a.out_features, small.b.out_features, small.head.in_features) == (5, 5, 5)
    torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)
