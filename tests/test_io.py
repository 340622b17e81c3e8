import os

import pytest

from llnm3d.io import InputError, atomic_path, safe_name, write_text


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


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    from PIL import Image, ImageFile

    from llnm3d import io

    path = tmp_path / "big.png"
    Image.new("L", (300, 200)).save(path)
    monkeypatch.setattr(io, "MAX_IMAGE_PIXELS", 300 * 200 - 1)
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1))
    with pytest.raises(InputError, match="300x200 pixels is too large"):
        io.read_grayscale(path)
    assert not decoded


def test_grey_image_given_as_a_mask_is_refused(tmp_path):
    import numpy as np
    from PIL import Image

    from llnm3d.io import read_mask

    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "grey.png")
    with pytest.raises(InputError, match="not a binary mask"):
        read_mask(tmp_path / "grey.png")
    jpeg_like = np.zeros((64, 64), np.uint8)
    jpeg_like[20:40, 20:40] = 250
    jpeg_like[19, 20:40] = 120  # a soft edge, as JPEG leaves
    Image.fromarray(jpeg_like).save(tmp_path / "soft.png")
    assert read_mask(tmp_path / "soft.png").sum() == 400


def test_no_pickle_anywhere_in_the_package():
    """Weights are safetensors, arrays .npz/NIfTI, tables CSV: nothing may unpickle."""
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "llnm3d"
    for path in package.rglob("*.py"):
        text = path.read_text()
        for needle in ("import pickle", "torch.load(", "allow_pickle=True", "joblib.load"):
            assert needle not in text, (path, needle)
