"""Imported first by the package: without the `search` and `tracking` extras, importing it
names them instead of failing on a bare ModuleNotFoundError deep inside."""

from lightning_prune.extras import require

require("the search (lightning_prune.search)")
