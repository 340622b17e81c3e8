import itertools
import math
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llnm3d.models.text import (
    N_HASH_BUCKETS,
    NUMBER_ID,
    PAD_ID,
    VOCAB_SIZE,
    VOCABULARY,
    encode,
    encode_batch,
    numbers,
    token_id,
    tokenize,
)
from llnm3d.phantom.nodules import ECHOGENICITY, MARGIN, Nodule, report_text

REPORT = ("Left lobe, upper third: 7 mm solid hypoechoic nodule with ill-defined irregular "
          "margins, taller than wide, punctate echogenic foci (microcalcifications). "
          "ACR TI-RADS TR5 (12 points).")
FIRST_HASH_ID = 2 + len(VOCABULARY)


def phantom_reports() -> list[str]:
    """Reports of hand-made nodules covering every attribute combination, region and size."""
    reports = []
    combinations = itertools.product(ECHOGENICITY, MARGIN, (False, True), (False, True),
                                     (("R", 11), ("R", 12), ("R", 13), ("R", 30),
                                      ("L", 21), ("L", 22), ("L", 23), ("L", 30)))
    diameters = itertools.cycle((3.0, 4.4, 6.0, 9.6, 14.5, 20.0))
    for (echo, margin, taller, micro, (side, region)), diameter in zip(combinations, diameters,
                                                                       strict=False):
        reports.append(report_text(Nodule(
            nodule_id=1, side=side, centre_mm=np.zeros(3), atlas_centre_mm=np.zeros(3),
            semi_axes_mm=np.array([diameter / 2, diameter / 3, diameter / 2.5]),
            rotation_z_deg=0.0, echogenicity=echo, margin=margin, taller_than_wide=taller,
            microcalcification=micro, region=region)))
    return reports


def test_vocabulary_is_unique_and_normalised():
    assert len(set(VOCABULARY)) == len(VOCABULARY)
    assert 150 <= len(VOCABULARY) <= 250
    assert VOCAB_SIZE == 2 + len(VOCABULARY) + N_HASH_BUCKETS
    for word in VOCABULARY:
        assert tokenize(word) == [word]
        assert 2 <= token_id(word) < FIRST_HASH_ID


def test_every_phantom_report_token_is_a_word_or_a_number():
    reports = phantom_reports()
    assert len(reports) >= 200
    for report in reports:
        tokens = tokenize(report)
        assert all(t in VOCABULARY or token_id(t) == NUMBER_ID for t in tokens), report
        ids = encode(report)
        assert ids.max() < FIRST_HASH_ID
        assert ids[-1] == PAD_ID  # the longest report fits without truncation
    assert {"ill-defined", "ti-rads", "tr5", "microcalcifications", "very",
            "isthmus"} <= {t for r in reports for t in tokenize(r)}


def test_tokenize_keeps_vocabulary_compounds_and_splits_the_rest():
    assert tokenize(REPORT) == [
        "left", "lobe", "upper", "third", "7", "mm", "solid", "hypoechoic", "nodule", "with",
        "ill-defined", "irregular", "margins", "taller", "than", "wide", "punctate", "echogenic",
        "foci", "microcalcifications", "acr", "ti-rads", "tr5", "12", "points"]
    assert tokenize("ILL-DEFINED") == ["ill-defined"]
    assert tokenize("taller-than-wide") == ["taller", "than", "wide"]
    assert tokenize("7x5x4mm") == ["7", "x", "5", "x", "4", "mm"]
    # NFKC folds full-width letters and digits
    assert tokenize("\uff34\uff32\uff15 \uff18\uff4d\uff4d") == ["tr5", "8", "mm"]


def test_numbers_share_one_id_and_keep_their_values():
    assert numbers(REPORT) == [7.0, 12.0]
    assert numbers("1.2 x 0.8 cm, 0.5-1.0 cm") == [1.2, 0.8, 0.5, 1.0]
    ids = encode("7 mm 0.5 cm 12")
    assert list(ids[:5]) == [NUMBER_ID, token_id("mm"), NUMBER_ID, token_id("cm"), NUMBER_ID]


def test_unknown_words_hash_into_the_bucket_range():
    for word in ("hashimoto", "thyroglobulin", "xyzzy", "ß"):
        expected = FIRST_HASH_ID + zlib.crc32(word.encode()) % N_HASH_BUCKETS
        assert token_id(word) == expected
        assert encode(f"{word} nodule {word}")[[0, 2]].tolist() == [expected, expected]
    assert 0 <= encode("hashimoto").max() < VOCAB_SIZE


def test_padding_truncation_and_batches():
    ids = encode(REPORT, max_length=10)
    assert ids.shape == (10,) and ids.dtype == np.int64 and (ids > 0).all()
    assert (encode(REPORT, max_length=64)[25:] == PAD_ID).all()
    batch = encode_batch([REPORT, None, "nodule"], max_length=16)
    assert batch.shape == (3, 16) and batch.dtype == np.int64
    assert (batch[0] == encode(REPORT, 16)).all() and (batch[1] == 0).all()
    assert encode_batch([], max_length=16).shape == (0, 16)


@pytest.mark.parametrize("missing", ["", "  ", "(.,;)", None, math.nan, np.float32("nan"),
                                     pd.NA])
def test_missing_reports_encode_to_zeros(missing):
    assert tokenize(missing) == [] and numbers(missing) == []
    assert (encode(missing) == 0).all() and encode(missing).shape == (48,)


def test_deterministic_across_calls_and_processes():
    text = REPORT + " hashimoto thyroiditis-like xyzzy"
    first = encode(text).tolist()
    assert encode(text).tolist() == first
    root = Path(__file__).resolve().parents[1]
    code = f"from llnm3d.models.text import encode; print(encode({text!r}).tolist())"
    for seed in ("1", "2"):  # different str hash salts
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, check=True,
                             capture_output=True, text=True).stdout
        assert out.strip() == str(first)
