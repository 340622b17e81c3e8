import os

import pytest

from llnm3d.io import InputError, WriteError, atomic_path, file_stem, write_text


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


def test_temporary_name_keeps_suffixes_and_empty_output_is_refused(tmp_path):
    with pytest.raises(WriteError, match="incomplete"):
        with atomic_path(tmp_path / "v.nii.gz") as tmp:
            assert tmp.name.endswith(".nii.gz")
            tmp.write_bytes(b"")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("raw, stem", [("P001-N1-trans", "P001-N1-trans"),
                                       ("a/b c", "a_b_c~"), ("../x", "_._x~"),
                                       (".hidden", "_hidden~")])
def test_file_stem_keeps_clean_ids_and_marks_cleaned_ones(raw, stem):
    assert file_stem(raw).startswith(stem)
    assert ("~" in file_stem(raw)) == stem.endswith("~")


@pytest.mark.parametrize("first, second", [("a/b", "a_b"), ("张三", "李四"), ("a b", "a/b"),
                                           (".x", "_x")])
def test_ids_that_clean_alike_get_different_file_names(first, second):
    assert file_stem(first) != file_stem(second)


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


# -- durable writes: a failed write leaves the previous file and says which disk ----------------

def _short_nifti_writer(real):
    """A NIfTI writer on a full disk that writes part of the file and reports nothing (as
    SimpleITK's does)."""
    def write(image, path):
        real(image, path)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    return write


def test_short_nifti_write_keeps_the_previous_map(tmp_path, monkeypatch):
    import numpy as np

    from llnm3d import io

    path = tmp_path / "probability.nii.gz"
    good = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    io.write_volume(path, good, np.zeros(3), 1.0)
    monkeypatch.setattr(io, "_write_nifti_file", _short_nifti_writer(io._write_nifti_file))
    with pytest.raises(WriteError, match="incomplete") as error:
        io.write_volume(path, np.random.default_rng(0).random((30, 40, 50)).astype(np.float32),
                        np.zeros(3), 1.0)
    assert "\n" not in str(error.value) and "MB free" in str(error.value)
    np.testing.assert_array_equal(io.read_volume(path)[0], good)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def _write_each_format(folder, marker: int) -> None:
    """One file of every kind llnm3d writes, with content that depends on ``marker``."""
    for name in _FORMATS:
        _write_each_format_one(folder, name, marker)


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EROFS", "EIO"])
def test_failed_flush_keeps_every_previous_file(tmp_path, monkeypatch, errno_name):
    import errno

    from llnm3d import io

    _write_each_format(tmp_path, 1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def fsync(fd):
        raise OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)))

    monkeypatch.setattr(io.os, "fsync", fsync)
    for name in before:
        with pytest.raises(WriteError, match=f"cannot write .*{name}") as error:
            _write_each_format_one(tmp_path, name)
        assert "\n" not in str(error.value) and str(tmp_path) in str(error.value)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


_FORMATS = ("patch.npz", "qc.csv", "summary.json", "overlay.png", "field.glb", "map.nii.gz")


def _write_each_format_one(folder, name: str, marker: int = 2) -> None:
    import numpy as np
    from PIL import Image

    from llnm3d import io
    from llnm3d.export.gltf import GlbBuilder

    path = folder / name
    if name == "patch.npz":
        io.write_npz(path, x=np.full(5, marker))
    elif name == "qc.csv":
        io.write_text(path, f"nodule,label\nP1-N1,{marker}\n")
    elif name == "summary.json":
        io.write_json(path, {"marker": marker})
    elif name == "overlay.png":
        with io.atomic_path(path) as tmp:
            Image.fromarray(np.full((4, 4), marker, np.uint8)).save(tmp, format="PNG")
    elif name == "field.glb":
        GlbBuilder().write(path, {"marker": marker})
    else:
        io.write_volume(path, np.full((2, 2, 2), marker, np.float32), np.zeros(3), 1.0)


@pytest.fixture
def small_disk(tmp_path):
    """A 256 kB tmpfs (needs root and a kernel that lets us mount; skipped otherwise)."""
    import subprocess

    folder = tmp_path / "disk"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_full_disk_keeps_previous_outputs(small_disk):
    import numpy as np

    from llnm3d import io

    _write_each_format(small_disk, 1)
    before = {p.name: p.read_bytes() for p in small_disk.iterdir()}
    noise = np.random.default_rng(0).random((60, 60, 60)).astype(np.float32)  # 864 kB, random
    with pytest.raises(WriteError, match="map.nii.gz") as error:
        io.write_volume(small_disk / "map.nii.gz", noise, np.zeros(3), 1.0)
    assert str(small_disk) in str(error.value)
    with pytest.raises(WriteError, match="No space left"):
        io.write_npz(small_disk / "patch.npz", x=noise)
    with pytest.raises(WriteError, match="No space left"):
        io.write_text(small_disk / "qc.csv", "x" * 400_000)
    assert {p.name: p.read_bytes() for p in small_disk.iterdir()} == before


def test_readers_skip_temporaries_and_old_ones_are_removed(tmp_path):
    import time

    from llnm3d import io

    io.write_npz(tmp_path / "a.npz", x=[1])
    left = tmp_path / f".b.npz.abc{io.TEMPORARY_MARK}.npz"
    left.write_text("half")
    assert io.finished_files(tmp_path, "*.npz") == [tmp_path / "a.npz"]
    assert io.remove_temporaries(tmp_path, older_than=time.time() - 3600) == 0
    assert io.remove_temporaries(tmp_path, older_than=time.time() + 1) == 1
    assert not left.exists() and (tmp_path / "a.npz").exists()
