"""Granularity "heads": whole attention heads pruned during a real fit, then removed by
`compact` (nn.MultiheadAttention inside nn.TransformerEncoder, and attention built from
separate q/k/v/o Linears), plus the errors raised before training."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune.export import CompactMultiheadAttention, compact
from lightning_prune.models import Classifier
from lightning_prune.pruning import AdaptivePruning, select_params
from lightning_prune.pruning.granularity import Heads
from tests.pruning_helpers import ZeroChecker, classifier, tiny_data, trainer

VOCAB, LENGTH, DIM, HEADS = 50, 12, 32, 4
HEAD_DIM = DIM // HEADS
LINEAR_HEADS = {"q": "*.q_proj", "k": "*.k_proj", "v": "*.v_proj", "out": "*.o_proj"}


class TextEncoder(nn.Module):
    """Embedding -> TransformerEncoder (2 layers, 4 heads, batch_first) -> mean -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        layer = nn.TransformerEncoderLayer(DIM, HEADS, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(DIM, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


class SelfAttention(nn.Module):
    """Attention as four Linears; the head count comes from `num_heads`, the width from -1."""

    def __init__(self, dim: int, num_heads: int, kv_dim: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, kv_dim or dim)
        self.v_proj, self.o_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.num_heads, -1).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class LinearAttentionNet(nn.Module):
    def __init__(self, num_heads: int = HEADS, kv_dim: int | None = None) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "attn": SelfAttention(DIM, num_heads, kv_dim),
                    "norm": nn.LayerNorm(DIM),
                    "mlp": nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, DIM)),
                }
            )
            for _ in range(2)
        )
        self.head = nn.Linear(DIM, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block["norm"](x + block["attn"](x))
            x = x + block["mlp"](x)
        return self.head(x.mean(dim=1))


def token_data(seed: int = 0) -> tuple[DataLoader, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (256, LENGTH), generator=generator)
    labels = (tokens < 10).sum(dim=1).gt(2).long()
    loader = DataLoader(TensorDataset(tokens, labels), batch_size=32, shuffle=True)
    return loader, tokens[:16]


def fit_heads(network: nn.Module, epochs: int = 2, **options) -> tuple[Classifier, AdaptivePruning]:
    torch.manual_seed(0)
    model = Classifier(network, num_classes=2)
    options = {"target_sparsity": 0.5, "frequency": 2, "monitor": None, "verbose": False} | options
    pruning = AdaptivePruning(granularity="heads", **options)
    checker = ZeroChecker(pruning)
    loader, _ = token_data()
    validation = {} if options["monitor"] else {"limit_val_batches": 0}
    fit = trainer([pruning, checker], max_epochs=epochs, **validation)
    fit.fit(model, loader, loader if options["monitor"] else None)
    assert checker.checked_steps == fit.global_step > 0
    return model, pruning


def head_slices(in_proj: str, out: str | None = None) -> list[list[tuple[str, slice, slice]]]:
    """Per head: (parameter, rows, columns) of every weight it owns, for a packed in_proj of
    nn.MultiheadAttention (out given) or for the four Linears of a SelfAttention (in_proj is the
    attention's prefix)."""
    heads = []
    for h in range(HEADS):
        cut = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
        every = slice(None)
        if out is not None:
            rows = [slice(o * DIM + h * HEAD_DIM, o * DIM + (h + 1) * HEAD_DIM) for o in range(3)]
            parts = [(in_proj, r, every) for r in rows] + [(out, every, cut)]
        else:
            parts = [(f"{in_proj}.{r}_proj.weight", cut, every) for r in "qkv"]
            parts.append((f"{in_proj}.o_proj.weight", every, cut))
        heads.append(parts)
    return heads


def check_whole_heads(pruning: AdaptivePruning, model: nn.Module, heads_by_block: list) -> int:
    """Every head is wholly pruned (mask and weights zero) or wholly kept; returns the count of
    pruned heads. Weights outside attention are dense."""
    masks, weights = pruning.masks, dict(model.named_parameters())
    attention = {name for heads in heads_by_block for head in heads for name, _, _ in head}
    pruned = 0
    for heads in heads_by_block:
        for head in heads:
            kept = torch.cat([masks[n][r, c].flatten() for n, r, c in head])
            values = torch.cat([weights[n][r, c].flatten() for n, r, c in head])
            assert kept.all() or not kept.any(), "a head is partly pruned"
            if not kept.any():
                assert not values.any(), "a pruned head has nonzero weights"
                pruned += 1
    for name, mask in masks.items():
        if name not in attention:
            assert mask.all(), f"{name} is pruned under granularity='heads'"
    return pruned


def attention_sparsity(pruning: AdaptivePruning, names: set[str]) -> float:
    masks = pruning.masks
    kept = sum(int(masks[n].sum()) for n in names)
    return 1.0 - kept / sum(masks[n].numel() for n in names)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_transformer_encoder_heads_pruned_whole_then_compacted() -> None:
    model, pruning = fit_heads(TextEncoder())
    prefix = "net.encoder.layers"
    blocks = [
        head_slices(
            f"{prefix}.{i}.self_attn.in_proj_weight", f"{prefix}.{i}.self_attn.out_proj.weight"
        )
        for i in range(2)
    ]
    pruned = check_whole_heads(pruning, model, blocks)
    names = {n for heads in blocks for head in heads for n, _, _ in head}
    one_head = 1 / (2 * HEADS)
    sparsity = attention_sparsity(pruning, names)
    assert abs(sparsity - 0.5) <= one_head and pruned == round(sparsity / one_head) > 0
    summary = pruning.summary()  # sparsity is measured on the attention weights only
    assert pruning.store.sparsity() == summary["sparsity"] == pytest.approx(sparsity)
    assert set(summary["dense_layers"]) == set(pruning.masks) - names

    net = model.net.eval()
    _, tokens = token_data()
    small = compact(net, tokens)

    attentions = [layer.self_attn for layer in small.encoder.layers]
    assert all(isinstance(a, CompactMultiheadAttention) for a in attentions)
    assert sum(a.num_heads for a in attentions) == 2 * HEADS - pruned
    assert n_params(small) < n_params(net)
    with torch.no_grad():  # eval: the original takes the fused fast path, the copy cannot
        torch.testing.assert_close(small(tokens), net(tokens), rtol=1e-5, atol=1e-5)
        padding = torch.zeros(tokens.shape, dtype=torch.bool)
        padding[:, -3:] = True  # the original converts to nested tensors, the copy does not
        embedded = net.embed(tokens)
        expected = net.encoder(embedded, src_key_padding_mask=padding)
        got = small.encoder(embedded, src_key_padding_mask=padding)
        torch.testing.assert_close(got[~padding], expected[~padding], rtol=1e-5, atol=1e-5)
        net.train(), small.train()  # the ordinary path, with self_attn(need_weights=False)
        torch.testing.assert_close(small(tokens), net(tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        {"regrowth": "rigl", "regrow_fraction": 0.9, "allocation": "layerwise"},
        # val_acc rises while training: with mode="min" every validation is worse, so the
        # controller backs off by one head's worth of attention weights each time
        {
            "monitor": "val_acc",
            "mode": "min",
            "tolerance": 0.0,
            "patience": 1,
            "backoff_step": 0.125,
        },
    ],  # fmt: skip
)
def test_heads_stay_whole_with_regrowth_and_backoff(options) -> None:
    class Whole(pl.Callback):
        def __init__(self) -> None:
            self.patterns = []

        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            blocks = [
                head_slices(f"net.encoder.layers.{i}.self_attn.in_proj_weight",
                            f"net.encoder.layers.{i}.self_attn.out_proj.weight")
                for i in range(2)
            ]  # fmt: skip
            self.patterns.append(check_whole_heads(pruning, pl_module, blocks))

    torch.manual_seed(0)
    model = Classifier(TextEncoder(), num_classes=2)
    options = {"target_sparsity": 0.5, "frequency": 2, "monitor": None, "verbose": False} | options
    pruning = AdaptivePruning(granularity="heads", **options)
    whole = Whole()
    loader, _ = token_data()
    validation = {} if options["monitor"] else {"limit_val_batches": 0}
    fit = trainer([pruning, whole], max_epochs=4, **validation)
    fit.fit(model, loader, loader if options["monitor"] else None)
    assert max(whole.patterns) > 0
    if options["monitor"]:
        backoffs = [e for e in pruning.controller.events if e["kind"] == "backoff"]
        assert backoffs and whole.patterns[-1] < max(whole.patterns)  # heads came back
        assert pruning.store.sparsity() == pytest.approx(whole.patterns[-1] / (2 * HEADS))


def test_separate_linear_attention_with_attention_heads() -> None:
    spec = {**LINEAR_HEADS, "num_heads": HEADS}
    model, pruning = fit_heads(LinearAttentionNet(), attention_heads=spec)
    blocks = [head_slices(f"net.blocks.{i}.attn") for i in range(2)]
    pruned = check_whole_heads(pruning, model, blocks)
    names = {n for heads in blocks for head in heads for n, _, _ in head}
    assert abs(attention_sparsity(pruning, names) - 0.5) <= 1 / (2 * HEADS) and pruned > 0

    net = model.net.eval()
    _, tokens = token_data()
    small = compact(net, tokens, attention_heads=spec)

    attentions = [block["attn"] for block in small.blocks]
    assert sum(a.num_heads for a in attentions) == 2 * HEADS - pruned
    for a in attentions:
        width = a.num_heads * HEAD_DIM
        assert a.q_proj.out_features == a.k_proj.out_features == a.v_proj.out_features == width
        assert a.o_proj.in_features == width and a.o_proj.out_features == DIM
    assert n_params(small) < n_params(net)
    with torch.no_grad():
        torch.testing.assert_close(small(tokens), net(tokens), rtol=1e-5, atol=1e-5)


def killed_attention(**kwargs) -> nn.MultiheadAttention:
    """An nn.MultiheadAttention(32, 4) with heads 1 and 3 zeroed (q/k/v rows, out columns)."""
    mha = nn.MultiheadAttention(DIM, HEADS, **kwargs).eval()
    with torch.no_grad():
        if mha.in_proj_bias is not None:
            mha.in_proj_bias.normal_()
        for h in (1, 3):
            cut = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
            if mha._qkv_same_embed_dim:
                for o in range(3):
                    mha.in_proj_weight[o * DIM + h * HEAD_DIM : o * DIM + (h + 1) * HEAD_DIM] = 0
            else:
                for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                    getattr(mha, name)[cut] = 0
            mha.out_proj.weight[:, cut] = 0
    return mha


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_first": True},
        {"batch_first": False, "add_bias_kv": True, "add_zero_attn": True},
        {"batch_first": True, "kdim": 12, "vdim": 20},
        {"batch_first": False, "bias": False},
    ],
)
def test_compact_attention_computes_the_same_function(kwargs) -> None:
    torch.manual_seed(0)
    mha = killed_attention(**kwargs)
    small = CompactMultiheadAttention.from_attention(mha, [0, 2]).eval()
    assert small.num_heads == 2 and small.out_proj.in_features == 2 * HEAD_DIM
    batch, tgt, src = 3, 5, 7
    kdim, vdim = kwargs.get("kdim", DIM), kwargs.get("vdim", DIM)

    def seq(length: int, width: int) -> torch.Tensor:
        shape = (batch, length, width) if kwargs["batch_first"] else (length, batch, width)
        return torch.randn(shape)

    query, key, value = seq(tgt, DIM), seq(src, kdim), seq(src, vdim)
    padding = torch.zeros(batch, src, dtype=torch.bool)
    padding[0, -2:] = True
    calls = [
        {},
        {"key_padding_mask": padding, "average_attn_weights": False},
        {"attn_mask": torch.randn(tgt, src), "key_padding_mask": padding.float() * -1e9},
        {"attn_mask": torch.randn(batch * HEADS, tgt, src), "need_weights": False},
        {"attn_mask": torch.rand(tgt, src) > 0.7, "need_weights": False},
    ]
    with torch.no_grad():
        for call in calls:
            expected, expected_weights = mha(query, key, value, **call)
            got, weights = small(query, key, value, **call)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
            assert (weights is None) == (expected_weights is None)
            if weights is not None:  # averaged over the kept heads only
                assert weights.shape[-2:] == expected_weights.shape[-2:]
        if kdim == vdim == DIM:
            single = query[0] if kwargs["batch_first"] else query[:, 0]
            torch.testing.assert_close(
                small(single, single, single)[0], mha(single, single, single)[0]
            )


def test_causal_encoder_layer_with_compact_attention() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(DIM, HEADS, 64, dropout=0.0, batch_first=True).eval()
    layer.self_attn = killed_attention(batch_first=True)
    small = nn.TransformerEncoderLayer(DIM, HEADS, 64, dropout=0.0, batch_first=True).eval()
    small.load_state_dict(layer.state_dict())
    small.self_attn = CompactMultiheadAttention.from_attention(layer.self_attn, [0, 2]).eval()
    x = torch.randn(2, 6, DIM)
    mask = nn.Transformer.generate_square_subsequent_mask(6)
    with torch.no_grad():
        torch.testing.assert_close(
            small(x, src_mask=mask, is_causal=True), layer(x, src_mask=mask, is_causal=True)
        )


def test_head_groups_score_by_mean_and_size_counts_every_weight() -> None:
    net = nn.Sequential(nn.MultiheadAttention(8, 2), nn.Linear(8, 3))
    params = {p.name: p for p in select_params(net, ("*",), ())}
    heads = Heads()
    heads.check(list(params.values()))
    scores = {n: torch.rand(p.param.shape) for n, p in params.items()}
    groups = heads.score_groups(params, scores)
    head_size = 3 * 4 * 8 + 8 * 4  # q, k, v rows and out columns of one head
    assert heads.group_sizes(params)["0.in_proj_weight"] == head_size
    assert groups["0.out_proj.weight"].numel() == groups["1.weight"].numel() == 0
    in_proj, out = scores["0.in_proj_weight"], scores["0.out_proj.weight"]
    head1 = torch.cat([in_proj[4:8].flatten(), in_proj[12:16].flatten(), in_proj[20:24].flatten(),
                       out[:, 4:8].flatten()])  # fmt: skip
    assert groups["0.in_proj_weight"][1].item() == pytest.approx(head1.mean().item())
    masks = heads.expand_all(params, {n: torch.tensor([True, False]) for n in params})
    assert not masks["0.in_proj_weight"][[4, 12, 20]].any() and masks["0.in_proj_weight"][0].all()
    assert not masks["0.out_proj.weight"][:, 4:].any() and masks["0.out_proj.weight"][:, :4].all()
    assert masks["1.weight"].all()
    assert heads.dense_names(params) == {"1.weight"}


# ---- errors before training ------------------------------------------------------------------


def test_heads_on_a_model_without_attention_raises_before_training() -> None:
    pruning = AdaptivePruning(granularity="heads", monitor=None)
    fit = trainer([pruning], max_epochs=1)
    with pytest.raises(ValueError, match=r"granularity='heads' needs nn.MultiheadAttention or "):
        fit.fit(classifier(), tiny_data())
    assert fit.global_step == 0


@pytest.mark.parametrize(
    ("attention_heads", "message"),
    [
        ("*.q_proj", "attention_heads must be a mapping"),
        ({**LINEAR_HEADS}, r"attention_heads needs exactly the keys .* missing \['num_heads'\]"),
        ({**LINEAR_HEADS, "num_heads": 4, "query": "*.q"}, r"unknown \['query'\]"),
        ({**LINEAR_HEADS, "num_heads": 0}, r"attention_heads\['num_heads'\] must be a positive"),
        ({**LINEAR_HEADS, "num_heads": True}, r"attention_heads\['num_heads'\]"),
        ({**LINEAR_HEADS, "q": 3, "num_heads": 4}, r"attention_heads\['q'\] must be a module-name"),
        ({**LINEAR_HEADS, "out": "", "num_heads": 4}, r"attention_heads\['out'\]"),
    ],
)
def test_bad_attention_heads_mapping_names_the_option(attention_heads, message) -> None:
    with pytest.raises(ValueError, match=message):
        AdaptivePruning(granularity="heads", attention_heads=attention_heads, monitor=None)


def test_attention_heads_needs_granularity_heads() -> None:
    with pytest.raises(ValueError, match="attention_heads is only used with granularity='heads'"):
        AdaptivePruning(attention_heads={**LINEAR_HEADS, "num_heads": 4}, monitor=None)


@pytest.mark.parametrize(
    ("network", "options", "message"),
    [
        (LinearAttentionNet(kv_dim=24), {}, "inconsistent shapes"),
        (LinearAttentionNet(num_heads=3), {}, "num_heads=3 does not divide"),
        (LinearAttentionNet(), {"exclude": ["*.o_proj"]}, "nothing .*matches .*out="),
        (LinearAttentionNet(), {"include": ["*.mlp.*"]}, "match no selected nn.Linear"),
        (TextEncoder(), {"exclude": ["*.out_proj"]}, r"out_proj is not selected"),
    ],
)
def test_heads_that_do_not_fit_the_model_raise_before_training(network, options, message):
    spec = None
    if isinstance(network, LinearAttentionNet):
        spec = {**LINEAR_HEADS, "num_heads": network.blocks[0]["attn"].num_heads}
    pruning = AdaptivePruning(granularity="heads", attention_heads=spec, monitor=None, **options)
    fit = trainer([pruning], max_epochs=1, limit_val_batches=0)
    loader, _ = token_data()
    with pytest.raises(ValueError, match=message):
        fit.fit(Classifier(network, num_classes=2), loader)
    assert fit.global_step == 0
