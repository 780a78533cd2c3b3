"""What every NIfTI neuroldm writes must carry (`neuroldm.io`): the writers' tests check their files with this."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

import neuroldm


def assert_neuroldm_header(path: str | Path, frame: int, what: str, *, labels: bool = False) -> None:
    """Units mm and s, sform and qform both the affine with xform code `frame`, a ``descrip`` naming neuroldm, its
    version and `what`, and the label intent on a label image."""
    img = nib.load(str(path))
    header = img.header
    assert header.get_xyzt_units() == ("mm", "sec"), f"{path}: units {header.get_xyzt_units()}"
    assert int(header["sform_code"]) == frame and int(header["qform_code"]) == frame, \
        f"{path}: sform code {header['sform_code']}, qform code {header['qform_code']}, expected {frame}"
    np.testing.assert_allclose(header.get_sform(), img.affine)
    np.testing.assert_allclose(header.get_qform(), img.affine, atol=1e-5)
    descrip = header["descrip"].item().decode("ascii")
    assert descrip.startswith(f"neuroldm {neuroldm.__version__} ") and what in descrip, f"{path}: {descrip!r}"
    assert (header.get_intent()[0] == "label") == labels, f"{path}: intent {header.get_intent()[0]}"
