"""The whole pipeline in one command: `neuroldm run` (any cohort) and `neuroldm demo` (the demo cohort)."""

from neuroldm.pipeline.runner import run_pipeline
from neuroldm.pipeline.stages import STAGE_NAMES, STAGES
from neuroldm.pipeline.summary import collect_metrics, write_metrics

__all__ = ["STAGES", "STAGE_NAMES", "collect_metrics", "run_pipeline", "write_metrics"]
