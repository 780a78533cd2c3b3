"""The exported autoencoder records the grid and spacing of the data it was trained on, not the settings in force."""

from neuroldm.config import load_config
from neuroldm.data.prepare import prepare_cohort
from neuroldm.vae.network import latent_shape
from neuroldm.vae.train import train_vae
from neuroldm.vae.weights import load_vae

from phantoms import write_bids

PREPARED = ["prepare.spacing=[8,8,8]", "prepare.grid=[20,24,20]", "split.folds=0", "split.val_fraction=0.2",
            "split.test_fraction=0.2"]
TRAIN = ["vae.arch=demo", "vae.perceptual=none", "vae.train.batch_size=2", "vae.train.steps=1",
         "vae.train.val_every=1", "vae.train.ckpt_every=1", "vae.augment.prob=0"]


def test_export_records_the_prepared_grid_and_spacing(tmp_path):
    groups = {f"sub-{i:02d}": "HC" if i % 2 else "TLE" for i in range(10)}
    prepared = tmp_path / "prep"
    prepare_cohort(write_bids(tmp_path / "bids", groups), prepared, load_config(None, None, PREPARED),
                   progress=False)
    # the prepare settings now in force differ from those the cohort was prepared with
    cfg = load_config(None, None, PREPARED + TRAIN + ["prepare.spacing=[4,4,4]", "prepare.grid=[24,24,24]"])
    train_vae(prepared, tmp_path / "run", cfg, device="cpu", progress=False)
    model, vae_cfg, meta = load_vae(tmp_path / "run")
    assert meta["grid"] == [20, 24, 20] and meta["spacing"] == [8.0, 8.0, 8.0]
    assert latent_shape(meta["grid"], vae_cfg)[1:] == (5, 6, 5)  # what vae-sample --raw decodes to
