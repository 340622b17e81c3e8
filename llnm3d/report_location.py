"""Where a nodule lies, read from a free-text thyroid ultrasound report (English).

:func:`parse_location` reads the side (right or left lobe, or the isthmus), the third of the
lobe (upper, middle, lower), the front or back half (anterior, posterior), and whether the
nodule touches the capsule or extends beyond it, from the phrasings of ACR TI-RADS and everyday
radiology reports: "Rt lobe, inf pole", "a 9 mm nodule in the lower third of the left lobe,
abutting the posterior capsule", "isthmic nodule ... no extrathyroidal extension". Each field
is None when the report does not say. No model, no download: rules over word patterns, so a
report gives the same answer on every machine.

How a report relates to a nodule
--------------------------------
A report may describe several nodules. It is cut into sentences (and a sentence naming two
nodules into one piece per nodule); a nodule's description is the piece that names it and the
sentences that follow until the next nodule, a heading of another lobe or a lymph node finding.
A numbered list item, a structured "Location:" field after a nodule that already has one, or
a label on its own ("Nodule B.") starts the next nodule; "The nodule ..." and "It ..." go on
describing the current one.
A heading such as "Right lobe:" or "Two nodules in the left lobe." gives the side to the
nodules after it that name none. Then:

1. a nodule numbered in the report ("nodule 2", "#2", "N2", "second nodule", a list item
   "2)") is the row's nodule when the number is its ``nodule_id``;
2. otherwise, a report describing one nodule describes the row's nodule;
3. otherwise (several unnumbered nodules), each field is the value all of them share, and None
   where they differ: the report cannot tell which one the row is.

What is ignored: negated findings ("no nodules in the left lobe"), lobes said to be normal,
lymph node findings ("level IV node on the right"), and words that are no location in context
("posterior acoustic shadowing", "anteroposterior diameter", "superior to the isthmus",
"inferior thyroid artery"). Within one nodule's description the first location word of each
kind wins ("isthmic nodule extending into the right lobe" is in the isthmus).

Capsule: ``capsule_contact`` is True for a nodule abutting, touching, bulging or breaching the
capsule, subcapsular, or with extrathyroidal extension; False for "no capsular contact",
"separate from the capsule", "3 mm from the capsule". ``extrathyroidal_extension`` is True or
False when the report says so ("no extrathyroidal extension", "capsule intact" are False). A
report that only denies extension says nothing about contact: a nodule can abut the capsule
without extending through it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from itertools import pairwise

import pandas as pd

SIDES = ("L", "R", "isthmus")
THIRDS = ("upper", "middle", "lower")
FRONT_BACK = ("front", "back")


@dataclass(frozen=True)
class ReportLocation:
    """A nodule's location as a report states it; each field None when it does not.

    Attributes
    ----------
    side : {"L", "R", "isthmus"} or None
    lobe_third : {"upper", "middle", "lower"} or None
    front_back : {"front", "back"} or None
        Anterior or posterior half of the lobe.
    capsule_contact : bool or None
    extrathyroidal_extension : bool or None
    evidence : str
        The words of the report the location was read from (the nodule's description), ""
        when the report names no location.
    """

    side: str | None = None
    lobe_third: str | None = None
    front_back: str | None = None
    capsule_contact: bool | None = None
    extrathyroidal_extension: bool | None = None
    evidence: str = ""


# -- word patterns (on lower-case text) ---------------------------------------------------------

# "R"/"L" alone mean a side before a location word ("R lobe", "L inf pole") ...
_LOCATION_AFTER = (r"(?=[.\-]?\s*(?:thyroid\s+)?(?:lobe|lobar|side|sided|upper|lower|mid|middle|"
                   r"inf|inferior|sup|superior|pole|post|posterior|ant|anterior|thyroid)\b)")
# ... or with a dot ("R. dorsal nodule"), in parentheses, or as the value of a "Side:" field.
_LETTER_SIDE = r"{0}\.(?=\s|$|[|,;)])|(?<=side:\s){0}|(?<=side:){0}|\({0}\)"
_SIDE_WORDS = {
    "R": rf"right|rt|r{_LOCATION_AFTER}|{_LETTER_SIDE.format('r')}",
    "L": rf"left|lt|l{_LOCATION_AFTER}|{_LETTER_SIDE.format('l')}",
    "isthmus": r"isthm(?:us|ic|al|ian)|isthmo\w*",
}
_THIRD_WORDS = {
    "upper": r"upper|superior(?:ly)?|sup|cranial(?:ly)?|cephalad|apex|apical|top",
    "middle": r"middle|mid|mid-?pole|mid-?portion|mid-?zone|mid-?lobe|mid-?lobar|interpolar|"
              r"mid-?third|midpolar",
    "lower": r"lower|inferior(?:ly)?|inf|caudal(?:ly)?|bottom|basal",
}
_FRONT_BACK_WORDS = {
    "front": r"anterior(?:ly)?|ant|ventral(?:ly)?|antero-?\w+|superficial|front",
    "back": r"posterior(?:ly)?|post|dorsal(?:ly)?|postero-?\w+|deep|back",
}
# Compact forms: "RUP" right upper pole, "LLP" left lower pole, "RMP"...
_COMPACT = re.compile(r"\b([rl])([uml])p\b")
_COMPACT_SIDE = {"r": "R", "l": "L"}
_COMPACT_THIRD = {"u": "upper", "m": "middle", "l": "lower"}

# A location word followed by these is no location of the nodule.
_NOT_LOCATION_AFTER = re.compile(
    r"\s*(?:to\b|thyroid\s+(?:arter|vein)|parathyroid|jugular|carotid|neck|limit|border of|"
    r"acoustic|shadow|enhancement|echo|wall of the|-posterior|-?op\b|-?operative|-?surg|"
    r"-?fna|-?biopsy|-?ablation|-?treatment|-?thyroidectomy|-?rai\b|of\s+the\s+(?:trachea|"
    r"carotid|neck))")
_NOT_LOCATION_BEFORE = re.compile(r"(?:in\s+|antero-?|-)$")

_NODULE = re.compile(r"\b(?:nodules?|nod\.|lesions?|mass(?:es)?|tumou?rs?)(?![\w-])")
_PLURAL = re.compile(r"(?:nodules|lesions|masses|tumou?rs)$")
_NEGATION = re.compile(
    r"\b(?:no|not|without|absent|negative\s+for|free\s+of|neither|nor|none|never|"
    r"doesn'?t|does\s+not|isn'?t|is\s+not|rather\s+than|instead\s+of|cannot|ruled\s+out)\b")
_SCOPE_BREAK = re.compile(r"[,;:()]|\b(?:but|however|although|though|yet|while|whereas|and|"
                          r"which|that)\b")
_POST_NEGATION = re.compile(
    r"^\s*(?:[:=]\s*|-\s+|(?:is|was|are|were)\s+)?(?:no\b|none\b|absent\b|negative\b|nil\b|"
    r"not\s+(?:seen|identified|present|evident|demonstrated|appreciated|visuali[sz]ed|noted|"
    r"detected)|excluded\b|ruled\s+out)")
_NOT_A_NODULE = re.compile(
    r"(?:\b(?:the\s+)?(?:contralateral\s+)?(?:right|left|rt|lt|r|l)\.?\s+(?:thyroid\s+)?lobe\s+"
    r"(?:is\s+|appears\s+|looks\s+|was\s+)?(?:normal|unremarkable|clear|homogeneous|"
    r"free\s+of|without|with\s+no|shows\s+no|contains\s+no|demonstrates\s+no|has\s+no)"
    r"|\b(?:no|without)\s+(?:(?!of\b|with\b|in\b)\w+\s+){0,3}?(?:nodules?|lesions?|masses)\b"
    r"|\bisthmus\s+(?:thickness|measur\w*|is\s+\d))"
    r"[^,;.]*")
_SURGERY = re.compile(r"\b(?:(?:hemi-?)?thyroidectomy|lobectomy|isthmusectomy|resected|"
                      r"removed)\b")
_CLAUSE_END = re.compile(r"[,;.\n]")
_LYMPH = re.compile(r"\b(?:lymph|lymphadenopathy|nodes?\b|level\s+(?:i{1,3}|iv|v|vi|[1-6])\b|"
                    r"cervical\s+chain)")
_LABEL = re.compile(r"(?:nodule|nod\.|lesion|mass)\s*(?:number|no\.?|nr\.?|#)?\s*\(?\w{0,3}\)?"
                    r"\s*[:\-\u2013]")
_LABEL_ONLY = re.compile(r"(?:\W*[a-z]+\s*:)?\W*(?:nodule|nod\.|lesion|mass)\s*"
                         r"(?:number|no\.?|nr\.?|#)?\s*\(?(\d{1,3}|[a-e])\)?\W*")
_LOCATION_FIELD = re.compile(r"\W*\(?\w{0,3}[.)]?\s*location\s*:")
_ANAPHORA = re.compile(r"\b(?:the|this|that|said|same|above)\s+$")
_JOIN = re.compile(r"\b(?:and|while|whereas|as\s+well\s+as|also|another)\b")
_BOUNDARY = re.compile(r",|;|\bwith\b|\band\b")

_NUMBER_WORDS = {"first": "1", "second": "2", "third": "3", "fourth": "4", "fifth": "5",
                 "sixth": "6", "1st": "1", "2nd": "2", "3rd": "3", "4th": "4", "5th": "5"}
_NUMBERED = re.compile(
    r"\b(?:nodule|nod\.|lesion|mass)\s*(?:number\s*|no\.?\s*|nr\.?\s*|#\s*)?(\d{1,3}|[a-e])\b"
    r"(?!\s*(?:[.,]\d|mm|cm|x\b|\u00d7))"
    r"|#\s*(\d{1,3})\b|\bn\s?(\d{1,2})\b"
    r"|(?<!upper )(?<!lower )(?<!middle )(?<!inferior )(?<!superior )"
    r"\b(first|second|third|fourth|fifth|sixth|1st|2nd|3rd|4th|5th)\s+(?:\w+\s+){0,2}?"
    r"(?:nodule|lesion|mass)")
_LIST_ITEM = re.compile(r"(?:^|\n|[.;:]\s)\s*\(?(\d{1,2})[.)]\s+(?=[a-z(#\d])")

_CAPSULE = r"(?:[a-z.-]+\s+){0,2}?capsule"
_CONTACT = re.compile(
    rf"\b(?:abut\w*|contact\w*|touch\w*|reach\w*|bulg\w*|adjacent|against|flush|extend\w*|"
    rf"in\s+contact|in\s+continuity|contiguous|(?:lies?|lying|located|situated|sits?)\s+"
    rf"(?:along|on|at)|along)\s+(?:(?:of|with|to|on|upon)\s+)?(?:the\s+)?{_CAPSULE}"
    r"|\bcapsul(?:e|ar)\s+(?:contact|abutment|bulg\w*|touching|involvement|abutting)"
    r"|\b(?:subcapsular|juxtacapsular|pericapsular)\b")
_CAPSULE_WORD = re.compile(r"capsul|thyroidal|\bete\b|invad")
_NO_CONTACT = re.compile(
    rf"(?:separate\w*|away|remote|distant|apart|clear|spared)\s+(?:from|of)\s+(?:the\s+)?"
    rf"{_CAPSULE}")
_DISTANCE = re.compile(rf"(\d+(?:\.\d+)?)\s*(?:mm|cm)\s+(?:away\s+)?from\s+(?:the\s+)?{_CAPSULE}")
_EXTENSION = re.compile(
    r"\bextra-?thyroidal(?:\s+(?:extension|spread|invasion|extent|growth))?|\bete\b|"
    r"\bextra-?capsular(?:\s+extension)?|"
    rf"(?:beyond|through|breach\w*|disrupt\w*|interrupt\w*|invad\w*|invasion\s+of|penetrat\w*|"
    rf"break\w*\s+through|transgress\w*)\s+(?:the\s+)?{_CAPSULE}|"
    r"\bcapsul(?:e|ar)\s+(?:breach|disruption|interruption|invasion|penetration|rupture)|"
    r"\bcapsule\s+(?:is\s+)?(?:breached|disrupted|interrupted|invaded|penetrated)|"
    r"\binvad\w*\s+(?:the\s+)?(?:strap|trachea|muscle|recurrent)")
_INTACT = re.compile(rf"\b{_CAPSULE}\s+(?:is\s+|appears\s+|remains\s+|was\s+)?(?:intact|preserved|"
                     r"continuous|not\s+(?:breached|disrupted|interrupted|involved))|"
                     rf"\b(?:intact|preserved|continuous)\s+(?:the\s+)?{_CAPSULE}")

_ABBREVIATION_DOT = re.compile(r"\b(?:rt|lt|r|l|inf|sup|ant|post|lat|med|no|nr|nod|approx|mid|"
                               r"e\.g|i\.e|vs|cf|dr|fig|ca)$")


def _alternatives(words: dict[str, str]) -> re.Pattern:
    """One pattern of whole words whose matched group is named by its value."""
    return re.compile("|".join(rf"(?P<{key}>(?<![\w-])(?:{pattern})(?!\w))"
                               for key, pattern in words.items()))


_SIDE = _alternatives(_SIDE_WORDS)
_THIRD = _alternatives(_THIRD_WORDS)
_FRONT = _alternatives(_FRONT_BACK_WORDS)
_GROUP_VALUE = {"R": "R", "L": "L", "isthmus": "isthmus", **{t: t for t in THIRDS},
                **{f: f for f in FRONT_BACK}}


def _group_value(match: re.Match[str]) -> str:
    """The value of the location word a match of :func:`_alternatives` found."""
    # Every alternative is a named group, so a match always has a last group.
    assert match.lastgroup is not None
    return _GROUP_VALUE[match.lastgroup]


# -- text pieces --------------------------------------------------------------------------------

@dataclass
class _Piece:
    """A span of the report: a sentence, or one nodule's part of a sentence."""

    start: int
    end: int
    number: str | None = None


def _lower(text: str) -> str:
    """Lower case, one character for one (so offsets stay those of the report)."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def _sentences(text: str) -> list[_Piece]:
    """Sentence spans: cut at . ; ! ? and line breaks, not at decimal points, the dot of an
    abbreviation ("inf. pole") or inside parentheses ("(apex; posterior)"); a numbered list
    item ("2) right lobe ...") starts a sentence carrying its number."""
    items = {m.start(1): m.group(1) for m in _LIST_ITEM.finditer(text)}
    item_ends = {start + len(number) for start, number in items.items()}
    cuts = [0]
    depth = 0
    for match in re.finditer(r"[.;!?\n()]", text):
        i = match.start()
        depth = max(0, depth + {"(": 1, ")": -1}.get(text[i], 0))
        if text[i] in "()" or (depth and text[i] != "\n"):
            continue
        if text[i] == "." and (
                i in item_ends
                or (0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit())
                or _abbreviation_dot(text, i)):
            continue
        cuts.append(i + 1)
    cuts.extend(i - (1 if text[i - 1:i] == "(" else 0) for i in items)
    cuts = sorted(set(cuts + [len(text)]))
    pieces = []
    for start, end in pairwise(cuts):
        chunk = text[start:end]
        if chunk.strip(" .;!?\n\t"):
            first = start + len(chunk) - len(chunk.lstrip())
            number = items.get(first + (1 if text[first:first + 1] == "(" else 0))
            pieces.append(_Piece(start, end, number))
    return pieces


def _abbreviation_dot(text: str, i: int) -> bool:
    """Whether the dot at ``i`` ends an abbreviation inside a sentence ("inf. pole", "nodule
    no. 2") rather than the sentence ("capsular contact: no. Nodule 2: ...")."""
    match = _ABBREVIATION_DOT.search(text[max(0, i - 6):i])
    if not match:
        return False
    if match.group() in ("no", "nr"):
        return bool(re.match(r"\s*#?\d+(?![a-z])", text[i + 1:]))
    return not _LABEL.match(text[i + 1:].lstrip())


def _nodule_mentions(text: str, piece: _Piece, masked: str) -> tuple[list[int], bool]:
    """Starts of the singular, not negated nodule mentions of a piece, and whether it mentions
    nodules in the plural (a heading such as "two nodules in the right lobe")."""
    singular, plural = [], False
    for match in _NODULE.finditer(masked, piece.start, piece.end):
        if _negated(masked, match.start(), piece.start):
            continue
        if _PLURAL.search(match.group()):
            plural = True
        else:
            singular.append(match.start())
    return singular, plural


def _separate_nodules(text: str, starts: list[int]) -> list[int]:
    """The mentions that start another nodule: a mention right after a label ("Nodule 2: a
    9 mm nodule", "First nodule: solid, hypoechoic nodule") or with no comma or "and" since
    the previous one names the same nodule."""
    kept = starts[:1]
    for start in starts[1:]:
        between = text[kept[-1]:start]
        label = _LABEL.match(between)
        if not label and (_JOIN.search(between) or "," in between or ";" in between):
            kept.append(start)
    return kept


def _split_nodules(text: str, piece: _Piece, starts: list[int]) -> list[_Piece]:
    """Cut a sentence naming several nodules into one piece per nodule, at the last "and",
    "while", "whereas" or comma before each nodule after the first (before the location
    words that come ahead of the noun: "..., and in the left lower pole a 5 mm nodule")."""
    cuts = [piece.start]
    for previous, start in pairwise(starts):
        between = text[previous:start]
        joins = [m for m in re.finditer(rf"{_JOIN.pattern}|[,;]", between)]
        words = [m for m in joins if m.group()[0].isalpha()]
        chosen = words[-1] if words else joins[-1] if joins else None
        cuts.append(previous + chosen.start() if chosen else start)
    cuts.append(piece.end)
    return [_Piece(a, b, piece.number if i == 0 else None)
            for i, (a, b) in enumerate(pairwise(cuts))]


def _negated(text: str, position: int, floor: int) -> bool:
    """Whether a negation word governs the words at ``position``: within the five words before
    it, with no comma, "but", "and" ... in between."""
    before = text[floor:position]
    breaks = list(_SCOPE_BREAK.finditer(before))
    if breaks:
        before = before[breaks[-1].end():]
    words = before.split()[-5:]
    return bool(_NEGATION.search(" ".join(words)))


def _mask(text: str, start: int, end: int) -> str:
    return text[:start] + " " * (end - start) + text[end:]


def _masked(text: str) -> str:
    """The report with what locates no nodule blanked out: lobes said to be normal, negated
    nodules ("no nodules in the left lobe"), isthmus measurements, past surgery ("status post
    left hemithyroidectomy") and lymph node findings (from the word before the finding's clause to
    the end of the clause)."""
    for match in _NOT_A_NODULE.finditer(text):
        text = _mask(text, match.start(), match.end())
    for match in _SURGERY.finditer(text):
        head = text[:match.start()]
        begin = max(head.rfind(c) for c in ",;.\n") + 1
        end = _CLAUSE_END.search(text, match.end())
        text = _mask(text, begin, end.start() if end else len(text))
    for match in _LYMPH.finditer(text):
        head = text[:match.start()]
        starts = [m.end() for m in _BOUNDARY.finditer(head)] + [
            max(head.rfind("."), head.rfind("\n")) + 1]
        begin = max(starts) if starts else 0
        end = _CLAUSE_END.search(text, match.end())
        text = _mask(text, begin, end.start() if end else len(text))
    return text


# -- reading a piece ----------------------------------------------------------------------------

def _first(pattern: re.Pattern, text: str, pieces: list[_Piece]) -> str | None:
    """The value of the first word of ``pattern`` in the pieces that is a location in
    context, or None."""
    for piece in pieces:
        for match in pattern.finditer(text, piece.start, piece.end):
            if (_NOT_LOCATION_AFTER.match(text, match.end())
                    or _NOT_LOCATION_BEFORE.search(text[max(0, match.start() - 7):match.start()])):
                continue
            return _group_value(match)
    return None


def _compact(text: str, pieces: list[_Piece]) -> tuple[str | None, str | None]:
    for piece in pieces:
        match = _COMPACT.search(text, piece.start, piece.end)
        if match:
            return _COMPACT_SIDE[match.group(1)], _COMPACT_THIRD[match.group(2)]
    return None, None


def _capsule(text: str, pieces: list[_Piece]) -> tuple[bool | None, bool | None]:
    """(capsule contact, extrathyroidal extension) from the first statement of each."""
    contact_events, extension_events = [], []
    for piece in pieces:
        # Every capsule statement holds one of these words; most pieces hold none.
        if not _CAPSULE_WORD.search(text, piece.start, piece.end):
            continue

        def stated(match: re.Match, piece: _Piece = piece) -> bool:
            after = text[match.end():min(piece.end, match.end() + 30)]
            return not (_negated(text, match.start(), piece.start) or _POST_NEGATION.match(after))

        for match in _CONTACT.finditer(text, piece.start, piece.end):
            contact_events.append((match.start(), stated(match)))
        for match in _NO_CONTACT.finditer(text, piece.start, piece.end):
            contact_events.append((match.start(), not stated(match)))
        for match in _DISTANCE.finditer(text, piece.start, piece.end):
            contact_events.append((match.start(), float(match.group(1)) == 0))
        for match in _EXTENSION.finditer(text, piece.start, piece.end):
            extension_events.append((match.start(), stated(match)))
        for match in _INTACT.finditer(text, piece.start, piece.end):
            extension_events.append((match.start(), not stated(match)))
    extension = min(extension_events)[1] if extension_events else None
    contact = min(contact_events)[1] if contact_events else None
    if contact is None and extension:
        contact = True
    return contact, extension


def _read(text: str, pieces: list[_Piece], context_side: str | None) -> ReportLocation:
    compact_side, compact_third = _compact(text, pieces)
    side = _first(_SIDE, text, pieces) or compact_side or context_side
    third = _first(_THIRD, text, pieces) or compact_third
    contact, extension = _capsule(text, pieces)
    return ReportLocation(side, third, _first(_FRONT, text, pieces), contact, extension)


# -- the report ---------------------------------------------------------------------------------

@dataclass
class _Nodule:
    pieces: list[_Piece]
    context_side: str | None
    number: str | None


def _number(text: str, piece: _Piece) -> str | None:
    match = _NUMBERED.search(text, piece.start, piece.end)
    if match:
        value = next(g for g in match.groups() if g)
        return _NUMBER_WORDS.get(value, value)
    return piece.number


def _continues(masked: str, current: _Nodule | None, sides: set[str]) -> bool:
    """Whether a sentence naming ``sides`` goes on describing the current nodule (one whose
    side is not known yet, or is among them)."""
    if current is None:
        return False
    return _read(masked, current.pieces, current.context_side).side in (None, *sides)


def _starts_nodule(text: str, masked: str, piece: _Piece, current: _Nodule | None) -> bool:
    """Whether a piece without a nodule's name starts the description of another nodule: a
    numbered list item, or a structured "Location:" field when the current nodule already
    has a location."""
    if piece.number is not None:
        return True
    if not _LOCATION_FIELD.match(text, piece.start):
        return False
    return current is None or _read(masked, current.pieces, None) != ReportLocation()


def _describe(text: str, masked: str) -> list[_Nodule]:
    """The nodules a report describes (``masked``: the report through :func:`_masked`), each
    with its pieces and the side of the heading above it."""
    nodules: list[_Nodule] = []
    current: _Nodule | None = None
    context_side = None
    label = None
    for sentence in _sentences(text):
        only_label = _LABEL_ONLY.fullmatch(text, sentence.start, sentence.end)
        if only_label:
            # "Nodule B." alone: the number of the description that follows.
            label = only_label.group(1)
            continue
        if label is not None:
            sentence.number, label = sentence.number or label, None
        singular, plural = _nodule_mentions(text, sentence, masked)
        singular = _separate_nodules(text, singular)
        pieces = _split_nodules(text, sentence, singular) if len(singular) > 1 else [sentence]
        if plural and singular:
            # "Two nodules in the right lobe: an upper pole nodule and ...": the words before
            # the first nodule head the sentence.
            heading = {_group_value(m)
                       for m in _SIDE.finditer(masked, sentence.start, singular[0])}
            context_side = heading.pop() if len(heading) == 1 else context_side
        for piece in pieces:
            mentions = [s for s in singular if piece.start <= s < piece.end]
            if current is not None and _number(text, piece) is None:
                # "The nodule abuts the capsule": the nodule just described.
                mentions = [s for s in mentions if not _ANAPHORA.search(text, 0, s)]
            sides = {_group_value(m)
                     for m in _SIDE.finditer(masked, piece.start, piece.end)}
            if _LYMPH.search(text, piece.start, piece.end) and not mentions:
                current = None
            elif mentions or _starts_nodule(text, masked, piece, current):
                current = _Nodule([piece], context_side, _number(text, piece))
                nodules.append(current)
            elif plural or (sides and re.search(r"\blobes?\b", masked[piece.start:piece.end])
                            and not _continues(masked, current, sides)):
                # A heading: the side of the nodules described after it.
                context_side = next(iter(sides)) if len(sides) == 1 else None
                current = None
            elif current is not None:
                current.pieces.append(piece)
    return nodules


def parse_location(report: str | None, nodule_id: str | int | None = None) -> ReportLocation:
    """Read a nodule's location from a report.

    Parameters
    ----------
    report : str or None
        Free-text report (anything not a string, such as NaN, is a missing report).
    nodule_id : str or int, optional
        The nodule the report is read for: picks the nodule the report numbers so (see the
        module docstring for how a report with several nodules is read).

    Returns
    -------
    ReportLocation
        Each field None where the report does not say.
    """
    if not isinstance(report, str) or not report.strip():
        return ReportLocation()
    source = unicodedata.normalize("NFKC", report)
    text = _lower(source)
    masked = _masked(text)
    nodules = _describe(text, masked)
    if not nodules:
        # No nodule named ("Right lower pole, TR4, 9 mm"): the whole report describes it.
        pieces = [p for p in _sentences(text) if not _LYMPH.search(text, p.start, p.end)]
        nodules = [_Nodule(pieces, None, None)] if pieces else []
    wanted = None if nodule_id is None else str(nodule_id).strip().lower()
    chosen = [n for n in nodules if wanted is not None and n.number == wanted]
    if not chosen:
        chosen = nodules
    readings = [_read(masked, n.pieces, n.context_side) for n in chosen]
    fields = {}
    for name in ("side", "lobe_third", "front_back", "capsule_contact",
                 "extrathyroidal_extension"):
        values = {getattr(r, name) for r in readings}
        fields[name] = values.pop() if len(values) == 1 else None
    said = any(value is not None for value in fields.values())
    return ReportLocation(**fields, evidence=_evidence(source, chosen) if said else "")


def _evidence(source: str, nodules: list[_Nodule]) -> str:
    """The words of the nodules' pieces as the report wrote them, whitespace collapsed."""
    return " … ".join(" ".join(source[p.start:p.end].split()).strip(" .;,")
                      for n in nodules for p in n.pieces)


# -- manifests ----------------------------------------------------------------------------------

LOCATION_COLUMNS = ("side", "lobe_third", "front_back")
# Where a manifest row's location came from (see fill_location_from_reports).
PROVENANCE_COLUMNS = ("location_from_report", "location_conflicts", "location_evidence")
_MANIFEST_VALUES = {
    "side": {"l": "L", "r": "R"},
    "lobe_third": {"upper": "upper", "middle": "middle", "lower": "lower"},
    "front_back": {"front": "front", "anterior": "front", "back": "back", "posterior": "back"},
}


def fill_location_from_reports(table: pd.DataFrame) -> pd.DataFrame:
    """Fill a manifest's empty ``side``, ``lobe_third`` and ``front_back`` from its reports.

    A value written in the manifest always wins; the report only fills empty cells (a side
    only with L or R: an isthmus nodule cannot be placed on a lobe), and nothing is taken from
    a report that contradicts the manifest's side (it describes another nodule, or one of the
    two is wrong: registration warns). Each row's report is read for the row's ``nodule_id``
    (:func:`parse_location`).

    Parameters
    ----------
    table : pandas.DataFrame
        Manifest rows (strings); ``report`` and ``nodule_id`` are read when present.

    Returns
    -------
    pandas.DataFrame
        The table with the cells filled, ``lobe_third`` and ``front_back`` added when missing,
        and four columns saying where each row's location came from:

        - ``location_source``: ``manifest``, ``report``, ``manifest+report`` (some of each),
          or empty when the row has no location;
        - ``location_from_report``: the columns filled from the report (``side,lobe_third``);
        - ``location_conflicts``: the columns whose manifest value the report contradicts
          (the manifest's value is kept; registration warns);
        - ``location_evidence``: the report's words the location was read from.
    """
    table = table.copy()
    for column in ("lobe_third", "front_back"):
        if column not in table:
            table[column] = ""
    reports = table["report"] if "report" in table else pd.Series("", index=table.index)
    nodules = table["nodule_id"] if "nodule_id" in table else pd.Series("", index=table.index)
    readings: dict[tuple, ReportLocation] = {}
    columns: dict[str, list[str]] = {name: [] for name in (
        "location_source", "location_from_report", "location_conflicts", "location_evidence")}
    for index in table.index:
        key = (reports[index], str(nodules[index]))
        if key not in readings:
            readings[key] = parse_location(*key)
        found = readings[key]
        given = [c for c in LOCATION_COLUMNS if str(table.at[index, c]).strip()]
        conflicts = [c for c in given if getattr(found, c) is not None and _MANIFEST_VALUES[c]
                     .get(str(table.at[index, c]).strip().lower()) != getattr(found, c)]
        derived = []
        # A report that puts the nodule on another side describes another nodule, or is
        # wrong: nothing is taken from it.
        if "side" not in conflicts:
            for column in LOCATION_COLUMNS:
                said = getattr(found, column)
                if column not in given and said is not None and said != "isthmus":
                    table.at[index, column] = said
                    derived.append(column)
        source = ("manifest+report" if derived and given else "report" if derived
                  else "manifest" if given else "")
        columns["location_source"].append(source)
        columns["location_from_report"].append(",".join(derived))
        columns["location_conflicts"].append(",".join(conflicts))
        columns["location_evidence"].append(found.evidence if derived or conflicts else "")
    for name, values in columns.items():
        table[name] = values
    return table
