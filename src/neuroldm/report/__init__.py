"""``neuroldm report``: one self-contained HTML page of a run, for a clinician-researcher.

`sections` reads each stage's outputs into blocks, `figures` draws the few figures the report makes itself,
`html` renders the page (images as base64 ``data:`` URIs; no external file, CDN or script library).
"""

from __future__ import annotations

import time
from pathlib import Path

from neuroldm.errors import InputError
from neuroldm.io import write_text_atomic
from neuroldm.report.html import render_page
from neuroldm.report.sections import build_sections
from neuroldm.runs import RunDir


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of `run_dir` to `out` (default ``RUN_DIR/report.html``) atomically; return its path.

    Missing stages get a "Not run" note; only a missing run directory is an error.
    """
    run = RunDir(run_dir)
    if not run.exists():
        raise InputError(run.root, "run directory not found")
    path = Path(out) if out is not None else run.report
    page = render_page(f"neuroldm run report: {run.root.resolve().name}",
                       f"{run.root.resolve()} — generated {time.strftime('%Y-%m-%d %H:%M')}", build_sections(run))
    write_text_atomic(path, page)
    return path


__all__ = ["write_report"]
