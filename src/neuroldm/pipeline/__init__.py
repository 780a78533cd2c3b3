"""The whole pipeline in one command: `neuroldm run` (any cohort) and `neuroldm demo` (the demo cohort)."""

from neuroldm.pipeline.runner import run_pipeline
from neuroldm.pipeline.stages import STAGE_NAMES, STAGES

__all__ = ["STAGES", "STAGE_NAMES", "run_pipeline"]
