"""The run directory object: the layout it names, its readers, and that no other module spells a run path."""

import ast
import json
from pathlib import Path

import pytest

import neuroldm
from neuroldm.config import load_config
from neuroldm.errors import InputError
from neuroldm.runs import STAGE_ORDER, BundleDir, Folder, RunDir, SaliencyDir

# The layout the README and every user's scripts rely on, spelled out independently of neuroldm.runs.
GOLDEN = {
    "config": "config.yaml", "record": "run.json", "pipeline": "pipeline.json", "metrics": "metrics.json",
    "report": "report.html", "log": "run.log", "cohort": "cohort", "cohort_participants": "cohort/participants.tsv",
    "prepared.manifest": "prepared/manifest.csv", "prepared.summary": "prepared/prepare_summary.json",
    "prepared.config": "prepared/config.yaml",
    "vae.model": "vae/model.safetensors", "vae.checkpoints.last": "vae/checkpoints/last.safetensors",
    "vae.checkpoints.best": "vae/checkpoints/best.safetensors", "vae.train_log": "vae/metrics.csv",
    "vae.train_summary": "vae/train_summary.json", "vae.reconstruction.metrics": "vae/reconstruction/metrics.json",
    "vae.reconstruction.figure": "vae/reconstruction/reconstruction.png",
    "latents.index": "latents/index.csv", "latents.info": "latents/latents.json",
    "diffusion.model": "diffusion/model.safetensors", "diffusion.checkpoints.last":
        "diffusion/checkpoints/last.safetensors", "diffusion.train_subjects": "diffusion/train_subjects.json",
    "samples.manifest": "samples/manifest.csv", "samples.info": "samples/samples.json",
    "classifier.model": "classifier/model.safetensors", "classifier.result": "classifier/result.json",
    "classifier.predictions": "classifier/predictions.csv", "classifier.training_set": "classifier/training_set.csv",
    "grid.summary": "classify-grid/summary.json", "grid.summary_md": "classify-grid/summary.md",
    "grid.summary_html": "classify-grid/summary.html", "grid.runs_table": "classify-grid/runs.csv",
    "grid.predictions": "classify-grid/predictions.csv",
    "evaluation.metrics": "evaluation/metrics.json", "evaluation.closest_pairs_figure":
        "evaluation/closest_pairs.png", "evaluation.ladder_figure": "evaluation/realism_ladder.png",
    "saliency.summary": "saliency/summary.json", "saliency.attributions": "saliency/attributions.csv",
    "counterfactual.summary": "counterfactual/summary.json",
    "counterfactual.table": "counterfactual/counterfactuals.csv",
}


@pytest.mark.parametrize("attribute", sorted(GOLDEN))
def test_every_path_of_the_layout(attribute, tmp_path):
    node: object = RunDir(tmp_path)
    for part in attribute.split("."):  # e.g. "vae.reconstruction.metrics"
        node = getattr(node, part)
    path = Path(node)
    assert path == tmp_path / GOLDEN[attribute]


# The bundle of `neuroldm export`, as the README lists it.
BUNDLE_GOLDEN = {"manifest": "bundle.json", "model_card": "MODEL_CARD.md", "config": "config.yaml",
                 "vae": "vae.safetensors", "diffusion": "diffusion.safetensors", "latents": "latents.json"}


def test_every_path_of_the_bundle(tmp_path):
    bundle = BundleDir(tmp_path)
    assert {a: str(Path(getattr(bundle, a)).relative_to(tmp_path)) for a in BUNDLE_GOLDEN} == BUNDLE_GOLDEN
    assert {p.name for p in bundle.files()} == set(BUNDLE_GOLDEN.values()) - {"bundle.json"}
    assert not bundle.is_bundle()
    (tmp_path / "bundle.json").write_text("{}")
    assert bundle.is_bundle()


def test_per_item_paths(tmp_path):
    run = RunDir(tmp_path)
    assert run.grid.run("mixed-0.50", 1, None).result == tmp_path / "classify-grid/mixed-0.50/seed-1/result.json"
    assert run.grid.run("real", 0, 2).model == tmp_path / "classify-grid/real/seed-0/fold-2/model.safetensors"
    assert run.grid.regime_of(run.grid.run("synthetic-1.00", 0, None).root) == "synthetic-1.00"
    assert run.samples.volume("TLE_dpmpp25_g3_seed7") == tmp_path / "samples/TLE_dpmpp25_g3_seed7.nii.gz"
    assert run.samples.sidecar("HC_x") == tmp_path / "samples/HC_x.json"
    assert run.saliency.map("saliency", "sub-01") == tmp_path / "saliency/saliency/sub-01.nii.gz"
    assert run.saliency.figure("gradient_shap", "sub-01") == tmp_path / "saliency/gradient_shap/figures/sub-01.png"
    assert run.evaluation.slice_fid_figure("TLE") == tmp_path / "evaluation/slice_fid_TLE.png"
    cf = run.counterfactual
    assert cf.reconstruction("sub-01") == tmp_path / "counterfactual/sub-01_reconstruction.nii.gz"
    assert cf.volume("sub-01_to-HC") == tmp_path / "counterfactual/sub-01_to-HC.nii.gz"
    assert cf.difference("sub-01_to-HC") == tmp_path / "counterfactual/sub-01_to-HC_difference.nii.gz"
    assert cf.sidecar("sub-01_to-HC") == tmp_path / "counterfactual/sub-01_to-HC.json"
    assert cf.figure("sub-01_to-HC") == tmp_path / "counterfactual/sub-01_to-HC.png"
    assert run.vae.reconstruction.volume("sub-01") == tmp_path / "vae/reconstruction/volumes/sub-01_recon.nii.gz"
    assert run.latents.volume("abc") == Path("volumes/abc.safetensors")
    assert run.prepared.volume("sub-01_k") == Path("volumes/sub-01_k.nii")


def test_figure_and_mean_map_names_round_trip(tmp_path):
    ev = RunDir(tmp_path).evaluation
    assert ev.figure_kind(ev.slice_fid_figure("left TLE").name) == ("slice_fid", "left TLE")
    assert ev.figure_kind(ev.closest_pairs_figure.name) == ("closest_pairs", None)
    assert ev.figure_kind(ev.ladder_figure.name) == ("ladder", None)
    assert ev.figure_kind("other.png") == ("other", None)
    sal = RunDir(tmp_path).saliency
    assert SaliencyDir.mean_class(sal.figure("ig", sal.mean_name("TLE"))) == "TLE"
    assert SaliencyDir.mean_class(sal.map("ig", sal.mean_name("HC"))) == "HC"
    assert SaliencyDir.mean_class(sal.figure("ig", "sub-01")) is None


def test_readers_say_absent_as_none_and_read_what_is_there(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_metrics() is None and run.evaluation.read_metrics() is None
    assert run.read_pipeline() == {"stages": {}} and run.read_record() == {}
    assert run.stage_order() == STAGE_ORDER
    run.pipeline.write_text(json.dumps({"stages": {}, "order": ["a", "b"]}))
    assert run.stage_order() == ("a", "b")
    with pytest.raises(InputError, match="latents.json: no encoded latents"):
        run.latents.read_info()


def test_record_stage_and_the_prepared_cohort(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(InputError, match="run.json: no prepared cohort recorded"):
        run.prepared_cohort()
    cfg = load_config("demo", None, [])
    run.record_stage("train-vae", cfg, prepared=tmp_path / "prep")
    assert run.prepared_cohort().root == tmp_path / "prep"
    assert run.prepared_cohort(tmp_path / "other").root == tmp_path / "other"
    assert set(run.read_record()["stages"]) == {"train-vae"}
    assert load_config(None, run.config) == cfg
    assert run.find_prepared() is None  # recorded, but it holds no manifest
    (tmp_path / "prep").mkdir()
    (tmp_path / "prep" / "manifest.csv").write_text("")
    assert run.find_prepared().root == tmp_path / "prep"


def test_a_folder_behaves_like_its_path(tmp_path):
    f = Folder(tmp_path)
    assert str(f) == str(tmp_path) and f / "x" == tmp_path / "x" and Path(f) == tmp_path and f.exists()


# --------------------------------------------------------------------------------------------------------------
# No other module spells a run path
# --------------------------------------------------------------------------------------------------------------

def layout_names() -> set[str]:
    """Every folder and file name of the layouts, read from RunDir and BundleDir by walking their properties."""
    names: set[str] = set()
    root = Path("/RUN")

    def walk(obj, depth=0):
        if depth > 4:
            return
        for attr in dir(type(obj)):
            if isinstance(getattr(type(obj), attr, None), property):
                value = getattr(obj, attr)
                path = Path(value)
                names.update(path.relative_to(root).parts if path.is_relative_to(root) else path.parts)
                if isinstance(value, Folder):
                    walk(value, depth + 1)

    walk(RunDir(root))
    walk(BundleDir(root))
    return names


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def spelled_run_paths(path: Path, names: set[str]) -> list[str]:
    """String literals of `path` that spell a layout name: a file name anywhere, a folder name in a path join."""
    tree = ast.parse(path.read_text())
    docs = _docstrings(tree)
    files = {n for n in names if "." in n}
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and isinstance(side.value, str) and side.value in names:
                    hits.append(f"{path.name}:{side.lineno}: / {side.value!r}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if node.value in files or any(node.value.startswith(f"{n}/") for n in names):
                hits.append(f"{path.name}:{node.lineno}: {node.value!r}")
    return hits


def test_the_layout_names_are_found():
    names = layout_names()
    assert {"vae", "latents", "classify-grid", "metrics.json", "manifest.csv", "checkpoints"} <= names
    assert {"train_subjects.json", "bundle.json", "MODEL_CARD.md", "diffusion.safetensors"} <= names


def test_the_checker_catches_a_spelled_path(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('from pathlib import Path\n"""doc mentions metrics.json"""\n'
                   'def f(run):\n    return Path(run) / "vae" / "x", "latents/latents.json", "metrics.json"\n')
    hits = spelled_run_paths(bad, layout_names())
    assert len(hits) == 3 and any("'vae'" in h for h in hits)


# Names that are not the run's: a BIDS dataset's own file (read in data/cohort.py, written in demo/cohort.py, as
# the BIDS specification names it) and torch hub's cache folder (where evaluate/inception.py looks for weights).
NOT_THE_RUNS_IN = {"participants.tsv": {"data/cohort.py", "demo/cohort.py"}, "checkpoints": {"evaluate/inception.py"}}


def test_no_run_path_is_spelled_outside_the_run_directory_module():
    package = Path(neuroldm.__file__).parent
    names = layout_names()
    hits = []
    for f in sorted(package.rglob("*.py")):
        rel = str(f.relative_to(package))
        if rel == "runs.py":
            continue
        allowed = {n for n, where in NOT_THE_RUNS_IN.items() if rel in where}
        hits += [h for h in spelled_run_paths(f, names - allowed)]
    assert hits == []


# --------------------------------------------------------------------------------------------------------------
# What a run is, and its lock
# --------------------------------------------------------------------------------------------------------------

def test_a_run_is_a_folder_with_its_record(tmp_path):
    RunDir(tmp_path / "absent").check_holds_a_run()
    RunDir(tmp_path).check_holds_a_run()  # empty
    (tmp_path / "data.csv").write_text("a user's file")
    with pytest.raises(InputError, match="not empty and not a neuroldm run"):
        RunDir(tmp_path).check_holds_a_run()
    with pytest.raises(InputError, match="not a folder"):
        RunDir(tmp_path / "data.csv").check_holds_a_run()
    (tmp_path / "pipeline.json").write_text("{}")
    assert RunDir(tmp_path).is_run()
    RunDir(tmp_path).check_holds_a_run()


def test_config_changes_name_the_keys(tmp_path):
    run = RunDir(tmp_path)
    cfg = load_config("demo", None, [])
    assert run.config_changes(cfg) == []  # nothing recorded yet
    run.save_config(cfg)
    assert run.config_changes(cfg) == []
    assert run.config_changes(load_config("demo", None, ["vae.train.steps=7", "split.seed=3"])) == [
        "split.seed", "vae.train.steps"]


HOLD_LOCK = """
import sys, time
from neuroldm.runs import RunDir
with RunDir(sys.argv[1]).locked("neuroldm run --out R"):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    """flock is released by the OS when its process dies: a killed run never blocks the next one."""
    import os
    import subprocess
    import sys

    from neuroldm.errors import RunInUse

    env = {**os.environ, "PYTHONPATH": str(Path(neuroldm.__file__).parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUse, match=rf"in use by `neuroldm run --out R` \(pid {holder.pid} on .*, since "), \
                RunDir(tmp_path).locked("second"):
            pass
    finally:
        holder.kill()
        holder.wait()
    with RunDir(tmp_path).locked("third"):  # the dead holder's file is still there; its lock is not
        assert json.loads(RunDir(tmp_path).lock_file.read_text())["command"] == "third"
