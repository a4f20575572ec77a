"""Built-in networks and the generic Classifier LightningModule."""

from lightning_prune.models.classifier import Classifier
from lightning_prune.models.networks import NETWORKS, build_network

__all__ = ["NETWORKS", "Classifier", "build_network"]
