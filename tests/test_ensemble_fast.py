"""The fast ensemble and the one-graph ONNX export give the plain ensemble's outputs."""

from __future__ import annotations

import pickle

import pytest
import torch
from lightning_prune.ensembles import (
    WeightedEnsemble,
    export_ensemble_onnx,
    load_ensemble,
    save_ensemble,
)
from lightning_prune.ensembles.fast_layers import (
    BatchedLinear,
    Combine,
    SlicedMaxPool,
    SparseLinear,
    stack_networks,
)
from lightning_prune.ensembles.feature_major import FeatureMajorChain, fuse_feature_major
from torch import nn

from lightning_prune.export import run_onnx
from lightning_prune.models import Classifier

FAST = {"batch_sizes": (1, 64), "min_run_time": 0.002}
WEIGHTS = [0.3, 0.2, 0.0, 0.25, 0.25]
ATOL = 1e-5


def unstructured(seed: int, sparsity: float = 0.96) -> Classifier:
    """LeNet-300-100 with random exact zeros in every Linear (as unstructured pruning)."""
    torch.manual_seed(seed)
    model = Classifier("lenet300")
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.data *= torch.rand_like(module.weight) > sparsity
    return model


def structured(seed: int, fraction: float = 0.7) -> Classifier:
    """LeNet-5 with whole channels/neurons zeroed (weights and bias), the output layer whole."""
    torch.manual_seed(seed)
    model = Classifier("lenet5")
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    for module in layers[:-1]:
        dead = torch.rand(module.weight.shape[0]) < fraction
        module.weight.data[dead] = 0
        module.bias.data[dead] = 0
    return model


def _ensemble(kind: str, combine: str = "prob") -> WeightedEnsemble:
    build = unstructured if kind == "lenet300" else structured
    return WeightedEnsemble([build(seed) for seed in range(5)], WEIGHTS, combine)


def _max_difference(model: nn.Module, ensemble: WeightedEnsemble, n: int) -> float:
    x = torch.randn(n, 1, 28, 28)
    with torch.inference_mode():
        return float((model(x) - ensemble.forward_plain(x)).abs().max())


@pytest.mark.parametrize("kind", ["lenet300", "lenet5"])
@pytest.mark.parametrize("combine", ["prob", "logprob"])
@pytest.mark.parametrize("layout", ["auto", "loop", "stacked"])
def test_fast_form_equals_the_plain_ensemble(kind, combine, layout):
    ensemble = _ensemble(kind, combine)
    fast = ensemble.fast(layout=layout, **FAST)
    assert fast.plan["members"] == [0, 1, 3, 4]  # the weight-0 member is left out
    if layout != "auto":
        assert set(fast.plan["layout"]) == {layout}
    if layout == "stacked":  # "logprob": the weighted sum of logits lives in the last layer
        assert fast.plan["folded"] == [combine == "logprob"] * 2
    for n in (1, 5, 64, 300):  # both measured sizes and between / beyond them
        assert _max_difference(fast, ensemble, n) < ATOL


@pytest.mark.parametrize("sparse", ["always", "never"])
def test_sparse_and_dense_kernels_both_exact(sparse):
    ensemble = _ensemble("lenet300")
    fast = ensemble.fast(sparse=sparse, **FAST)
    kernels = {k for layers in fast.plan["kernels"].values() for _, picks in layers for k in picks}
    assert ("csr" in kernels) == (sparse == "always")
    assert _max_difference(fast, ensemble, 32) < ATOL


def test_structured_members_are_compacted():
    ensemble = _ensemble("lenet5")
    fast = ensemble.fast(**FAST)
    assert fast.plan["compacted"] == [0, 1, 3, 4]
    plain = sum(p.numel() for i in (0, 1, 3, 4) for p in ensemble.members[i].parameters())
    kept = sum(b.numel() for b in fast.module.buffers()) + sum(
        p.numel() for p in fast.module.parameters()
    )
    assert kept < plain / 2


class Boom(nn.Module):
    """A member that must never run."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("a member of weight 0 was run")


class Wrapped(nn.Module):
    """Not a Sequential: runs in the loop layout, its Linears still measured dense vs CSR."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.shift = nn.Parameter(torch.full((10,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + self.shift


def test_weight_zero_members_never_run_and_other_modules_fall_back_to_the_loop():
    members = [Wrapped(unstructured(0).net), Boom(), Wrapped(unstructured(1).net)]
    ensemble = WeightedEnsemble(members, [0.5, 0.0, 0.5])
    fast = ensemble.fast(torch.zeros(1, 1, 28, 28), **FAST)
    assert fast.plan["members"] == [0, 2]
    assert set(fast.plan["layout"]) == {"loop"}
    assert {name for name, _ in fast.plan["kernels"]["loop"]} == {
        f"member {i} layer inner.{j}" for i in (0, 1) for j in (1, 3, 5)
    }
    assert _max_difference(fast, ensemble, 16) < ATOL


def test_layers_equal_their_plain_counterparts():
    x = torch.randn(3, 7, 25, 25)
    for k in (2, 3):
        assert torch.equal(SlicedMaxPool(k)(x), nn.MaxPool2d(k)(x))
    linear = unstructured(0).net[1]
    tokens = torch.randn(2, 5, 784)
    expected = linear(tokens)
    assert torch.allclose(SparseLinear(linear.weight, linear.bias)(tokens), expected, atol=ATOL)


def test_load_ensemble_restores_the_fast_form_from_a_plain_file(tmp_path):
    ensemble = _ensemble("lenet300", "logprob")
    config = {"_target_": "lightning_prune.models.Classifier", "network": "lenet300"}
    path = save_ensemble(tmp_path / "e.pt", ensemble, [config] * 5)
    saved = torch.load(path, weights_only=True)
    tensors = [t for m in saved["members"] for t in m["state_dict"].values()]
    assert all(t.layout == torch.strided for t in tensors)
    loaded, _ = load_ensemble(path, fast=True)
    assert loaded.fast_form is not None
    x = torch.randn(8, 1, 28, 28)
    with torch.inference_mode():
        assert torch.allclose(loaded(x), ensemble(x), atol=ATOL)
    plain, _ = load_ensemble(path)
    assert plain.fast_form is None
    assert "_fast" not in pickle.loads(pickle.dumps(loaded)).__dict__


def test_changed_weights_fall_back_to_the_plain_forward():
    ensemble = _ensemble("lenet300").use_fast(**FAST)
    with torch.no_grad():
        ensemble.weights.copy_(torch.tensor([0.0, 0.0, 0.0, 0.5, 0.5]))
    x = torch.randn(4, 1, 28, 28)
    with pytest.warns(UserWarning, match="weights changed"):
        out = ensemble(x)
    assert ensemble.fast_form is None
    assert torch.allclose(out, ensemble.forward_plain(x))


@pytest.mark.parametrize("kind", ["lenet300", "lenet5"])
@pytest.mark.parametrize("combine", ["prob", "logprob"])
def test_one_onnx_graph_gives_the_ensembles_outputs(tmp_path, kind, combine):
    ensemble = _ensemble(kind, combine)
    path = export_ensemble_onnx(ensemble, tmp_path / "e.onnx", torch.randn(4, 1, 28, 28),
                                batch_sizes=(1, 32), repeats=3)  # fmt: skip
    x = torch.randn(37, 1, 28, 28)
    with torch.inference_mode():
        expected = ensemble.forward_plain(x)
    got = torch.from_numpy(run_onnx(path, x.numpy()))
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < ATOL
    assert (got.exp() - expected.exp()).abs().max() < ATOL


@pytest.mark.parametrize("batch", [1, 16])
def test_feature_major_chain_equals_the_row_major_layers(batch):
    """Every matmul kind (CSR, dense, member-batched) and the head in [M*C, N] layout."""
    torch.manual_seed(0)
    first, members = unstructured(0).net[1], 4
    batched = BatchedLinear(torch.randn(members, 25, 300 // members), torch.randn(members, 25))
    net = nn.Sequential(
        nn.Flatten(), SparseLinear(first.weight, first.bias), nn.ReLU(), batched, nn.Tanh(),
        nn.Linear(100, 40),
    )  # fmt: skip
    fused = fuse_feature_major(net)
    assert fused is not None and isinstance(fused[1], FeatureMajorChain)
    x = torch.randn(batch, 1, 28, 28)
    with torch.inference_mode():
        logits = net(x)
        assert torch.allclose(fused(x), logits, atol=ATOL)
        for combine in ("prob", "logprob"):
            head = Combine(torch.tensor([0.1, 0.2, 0.3, 0.4]), combine)
            expected = head(torch.log_softmax(logits.reshape(batch, members, 10), dim=-1))
            got = head.from_logits_t(logits.t().contiguous(), members)
            assert torch.allclose(got, expected, atol=ATOL)
    assert fuse_feature_major(nn.Sequential(nn.Flatten(), nn.Linear(784, 10))) is None


def test_logprob_folds_the_combination_into_one_last_layer():
    """The side-by-side network of a "logprob" ensemble ends in one Linear [C, M*F] and has
    the depth of one member; a layer after the logits leaves the combination unfolded."""
    ensemble = _ensemble("lenet300", "logprob")
    nets = [member.net.eval() for member in ensemble.members]
    depths = stack_networks(nets, fold=ensemble.weights)
    linears = [d for d in depths if "dense" in d]
    assert len(linears) == 3  # as one LeNet-300-100
    assert linears[-1]["dense"].weight.shape == (10, 5 * 100)
    x = torch.randn(7, 1, 28, 28)
    with torch.inference_mode():
        net = nn.Sequential(*(d.get("dense", d.get("shared")) for d in depths))
        got = torch.log_softmax(net(x), dim=-1)
        assert (got - ensemble.forward_plain(x)).abs().max() < ATOL
    tailed = [nn.Sequential(*net, nn.Tanh()) for net in nets]
    assert stack_networks(tailed) is not None and stack_networks(tailed, ensemble.weights) is None
