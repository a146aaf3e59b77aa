"""Erasure reports: efficacy, robustness (paraphrases, misspellings, a white-box attack), usability and a
before/after grid, judged over fixed seeds with a named, versioned judge (see `report.py`, `attack.py`)."""

from erasure_core.reports.attack import MAX_ATTACK_STEPS, AttackConfig
from erasure_core.reports.judges import JUDGES, Judge, detect_world, get_judge
from erasure_core.reports.report import MAX_SEEDS, EngineSession, Report, ReportConfig, build_report

__all__ = [
    "JUDGES",
    "MAX_ATTACK_STEPS",
    "MAX_SEEDS",
    "AttackConfig",
    "EngineSession",
    "Judge",
    "Report",
    "ReportConfig",
    "build_report",
    "detect_world",
    "get_judge",
]
