"""`neuroldm run`: the stages in order in one run directory, skipping those that are up to date (like make).

``RUN/pipeline.json`` keeps, per stage, the fingerprint it was built with, its status, wall time and peak memory::

    {"stages": {"train-vae": {"fingerprint": "...", "state": "done", "seconds": 512.3, "finished": "...",
                              "memory": {"peak_rss_gb": 3.1, "rss_scope": "stage", "peak_cuda_gb": 9.8},
                              "summary": {"seconds_per_step": 0.41, "samples_per_step": 2, ...}}, ...},
     "last_invocation": {"stages": [{"name", "status", "seconds"}, ...], "seconds": ...},
     "order": ["demo-cohort", "prepare", ...]}

(read through `neuroldm.runs.RunDir`: the report takes the stage order from ``order``, not from this package).
``memory`` is rank 0's peak while the stage ran (`neuroldm.memory.PeakMemory`: resident memory, the stage's own
where Linux lets the peak be reset, else the process's so far, as ``rss_scope`` says; CUDA allocator memory on a
GPU). The training stages' summaries hold ``seconds_per_step``: the mean optimiser step, validation and checkpoints
excluded (for classify-grid, over all its runs).

A stage is *up to date* when its recorded state is ``done``, its fingerprint equals the one computed now, and its
outputs exist. A stage that was interrupted (state ``running``) with an unchanged fingerprint is re-entered, and
the training stages resume from their last checkpoint; with a changed fingerprint its old outputs are removed first,
so a stale checkpoint is never resumed under new settings. A training stage stopped before its planned steps
(``max_minutes``: its summary lists ``truncated`` trainings) is recorded with state ``truncated`` and the steps
done and planned; it is not up to date, so the next run resumes it like an interrupted one, and the stages below
it see another fingerprint (their inputs were under-trained) and are rebuilt once it completes. ``--from STAGE``
rebuilds STAGE and everything after it; ``--only STAGE`` runs STAGE alone (its inputs must be there).

Under ``torchrun --nproc_per_node N -m neuroldm run ...`` every process walks the same stages: the training stages
(`Stage.distributed`) run on every rank through the engine's DDP, every other stage and all bookkeeping on rank 0
while the others wait at a barrier (with a long timeout: an evaluation can outlast NCCL's default 10 minutes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch

from neuroldm import __version__, runtime
from neuroldm.config import Config
from neuroldm.errors import NeuroLDMError
from neuroldm.io import write_json_atomic
from neuroldm.memory import PeakMemory
from neuroldm.pipeline.stages import STAGE_NAMES, STAGES, Context, Stage, remove_outputs
from neuroldm.preflight import check_stage_options, preflight
from neuroldm.runs import RunDir, truncation_text

log = logging.getLogger(__name__)


def _section(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


# settings that decide when a training stops, never what it computes (steps are the contract): out of the
# fingerprints, so a stage truncated by a user's max_minutes resumes when the cap is lifted, instead of restarting
_WHEN_TO_STOP = ("max_minutes",)


def _without_stop_settings(node):
    if isinstance(node, dict):
        return {k: _without_stop_settings(v) for k, v in node.items() if k not in _WHEN_TO_STOP}
    return node


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _output_digest(run: Path, stage: Stage) -> str:
    """Fingerprint of an always-run stage: the content of its first output (e.g. the prepared manifest)."""
    h = hashlib.sha256()
    h.update((run / stage.outputs[0]).read_bytes())
    return h.hexdigest()[:16]


def _built_fingerprint(fp: str, truncated: list[dict]) -> str:
    """What the stages below see of a built stage: its fingerprint, or another one while it is truncated."""
    return _digest({"inputs": fp, "truncated": truncated}) if truncated else fp




def run_pipeline(run_dir: str | Path, cfg: Config, *, from_stage: str | None = None, only: str | None = None,
                 device: str | torch.device = "cpu", progress: bool = True) -> dict:
    """Run every enabled stage that is out of date; returns the invocation's summary (also in pipeline.json)."""
    check_stage_options(from_stage, only, STAGE_NAMES)
    run = Path(run_dir)
    layout = RunDir(run)
    if runtime.is_main():
        layout.check_holds_a_run()  # a user's non-empty folder is refused before anything is written into it
    ctx = Context(run=run, cfg=cfg, device=device, progress=progress)
    device_here = runtime.resolve_device(device)
    ctx.cohort()  # a missing input fails here, before anything runs
    # every rule and file of the stages this invocation may run (those before --from too: they rerun when out of
    # date), before the run directory is created
    preflight(cfg, [s.name for s in STAGES if s.enabled(cfg) and only in (None, s.name)], device=device_here)
    runtime.init_process_group(device)
    main = runtime.is_main()
    if main:
        run.mkdir(parents=True, exist_ok=True)
        if not layout.pipeline.exists():  # the run's mark, before anything else is written
            write_json_atomic(layout.pipeline, {"stages": {}, "order": list(STAGE_NAMES)})
        layout.save_config(cfg)
    runtime.barrier()
    state = layout.read_pipeline()
    state["order"] = [s.name for s in STAGES]  # the report and the summary read the stage order from the run

    def save() -> None:
        if main:
            write_json_atomic(layout.pipeline, state)

    records: dict = state.setdefault("stages", {})
    cfg_dict = cfg.to_dict()
    fingerprints: dict[str, str] = {}
    forced = False
    invocation: list[dict] = []
    start = time.perf_counter()
    for stage in STAGES:
        if not stage.enabled(cfg):
            invocation.append({"name": stage.name, "status": "skipped", "seconds": 0.0})
            continue
        forced = forced or stage.name == from_stage
        inputs = {"stage": stage.name, "neuroldm": __version__,
                  "config": {k: _without_stop_settings(_section(cfg_dict, k)) for k in stage.keys},
                  "after": {a: fingerprints.get(a) for a in stage.after if a in fingerprints}}
        fp = _digest(inputs)
        # the fingerprint without the upstream stages whose change only part of the outputs depends on
        base_fp = _digest({**inputs, "after": {a: f for a, f in inputs["after"].items() if a not in stage.partial}})
        rec = records.get(stage.name, {})
        outputs_there = all((run / o).exists() for o in stage.outputs)
        if only is not None and stage.name != only:
            if not (rec.get("state") in ("done", "truncated") and outputs_there):
                if STAGE_NAMES.index(stage.name) < STAGE_NAMES.index(only):
                    raise NeuroLDMError(f"--only {only}: the earlier stage '{stage.name}' has not been run in "
                                        f"{run}; run the pipeline up to it first")
                continue
            fingerprints[stage.name] = _built_fingerprint(rec.get("fingerprint", fp), rec.get("truncated") or [])
            continue
        up_to_date = (not stage.always and not forced and only is None and rec.get("state") == "done"
                      and rec.get("fingerprint") == fp and outputs_there)
        if up_to_date:
            fingerprints[stage.name] = fp
            invocation.append({"name": stage.name, "status": "reused", "seconds": 0.0})
            if main:
                log.info("[%s] up to date: reused", stage.name)
            continue
        resuming = rec.get("state") in ("running", "truncated") and rec.get("fingerprint") == fp and not forced
        if main and not resuming and not stage.always:
            if (stage.partial_clean is not None and not forced and rec.get("state") == "done"
                    and rec.get("base_fingerprint") == base_fp):
                stage.partial_clean(run)
            else:
                remove_outputs(run, stage)
        records[stage.name] = {"fingerprint": fp, "base_fingerprint": base_fp, "state": "running",
                               "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        save()
        runtime.barrier()  # outputs cleaned and the record written before any rank starts
        if main:
            log.info("[%s] %s", stage.name, "resuming" if resuming else "running")
        t0 = time.perf_counter()
        peak = PeakMemory(device_here)
        try:
            with peak:
                summary = stage.run(ctx) if main or stage.distributed else {}
            runtime.barrier()
        except BaseException:
            # the record stays "running": a re-run with the same settings re-enters (and resumes) this stage
            invocation.append({"name": stage.name, "status": "failed", "seconds": round(time.perf_counter() - t0, 1)})
            state["last_invocation"] = {"stages": invocation, "seconds": round(time.perf_counter() - start, 1)}
            save()
            raise
        seconds = round(time.perf_counter() - t0, 1)
        if stage.always:
            fp = _digest({"inputs": fp, "output": _output_digest(run, stage)})
            unchanged = rec.get("fingerprint") == fp and rec.get("state") == "done"
        else:
            unchanged = False
        truncated = (summary or {}).get("truncated") or []  # trainings stopped before their planned steps
        records[stage.name] = {"fingerprint": fp, "base_fingerprint": base_fp,
                               "state": "truncated" if truncated else "done",
                               "seconds": seconds if not unchanged
                               else rec.get("seconds", seconds), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                               "memory": rec.get("memory", peak.result()) if unchanged else peak.result(),
                               "summary": summary, **({"truncated": truncated} if truncated else {})}
        fingerprints[stage.name] = _built_fingerprint(fp, truncated)
        status = "truncated" if truncated else "reused" if unchanged else "ran"
        invocation.append({"name": stage.name, "status": status, "seconds": seconds})
        if main and truncated:
            log.warning("[%s] truncated in %.1f s: %s; the next run resumes it and rebuilds the stages below",
                        stage.name, seconds, truncation_text(truncated))
        elif main:
            log.info("[%s] %s in %.1f s", stage.name, "up to date" if unchanged else "done", seconds)
        # kept current after every stage, so the report (the last stage) shows this invocation
        state["last_invocation"] = {"stages": invocation, "seconds": round(time.perf_counter() - start, 1)}
        save()
    state["last_invocation"] = {"stages": invocation, "seconds": round(time.perf_counter() - start, 1)}
    save()
    runtime.barrier()
    return state
