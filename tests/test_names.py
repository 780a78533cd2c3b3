"""The one sanitiser of file names made from input data."""

import pytest

from neuroldm.names import UniqueNames, safe_name
from neuroldm.runs import SaliencyDir


@pytest.mark.parametrize("value, name", [
    ("sub-01", "sub-01"), ("sub-01_ses-1", "sub-01_ses-1"), ("../../../../elsewhere/SAL", "--..-..-..-elsewhere-SAL"),
    ("..", "-"), (".hidden", "-hidden"), ("a b/c\\d", "a-b-c-d"), ("/etc/passwd", "-etc-passwd"), ("ü", "-")])
def test_a_name_is_one_plain_file_name(value, name):
    assert safe_name(value) == name
    assert "/" not in name and not name.startswith(".")


def test_names_that_sanitise_alike_stay_apart():
    names = UniqueNames()
    assert [names.take(v) for v in ("a/b", "a-b", "a b", "a-b-2")] == ["a-b", "a-b-2", "a-b-3", "a-b-2-2"]


def test_no_subject_map_takes_a_class_mean_name():
    assert SaliencyDir.subject_name("mean_HC") == "_mean_HC" != SaliencyDir.mean_name("HC")
    assert SaliencyDir.subject_name("sub-01", "ses-1") == "sub-01_ses-1"
    assert SaliencyDir.mean_class(SaliencyDir(".").map("ig", SaliencyDir.subject_name("mean_HC"))) is None
    assert SaliencyDir.mean_name("../HC") == "mean_--HC"
