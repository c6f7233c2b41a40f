"""The ablation report: tables with confidence intervals, answers to the study's questions, and plots,
from a sweep output folder. Entry point: `write_report(OUT)`.

Modules, data flowing down: load (the sweep folder), stats (pure statistics), analysis (metrics and
contrasts between conditions), plots (PNG figures), document (Markdown/HTML rendering), write (the sections).
"""

from .load import Condition, RunResult, Sweep, read_sweep_results
from .stats import (Interval, contrast_by_seed, hierarchical_bootstrap, mean_ci, resample_run_scores, run_score,
                    slope_weights, t_critical)
from .write import write_report

__all__ = [
    "Condition", "Interval", "RunResult", "Sweep", "contrast_by_seed", "hierarchical_bootstrap", "mean_ci",
    "read_sweep_results", "resample_run_scores", "run_score", "slope_weights", "t_critical", "write_report",
]
