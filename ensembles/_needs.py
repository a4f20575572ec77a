"""Imported first by the package: without its extras, importing it names them."""

from lightning_prune.extras import require

require("ensembles (lightning_prune.ensembles)")
