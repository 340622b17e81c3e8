"""Report tokenizer for LLNM-Net: radiology text to fixed-length integer ids, offline.

LLNM-Net encodes the ultrasound report with a pretrained BERT; llnm3d uses a small fixed
vocabulary of thyroid ultrasound and ACR TI-RADS reporting instead, so encoding needs no download
and gives the same ids on every machine.

Ids:

==============================  ==============================================================
id                              token
==============================  ==============================================================
0                               padding (and every id of a missing report)
1                               a number ("7", "0.5"); the values come from :func:`numbers`
2 .. 1 + len(VOCABULARY)        the words of :data:`VOCABULARY`, in order
2 + len(VOCABULARY) + k         any other word, in hash bucket k = crc32(word) % 256
==============================  ==============================================================

Normalisation: Unicode NFKC, lower case, punctuation dropped. Letters, digits, and dots or
hyphens between them form one chunk; a chunk that is a vocabulary word ("ill-defined",
"ti-rads", "tr5") or a number ("0.5") is one token, any other chunk is split into its runs of
letters and its numbers ("taller-than-wide" -> taller, than, wide; "7x5mm" -> 7, x, 5, mm).
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections.abc import Iterable

import numpy as np

VOCABULARY = (
    # report structure and general words
    "a", "an", "the", "of", "in", "on", "at", "to", "and", "or", "with", "without", "is", "are",
    "by", "for", "from", "as", "x", "measuring", "measures", "measured", "size", "diameter",
    "approximately", "up", "within", "between", "seen", "noted", "identified", "present",
    "absent", "not", "no", "none", "new", "stable", "unchanged", "increased", "decreased",
    "biopsy", "fna", "ultrasound", "thyroid", "gland", "nodule", "nodules", "lesion", "mass",
    "largest", "dominant", "small", "large", "multiple", "solitary", "multinodular", "goiter",
    "diffuse", "heterogeneous", "homogeneous", "parenchyma", "normal", "enlarged", "suspicious",
    "benign", "malignant", "malignancy", "likely", "consistent", "features", "transverse",
    "longitudinal", "sagittal",
    # anatomy and location
    "right", "left", "bilateral", "lobe", "lobes", "isthmus", "pyramidal", "upper", "middle",
    "mid", "lower", "third", "pole", "superior", "inferior", "anterior", "posterior", "medial",
    "lateral", "central", "deep", "superficial", "capsule", "capsular", "subcapsular", "trachea",
    "tracheal", "carotid", "jugular", "contralateral", "ipsilateral",
    # composition
    "composition", "solid", "cystic", "cyst", "mixed", "partially", "predominantly", "almost",
    "completely", "spongiform", "complex", "colloid", "component",
    # echogenicity
    "echogenicity", "anechoic", "hyperechoic", "isoechoic", "hypoechoic", "very", "markedly",
    "mildly",
    # shape
    "shape", "taller", "wider", "than", "wide", "tall", "oval", "round", "orientation",
    "parallel", "nonparallel",
    # margin
    "margin", "margins", "smooth", "ill-defined", "ill", "defined", "well-defined", "well",
    "circumscribed", "lobulated", "microlobulated", "irregular", "spiculated", "angular",
    "extrathyroidal", "extension", "invasion", "halo", "border", "blurred",
    # echogenic foci
    "echogenic", "foci", "focus", "punctate", "microcalcifications", "microcalcification",
    "macrocalcifications", "macrocalcification", "calcifications", "calcification", "calcified",
    "coarse", "peripheral", "rim", "eggshell", "interrupted", "comet-tail", "comet", "tail",
    "artifact", "artifacts", "acoustic", "shadowing",
    # ACR TI-RADS
    "acr", "ti-rads", "tirads", "ti", "rads", "tr1", "tr2", "tr3", "tr4", "tr5", "point",
    "points", "category", "score",
    # size and units
    "mm", "cm", "ml",
    # lymph nodes
    "lymph", "node", "nodes", "nodal", "lymphadenopathy", "metastasis", "metastases",
    "metastatic", "cervical", "compartment", "level", "ii", "iii", "iv", "v", "vi", "hilum",
    "hilar", "fatty", "cortex", "cortical", "thickening", "necrosis", "abnormal", "reactive",
    # vascularity
    "vascularity", "vascular", "avascular", "hypervascular", "flow", "doppler", "color",
    "colour", "power", "blood", "internal", "intranodular", "perinodular",
    # pathology
    "cancer", "carcinoma", "papillary",
)
N_HASH_BUCKETS = 256
PAD_ID = 0
NUMBER_ID = 1
VOCAB_SIZE = 2 + len(VOCABULARY) + N_HASH_BUCKETS

_IDS = {word: i for i, word in enumerate(VOCABULARY, start=2)}
_CHUNK = re.compile(r"[^\W_]+(?:[.\-][^\W_]+)*")
_PART = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def tokenize(text: str | None) -> list[str]:
    """Normalised tokens of a report, numbers kept as their text.

    Anything that is not a string (None, NaN, ``pandas.NA``) is a missing report: no tokens.
    """
    if not isinstance(text, str):
        return []
    tokens = []
    for chunk in _CHUNK.findall(unicodedata.normalize("NFKC", text).lower()):
        if chunk in _IDS or _NUMBER.fullmatch(chunk):
            tokens.append(chunk)
        else:
            tokens.extend(_PART.findall(chunk))
    return tokens


def token_id(token: str) -> int:
    """Id of one token from :func:`tokenize`."""
    if _NUMBER.fullmatch(token):
        return NUMBER_ID
    if token in _IDS:
        return _IDS[token]
    # crc32, not hash(): Python salts str hashes per process, and ids must not change between runs.
    return 2 + len(VOCABULARY) + zlib.crc32(token.encode()) % N_HASH_BUCKETS


def encode(text: str | None, max_length: int = 48) -> np.ndarray:
    """Token ids of a report, int64 of shape (max_length,): truncated, then zero-padded."""
    ids = np.zeros(max_length, dtype=np.int64)
    tokens = tokenize(text)[:max_length]
    ids[:len(tokens)] = [token_id(t) for t in tokens]
    return ids


def encode_batch(texts: Iterable[str | None], max_length: int = 48) -> np.ndarray:
    """:func:`encode` of each report, int64 of shape (N, max_length)."""
    rows = [encode(text, max_length) for text in texts]
    return np.stack(rows) if rows else np.zeros((0, max_length), dtype=np.int64)


def numbers(text: str | None) -> list[float]:
    """Values of the number tokens of a report, in order (a phantom report's first is the size
    in mm)."""
    return [float(t) for t in tokenize(text) if _NUMBER.fullmatch(t)]
