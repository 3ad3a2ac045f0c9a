"""Experiments over many runs: suites and their variants, tables with Welch statistics, figures, and several
runs at once as separate processes."""
from .suites import job_count, report, run_suite, suite_config
from .variants import ABLATION, COMPARE, PRESETS, Variant, ablation_variants, compare_variants

__all__ = ["job_count", "report", "run_suite", "suite_config", "ABLATION", "COMPARE", "PRESETS", "Variant",
           "ablation_variants", "compare_variants"]
