import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llnm3d.manifest import read_manifest
from llnm3d.registration import register
from llnm3d.report_location import fill_location_from_reports, parse_location


def _corpus_module():
    path = Path(__file__).parents[1] / "benchmarks" / "report_corpus.py"
    spec = importlib.util.spec_from_file_location("report_corpus", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("report, side, third, front_back, contact", [
    ("Right lobe, upper third: 7 mm solid hypoechoic nodule with smooth margins, no echogenic "
     "foci. ACR TI-RADS TR4 (4 points).", "R", "upper", None, None),
    ("Rt lobe inf pole 9mm TR4 nodule abutting the post. capsule, no ETE.",
     "R", "lower", "back", True),
    ("A 9 mm nodule in the left lobe, lower pole, abutting the anterior capsule.",
     "L", "lower", "front", True),
    ("L lobe, sup. pole, ant.: 6 mm TR3 nodule, 3 mm from the capsule.",
     "L", "upper", "front", False),
    ("RUP nodule, 8 mm, TR4.", "R", "upper", None, None),
    ("Isthmic nodule extending into the right lobe, capsule intact.",
     "isthmus", None, None, None),
    ("Lesion in the isthmus, abutting the capsule with ETE.", "isthmus", None, None, True),
    # negations
    ("No extrathyroidal extension.", None, None, None, None),
    ("Right lobe nodule, capsular contact: none.", "R", None, None, False),
    ("The nodule does not abut the capsule. It lies in the right mid pole.",
     "R", "middle", None, False),
    ("Nodule at the mid pole of the R lobe, post. aspect, without capsular contact.",
     "R", "middle", "back", False),
    ("No nodules in the right lobe. Left lower pole TR3 nodule.", "L", "lower", None, None),
    ("The left lobe is unremarkable, and a 9 mm nodule lies in the right lower pole.",
     "R", "lower", None, None),
    # words that are no location of the nodule
    ("Left lobe lower third nodule with posterior acoustic shadowing.",
     "L", "lower", None, None),
    ("Right lower pole nodule. Abnormal left level IV lymph node with microcalcifications.",
     "R", "lower", None, None),
    ("Right lobe: 12 mm TR4 nodule. The left lobe contains a small cyst in the upper pole.",
     "R", None, None, None),
    # a heading gives the side to the nodule below it
    ("RIGHT LOBE: 45 x 16 x 15 mm. A 9 mm nodule in the lower pole, posteriorly.",
     "R", "lower", "back", None),
    ("Right-sided thyroid nodule, inferiorly and posteriorly located, 2 mm from the capsule.",
     "R", "lower", "back", False),
    ("Thyroid gland normal in size. Echotexture homogeneous.", None, None, None, None),
    # structured and follow-on sentences
    ("Location: left lobe (lower pole; posterior). Size: 9 mm. Margins: lobulated; abuts the "
     "capsule.", "L", "lower", "back", True),
    ("A R. dorsal inf nodule measuring 26 mm. The nodule is 3 mm from the capsule.",
     "R", "lower", "back", False),
    ("Status post left hemithyroidectomy. Location: thyroid isthmus. Size: 1.7 cm.",
     "isthmus", None, None, None),
    ("Within the right thyroid (apex; posterior surface) there is a 2.8 cm nodule; ETE: none.",
     "R", "upper", "back", None),
])
def test_phrasings(report, side, third, front_back, contact):
    found = parse_location(report)
    assert (found.side, found.lobe_third, found.front_back, found.capsule_contact) == (
        side, third, front_back, contact)


def test_extension_is_not_contact_when_denied():
    denied = parse_location("Left lobe nodule, no extrathyroidal extension.")
    assert denied.extrathyroidal_extension is False and denied.capsule_contact is None
    both = parse_location("Left lobe nodule abutting the capsule without extrathyroidal "
                          "extension.")
    assert both.extrathyroidal_extension is False and both.capsule_contact is True


@pytest.mark.parametrize("report", [
    "Nodule 1: right upper pole, 8 mm. Nodule 2: left lower pole, anterior, subcapsular.",
    "1) Right lobe upper pole 8 mm TR3 nodule. 2) Left lobe lower pole TR5 nodule, "
    "anterior, subcapsular.",
    "A first nodule in the right upper pole, and a second nodule in the left lower pole, "
    "anterior, subcapsular.",
    "#1 R lobe upper pole, 8 mm nodule; #2 L lobe inf pole ant. nodule, subcapsular.",
    "Nodule A. Right upper pole, 8 mm. Nodule B. A 5 mm nodule in the left lower pole, "
    "anterior. The nodule is subcapsular.",
])
def test_the_rows_nodule_is_picked_by_its_number(report):
    ids = ("A", "B") if "Nodule A" in report else ("1", 2)
    first, second = parse_location(report, ids[0]), parse_location(report, ids[1])
    assert (first.side, first.lobe_third, first.capsule_contact) == ("R", "upper", None)
    assert (second.side, second.lobe_third, second.front_back, second.capsule_contact) == (
        "L", "lower", "front", True)
    assert "upper" in first.evidence.lower() and "upper" not in second.evidence.lower()


def test_unnumbered_nodules_give_only_what_they_share():
    report = ("Two nodules in the right lobe: an upper pole 9 mm nodule and a lower pole 6 mm "
              "nodule.")
    found = parse_location(report, "2")
    assert found.side == "R" and found.lobe_third is None


@pytest.mark.parametrize("report", [None, float("nan"), pd.NA, "", "   "])
def test_a_missing_report_says_nothing(report):
    found = parse_location(report)
    assert found == type(found)()
    assert found.evidence == ""


def test_evidence_is_the_reports_own_words():
    found = parse_location("Gland normal in size.\nRt  LOBE, inf. pole: TR4 nodule.")
    assert found.evidence == "Rt LOBE, inf. pole: TR4 nodule"


def test_phantom_reports_match_the_truth(cohort):
    truth = cohort.truth.set_index(["patient_id", "nodule_id"])
    for _, row in cohort.manifest.iterrows():
        expected = truth.loc[(row["patient_id"], int(row["nodule_id"]))]
        found = parse_location(row["report"], row["nodule_id"])
        assert found.side == expected["side"]
        assert found.lobe_third == expected["lobe_third"]


# Floors a little under the accuracy measured when the parser was frozen (300 reports, seed 1:
# the sets used to correct it 100 %; held out: side 91.3 %, lobe third 89.3 %).
@pytest.mark.parametrize("kind, side_floor, third_floor", [
    ("development", 0.99, 0.99), ("round1", 0.99, 0.99), ("round2", 0.99, 0.99),
    ("round3", 0.99, 0.99), ("held_out", 0.88, 0.86)])
def test_accuracy_floor_on_generated_reports(kind, side_floor, third_floor):
    items = _corpus_module().corpus(kind, 300, seed=1)
    found = [parse_location(item["report"], item["nodule_id"]) for item in items]
    for field, floor in (("side", side_floor), ("lobe_third", third_floor)):
        accuracy = np.mean([getattr(f, field) == item[field]
                            for f, item in zip(found, items, strict=True)])
        assert accuracy >= floor, (field, accuracy)


# -- manifests and registration ------------------------------------------------------------------

HEADER = "case_id,patient_id,nodule_id,side,view,image,thyroid_mask,nodule_mask,report"


def _manifest(folder: Path, rows: list[str], header: str = HEADER) -> Path:
    (folder / "a.png").write_bytes(b"png")
    path = folder / "manifest.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_manifest_fills_empty_cells_from_the_report_and_records_it(tmp_path):
    table = read_manifest(_manifest(tmp_path, [
        'c1,p1,1,,transverse,a.png,,,"Left lobe, lower pole, posterior: 8 mm TR4 nodule."',
        'c2,p2,1,R,transverse,a.png,,,"Left lobe, upper pole nodule."',
        "c3,p3,1,L,transverse,a.png,,,",
        'c4,p4,1,,transverse,a.png,,,"Isthmic nodule, 5 mm."',
        'c5,p5,2,,transverse,a.png,,,"Nodule 1: right upper pole. Nodule 2: left mid pole."',
    ])).table.set_index("case_id")
    assert tuple(table.loc["c1", ["side", "lobe_third", "front_back"]]) == ("L", "lower", "back")
    assert table.loc["c1", "location_source"] == "report"
    assert table.loc["c1", "location_from_report"] == "side,lobe_third,front_back"
    assert "Left lobe, lower pole" in table.loc["c1", "location_evidence"]
    # A manifest value is never overwritten; the contradiction is recorded, and nothing is
    # taken from a report about the other side.
    assert table.loc["c2", "side"] == "R" and table.loc["c2", "lobe_third"] == ""
    assert table.loc["c2", "location_conflicts"] == "side"
    assert table.loc["c2", "location_source"] == "manifest"
    assert (table.loc["c3", "location_source"], table.loc["c3", "location_from_report"]) == (
        "manifest", "")
    # An isthmus nodule has no lobe to be placed on.
    assert table.loc["c4", "side"] == "" and table.loc["c4", "location_source"] == ""
    assert tuple(table.loc["c5", ["side", "lobe_third"]]) == ("L", "middle")


def test_manifest_values_win_in_every_column():
    table = pd.DataFrame({"side": ["R"], "lobe_third": ["Upper"], "front_back": ["anterior"],
                          "nodule_id": ["1"],
                          "report": ["Left lobe, lower pole, posterior nodule."]})
    filled = fill_location_from_reports(table)
    assert tuple(filled.loc[0, ["side", "lobe_third", "front_back"]]) == (
        "R", "Upper", "anterior")
    assert filled.loc[0, "location_conflicts"] == "side,lobe_third,front_back"
    agreeing = fill_location_from_reports(table.assign(
        report="Right upper pole nodule, anterior."))
    assert agreeing.loc[0, "location_conflicts"] == ""


def test_register_places_a_maskless_nodule_by_the_reports_location(tmp_path, atlas):
    path = _manifest(tmp_path, [
        'c1,p1,1,,transverse,a.png,,,"Right lobe, lower pole, posterior: 8 mm TR4 nodule.",,',
        'c2,p2,1,L,transverse,a.png,,,"Right lobe, lower pole, anterior: 8 mm TR4 nodule.",'
        'upper,front',
    ], header=HEADER + ",lobe_third,front_back")
    qc = register(path, atlas=atlas, allow_coarse_location=True, workers=1,
                  progress=False).qc.set_index("nodule")
    derived = qc.loc["p1-N1"]
    assert derived["status"] == "warning" and derived["side"] == "R"
    assert "location from the report" in derived["reason"]
    assert derived["region"] == 13 and derived["centre_y_mm"] > atlas.lobe_axes[1][
        "centre_mm"][1]
    # The manifest's side is kept and the contradiction is a warning.
    kept = qc.loc["p2-N1"]
    assert kept["status"] == "warning" and kept["side"] == "L" and kept["region"] == 21
    assert "contradicts the manifest's side L" in kept["reason"]
    assert not math.isnan(kept["centre_x_mm"])
