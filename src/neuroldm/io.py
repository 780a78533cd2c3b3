"""Atomic file writes, the NIfTI header every neuroldm volume carries, and content hashes.

Every output goes to a temporary file in the destination folder and is renamed into place, so a crash leaves
either the old file or the new one, never half of one (`os.replace` is atomic on POSIX within a filesystem).

Every NIfTI neuroldm writes goes through `save_nifti_atomic`, which sets the header the same way for all of them:

- ``xyzt_units``: millimetres and seconds (the affine is in mm, as nibabel and BIDS assume);
- ``descrip``: ``neuroldm <version> <what the file is>``, at most 80 bytes (the field's size);
- sform and qform: the affine, both with one frame code (NIfTI-1 ``xform`` code, ``nifti1.h``) saying which world
  the affine maps into. The rule, in one place:

  * the demo cohort (`neuroldm.demo.cohort`) is sampled in the coordinates of nilearn's MNI152 2009 template:
    `MNI_152` (4). Each subject's anatomy is the template under a random pose and warp, as a real scan is after an
    imperfect registration; the coordinate frame itself is the template's;
  * a volume made from an input volume (a prepared volume, its ROI, a reconstruction, a saliency map) lies in the
    input's world, resampled: it keeps the input's frame, `frame_code` of the input's header (its sform code when
    > 0, else its qform code when > 0, the transform nibabel takes the affine from; else `ALIGNED_ANAT` (2), as a
    new nibabel image gets);
  * a volume of no subject (a synthetic sample, a VAE prior sample, a class-mean saliency map) is written with the
    cohort's mean affine (`neuroldm.data.manifest.reference_affine`) and the frame the cohort's prepared volumes
    share (`neuroldm.data.manifest.reference_frame_code`), `ALIGNED_ANAT` when they differ.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

from neuroldm import __version__
from neuroldm.errors import InputError

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _split_suffix(path: Path) -> tuple[str, str]:
    name = path.name
    for suffix in _NIFTI_SUFFIXES + (".safetensors", ".json", ".csv", ".yaml", ".png", ".html"):
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return path.stem, path.suffix


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds, delete it if not.

    The temporary name keeps the suffix (``.nii.gz`` included) so writers that pick a format by extension work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem, suffix = _split_suffix(path)
    tmp = path.with_name(f".{stem}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: object) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# NIfTI-1 xform codes (nifti1.h): the world an sform or qform maps voxels into
SCANNER_ANAT, ALIGNED_ANAT, TALAIRACH, MNI_152 = 1, 2, 3, 4
DESCRIP_BYTES = 80  # size of the header's descrip field


def frame_code(header: nib.Nifti1Header) -> int:
    """The xform code of the transform nibabel reads a header's affine from: the sform code when > 0, else the
    qform code when > 0, else `ALIGNED_ANAT` (no code: nibabel's affine then comes from the voxel sizes alone)."""
    sform, qform = int(header["sform_code"]), int(header["qform_code"])
    return sform if sform > 0 else qform if qform > 0 else ALIGNED_ANAT


def read_frame_code(path: str | os.PathLike) -> int:
    """`frame_code` of a NIfTI file's header (the header alone is read); `ALIGNED_ANAT` for a NIfTI-2 or other
    image without xform codes."""
    header = nib.load(str(path)).header
    return frame_code(header) if isinstance(header, nib.Nifti1Header) else ALIGNED_ANAT


def nifti_descrip(what: str) -> bytes:
    """``neuroldm <version> <what>`` as the header stores it: ASCII, cut to `DESCRIP_BYTES`."""
    return f"neuroldm {__version__} {what}".encode("ascii", "replace")[:DESCRIP_BYTES]


def save_nifti_atomic(data: np.ndarray, affine: np.ndarray, path: str | os.PathLike, *, what: str, frame: int,
                      labels: bool = False) -> None:
    """Write `data` with `affine` as NIfTI-1 with neuroldm's header (module docstring): units mm and s, sform and
    qform both the affine with xform code `frame`, ``descrip`` naming `what` the file is; `labels` marks a label
    image (NIfTI intent ``label``, so viewers show it as one).

    A volume with a NaN or Inf voxel is refused (`InputError` naming `path`): no stage reads one back sensibly.
    """
    if frame not in (SCANNER_ANAT, ALIGNED_ANAT, TALAIRACH, MNI_152, 5):  # 5: TEMPLATE_OTHER
        raise ValueError(f"unknown NIfTI xform code {frame}")
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise InputError(path, f"not written: {int((~np.isfinite(data)).sum())} of {data.size} voxels are NaN or Inf")
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.set_sform(img.affine, code=frame)
    img.set_qform(img.affine, code=frame)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = nifti_descrip(what)
    if labels:
        img.header.set_intent("label")
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_sha256(path: str | os.PathLike, record: str | os.PathLike) -> str:
    """Record `path`'s sha256 in `record` (``sha256sum`` format, so ``sha256sum -c`` checks it too)."""
    digest = sha256_file(path)
    write_text_atomic(record, f"{digest}  {Path(path).name}\n")
    return digest


def verified_sha256(path: str | os.PathLike, record: str | os.PathLike) -> str:
    """`path`'s sha256, checked against `record` when there is one (`InputError` naming `path` on a mismatch)."""
    digest = sha256_file(path)
    record = Path(record)
    if record.is_file():
        recorded = (record.read_text(encoding="utf-8").split() or [""])[0]
        if recorded != digest:
            raise InputError(path, f"damaged or replaced: its sha256 {digest[:12]}... differs from the "
                                   f"{recorded[:12]}... recorded in {record.name} when it was written; restore or "
                                   f"retrain it")
    return digest


def sha256_array(array: np.ndarray) -> str:
    """Hash of an array's dtype, shape and bytes: equal arrays give equal hashes on every platform."""
    a = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def save_weights_atomic(module, path: str | os.PathLike, metadata: dict[str, str],
                        record: str | os.PathLike | None = None) -> Path:
    """A module's state dict as one safetensors file with string `metadata` (the config that built it), and its
    sha256 in `record` when given (the old record goes first, so a crash never leaves a stale one)."""
    from safetensors.torch import save_file  # imports torch: here, so that `neuroldm --help` stays fast

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    if record is not None:
        Path(record).unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    if record is not None:
        write_sha256(path, record)
    return Path(path)


def load_weights(path: str | os.PathLike, device="cpu", *, required_key: str, what: str) -> tuple[dict, dict]:
    """``(state dict, metadata)`` of a file written by `save_weights_atomic`; no code is executed.

    A damaged file or one without `required_key` in its metadata is an `InputError` naming the file (a file damaged
    where safetensors cannot see it, in the weights, is caught by `verified_sha256` against its record).
    """
    from safetensors import safe_open  # as in save_weights_atomic

    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safe_open handle)
    except Exception as e:  # noqa: BLE001 (safetensors raises its own error types for a damaged header)
        raise InputError(path, f"not a readable safetensors file ({e})") from None
    if required_key not in metadata:
        raise InputError(path, f"not a neuroldm {what} file (no {required_key} metadata)")
    return state, metadata
