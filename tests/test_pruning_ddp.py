"""DDP: masks are identical on every rank (2-process CPU gloo run in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys
    import pytorch_lightning as pl
    import torch
    from lightning_prune.data import SyntheticDataModule
    from lightning_prune.models import Classifier
    from lightning_prune.pruning import AdaptivePruning

    torch.set_num_threads(1)
    out = sys.argv[1]

    class Dump(pl.Callback):
        def __init__(self, pruning):
            self.pruning = pruning

        def on_fit_end(self, trainer, pl_module):
            masks = {n: m.cpu() for n, m in self.pruning.masks.items()}
            weights = {k: v.cpu() for k, v in pl_module.state_dict().items()}
            events = self.pruning.summary()["events"]
            torch.save(
                {"masks": masks, "weights": weights, "events": events},
                f"{out}/rank{trainer.global_rank}.pt",
            )

    if __name__ == "__main__":
        pl.seed_everything(0)
        # the activation criterion sees each rank's own data: without a broadcast the ranks
        # would disagree, so identical masks show that rank 0 decides for all
        pruning = AdaptivePruning(
            target_sparsity=0.8, criterion="activation", frequency=2, start=0.2, end=0.8,
            regrowth="rigl", monitor="val_acc", verbose=False,
        )
        trainer = pl.Trainer(
            accelerator="cpu", devices=2, strategy="ddp", max_epochs=2,
            callbacks=[pruning, Dump(pruning)], enable_progress_bar=False,
            enable_model_summary=False, logger=False, enable_checkpointing=False,
        )
        data = SyntheticDataModule(num_train=256, num_val=64, num_test=64, batch_size=32)
        trainer.fit(Classifier("lenet300"), data)
    """
)


def test_masks_identical_on_both_ddp_ranks(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0["masks"].keys() == rank1["masks"].keys()
    sparsity = []
    for name, mask in rank0["masks"].items():
        assert torch.equal(mask, rank1["masks"][name]), name
        sparsity.append(1 - mask.float().mean().item())
    assert max(sparsity) > 0.5  # it really pruned
    for key, value in rank0["weights"].items():
        assert torch.equal(value, rank1["weights"][key]), key
    assert rank0["events"] == rank1["events"] and rank0["events"]
