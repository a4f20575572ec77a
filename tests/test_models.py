import pytest
import pytorch_lightning as pl
import torch

from lightning_prune.checkpoint import load_model, save_model
from lightning_prune.data import SyntheticDataModule
from lightning_prune.models import Classifier, build_network


@pytest.mark.parametrize(
    ("name", "weights"),
    [
        ("lenet300", 784 * 300 + 300 * 100 + 100 * 10),
        ("lenet5", 20 * 25 + 50 * 20 * 25 + 800 * 500 + 5000),
    ],
)
def test_networks_have_the_published_shapes(name, weights):
    net = build_network(name)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    counted = sum(p.numel() for n, p in net.named_parameters() if n.endswith("weight"))
    assert counted == weights


def test_vgg_small_has_batchnorm_and_runs():
    net = build_network("vgg_small")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_unknown_network_and_optimizer_are_named():
    with pytest.raises(ValueError, match="model.network"):
        build_network("resnet")
    with pytest.raises(ValueError, match="model.optimizer"):
        Classifier(optimizer="rmsprop")
    with pytest.raises(ValueError, match="model.lr"):
        Classifier(lr=0)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_classifier_learns_and_logs_metrics(optimizer, tmp_path):
    pl.seed_everything(0, verbose=False)
    data = SyntheticDataModule(num_train=256, num_val=128, num_test=128, noise=0.5)
    model = Classifier("lenet300", optimizer=optimizer, lr=0.01 if optimizer == "sgd" else 1e-3)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=data)
    assert {"val_acc", "val_loss", "train_loss"} <= set(trainer.callback_metrics)
    tested = trainer.test(model, datamodule=data, verbose=False)[0]
    assert tested["test_acc"] > 0.5  # chance is 0.1
    config = {"_target_": "lightning_prune.models.Classifier", "network": "lenet300"}
    path = save_model(tmp_path / "m.pt", model, config, {"acc": 1.0})
    loaded, info = load_model(path)
    x = data.test[0][:8]
    model.eval()
    assert torch.allclose(loaded(x), model(x)) and info["acc"] == 1.0
