"""Generated thyroid ultrasound report sentences whose nodule locations are known.

Used by ``benchmarks/bench_report_location.py`` and ``tests/test_report_location.py`` to
measure :func:`llnm3d.report_location.parse_location`. Template sets, each written without
looking at how the parser of the time read it, in this order (accuracy on side and lobe third
of the parser then frozen, 1,000 reports, seed 0, before the set was used to correct it):

- ``development``: written together with the first parser (its phrasings shaped the rules);
- ``round1``: held out for parser 1 (side 86.8 %, third 87.8 %); corrected: labels on a
  sentence of their own ("Nodule A."), structured "Location:" fields, parentheses, past surgery;
- ``round2``: held out for parser 2 (side 94.0 %, third 100 %); corrected: "R." and "Side: L";
  isthmus measurements;
- ``round3``: held out for parser 3 (side 90.2 %, third 92.8 %); corrected: "The nodule ..."
  sentences about the nodule just described, "no." ending a sentence;
- ``held_out``: written after parser 4 (the current one) was frozen, never used to change it.
  Its accuracy is the honest figure.

Each item is a dict: ``report``, ``nodule_id`` (the row's nodule; reports may describe several
nodules, numbered or not) and the truth ``side`` (L/R/isthmus), ``lobe_third``
(upper/middle/lower), ``front_back`` (front/back) and ``capsule_contact`` (True/False), each
None when the report does not state it (so a parser should answer None).
"""

from __future__ import annotations

import random

FIELDS = ("side", "lobe_third", "front_back", "capsule_contact")


def corpus(kind: str, n: int, seed: int = 0) -> list[dict]:
    """``n`` generated reports of one template set (``development`` or ``held_out``)."""
    make = {"development": _development, "round1": _round1, "round2": _round2,
            "round3": _round3, "held_out": _held_out}[kind]
    rng = random.Random(f"{kind}-{seed}")
    return [make(rng) for _ in range(n)]


def _pick(rng: random.Random, options):
    return options[rng.randrange(len(options))]


def _truth(rng: random.Random, p_third=0.85, p_front=0.5, p_capsule=0.5) -> dict:
    side = _pick(rng, ["R", "R", "L", "L", "R", "L", "R", "L", "isthmus"])
    third = _pick(rng, ["upper", "middle", "lower"]) if side != "isthmus" and \
        rng.random() < p_third else None
    front = _pick(rng, ["front", "back"]) if rng.random() < p_front else None
    capsule = _pick(rng, ["contact", "no_contact", "ete", "no_ete", "contact_no_ete"]) \
        if rng.random() < p_capsule else None
    return {"side": side, "lobe_third": third, "front_back": front, "capsule": capsule,
            "capsule_contact": {"contact": True, "ete": True, "contact_no_ete": True,
                                "no_contact": False}.get(capsule)}


def _case(rng: random.Random, text: str) -> str:
    style = rng.random()
    return text.upper() if style < 0.1 else text.lower() if style < 0.25 else text


# -- development templates ----------------------------------------------------------------------

_D_SIDE = {"R": ["right lobe", "Rt lobe", "R lobe", "right thyroid lobe", "right"],
           "L": ["left lobe", "Lt lobe", "L lobe", "left thyroid lobe", "left"],
           "isthmus": ["isthmus", "isthmus"]}
_D_THIRD = {"upper": ["upper pole", "upper third", "superior pole", "sup. pole", "upper 1/3"],
            "middle": ["mid pole", "midpole", "middle third", "mid portion", "interpolar region"],
            "lower": ["lower pole", "inf pole", "inferior third", "lower third", "inf. pole"]}
_D_FRONT = {"front": ["anterior", "ant.", "anteriorly", "anterior aspect"],
            "back": ["posterior", "post.", "posteriorly", "posterior aspect"]}
_D_CAPSULE = {"contact": ["abutting the capsule", "in contact with the capsule",
                          "touching the capsule", "subcapsular"],
              "no_contact": ["no capsular contact", "separate from the capsule",
                             "4 mm from the capsule", "not abutting the capsule"],
              "ete": ["with extrathyroidal extension", "with minimal ETE",
                      "breaching the capsule"],
              "no_ete": ["no extrathyroidal extension", "no ETE", "capsule intact"],
              "contact_no_ete": ["abutting the capsule without extrathyroidal extension",
                                 "subcapsular, no ETE"]}
_D_FEATURES = ["solid hypoechoic", "TR4", "solid, markedly hypoechoic", "mixed cystic and solid",
               "TI-RADS 5", "isoechoic", "hypoechoic with posterior acoustic shadowing",
               "taller-than-wide hypoechoic", "spongiform"]
_D_NAMES = {"R": "right", "L": "left"}
_D_DISTRACTORS = ["The left lobe is unremarkable.", "The right lobe is unremarkable.",
                  "No nodules in the left lobe.", "No nodules in the right lobe.",
                  "Suspicious lymph node in the left level IV, lower jugular chain.",
                  "Reactive node in right level III.", "Isthmus 3 mm thick.",
                  "Thyroid gland normal in size.", "AP diameter of the right lobe 16 mm.",
                  "No cervical lymphadenopathy."]


def _d_location(rng: random.Random, truth: dict) -> list[str]:
    words = [_pick(rng, _D_SIDE[truth["side"]])]
    if truth["lobe_third"]:
        words.append(_pick(rng, _D_THIRD[truth["lobe_third"]]))
    if truth["front_back"]:
        words.append(_pick(rng, _D_FRONT[truth["front_back"]]))
    return words


def _d_nodule(rng: random.Random, truth: dict) -> str:
    size = f"{rng.randint(4, 25)} mm"
    features = _pick(rng, _D_FEATURES)
    where = _d_location(rng, truth)
    form = rng.randrange(6)
    if form == 0:
        text = f"{', '.join(where).capitalize()}: {size} {features} nodule"
    elif form == 1:
        location = " ".join(reversed(where[1:])) + (" of the " if len(where) > 1 else "") + \
            where[0]
        text = f"A {size} {features} nodule in the {location}"
    elif form == 2:
        text = f"{' '.join(where).capitalize()} {features} nodule, {size}"
    elif form == 3:
        text = f"There is a {features} nodule measuring {size} in the {', '.join(where)}"
    elif form == 4:
        text = f"Nodule ({', '.join(where)}), {size}, {features}"
    else:
        rng.shuffle(where)
        text = f"{size} nodule, {' '.join(where)}, {features}"
    if truth["capsule"]:
        text += ", " + _pick(rng, _D_CAPSULE[truth["capsule"]])
    return text


def _development(rng: random.Random) -> dict:
    count = _pick(rng, [1, 1, 1, 2, 2, 3])
    truths = [_truth(rng) for _ in range(count)]
    numbering = _pick(rng, ["Nodule {i}: ", "#{i} ", "N{i}: ", "{i}) ", "{ordinal} nodule: ",
                            ""]) if count > 1 else ""
    ordinals = ["First", "Second", "Third"]
    # A lobe said to be free of nodules is one without the report's nodules.
    sides = {_D_NAMES.get(t["side"]) for t in truths}
    distractors = [d for d in _D_DISTRACTORS
                   if not (("unremarkable" in d or "No nodules" in d)
                           and any(s and s in d for s in sides))]
    sentences = []
    if rng.random() < 0.4:
        sentences.append(_pick(rng, distractors))
    for i, truth in enumerate(truths, start=1):
        prefix = numbering.format(i=i, ordinal=ordinals[i - 1])
        sentences.append(prefix + _d_nodule(rng, truth) + ".")
    if rng.random() < 0.4:
        sentences.append(_pick(rng, distractors))
    row = rng.randrange(count)
    truth = truths[row]
    if count > 1 and not numbering:
        # Unnumbered nodules: only what they all share is known for the row's nodule.
        truth = {f: truths[0][f] if all(t[f] == truths[0][f] for t in truths) else None
                 for f in FIELDS}
    return {"report": _case(rng, " ".join(sentences)), "nodule_id": str(row + 1),
            **{f: truth[f] for f in FIELDS}}


# -- round 1 templates: written after the first parser was frozen (held out for it, then used
# -- to correct it) -------------------------------------------------------------------------

_H_SIDE = {"R": ["right thyroid", "right hemithyroid", "RT LOBE", "R-lobe", "Rt. lobe",
                 "right side of the thyroid", "lobe (right)", "right thyroid gland"],
           "L": ["left thyroid", "left hemithyroid", "LT LOBE", "L-lobe", "Lt. lobe",
                 "left side of the thyroid", "lobe (left)", "left thyroid gland"],
           "isthmus": ["isthmus region", "thyroid isthmus", "isthmic portion"]}
_H_THIRD = {"upper": ["cranial pole", "superior portion", "upper portion", "upper aspect",
                      "upper one-third", "apex", "superior segment"],
            "middle": ["mid-lobe", "middle portion", "mid-zone", "middle-third", "mid portion",
                       "mid segment"],
            "lower": ["caudal pole", "inferior portion", "lower portion", "lower aspect",
                      "lower one-third", "inferior segment", "lower-pole"]}
_H_FRONT = {"front": ["anteriorly located", "ventral aspect", "anterior portion",
                      "superficial part", "anterior half"],
            "back": ["dorsal aspect", "posterior half", "posterior surface", "deep portion",
                     "posteriorly located"]}
_H_CAPSULE = {"contact": ["abuts the capsule", "contacts the capsule", "capsular abutment present",
                          "extending to the capsule", "with capsular bulge"],
              "no_contact": ["no contact with the capsule", "1 mm from the capsule",
                             "remote from the capsule", "does not reach the capsule",
                             "without capsular abutment"],
              "ete": ["gross ETE into the strap muscles", "extrathyroidal extension present",
                      "capsule is breached"],
              "no_ete": ["no evidence of extrathyroidal extension", "ETE: none",
                         "extrathyroidal extension absent"],
              "contact_no_ete": ["abuts the capsule, no evidence of ETE",
                                 "capsular abutment present; ETE: none"]}
_H_PREAMBLE = ["FINDINGS:", "Comparison: none.", "Trachea midline.", "Normal vascularity.",
               "Status post left hemithyroidectomy.", "Gland heterogeneous, no goiter.",
               "No suspicious cervical lymph nodes bilaterally.",
               "The contralateral lobe is normal."]
_H_LETTERS = "ABC"


def _h_where(rng: random.Random, truth: dict) -> str:
    side = _pick(rng, _H_SIDE[truth["side"]])
    parts = [_pick(rng, _H_THIRD[truth["lobe_third"]])] if truth["lobe_third"] else []
    if truth["front_back"]:
        parts.append(_pick(rng, _H_FRONT[truth["front_back"]]))
    if not parts:
        return side
    form = rng.randrange(3)
    if form == 0:
        return f"{' and '.join(parts)} of the {side}"
    if form == 1:
        return f"{side}, {', '.join(parts)}"
    return f"{side} ({'; '.join(parts)})"


def _h_nodule(rng: random.Random, truth: dict) -> str:
    size = _pick(rng, [f"{rng.randint(4, 30)} mm", f"{rng.randint(4, 30) / 10:.1f} cm",
                       f"{rng.randint(4, 20)} x {rng.randint(3, 15)} mm"])
    where = _h_where(rng, truth)
    capsule = _pick(rng, _H_CAPSULE[truth["capsule"]]) if truth["capsule"] else ""
    form = rng.randrange(5)
    if form == 0:
        text = (f"Location: {where}. Size: {size}. Composition: solid (2). Echogenicity: "
                f"hypoechoic (2). Margins: {'; '.join(filter(None, ['lobulated', capsule]))}. "
                "ACR TI-RADS 4")
    elif form == 1:
        text = f"Within the {where} there is a {size} heterogeneous nodule"
        text += f" which {capsule}" if capsule.startswith(("abuts", "contacts", "does")) else \
            (f"; {capsule}" if capsule else "")
    elif form == 2:
        text = f"{size} solid nodule ({where}), TR5" + (f". {capsule.capitalize()}" if capsule
                                                          else "")
    elif form == 3:
        text = f"IMPRESSION: TR4 lesion, {where}" + (f", {capsule}" if capsule else "")
    else:
        text = f"The dominant nodule, {size}, is seen at the {where}" + (
            f" and {capsule}" if capsule.startswith(("abuts", "contacts", "does")) else
            (f"; {capsule}" if capsule else ""))
    return text


def _round1(rng: random.Random) -> dict:
    count = _pick(rng, [1, 1, 1, 2, 2, 3])
    truths = [_truth(rng) for _ in range(count)]
    if any(t["side"] == "L" for t in truths):
        preamble = [p for p in _H_PREAMBLE if "hemithyroidectomy" not in p]
    else:
        preamble = list(_H_PREAMBLE)
    label = _pick(rng, ["Nodule #{i}: ", "{i}. ", "Nodule {letter}. ", "({i}) ", ""]) \
        if count > 1 else ""
    sentences = [_pick(rng, preamble)] if rng.random() < 0.5 else []
    for i, truth in enumerate(truths, start=1):
        text = _h_nodule(rng, truth)
        sentences.append(label.format(i=i, letter=_H_LETTERS[i - 1]) + text + ".")
    if rng.random() < 0.3:
        sentences.append(_pick(rng, preamble))
    row = rng.randrange(count)
    truth = truths[row]
    nodule_id = _H_LETTERS[row] if "{letter}" in label else str(row + 1)
    if count > 1 and not label:
        truth = {f: truths[0][f] if all(t[f] == truths[0][f] for t in truths) else None
                 for f in FIELDS}
    return {"report": _case(rng, "\n".join(sentences) if rng.random() < 0.3
                            else " ".join(sentences)),
            "nodule_id": nodule_id, **{f: truth[f] for f in FIELDS}}


# -- round 2 templates: written after the second parser was frozen (held out for it), then
# -- used to correct it -----------------------------------------------------------------------

_X_SIDE = {"R": ["right", "Rt", "RIGHT", "rt.", "R."], "L": ["left", "Lt", "LEFT", "lt.", "L."]}
_X_THIRD = {"upper": ["upper", "superior", "sup", "upper pole", "cranial"],
            "middle": ["mid", "middle", "midpole", "mid-lobar", "interpolar"],
            "lower": ["lower", "inferior", "inf", "lower pole", "caudal"]}
_X_THIRD_NOUN = {"upper": ["upper pole", "superior pole", "upper third"],
                 "middle": ["mid pole", "middle third", "mid-portion"],
                 "lower": ["lower pole", "inferior pole", "lower third"]}
_X_FRONT = {"front": ["anterior", "ventral", "anteriorly"],
            "back": ["posterior", "dorsal", "posteriorly"]}
_X_CAPSULE = {"contact": ["It reaches the thyroid capsule", "There is abutment of the capsule",
                          "It touches the capsule", "It is subcapsular"],
              "no_contact": ["It is 2 mm from the capsule", "It does not touch the capsule",
                             "It is separate from the capsule", "No capsular contact"],
              "ete": ["It shows extrathyroidal extension", "It has breached the capsule",
                      "ETE is present"],
              "no_ete": ["No ETE", "The capsule appears intact",
                         "There is no extrathyroidal extension"],
              "contact_no_ete": ["It touches the capsule but shows no ETE",
                                 "It is subcapsular with no extrathyroidal extension"]}
_X_OTHER = ["Right lobe measures 4.8 x 1.7 x 1.6 cm; left lobe 4.5 x 1.5 x 1.4 cm.",
            "Isthmus thickness 2 mm.", "Echotexture heterogeneous, consistent with thyroiditis.",
            "Recommend FNA.", "Lymph nodes: small reactive node, right level II.",
            "No abnormal lymph nodes in the left neck."]


def _x_nodule(rng: random.Random, truth: dict) -> str:
    """The sentences describing one nodule."""
    side, third, front = truth["side"], truth["lobe_third"], truth["front_back"]
    form = rng.randrange(5)
    if side == "isthmus":
        where = "isthmus" + (f", {_pick(rng, _X_FRONT[front])}" if front else "")
        sentence = f"A {rng.randint(4, 30)} mm nodule is seen in the {where}"
    elif form == 0:
        words = [_pick(rng, _X_SIDE[side])]
        if third:
            words.append(_pick(rng, _X_THIRD[third]))
        if front:
            words.insert(1, _pick(rng, _X_FRONT[front]))
        sentence = f"A {' '.join(words)} nodule measuring {rng.randint(4, 30)} mm"
    elif form == 1:
        sentence = f"The {_pick(rng, _X_SIDE[side])} lobe contains a {rng.randint(4, 30)} mm " \
            "nodule" + (f" in its {_pick(rng, _X_THIRD_NOUN[third])}" if third else "") + \
            (f", located {_pick(rng, _X_FRONT[front])}" if front else "")
    elif form == 2:
        fields = [f"Side: {_pick(rng, _X_SIDE[side])}"]
        if third:
            fields.append(f"Pole: {third}")
        if front:
            fields.append(f"Depth: {_pick(rng, _X_FRONT[front])}")
        sentence = "Nodule, " + " | ".join(fields)
    elif form == 3:
        part = (f"{_pick(rng, _X_FRONT[front])} aspect of the " if front else "") + \
            (f"{_pick(rng, _X_SIDE[side])} {_pick(rng, _X_THIRD_NOUN[third])}" if third
             else f"{_pick(rng, _X_SIDE[side])} lobe")
        sentence = f"Solid nodule in the {part}, TR{rng.randint(3, 5)}"
    else:
        sentence = (f"{_pick(rng, _X_SIDE[side])} thyroid lobe: there is a "
                    f"{rng.randint(4, 30)} mm nodule"
                    + (f" in the {_pick(rng, _X_THIRD_NOUN[third])}" if third else "")
                    + (f", {_pick(rng, _X_FRONT[front])}" if front else ""))
    if truth["capsule"]:
        sentence += ". " + _pick(rng, _X_CAPSULE[truth["capsule"]])
    return sentence


def _round2(rng: random.Random) -> dict:
    count = _pick(rng, [1, 1, 1, 2, 2, 3])
    truths = [_truth(rng) for _ in range(count)]
    style = _pick(rng, ["Nodule {i}: ", "Nodule #{i} - ", "{ordinal} nodule: ", ""]) \
        if count > 1 else ""
    ordinals = ["First", "Second", "Third"]
    sentences = [_pick(rng, _X_OTHER)] if rng.random() < 0.5 else []
    for i, truth in enumerate(truths, start=1):
        prefix = style.format(i=i, ordinal=ordinals[i - 1])
        text = _x_nodule(rng, truth)
        sentences.append(prefix + (text[0].lower() + text[1:] if prefix else text) + ".")
    if rng.random() < 0.3:
        sentences.append(_pick(rng, _X_OTHER))
    row = rng.randrange(count)
    truth = truths[row]
    if count > 1 and not style:
        truth = {f: truths[0][f] if all(t[f] == truths[0][f] for t in truths) else None
                 for f in FIELDS}
    return {"report": _case(rng, " ".join(sentences)), "nodule_id": str(row + 1),
            **{f: truth[f] for f in FIELDS}}


# -- round 3 templates: written after the third parser was frozen (held out for it), then
# -- used to correct it -----------------------------------------------------------------------

_Y_SIDE = {"R": ["right", "Right", "RIGHT"], "L": ["left", "Left", "LEFT"]}
_Y_THIRD_ADJ = {"upper": ["superior", "upper"], "middle": ["mid", "middle"],
                "lower": ["inferior", "lower"]}
_Y_THIRD_PHRASE = {"upper": ["toward the upper pole", "at the superior pole",
                             "in the upper third"],
                   "middle": ["in the mid portion", "in the middle third", "at the midpole"],
                   "lower": ["toward the lower pole", "at the inferior pole",
                             "in the lower third"]}
_Y_FRONT = {"front": ["anterior", "ventral"], "back": ["posterior", "dorsal"]}
_Y_COMPACT = {("R", "upper"): "RUP", ("R", "middle"): "RMP", ("R", "lower"): "RLP",
              ("L", "upper"): "LUP", ("L", "middle"): "LMP", ("L", "lower"): "LLP"}
_Y_CAPSULE = {"contact": ["Capsular contact: yes.", "The nodule abuts the thyroid capsule.",
                          "It is in contact with the capsule."],
              "no_contact": ["Capsular contact: no.", "The nodule is 3 mm from the capsule.",
                             "It does not contact the capsule."],
              "ete": ["Extrathyroidal extension is present.",
                      "There is extrathyroidal extension into the strap muscles."],
              "no_ete": ["Extrathyroidal extension: not identified.",
                         "No capsular disruption."],
              "contact_no_ete": ["The nodule abuts the thyroid capsule without "
                                 "extrathyroidal extension."]}
_Y_OTHER = ["The thyroid gland is normal in size with heterogeneous echotexture.",
            "Left level III lymph node with preserved fatty hilum.",
            "No abnormal cervical lymph nodes.", "Comparison is made with the prior study.",
            "Vascularity is not increased."]


def _y_nodule(rng: random.Random, truth: dict) -> str:
    side, third, front = truth["side"], truth["lobe_third"], truth["front_back"]
    size = f"{rng.randint(4, 25) / 10:.1f} x {rng.randint(3, 20) / 10:.1f} cm"
    depth = f"{_pick(rng, _Y_FRONT[front])} " if front else ""
    if side == "isthmus":
        text = f"A {depth}isthmic nodule measuring {size}"
    else:
        form = rng.randrange(5)
        name = _pick(rng, _Y_SIDE[side])
        if form == 0:
            where = (f" {_pick(rng, _Y_THIRD_PHRASE[third])}" if third else "")
            text = (f"Sonography demonstrates a {depth}hypoechoic solid nodule in the {name} "
                    f"lobe{where}, measuring {size}")
        elif form == 1:
            where = f", {_pick(rng, _Y_THIRD_PHRASE[third])}," if third else ""
            text = f"In the {name} lobe{where} there is a {depth}nodule of {size}"
        elif form == 2 and third:
            adjective = _pick(rng, _Y_THIRD_ADJ[third])
            text = f"{name.capitalize()} {adjective} {depth}thyroid nodule, {size}"
        elif form == 3 and third:
            text = f"{_Y_COMPACT[(side, third)]} {depth}nodule, {size}, TR4"
        else:
            where = f" {_pick(rng, _Y_THIRD_PHRASE[third])}" if third else ""
            text = f"A {size} {depth}nodule arises from the {name} lobe{where}"
    if truth["capsule"]:
        text += ". " + _pick(rng, _Y_CAPSULE[truth["capsule"]]).rstrip(".")
    return text


def _round3(rng: random.Random) -> dict:
    count = _pick(rng, [1, 1, 1, 2, 2, 3])
    truths = [_truth(rng) for _ in range(count)]
    style = _pick(rng, ["Nodule no. {i}: ", "Lesion {i}: ", "{nth} nodule: ", ""]) \
        if count > 1 else ""
    nths = ["1st", "2nd", "3rd"]
    sentences = [_pick(rng, _Y_OTHER)] if rng.random() < 0.5 else []
    for i, truth in enumerate(truths, start=1):
        sentences.append(style.format(i=i, nth=nths[i - 1]) + _y_nodule(rng, truth) + ".")
    if rng.random() < 0.3:
        sentences.append(_pick(rng, _Y_OTHER))
    row = rng.randrange(count)
    truth = truths[row]
    if count > 1 and not style:
        truth = {f: truths[0][f] if all(t[f] == truths[0][f] for t in truths) else None
                 for f in FIELDS}
    return {"report": _case(rng, " ".join(sentences)), "nodule_id": str(row + 1),
            **{f: truth[f] for f in FIELDS}}


# -- held-out templates: written after the fourth parser was frozen, never used to change it ---

_Z_SIDE = {"R": ["RIGHT LOBE", "Right lobe", "right thyroid lobe"],
           "L": ["LEFT LOBE", "Left lobe", "left thyroid lobe"]}
_Z_THIRD = {"upper": ["upper pole", "superior pole", "upper third"],
            "middle": ["mid pole", "middle third", "midportion"],
            "lower": ["lower pole", "inferior pole", "lower third"]}
_Z_FRONT = {"front": ["anterior", "anteriorly"], "back": ["posterior", "posteriorly"]}
_Z_CAPSULE = {"contact": ["The margin of the nodule abuts the capsule.", "Abuts capsule: yes.",
                          "It touches the thyroid capsule."],
              "no_contact": ["Abuts capsule: no.", "It is well away from the capsule.",
                             "It lies 4 mm from the capsule."],
              "ete": ["Extrathyroidal extension: yes.", "Frank extrathyroidal extension."],
              "no_ete": ["Capsule: intact.", "Extrathyroidal extension: no."],
              "contact_no_ete": ["It touches the thyroid capsule; extrathyroidal extension: "
                                 "no."]}
_Z_OTHER = ["Right lobe volume 8 mL, left lobe volume 7 mL.", "History: neck swelling.",
            "Technique: grayscale and color Doppler.", "Impression: see above."]


def _z_nodule(rng: random.Random, truth: dict, heading: bool) -> tuple[str, str]:
    """(heading, description) of one nodule; the heading names the lobe when ``heading``."""
    side, third, front = truth["side"], truth["lobe_third"], truth["front_back"]
    if side == "isthmus":
        head, where = "", "in the isthmus"
    elif heading:
        head, where = _pick(rng, _Z_SIDE[side]), ""
    else:
        head, where = "", f"in the {_pick(rng, _Z_SIDE[side]).lower()}"
    parts = [where] if where else []
    if third:
        parts.append(f"at the {_pick(rng, _Z_THIRD[third])}")
    if front:
        parts.append(_pick(rng, _Z_FRONT[front]))
    form = rng.randrange(3)
    size = f"{rng.randint(4, 25)} mm"
    if form == 0:
        text = f"A {size} hypoechoic nodule is identified {', '.join(parts)}".rstrip()
    elif form == 1:
        fields = [p.replace("in the ", "").replace("at the ", "") for p in parts]
        text = f"Location: {'; '.join(fields) or 'not stated'}. Size: {size}"
    else:
        text = f"Solid nodule ({size}) {' '.join(parts)}".rstrip()
    if truth["capsule"]:
        text += ". " + _pick(rng, _Z_CAPSULE[truth["capsule"]]).rstrip(".")
    return head, text


def _held_out(rng: random.Random) -> dict:
    count = _pick(rng, [1, 1, 1, 2, 2, 3])
    truths = [_truth(rng) for _ in range(count)]
    heading = rng.random() < 0.4
    style = _pick(rng, ["Nodule {i} of {n}: ", "(#{i}) ", "Nodule labeled {i}: "]) \
        if count > 1 else ""
    lines = [_pick(rng, _Z_OTHER)] if rng.random() < 0.5 else []
    last_head = None
    for i, truth in enumerate(truths, start=1):
        head, text = _z_nodule(rng, truth, heading)
        if head and head != last_head:
            lines.append(head)
            last_head = head
        lines.append(style.format(i=i, n=count) + text + ".")
    row = rng.randrange(count)
    return {"report": _case(rng, "\n".join(lines)), "nodule_id": str(row + 1),
            **{f: truths[row][f] for f in FIELDS}}
