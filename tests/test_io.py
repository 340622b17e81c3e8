import os

import pytest

from llnm3d.io import atomic_path, safe_name, write_text


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_gives_usual_permissions(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask


def test_temporary_name_keeps_suffixes(tmp_path):
    with atomic_path(tmp_path / "v.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"")


@pytest.mark.parametrize("raw, safe", [("P001-N1-trans", "P001-N1-trans"), ("a/b c", "a_b_c"),
                                       ("../x", "_._x"), (".hidden", "_hidden")])
def test_safe_name(raw, safe):
    assert safe_name(raw) == safe
