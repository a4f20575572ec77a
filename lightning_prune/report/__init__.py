"""`lightning-prune report`: figures and a markdown summary of a study (and its ensemble)."""

from lightning_prune.report.study_report import Report, build_report, run_report

__all__ = ["Report", "build_report", "run_report"]
