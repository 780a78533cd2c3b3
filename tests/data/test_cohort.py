import pytest

from neuroldm.config import load_config
from neuroldm.data.cohort import bids_entities, cohort_errors, read_cohort
from neuroldm.errors import ConfigError, InputError

from phantoms import phantom, save, write_bids


@pytest.fixture
def cfg():
    return load_config().data


def test_bids_with_sessions_and_covariates(tmp_path, cfg):
    root = write_bids(tmp_path / "bids", {"sub-01": "HC", "sub-02": "left", "sub-03": "TLE"},
                      sessions={"sub-02": ["ses-1", "ses-2"]},
                      extra_columns={"age": {"sub-01": "30", "sub-02": "41", "sub-03": "n/a"}})
    cfg = cfg.model_copy(update={"covariates": ["age"]})
    df = read_cohort(root, cfg)
    assert list(df["subject"]) == ["sub-01", "sub-02", "sub-02", "sub-03"]
    assert list(df["session"]) == ["", "ses-1", "ses-2", ""]
    assert list(df["label"]) == [0, 1, 1, 1] and list(df["label_name"]) == ["HC", "TLE", "TLE", "TLE"]
    assert list(df["age"]) == ["30", "41", "41", "n/a"]
    assert not cohort_errors(df)


def test_bids_participant_without_t1w_is_named(tmp_path, cfg):
    root = write_bids(tmp_path / "bids", {"sub-01": "HC", "sub-02": "TLE"})
    with open(root / "participants.tsv", "a") as f:
        f.write("sub-07\tHC\n")
    errors = cohort_errors(read_cohort(root, cfg))
    assert len(errors) == 1
    assert "participant sub-07 has no T1w image" in str(errors[0])
    assert errors[0].path == str(root / "participants.tsv")


def test_bids_label_column_is_configurable(tmp_path, cfg):
    root = write_bids(tmp_path / "bids", {"sub-01": "HC", "sub-02": "TLE"})
    text = (root / "participants.tsv").read_text().replace("group", "diagnosis")
    (root / "participants.tsv").write_text(text)
    with pytest.raises(InputError, match="missing column 'group'; columns present: participant_id, diagnosis"):
        read_cohort(root, cfg)
    cfg = load_config(None, None, ["data.bids.label_column=diagnosis"]).data
    assert list(read_cohort(root, cfg)["label"]) == [0, 1]


def test_unknown_label_value(tmp_path, cfg):
    root = write_bids(tmp_path / "bids", {"sub-01": "HC", "sub-02": "MCI"})
    errors = cohort_errors(read_cohort(root, cfg))
    assert len(errors) == 1 and errors[0].path == str(root / "participants.tsv")
    assert "sub-02: unknown label value 'MCI'; known values: HC, TLE, left, right" in str(errors[0])


def _csv(tmp_path, rows, header="path,subject,label"):
    for name in {r.split(",")[0] for r in rows}:
        if name and not (tmp_path / name).exists():
            save(tmp_path / name, *phantom(shape=(20, 24, 20)))
    path = tmp_path / "cohort.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_csv_relative_paths_resolve_against_its_folder(tmp_path, cfg):
    path = _csv(tmp_path, ["a.nii.gz,S1,HC", "b.nii.gz,S2,right"])
    df = read_cohort(path, cfg)
    assert list(df["source"]) == [str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")]
    assert list(df["label"]) == [0, 1] and not cohort_errors(df)


def test_csv_configurable_columns(tmp_path):
    path = _csv(tmp_path, ["a.nii.gz,S1,CN"], header="file,sbj,dx")
    cfg = load_config(None, None, ["data.csv.path_column=file", "data.csv.subject_column=sbj",
                                   "data.csv.label_column=dx", "data.classes=[CN, AD]", "data.label_map={}"]).data
    df = read_cohort(path, cfg)
    assert df.loc[0, "subject"] == "S1" and df.loc[0, "label"] == 0


def test_csv_subject_with_two_labels(tmp_path, cfg):
    path = _csv(tmp_path, ["a.nii.gz,S1,HC", "b.nii.gz,S1,TLE", "c.nii.gz,S2,HC"], header="path,subject,label")
    errors = cohort_errors(read_cohort(path, cfg))
    assert len(errors) == 2
    assert all(e.path == str(path) and "subject S1 has 2 different labels (HC, TLE)" in str(e) for e in errors)


def test_csv_duplicate_rows(tmp_path, cfg):
    path = _csv(tmp_path, ["a.nii.gz,S1,HC", "b.nii.gz,S2,HC", "a.nii.gz,S1,HC"])
    errors = cohort_errors(read_cohort(path, cfg))
    assert len(errors) == 1 and errors[0].path == str(path)
    assert "duplicate row: row 4 repeats the image of row 2" in str(errors[0])


def test_csv_missing_column_and_missing_file(tmp_path, cfg):
    path = tmp_path / "c.csv"
    path.write_text("path,label\na.nii.gz,HC\n")
    with pytest.raises(InputError, match=r"c.csv: missing column 'subject'"):
        read_cohort(path, cfg)
    with pytest.raises(InputError, match="file not found"):
        read_cohort(tmp_path / "none.csv", cfg)
    with pytest.raises(InputError, match="BIDS dataset with participants.tsv"):
        read_cohort(tmp_path, cfg)


def test_a_table_with_a_header_and_no_rows_is_one_line(tmp_path, cfg):
    """A CSV with a header and no rows raised `KeyError: 'source'`."""
    path = tmp_path / "c.csv"
    path.write_text("path,subject,label\n")
    with pytest.raises(InputError, match=r"c.csv: no rows: the table has a header but lists no image"):
        read_cohort(path, cfg)
    (tmp_path / "participants.tsv").write_text("participant_id\tgroup\n")
    with pytest.raises(InputError, match=r"participants.tsv: no rows: the table has a header but lists no participant"):
        read_cohort(tmp_path, cfg)


# ----------------------------------------------------------------------------------------------------------------
# Choosing one T1w image per subject by BIDS entities (an sMRIPrep-style derivatives layout)
# ----------------------------------------------------------------------------------------------------------------

MNI = "MNI152NLin2009cAsym"


def _smriprep(tmp_path, sessions=False):
    """Per subject a native ``desc-preproc_T1w`` and an MNI one (and a brain mask, which is no T1w)."""
    root = write_bids(tmp_path / "smriprep", {"sub-01": "HC", "sub-02": "TLE"})
    for sub in ("sub-01", "sub-02"):
        anat = root / sub / ("ses-1" if sessions else "") / "anat"
        ses = "_ses-1" if sessions else ""
        (root / sub / "anat" / f"{sub}_T1w.nii.gz").unlink()
        for name in (f"{sub}{ses}_desc-preproc_T1w.nii.gz", f"{sub}{ses}_space-{MNI}_desc-preproc_T1w.nii.gz",
                     f"{sub}{ses}_desc-brain_mask.nii.gz"):
            save(anat / name, *phantom(shape=(8, 8, 8)))
    return root


def test_several_matching_t1w_images_are_refused_in_one_line_naming_them(tmp_path, cfg):
    root = _smriprep(tmp_path)
    errors = cohort_errors(read_cohort(root, cfg))
    assert len(errors) == 2 and all("\n" not in str(e) for e in errors)
    assert errors[0].path == str(root / "sub-01" / "anat")
    assert errors[0].problem == (f"sub-01: 2 T1w images match, sub-01_desc-preproc_T1w.nii.gz, "
                                 f"sub-01_space-{MNI}_desc-preproc_T1w.nii.gz (they differ in space); choose one "
                                 f"with data.bids.space")
    # with sessions, the refusal names the session and the session's folder
    errors = cohort_errors(read_cohort(_smriprep(tmp_path / "ses", sessions=True), cfg))
    assert errors[0].problem.startswith("sub-01 ses-1: 2 T1w images match")
    assert errors[0].path.endswith("sub-01/ses-1/anat")


def test_the_space_filter_selects_one_image_per_subject(tmp_path):
    root = _smriprep(tmp_path)
    mni = read_cohort(root, load_config(None, None, [f"data.bids.space={MNI}"]).data)
    assert not cohort_errors(mni) and mni["subject"].tolist() == ["sub-01", "sub-02"]
    assert [s.rsplit("/", 1)[1] for s in mni["source"]] == [f"{s}_space-{MNI}_desc-preproc_T1w.nii.gz"
                                                            for s in ("sub-01", "sub-02")]
    # "" asks for the image without the entity: the native one
    native = read_cohort(root, load_config(None, None, ['data.bids.space=""', "data.bids.desc=preproc"]).data)
    assert [s.rsplit("/", 1)[1] for s in native["source"]] == ["sub-01_desc-preproc_T1w.nii.gz",
                                                               "sub-02_desc-preproc_T1w.nii.gz"]


def test_a_filter_that_matches_nothing_names_what_there_is(tmp_path):
    root = _smriprep(tmp_path)
    errors = cohort_errors(read_cohort(root, load_config(None, None, ["data.bids.space=MNI305"]).data))
    assert len(errors) == 2 and errors[0].path == str(root / "participants.tsv")
    assert errors[0].problem == (f"participant sub-01 has no T1w image with space='MNI305' (data.bids) under "
                                 f"sub-01/[ses-*/]anat/; it has sub-01_desc-preproc_T1w.nii.gz, "
                                 f"sub-01_space-{MNI}_desc-preproc_T1w.nii.gz")


def test_runs_compare_as_numbers_and_other_entities_point_to_a_csv(tmp_path):
    root = write_bids(tmp_path / "bids", {"sub-01": "HC"})
    anat = root / "sub-01" / "anat"
    (anat / "sub-01_T1w.nii.gz").rename(anat / "sub-01_run-01_T1w.nii.gz")
    save(anat / "sub-01_run-02_T1w.nii.gz", *phantom(shape=(8, 8, 8)))
    picked = read_cohort(root, load_config(None, None, ["data.bids.run=2"]).data)
    assert picked["source"].str.endswith("sub-01_run-02_T1w.nii.gz").tolist() == [True]
    assert "choose one with data.bids.run" in cohort_errors(read_cohort(root, load_config().data))[0].problem

    for name in ("sub-01_run-01_T1w.nii.gz", "sub-01_run-02_T1w.nii.gz"):
        (anat / name).unlink()
    for name in ("sub-01_ce-gad_T1w.nii.gz", "sub-01_ce-none_T1w.nii.gz"):
        save(anat / name, *phantom(shape=(8, 8, 8)))
    problem = cohort_errors(read_cohort(root, load_config().data))[0].problem
    assert problem.endswith("(they differ in ce); data.bids selects by space, desc, acq, run, rec only; list the "
                            "images in a CSV cohort instead")


def test_entity_filters_are_bids_labels():
    with pytest.raises(ConfigError, match="letters and digits only"):
        load_config(None, None, ["data.bids.space=MNI_152"])
    assert load_config(None, None, ["data.bids.run=1"]).data.bids.run == "1"


def test_bids_entities_of_a_file_name():
    assert bids_entities("sub-01_ses-2_space-MNI_desc-preproc_T1w.nii.gz") == (
        {"sub": "01", "ses": "2", "space": "MNI", "desc": "preproc"}, "T1w")
    assert bids_entities("sub-01_T1w.nii") == ({"sub": "01"}, "T1w")


def test_labels_equal_to_class_names_need_no_label_map_entry(tmp_path):
    """Three classes named as the labels, with an empty label_map (the default one is for HC/TLE and is refused
    with other classes, before anything is written): each label is its class, and an unknown label is one line
    naming the known ones."""
    with pytest.raises(ConfigError, match=r"maps to \['TLE'\], which are not in classes"):
        load_config(None, None, ["data.bids.label_column=diagnosis", "data.classes=[HC,TLE-L,TLE-R]"])
    cfg = load_config(None, None, ["data.bids.label_column=diagnosis", "data.classes=[HC,TLE-L,TLE-R]",
                                   "data.label_map={}"]).data
    root = write_bids(tmp_path / "bids", {"sub-01": "HC", "sub-02": "TLE-L", "sub-03": "TLE-R", "sub-04": "TLE-X"})
    text = (root / "participants.tsv").read_text().replace("group", "diagnosis")
    (root / "participants.tsv").write_text(text)
    df = read_cohort(root, cfg)
    assert list(df["label"]) == [0, 1, 2, -1] and list(df["label_name"][:3]) == ["HC", "TLE-L", "TLE-R"]
    errors = cohort_errors(df)
    assert len(errors) == 1 and "\n" not in str(errors[0])
    assert "sub-04: unknown label value 'TLE-X'; known values: HC, TLE-L, TLE-R" in str(errors[0])


def test_a_label_map_written_by_the_user_is_checked_as_written():
    with pytest.raises(ConfigError, match=r"maps to \['TLE'\], which are not in classes"):
        load_config(None, None, ["data.classes=[HC,TLE-L,TLE-R]", "data.label_map={HC: HC, left: TLE}"])
