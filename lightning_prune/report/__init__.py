"""`lightning-prune report`: the study's table, figures and markdown summary (and its ensemble).

Everything that summarises or draws a study for people lives here; it reads the study
through `lightning_prune.search` (the study contract) and ensembles through
`lightning_prune.ensembles`' own loader.
"""

from lightning_prune.report import _needs  # noqa: F401  (names the missing extras)
from lightning_prune.report.study_report import Report, build_report, run_report
from lightning_prune.report.tables import print_report, trials_table

__all__ = ["Report", "build_report", "print_report", "run_report", "trials_table"]
