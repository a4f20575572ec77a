"""AdaptivePruning on models users train: ResNet, Transformer, LSTM, tied weights, frozen
backbones, and module types beyond Linear/Conv2d. Small and fast, real Trainer runs."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune.pruning import AdaptivePruning
from tests.pruning_helpers import trainer


class Task(pl.LightningModule):
    """Cross-entropy on any network; `frozen` names submodules whose weights do not train."""

    def __init__(self, net: nn.Module, lr: float = 1e-3):
        super().__init__()
        self.net, self.lr = net, lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)


def loader(x: torch.Tensor, y: torch.Tensor, batch: int = 16) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)


def images(n=64, shape=(3, 16, 16), classes=10):
    generator = torch.Generator().manual_seed(0)
    return loader(torch.randn(n, *shape, generator=generator), torch.randint(0, classes, (n,)))


def tokens(n=64, length=12, vocab=50, classes=4, per_token=False):
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (n, length), generator=generator)
    y = torch.randint(0, classes, (n, length) if per_token else (n,), generator=generator)
    return loader(x, y)


def fit(net: nn.Module, data: DataLoader, epochs: int = 2, **options) -> AdaptivePruning:
    settings = dict(target_sparsity=0.8, frequency=2, monitor=None, verbose=False)
    settings.update(options)
    callback = AdaptivePruning(**settings)
    trainer([callback], max_epochs=epochs).fit(Task(net), data)
    return callback


def assert_exact_zeros(callback: AdaptivePruning, net: nn.Module) -> None:
    state = {f"net.{k}": v for k, v in net.state_dict(keep_vars=False).items()}
    for name, mask in callback.masks.items():
        assert torch.all(state[name][~mask] == 0), name


# ---- ResNet-18 (torchvision's BasicBlock layout, narrow widths) -----------------------------


class BasicBlock(nn.Module):
    def __init__(self, inp: int, out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    """[2, 2, 2, 2] BasicBlocks; the classifier `fc` is declared FIRST, as some codebases do."""

    def __init__(self, classes: int = 10, width: int = 8):
        super().__init__()
        self.fc = nn.Linear(8 * width, classes)
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        widths, blocks, inp = [width, 2 * width, 4 * width, 8 * width], [], width
        for i, w in enumerate(widths):
            blocks += [BasicBlock(inp, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
            inp = w
        self.layers = nn.Sequential(*blocks)

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def test_resnet18_unstructured_reaches_the_target_with_exact_zeros():
    net = ResNet18()
    callback = fit(net, images())
    assert len(callback.masks) == 21  # 20 convolutions (3 downsample) and fc
    assert callback.summary()["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert_exact_zeros(callback, net)
    assert callback.store.params["net.fc.weight"].is_output


def test_structured_never_removes_a_class_when_the_head_is_declared_first():
    net = ResNet18()
    callback = fit(net, images(), granularity="structured", target_sparsity=0.5)
    fc = callback.masks["net.fc.weight"]
    assert fc.all(), "an output class was removed"
    conv_rows = callback.masks["net.layers.7.conv2.weight"].reshape(64, -1).any(dim=1)
    assert 0 < int(conv_rows.sum()) < 64  # the real last hidden layer was pruned structurally
    assert_exact_zeros(callback, net)


class TwoHeads(Task):
    """Main and auxiliary classifiers on one body; the main head runs first."""

    def __init__(self):
        body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 64), nn.ReLU())
        super().__init__(body)
        self.main, self.aux = nn.Linear(64, 10), nn.Linear(64, 10)

    def forward(self, x):
        hidden = self.net(x)
        return {"main": self.main(hidden), "aux": self.aux(hidden)}

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        return F.cross_entropy(out["main"], y) + 0.3 * F.cross_entropy(out["aux"], y)


def test_structured_keeps_every_class_of_every_head_the_forward_returns():
    callback = AdaptivePruning(
        target_sparsity=0.6, granularity="structured", frequency=2, monitor=None, verbose=False
    )
    trainer([callback], max_epochs=2).fit(TwoHeads(), images())
    assert callback.masks["main.weight"].all() and callback.masks["aux.weight"].all()
    assert callback.store.params["main.weight"].is_output
    assert not callback.store.params["net.1.weight"].is_output
    assert not callback.masks["net.1.weight"].all()  # the body was pruned


def test_include_naming_only_hidden_layers_gives_no_layer_the_output_floor():
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
    net.add_module("head", nn.Linear(16, 10))
    callback = fit(
        net, images(shape=(3, 4, 4)), include=["net.1", "net.3"], target_sparsity=0.95,
        allocation="layerwise",
    )  # fmt: skip
    assert not any(p.is_output for p in callback.store.params.values())
    assert callback.masks["net.3.weight"].float().mean() == pytest.approx(0.05, abs=0.01)
    assert "net.head.weight" not in callback.masks


# ---- Transformer, LSTM, tied weights -------------------------------------------------------


class TextTransformer(nn.Module):
    def __init__(self, vocab=50, dim=32, heads=4, classes=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


def test_transformer_encoder_classifier_prunes_attention_and_feed_forward():
    net = TextTransformer()
    callback = fit(net, tokens())
    names = set(callback.masks)
    assert "net.encoder.layers.0.self_attn.in_proj_weight" in names
    assert "net.encoder.layers.1.self_attn.out_proj.weight" in names
    assert "net.encoder.layers.1.linear2.weight" in names
    assert "net.embed.weight" not in names  # embeddings are opt-in
    assert callback.store.params["net.head.weight"].is_output
    assert callback.summary()["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert_exact_zeros(callback, net)
    flops = callback.summary()
    assert 0 < flops["flops"] < flops["dense_flops"]


def test_embeddings_are_pruned_when_asked():
    net = TextTransformer()
    callback = fit(net, tokens(), embeddings=True)
    assert callback.masks["net.embed.weight"].float().mean() < 0.9
    assert_exact_zeros(callback, net)


class LSTMClassifier(nn.Module):
    def __init__(self, vocab=50, dim=16, hidden=32, classes=4, cell=nn.LSTM):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = cell(dim, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, x):
        out, _ = self.rnn(self.embed(x))
        return self.head(out[:, -1])


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_recurrent_classifier_prunes_every_gate_matrix(cell):
    net = LSTMClassifier(cell=cell)
    callback = fit(net, tokens())
    rnn = [n for n in callback.masks if ".rnn." in n]
    assert len(rnn) == 8  # ih and hh, 2 layers, 2 directions
    assert "net.rnn.weight_hh_l1_reverse" in callback.masks
    assert callback.summary()["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert_exact_zeros(callback, net)
    assert callback.store.params["net.head.weight"].is_output


class TiedLM(nn.Module):
    """Token-level language model whose decoder shares the embedding matrix."""

    def __init__(self, vocab=40, dim=16):
        super().__init__()
        self.decoder = nn.Linear(dim, vocab, bias=False)  # declared first on purpose
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.decoder.weight = self.embed.weight

    def forward(self, x):
        return self.decoder(torch.tanh(self.mix(self.embed(x))))


def test_tied_embedding_and_decoder_share_one_mask_counted_once():
    net = TiedLM()
    callback = fit(net, tokens(vocab=40, classes=40, per_token=True), output_min_density=0.0)
    assert sorted(callback.masks) == ["net.decoder.weight", "net.mix.weight"]
    summary = callback.summary()
    assert callback.store.total() == 40 * 16 + 16 * 16
    assert summary["coverage"] == pytest.approx((40 * 16 + 16 * 16) / (40 * 16 + 16 * 16 + 16))
    assert callback.store.params["net.decoder.weight"].is_output
    assert torch.all(net.embed.weight[~callback.masks["net.decoder.weight"]] == 0)


# ---- frozen backbone -----------------------------------------------------------------------


def frozen_backbone_net() -> nn.Module:
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(48, 256), nn.ReLU(), nn.Linear(256, 128))
    for p in backbone.parameters():
        p.requires_grad_(False)
    return nn.Sequential(backbone, nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def test_frozen_backbone_stays_dense_and_the_low_coverage_warning_names_it():
    net = frozen_backbone_net()
    before = net[0][1].weight.detach().clone()
    with pytest.warns(UserWarning, match=r"covers only .*0\.1\.weight .*frozen"):
        callback = fit(net, images(shape=(3, 4, 4)), criterion="taylor")
    assert set(callback.masks) == {"net.2.weight", "net.4.weight"}
    assert torch.equal(net[0][1].weight, before)
    assert callback.summary()["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert callback.summary()["coverage"] < 0.5


def test_prune_frozen_scores_frozen_weights_by_magnitude_not_zero():
    net = frozen_backbone_net()
    callback = fit(net, images(shape=(3, 4, 4)), criterion="taylor", prune_frozen=True)
    density = {n: float(m.float().mean()) for n, m in callback.masks.items()}
    assert set(density) == {"net.0.1.weight", "net.0.3.weight", "net.2.weight", "net.4.weight"}
    # a zero Taylor score would prune the frozen layers to their floor first
    assert density["net.0.1.weight"] > 0.05 and density["net.0.3.weight"] > 0.05
    assert callback.summary()["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert_exact_zeros(callback, net)


def test_every_weight_frozen_fails_before_the_first_step():
    net = frozen_backbone_net()
    callback = AdaptivePruning(include=["net.0.*"], monitor=None, verbose=False)
    run = trainer([callback], max_epochs=1)
    with pytest.raises(ValueError, match="every matched weight is frozen.*prune_frozen=True"):
        run.fit(Task(net), images(shape=(3, 4, 4)))
    assert run.global_step == 0


# ---- more module types ---------------------------------------------------------------------


class Mixed(nn.Module):
    """Conv1d, Conv3d and ConvTranspose2d in one model."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 3, padding=1)
        self.c3 = nn.Conv3d(1, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 6, 2, stride=2)
        self.head = nn.Linear(8 + 6, 5)

    def forward(self, x):
        seq = self.c1(x.reshape(x.shape[0], 4, 16)).relu().mean(dim=2)
        vol = self.c3(x.reshape(x.shape[0], 1, 4, 4, 4)).relu().mean(dim=2)
        img = self.up(vol).relu().mean(dim=(2, 3))
        return self.head(torch.cat([seq, img], dim=1))


@pytest.mark.parametrize("granularity", ["unstructured", "structured"])
def test_conv1d_conv3d_and_transposed_conv(granularity):
    net = Mixed()
    data = images(shape=(64,), classes=5)
    callback = fit(net, data, granularity=granularity, target_sparsity=0.5)
    assert set(callback.masks) == {f"net.{n}.weight" for n in ("c1", "c3", "up", "head")}
    assert_exact_zeros(callback, net)
    if granularity == "structured":  # transposed conv: output channels are dim 1
        up = callback.masks["net.up.weight"]
        per_channel = up.transpose(0, 1).reshape(6, -1)
        assert torch.all(per_channel.all(dim=1) | ~per_channel.any(dim=1))
        assert callback.masks["net.head.weight"].all()


def test_nm_on_a_layer_whose_input_width_is_not_a_multiple_of_m_names_it():
    net = nn.Sequential(nn.Conv1d(6, 8, 3), nn.Flatten(), nn.Linear(8 * 14, 4))
    callback = AdaptivePruning(granularity="n:m", nm="2:4", monitor=None, verbose=False)
    run = trainer([callback], max_epochs=1)
    message = r"M=4 does not divide the input dimension 6 of net\.0\.weight"
    with pytest.raises(ValueError, match=message):
        run.fit(Task(net), images(shape=(6, 16), classes=4))
    assert run.global_step == 0
