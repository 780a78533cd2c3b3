"""The sampler ladder in image space: speed against realism and class fidelity on a trained run.

    .venv/bin/python benchmarks/samplers.py --run RUN --out DIR [--n 12] [--guidance G] [--samplers ddpm ddim:50 ...]

Every sampler of the table at its default steps (DDPM: every training timestep; DDIM-50; DPM-Solver++-25) and
DPM-Solver++ at 10 steps draw `--n` volumes per class with the same seeds (0..n-1) and the run's guidance, decoded
by the run's autoencoder, into ``DIR/<sampler><steps>/`` (kept: a re-run skips finished volumes, `neuroldm sample`'s
rule; a sampler's time is measured when it samples every volume, and kept in ``DIR/samplers.json`` for re-runs).

Columns:

- **s/volume**: sampling plus decoding, per volume, batch `--batch`, on this machine (measure on an idle one);
- **per-slice FID**: the evaluation's own per-slice FID (`neuroldm.evaluate`: the run's ``evaluate`` settings, the
  same reference volumes, intensity window and slice positions as ``neuroldm evaluate``) of the sampler's volumes,
  with a normal 95 % interval from the leave-one-volume-out jackknife over the synthetic volumes (the reference
  set fixed). The held-out real volumes' FID at the same N is printed as the floor;
- **class fidelity**: the share the run's real-trained classifier labels as requested (Wilson 95 % interval);
- **speed-up** and **FID ÷ DDPM**: against DDPM over every training timestep. The goal: a ≤ 25-step sampler
  ≥ 40× faster than DDPM within 10 % of its FID.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from neuroldm.classify.data import Regime
from neuroldm.classify.predict import load_classifier, predict_proba
from neuroldm.config import load_config
from neuroldm.diffusion.sample import sample_to_folder
from neuroldm.diffusion.samplers import SAMPLERS, get_sampler
from neuroldm.evaluate.fidelity import conditional_fidelity
from neuroldm.evaluate.run import extract_features, select_sets
from neuroldm.evaluate.slice_fid import extract_slice_features, per_slice_fid
from neuroldm.runs import RunDir
from neuroldm.samples import read_sample_manifest

RUNS = [s.name if s.default_steps is None else f"{s.name}:{s.default_steps}" for s in SAMPLERS.values()] + \
    ["dpm++:10"]


def jackknife_fid(ref, syn) -> tuple[float, float]:
    """Normal 95 % interval of the per-slice FID from its leave-one-synthetic-volume-out jackknife standard error
    (the reference fixed). A percentile bootstrap does not work here: resampling with replacement duplicates
    volumes, which lowers the set's diversity and raises FID, so its intervals missed the estimate itself."""
    i_ref, n = np.arange(len(ref.ids)), len(syn.ids)
    full = per_slice_fid(ref, i_ref, syn, np.arange(n))["mean"]
    loo = np.array([per_slice_fid(ref, i_ref, syn, np.delete(np.arange(n), i))["mean"] for i in range(n)])
    se = float(np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2)))
    return full - 1.96 * se, full + 1.96 * se


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path, help="folder for the sample sets (one per sampler)")
    ap.add_argument("--n", type=int, default=12, help="volumes per class and sampler")
    ap.add_argument("--guidance", type=float, default=None, help="default: the run's sample.guidance")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--samplers", nargs="+", default=RUNS, help="NAME[:STEPS] ...")
    args = ap.parse_args()

    layout = RunDir(args.run)
    cfg = load_config(config_file=layout.config)
    guidance = cfg.sample.guidance if args.guidance is None else args.guidance
    sets = select_sets(layout.prepared.root, layout.samples.root, cfg.evaluate)
    features = extract_features(sets, cfg.evaluate, args.device, progress=False)
    ref = features.slices["reference"]
    base = per_slice_fid(ref, np.arange(len(ref.ids)), features.slices["real_baseline"],
                         np.arange(len(sets.heldout)))["mean"]
    fold = None if cfg.classifier.folds == "split" else 0
    model, _ = load_classifier(layout.grid.run(Regime("real").name, cfg.classifier.seeds[0], fold).root,
                               args.device)

    results = []
    # a sampler whose volumes were all sampled before keeps the time its earlier invocation measured
    record = args.out / "samplers.json"
    earlier = ({r["folder"]: r["s_per_volume"] for r in json.loads(record.read_text())["results"] if r.get("folder")}
               if record.exists() else {})
    for spec in args.samplers:
        name, _, steps = spec.partition(":")
        sampler = get_sampler(name)
        scfg = cfg.sample.model_copy(update={"sampler": name, "steps": int(steps) if steps else
                                             (sampler.default_steps or cfg.sample.steps),
                                             "guidance": guidance, "batch_size": args.batch})
        folder = args.out / f"{sampler.tag}{steps or 'all'}"
        seconds, written = 0.0, 0
        for label in cfg.data.classes:
            s = sample_to_folder(args.run, folder, args.n, label, scfg, seed=0, device=args.device, progress=False)
            seconds += s["seconds"]
            written += s["written"]
        samples = read_sample_manifest(folder)
        syn = extract_slice_features(list(samples.rows["path"]), list(samples.rows["sample"]), features.network,
                                     features.window, features.positions, batch_size=cfg.evaluate.batch_size,
                                     device=args.device, progress=False)
        fid = per_slice_fid(ref, np.arange(len(ref.ids)), syn, np.arange(len(samples.rows)))
        low, high = jackknife_fid(ref, syn)
        fidelity = conditional_fidelity(lambda v: predict_proba(model, v), list(samples.rows["path"]),
                                        list(samples.rows["label"]), cfg.data.classes)
        timed = seconds / written if written == len(samples.rows) else earlier.get(folder.name)
        r = {"folder": folder.name, "sampler": name, "steps": int(samples.rows["steps"].iloc[0]), "n": len(samples.rows),
             "s_per_volume": timed,
             "fid": fid["mean"], "fid_low": low, "fid_high": high, "fid_2_5d": fid["fid_2_5d"],
             "fidelity": fidelity["value"], "fidelity_low": fidelity["low"], "fidelity_high": fidelity["high"]}
        results.append(r)
        print(json.dumps(r), flush=True)
    ddpm = next((r for r in results if r["sampler"] == "ddpm"), None)
    print(f"\nrun {args.run}: N={2 * args.n} volumes per sampler ({args.n} per class), guidance {guidance:g}; "
          f"reference N={len(ref.ids)}; held-out real per-slice FID at N={len(sets.heldout)}: {base:.1f}")
    print("| sampler | steps | s/volume | per-slice FID [95% CI] | FID ÷ DDPM | class fidelity [95% CI] | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        t = "–" if r["s_per_volume"] is None else f"{r['s_per_volume']:.2f}"
        speed = (f"{ddpm['s_per_volume'] / r['s_per_volume']:.0f}x" if ddpm and ddpm["s_per_volume"]
                 and r["s_per_volume"] else "–")
        rel = f"{r['fid'] / ddpm['fid']:.2f}" if ddpm else "–"
        print(f"| {r['sampler']} | {r['steps']} | {t} | {r['fid']:.1f} [{r['fid_low']:.1f}, {r['fid_high']:.1f}] | "
              f"{rel} | {r['fidelity']:.2f} [{r['fidelity_low']:.2f}, {r['fidelity_high']:.2f}] | {speed} |")
    record.write_text(json.dumps({"run": str(args.run), "guidance": guidance,
                                                        "baseline_fid": base, "results": results}, indent=1))


if __name__ == "__main__":
    main()
