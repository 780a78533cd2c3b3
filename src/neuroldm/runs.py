"""The run directory: one folder per experiment, holding every stage's outputs and the settings behind them.

    RUN/
      config.yaml          resolved configuration of the last stage run here (each stage keeps its own copy too)
      run.json             where the prepared cohort is, and which stages ran when
      vae/                 train-vae: checkpoints/, metrics.csv, model.safetensors, reconstruction/
      latents/             encode: one safetensors file per volume, index.csv, latents.json (scale factor)

Later stages find their inputs here, so ``neuroldm encode --run RUN`` needs nothing else.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from neuroldm.config import Config, save_config
from neuroldm.errors import InputError
from neuroldm.io import write_json_atomic

RUN_FILE = "run.json"


def read_run(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def record_stage(run_dir: str | Path, stage: str, cfg: Config, **fields) -> None:
    """Save the resolved config in the run directory and note the stage (and e.g. the prepared dir) in run.json."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    info = read_run(run_dir)
    info.update({k: str(v) for k, v in fields.items() if v is not None})
    info.setdefault("stages", {})[stage] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json_atomic(run_dir / RUN_FILE, info)
    save_config(cfg, run_dir)


def prepared_dir(run_dir: str | Path, given: str | Path | None = None) -> Path:
    """The prepared cohort of a run: `given`, else the one recorded in run.json."""
    if given is not None:
        return Path(given)
    recorded = read_run(run_dir).get("prepared")
    if not recorded:
        raise InputError(Path(run_dir) / RUN_FILE, "no prepared cohort recorded for this run; pass --prepared DIR")
    return Path(recorded)
