"""`neuroldm.bundle`: a bundle opens only when every file is as its manifest records it."""

import json

import pytest

from neuroldm.bundle import BUNDLE_FORMAT, open_bundle, write_manifest
from neuroldm.errors import InputError
from neuroldm.io import sha256_file
from neuroldm.runs import BundleDir


@pytest.fixture
def bundle(tmp_path):
    folder = BundleDir(tmp_path / "bundle")
    folder.root.mkdir()
    for i, path in enumerate(folder.files()):
        path.write_bytes(f"content {i} of {path.name}\n".encode())
    write_manifest(folder, classes=["HC", "TLE"])
    return folder


def test_the_manifest_records_every_file_and_opens(bundle):
    manifest = json.loads(bundle.manifest.read_text())
    assert manifest["format"] == BUNDLE_FORMAT and manifest["classes"] == ["HC", "TLE"]
    assert manifest["files"] == {p.name: sha256_file(p) for p in bundle.files()}
    opened = open_bundle(bundle.root)
    assert opened.sha256(bundle.diffusion) == sha256_file(bundle.diffusion)
    (bundle / "NOTES.txt").write_text("a user's own file beside the bundle")  # not the bundle's: ignored
    open_bundle(bundle.root)


@pytest.mark.parametrize("name", ["vae.safetensors", "diffusion.safetensors", "latents.json", "config.yaml",
                                  "MODEL_CARD.md"])
def test_a_changed_file_is_refused_in_one_line(bundle, name):
    path = bundle / name
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01  # one bit, same size
    path.write_bytes(bytes(data))
    with pytest.raises(InputError) as e:
        open_bundle(bundle.root)
    msg = str(e.value)
    assert msg.startswith(f"{path}: damaged or replaced: its sha256 {sha256_file(path)[:12]}... differs from the ")
    assert "recorded in bundle.json" in msg and "\n" not in msg


def test_a_missing_file_manifest_or_entry_is_named(bundle, tmp_path):
    latents = bundle.latents.read_bytes()
    bundle.latents.unlink()
    with pytest.raises(InputError, match=r"latents.json: missing from the bundle"):
        open_bundle(bundle.root)
    bundle.latents.write_bytes(latents)
    manifest = json.loads(bundle.manifest.read_text())
    del manifest["files"]["config.yaml"]
    bundle.manifest.write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"bundle.json: records no sha256 for config.yaml"):
        open_bundle(bundle.root)
    bundle.manifest.write_text(json.dumps({**manifest, "format": BUNDLE_FORMAT + 1}))
    with pytest.raises(InputError, match=rf"bundle.json: bundle format {BUNDLE_FORMAT + 1}; neuroldm .* reads format"):
        open_bundle(bundle.root)
    bundle.manifest.write_text("{not json")
    with pytest.raises(InputError, match=r"bundle.json: not readable JSON"):
        open_bundle(bundle.root)
    bundle.manifest.unlink()
    with pytest.raises(InputError, match=r"not a neuroldm bundle \(no bundle.json\); make one with `neuroldm export"):
        open_bundle(bundle.root)
    with pytest.raises(InputError, match=r"absent: not found"):
        open_bundle(tmp_path / "absent")
