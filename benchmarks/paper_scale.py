"""The cost of the `paper` preset on this machine: every training stage, sampling and the evaluation's features.

    .venv/bin/python benchmarks/paper_scale.py [--device cpu] [--amp auto] [--sdpa default] [--compile off]
                                               [--grad-checkpointing off] [--steps 3] [--warmup 1]
                                               [--sampling-steps N] [--threads N] [--set KEY=VALUE ...]
                                               [--out DIR] [--quick]

Training (each stage at the preset's batch size, through the training engine `neuroldm.train.engine.Trainer`, so
a step is exactly the pipeline's: batch assembly and augmentation, autocast, backward, clipping, AdamW, EMA):

- ``train-vae``: the ``paper`` autoencoder on 1×112×136×112 volumes; L1 + KL + the 2.5D perceptual term with a
  randomly initialised VGG16 when ``vae.perceptual_weights_path`` is not set (the same network, so the same cost);
- ``train-diffusion``: DiT-S/2 with the preset's shifted 4×4×4-token windows on 4×28×34×28 latents (posterior
  sample, noise, EMA);
- ``classify``: EfficientNetV2-S on 1×112×136×112 volumes with the preset's augmentation.

The data are random volumes and latents held in memory (a prepared cohort is read from a page cache just as
fast). Every combination of the switches ``--amp``, ``--sdpa`` (the DiT's attention kernels), ``--compile`` and
``--grad-checkpointing`` is one row, measured in a fresh process: `--warmup` untimed steps (allocator warm-up,
``torch.compile``'s compilation), then the median of `--steps` timed steps (`Trainer.step_seconds`). A row that
fails (no kernel for a mask, out of memory) says why.

Sampling: each sampler of `neuroldm.diffusion.samplers.SAMPLERS` at its default steps on a batch of
``sample.batch_size`` latents with the preset's DiT (random weights: the cost does not depend on them), in float32
as ``neuroldm sample`` runs, then decoding each volume with the paper autoencoder. With ``--sampling-steps N`` only
N steps are timed after one untimed step, and the sampler's time is their median times its step count (every step
is one network call and the scheduler's arithmetic); without it every step runs.

Evaluation: the FID InceptionV3 features of every slice of one volume (``evaluate.slice_stride``: 112 + 136 + 112
slices at the paper grid), after a warm-up call; a random convolutional network stands in, and says so, when the
Inception weights are not installed.

Peak memory (`neuroldm.memory.PeakMemory`): the measuring process's resident memory (interpreter, torch, the model
and the data included; the stretch's own peak where Linux can reset it) and, on a GPU, torch's allocator peak.

The projection multiplies the measured s/step by the preset's steps: ``vae.train.steps``, ``diffusion.train.steps``,
and for the classifier grid ``classifier.train.steps`` × its runs (regimes × seeds × folds; an upper bound, since
patience may stop a run early). Writes ``paper_scale.md`` and ``paper_scale.json`` to ``--out``.

``--quick`` shrinks every size (a 32×40×32 grid, the demo autoencoder, the tiny DiT and EfficientNetV2), to check
the script itself in a minute; its numbers say nothing about the paper preset.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUICK = ["prepare.grid=[32,40,32]", "vae.arch=demo", "vae.train.batch_size=1", "diffusion.model=tiny",
         "diffusion.patch=[1,2,1]", "diffusion.window=[2,2,2]", "diffusion.train.batch_size=2",
         "classifier.arch=efficientnetv2-tiny", "classifier.train.batch_size=2", "sample.batch_size=2",
         "evaluate.slice_stride=8"]
STAGES = ("train-vae", "train-diffusion", "classify")


# --------------------------------------------------------------------------------------------------------------
# Children: each measurement in its own process
# --------------------------------------------------------------------------------------------------------------

def _config(spec: dict):
    from neuroldm.config import load_config

    return load_config("paper", None, spec["overrides"])


def _device(spec: dict):
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    return torch.device(spec["device"])


def _volumes(folder: Path, n: int, grid, seed: int = 0):
    """`n` random prepared volumes (NIfTI) and their manifest rows, labels alternating."""
    import nibabel as nib
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        path = folder / f"sub-{i:02d}.nii"
        nib.save(nib.Nifti1Image(rng.standard_normal(grid).astype(np.float32), np.eye(4)), path)
        rows.append({"path": str(path), "label": i % 2, "subject": f"sub-{i:02d}"})
    return pd.DataFrame(rows)


def _perceptual(vcfg):
    """The configured perceptual loss; without its weights file, the same network with random weights."""
    from neuroldm.vae.perceptual import (
        MedicalNetResNet10,
        SlicePerceptualLoss,
        VGG16Features,
        VolumePerceptualLoss,
        build_perceptual,
    )

    if vcfg.perceptual == "none" or vcfg.perceptual_weight <= 0 or vcfg.perceptual_weights_path:
        return build_perceptual(vcfg), "weights file" if vcfg.perceptual_weights_path else "off"
    if vcfg.perceptual == "2.5d":
        return SlicePerceptualLoss(VGG16Features(), slices=vcfg.perceptual_slices), "VGG16, random weights"
    return VolumePerceptualLoss(MedicalNetResNet10()), "MedicalNet ResNet-10, random weights"


def _trainer_inputs(stage: str, cfg, tmp: Path):
    """``(parts, train config, dataset, loss function, notes)`` of `stage`, as its stage function builds them."""
    import torch

    if stage == "train-vae":
        from neuroldm.data.dataset import VolumeDataset
        from neuroldm.train.engine import Part
        from neuroldm.vae.losses import build_discriminator
        from neuroldm.vae.network import build_vae
        from neuroldm.vae.train import VAEObjective

        tcfg = cfg.vae.train
        data = VolumeDataset(_volumes(tmp, 2 * tcfg.batch_size, cfg.prepare.grid), cfg.vae.augment, seed=tcfg.seed,
                             crop=cfg.vae.patch_size)
        perceptual, how = _perceptual(cfg.vae)
        parts = [Part("model", build_vae(cfg.vae, grad_checkpointing=tcfg.grad_checkpointing))]
        disc = build_discriminator(cfg.vae)
        if disc is not None:
            parts.append(Part("disc", disc, lr=cfg.vae.disc_lr, active_from=0))
        return parts, tcfg, data, VAEObjective(cfg, perceptual, disc), {"perceptual": how, "extra": perceptual}
    if stage == "train-diffusion":
        import pandas as pd

        from neuroldm.diffusion.train import DiffusionObjective, LatentDataset
        from neuroldm.diffusion.weights import dit_from_config
        from neuroldm.train.engine import Part
        from neuroldm.vae.encode import LatentSet
        from neuroldm.vae.network import latent_shape

        tcfg = cfg.diffusion.train
        shape = latent_shape(cfg.prepare.grid, cfg.vae)
        n = 2 * tcfg.batch_size
        g = torch.Generator().manual_seed(0)
        latents = LatentSet(mu=torch.randn(n, *shape, generator=g), sigma=torch.full((n, *shape), 0.5),
                            labels=torch.arange(n) % 2, index=pd.DataFrame(), scale_factor=1.0, info={})
        model = dit_from_config(cfg.diffusion, shape, len(cfg.data.classes))
        return ([Part("model", model)], tcfg, LatentDataset(latents), DiffusionObjective(cfg.diffusion, latents.space),
                {"tokens": model.x_embedder.num_tokens})
    from neuroldm.classify.network import build_classifier
    from neuroldm.classify.train import cross_entropy
    from neuroldm.data.dataset import VolumeDataset
    from neuroldm.train.engine import Part

    tcfg = cfg.classifier.train
    data = VolumeDataset(_volumes(tmp, 2 * tcfg.batch_size, cfg.prepare.grid), cfg.classifier.augment, seed=tcfg.seed)
    return [Part("model", build_classifier(cfg.classifier, len(cfg.data.classes)))], tcfg, data, cross_entropy, {}


def _sdpa(name: str):
    """The DiT's attention kernels: torch's own choice, or one SDPA backend forced (an error if it cannot run)."""
    if name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    return sdpa_kernel(backends[name])


def child_train(spec: dict) -> dict:
    import torch

    from neuroldm.memory import PeakMemory
    from neuroldm.train.engine import Trainer

    device = _device(spec)
    cfg = _config(spec)
    steps = spec["warmup"] + spec["steps"]
    with tempfile.TemporaryDirectory(prefix="neuroldm-bench-") as tmp, PeakMemory(device) as peak:
        torch.manual_seed(0)
        parts, tcfg, data, loss, notes = _trainer_inputs(spec["stage"], cfg, Path(tmp))
        extra = notes.pop("extra", None)
        tcfg = tcfg.model_copy(update={"steps": steps, "val_every": steps, "ckpt_every": steps, "log_every": steps,
                                       "max_minutes": None})
        if spec["compile"]:
            for part in parts:
                part.module.compile()
        trainer = Trainer(parts, tcfg, Path(tmp) / "run", dataset=data, loss_fn=loss, progress=False, device=device)
        if extra is not None:
            extra.to(trainer.world.device)
        with _sdpa(spec["sdpa"]):
            trainer.fit(resume=False)
        timed = trainer.step_seconds[spec["warmup"]:]
    per_step = statistics.median(timed)
    samples = tcfg.batch_size * tcfg.grad_accum
    return {"seconds_per_step": per_step, "min_seconds_per_step": min(timed), "batch": samples,
            "samples_per_second": samples / per_step, "params_m": sum(p.numel() for p in parts[0].module.parameters())
            / 1e6, **peak.result(), **notes}


class _Enough(Exception):
    """Raised from the sampling loop's progress callback once the steps to time have run."""


def _timed_sampling(model, dcfg, labels, noise, scfg, generators, limit: int | None, sync) -> list[float]:
    """Seconds of each step of `scfg`'s sampler (the first `limit` only, when given)."""
    from neuroldm.diffusion.process import sample_latents

    stamps = [time.perf_counter()]

    def tick():
        sync()
        stamps.append(time.perf_counter())
        if limit is not None and len(stamps) > limit:
            raise _Enough

    with contextlib.suppress(_Enough):
        sample_latents(model, dcfg, labels, noise, scfg, generators=generators, progress=tick)
    return [b - a for a, b in itertools.pairwise(stamps)]


def child_sampling(spec: dict) -> dict:
    import torch

    from neuroldm.diffusion.samplers import SAMPLERS
    from neuroldm.diffusion.weights import dit_from_config
    from neuroldm.memory import PeakMemory
    from neuroldm.vae.decode import decode_volume
    from neuroldm.vae.network import build_vae, latent_shape

    device = _device(spec)
    cfg = _config(spec)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    shape = latent_shape(cfg.prepare.grid, cfg.vae)
    b = cfg.sample.batch_size
    torch.manual_seed(0)
    dit = dit_from_config(cfg.diffusion, shape, len(cfg.data.classes)).to(device).eval()
    vae = build_vae(cfg.vae).to(device).eval()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(b, *shape, generator=g).to(device)
    labels = (torch.arange(b) % 2).to(device)
    rows = []
    with torch.no_grad():
        for sampler in SAMPLERS.values():
            steps = sampler.steps_for(cfg.diffusion, sampler.default_steps or cfg.diffusion.num_train_timesteps)
            scfg = cfg.sample.model_copy(update={"sampler": sampler.name, "steps": steps})
            with PeakMemory(device) as peak:
                for limit in (1, spec["sampling_steps"]):  # one untimed step, then the timed ones
                    # one generator per volume, as `neuroldm sample` seeds them
                    gens = [torch.Generator().manual_seed(i) for i in range(b)]
                    times = _timed_sampling(dit, cfg.diffusion, labels, noise, scfg, gens, limit, sync)
                z = torch.randn(b, *shape, generator=g).to(device)
                decode = []
                for i in range(b):  # one volume at a time, as `neuroldm sample` decodes
                    start = time.perf_counter()
                    decode_volume(vae, z[i:i + 1], cfg.vae)
                    sync()
                    decode.append(time.perf_counter() - start)
            step = statistics.median(times)
            sampling = sum(times) if len(times) == steps else step * steps
            rows.append({"sampler": sampler.name, "steps": steps, "timed_steps": len(times), "batch": b,
                         "seconds_per_step": step, "decode_seconds_per_volume": statistics.median(decode),
                         "seconds_per_volume": sampling / b + statistics.median(decode),
                         "guidance": cfg.sample.guidance, **peak.result()})
    return {"samplers": rows}


def child_evaluate(spec: dict) -> dict:
    import torch

    from neuroldm.config import EvaluateConfig
    from neuroldm.evaluate.inception import find_inception, random_feature_network, resolve_feature_network
    from neuroldm.evaluate.slice_fid import extract_slice_features, slice_positions, to_network_input
    from neuroldm.memory import PeakMemory

    device = _device(spec)
    cfg = _config(spec)
    ecfg = cfg.evaluate
    inception = ecfg.inception_path or find_inception()
    net = (resolve_feature_network(EvaluateConfig(inception_path=ecfg.inception_path)) if inception
           else random_feature_network(ecfg.seed))
    net.to(device)
    with tempfile.TemporaryDirectory(prefix="neuroldm-bench-") as tmp:
        path = _volumes(Path(tmp), 1, cfg.prepare.grid)["path"].iloc[0]
        positions = slice_positions(tuple(cfg.prepare.grid), ecfg.slice_stride)
        net(to_network_input(torch.zeros(2, *cfg.prepare.grid[1:]), (-2.0, 2.0), net.size).to(device))  # warm-up
        with PeakMemory(device) as peak:
            start = time.perf_counter()
            extract_slice_features([path], ["v"], net, (-2.0, 2.0), positions, batch_size=ecfg.batch_size,
                                   device=str(device), progress=False)
            seconds = time.perf_counter() - start
    slices = int(sum(len(p) for p in positions))
    return {"network": net.name, "inception": bool(inception), "slices": slices, "seconds_per_volume": seconds,
            "seconds_per_slice": seconds / slices, "batch": ecfg.batch_size, **peak.result()}


CHILDREN = {"train": child_train, "sampling": child_sampling, "evaluate": child_evaluate}


# --------------------------------------------------------------------------------------------------------------
# Parent: plan, run, tabulate
# --------------------------------------------------------------------------------------------------------------

def _run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          check=False)
    if proc.returncode:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        if proc.returncode < 0:
            why = f"killed by signal {-proc.returncode} (out of memory?)"
        return {"error": why[:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _gb(row: dict) -> str:
    text = f"{row['peak_rss_gb']:.2f}" + ("" if row.get("rss_scope") == "stage" else " (process)")
    return text + (f" / {row['peak_cuda_gb']:.2f}" if "peak_cuda_gb" in row else "")


def plan_of(cfg) -> dict[str, dict]:
    """The preset's planned steps per training stage (the classifier grid: steps × runs)."""
    from neuroldm.classify.data import grid_regimes

    c = cfg.classifier
    regimes = grid_regimes(c.regimes, c.mix_ratios, c.subset_fractions, c.synthetic_ratio)
    folds = 1 if c.folds == "split" else max(cfg.split.folds, 1)
    runs = len(regimes) * len(c.seeds) * folds
    return {"train-vae": {"steps": cfg.vae.train.steps, "runs": 1},
            "train-diffusion": {"steps": cfg.diffusion.train.steps, "runs": 1},
            "classify": {"steps": c.train.steps, "runs": runs}}


def markdown(report: dict) -> str:
    m = report["machine"]
    quick = " with --quick sizes (its numbers say nothing about the paper preset)" if report["quick"] else ""
    sets = f"; overrides: {', '.join(report['overrides'])}" if report["overrides"] else ""
    intro = (f"Preset `paper`{quick}{sets}. Training: median of {report['steps']} timed steps after "
             f"{report['warmup']} untimed. Peak memory: resident (GB; 'process' where only the process's peak could be "
             "read) / CUDA allocator (GB).")
    header = ("| stage | amp | attention | compile | grad ckpt | batch | s/step | samples/s | peak GB | planned steps "
              "| projected |")
    out = [f"# Paper-scale cost on {m['device_name']} ({m['threads']} threads), torch {m['torch']}", "", intro]
    if report["training"]:  # each part only where it was measured (--stages)
        out += ["", header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["training"]:
        plan = report["plan"][r["stage"]]
        steps = f"{plan['steps']:,}" + (f" × {plan['runs']} runs" if plan["runs"] > 1 else "")
        head = (f"| {r['stage']} | {r['amp']} | {r['sdpa'] if r['stage'] == 'train-diffusion' else '–'} | "
                f"{'on' if r['compile'] else 'off'} | {'on' if r['grad_checkpointing'] else 'off'} |")
        if "error" in r:
            out.append(f"{head} failed: {r['error']} | | | | {steps} | |")
            continue
        total = r["seconds_per_step"] * plan["steps"] * plan["runs"]
        out.append(f"{head} {r['batch']} | {r['seconds_per_step']:.3g} | {r['samples_per_second']:.3g} | {_gb(r)} | "
                   f"{steps} | {_hours(total)} |")
    sampling = report["sampling"]
    if sampling:
        out += ["", "| sampler | steps | timed steps | batch | s/step (batch) | decode s/volume | s/volume | peak GB |",
                "|---|---|---|---|---|---|---|---|"]
    if "error" in sampling:
        out.append(f"| failed: {sampling['error']} | | | | | | | |")
    for r in sampling.get("samplers", []):
        timed = "all" if r["timed_steps"] == r["steps"] else f"{r['timed_steps']} (extrapolated)"
        out.append(f"| {r['sampler']} | {r['steps']} | {timed} | {r['batch']} | {r['seconds_per_step']:.3g} | "
                   f"{r['decode_seconds_per_volume']:.3g} | {r['seconds_per_volume']:.3g} | {_gb(r)} |")
    e = report["evaluate"]
    if e:
        out += ["", "| evaluation | network | slices | s/slice | s/volume | peak GB |", "|---|---|---|---|---|---|"]
    if "error" in e:
        out.append(f"| slice features | failed: {e['error']} | | | | |")
    elif e:
        out.append(f"| slice features | {e['network']}{'' if e['inception'] else ' (not Inception: its cost differs)'}"
                   f" | {e['slices']} | {e['seconds_per_slice']:.3g} | {e['seconds_per_volume']:.3g} | {_gb(e)} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--amp", nargs="+", default=["auto"], choices=["auto", "off", "bf16", "fp16"],
                    help="train.amp values to measure, one row each (auto: bf16 on CUDA, off on the CPU)")
    ap.add_argument("--sdpa", nargs="+", default=["default"],
                    choices=["default", "math", "flash", "efficient", "cudnn"],
                    help="the DiT's attention kernels (default: torch's choice)")
    ap.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"], help="torch.compile the networks")
    ap.add_argument("--grad-checkpointing", nargs="+", default=["off"], choices=["off", "on"])
    ap.add_argument("--stages", nargs="+", default=list(STAGES) + ["sampling", "evaluate"],
                    choices=list(STAGES) + ["sampling", "evaluate"])
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per row")
    ap.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    ap.add_argument("--sampling-steps", type=int, default=None,
                    help="time this many steps of each sampler and extrapolate (default: run every step)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override on the paper preset, e.g. diffusion.model=DiT-S/4")
    ap.add_argument("--out", default=None, help="folder for paper_scale.md and paper_scale.json")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a check of the script, not of the preset")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["kind"]](spec)))
        return

    import torch

    from neuroldm.config import load_config

    overrides = (QUICK if args.quick else []) + args.overrides
    cfg = load_config("paper", None, overrides)  # a bad override fails here, before any measurement
    base = {"device": args.device, "threads": args.threads, "overrides": overrides, "warmup": args.warmup,
            "steps": args.steps, "sampling_steps": args.sampling_steps}
    device = torch.device(args.device)
    started = time.perf_counter()
    report = {"quick": args.quick, "overrides": args.overrides, "steps": args.steps, "warmup": args.warmup,
              "machine": {"device": args.device, "torch": torch.__version__, "python": platform.python_version(),
                          "cpu": platform.processor() or platform.machine(),
                          "threads": args.threads or torch.get_num_threads(),
                          "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
                          else f"CPU ({platform.machine()})"},
              "plan": plan_of(cfg), "training": [], "sampling": {}, "evaluate": {}}
    for stage in (s for s in STAGES if s in args.stages):
        sdpa = args.sdpa if stage == "train-diffusion" else ["default"]
        for amp, kernel, comp, ckpt in itertools.product(args.amp, sdpa, args.compile, args.grad_checkpointing):
            key = {"train-vae": "vae", "train-diffusion": "diffusion", "classify": "classifier"}[stage]
            row_overrides = [f"{key}.train.amp={amp}", f"{key}.train.grad_checkpointing={str(ckpt == 'on').lower()}"]
            spec = {**base, "kind": "train", "stage": stage, "sdpa": kernel, "compile": comp == "on",
                    "overrides": overrides + row_overrides}
            print(f"  {stage}: amp {amp}, attention {kernel}, compile {comp}, grad checkpointing {ckpt} ...",
                  file=sys.stderr, flush=True)
            result = _run_child(spec)
            shown = amp if amp != "auto" else f"{'bf16' if device.type == 'cuda' else 'off'} (auto)"
            report["training"].append({"stage": stage, "amp": shown, "sdpa": kernel, "compile": comp == "on",
                                       "grad_checkpointing": ckpt == "on", **result})
    if "sampling" in args.stages:
        print("  sampling ...", file=sys.stderr, flush=True)
        report["sampling"] = _run_child({**base, "kind": "sampling"})
    if "evaluate" in args.stages:
        print("  evaluation features ...", file=sys.stderr, flush=True)
        report["evaluate"] = _run_child({**base, "kind": "evaluate"})
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = markdown(report)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "paper_scale.md").write_text(text)
        (out / "paper_scale.json").write_text(json.dumps(report, indent=2))
        print(f"wrote {out / 'paper_scale.md'} and {out / 'paper_scale.json'} ({report['seconds']:.0f} s)",
              file=sys.stderr)


if __name__ == "__main__":
    main()
