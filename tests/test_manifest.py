import pytest

from llnm3d.io import InputError
from llnm3d.manifest import read_manifest

HEADER = ("case_id,patient_id,nodule_id,side,view,image,thyroid_mask,nodule_mask,"
          "pixel_spacing_mm,label,age,sex,report")


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    return tmp_path


def write(folder, *rows, header=HEADER, name="manifest.csv", encoding="utf-8"):
    path = folder / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding=encoding)
    return path


def test_valid_rows_are_normalised(folder):
    m = read_manifest(write(folder, "c1,p1,1,r,Transverse,a.png,,,0.1,1,50,f,text",
                            "c2,p1,1,L,longitudinal,a.png,,,,,,,"))
    assert m.problems == []
    assert list(m.table["side"]) == ["R", "L"]
    assert list(m.table["view"]) == ["transverse", "longitudinal"]
    assert m.table.loc[0, "pixel_spacing_mm"] == 0.1 and m.table.loc[0, "sex"] == "F"
    assert m.path(m.table.loc[0], "image") == folder.resolve() / "a.png"
    assert m.path(m.table.loc[0], "thyroid_mask") is None


@pytest.mark.parametrize("row, message", [
    ("c1,p1,1,X,transverse,a.png,,,,,,,", "unknown side 'X'"),
    ("c1,p1,1,R,oblique,a.png,,,,,,,", "unknown view 'oblique'"),
    ("c1,p1,1,R,transverse,missing.png,,,,,,,", "image file 'missing.png' not found"),
    ("c1,p1,1,R,transverse,../a.png,,,,,,,", "outside the cohort folder"),
    ("c1,p1,1,R,transverse,a.png,,,-0.1,,,,", "pixel_spacing_mm '-0.1' must be positive"),
    ("c1,p1,1,R,transverse,a.png,,,,2,,,", "label '2' must be 0, 1 or empty"),
    ("c1,p1,1,R,transverse,a.png,,,,,-4,,", "age '-4' must be positive"),
    ("c1,p1,1,R,transverse,a.png,,,,,,X,", "sex 'X'"),
])
def test_bad_rows_are_reported_by_case_and_the_rest_kept(folder, row, message):
    m = read_manifest(write(folder, row, "c2,p2,1,L,transverse,a.png,,,,,,,"))
    assert len(m.problems) == 1
    case_id, problem = m.problems[0]
    assert case_id == "c1" and message in problem
    assert list(m.table["case_id"]) == ["c2"]


def test_duplicate_case_id(folder):
    m = read_manifest(write(folder, "c1,p1,1,R,transverse,a.png,,,,,,,",
                            "c1,p1,1,R,longitudinal,a.png,,,,,,,"))
    assert m.problems == [("c1", "duplicate case_id")]


def test_bom_semicolons_and_extra_columns(folder):
    header = HEADER.replace(",", ";") + ";scanner"
    path = write(folder, "c1;p1;1;R;transverse;a.png;;;;;;;;GE", header=header,
                 encoding="utf-8-sig")
    m = read_manifest(path)
    assert m.problems == [] and m.table.loc[0, "scanner"] == "GE"


def test_missing_columns_and_missing_file(folder):
    with pytest.raises(InputError, match="lacks required column"):
        read_manifest(write(folder, "c1,p1", header="case_id,patient_id"))
    with pytest.raises(InputError, match="not found"):
        read_manifest(folder / "nope.csv")
