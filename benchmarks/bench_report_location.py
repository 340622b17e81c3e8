"""Location from the report: accuracy of :mod:`llnm3d.report_location` against known truth.

Usage::

    python benchmarks/bench_report_location.py --work DIR [--patients 300 --seed 0]
        [--corpus 1000]

Reads these sets of reports and prints one Markdown table per set:

- the phantom's reports (``llnm3d phantom`` into ``DIR/phantom``, made or reused), one per
  nodule, against ``truth.csv`` (side, lobe third; phantom reports state neither front/back
  nor capsule contact, so those rows count what the parser claimed without being told);
- the phrasings of ``benchmarks/report_corpus.py``: ``development`` (written with the
  parser), ``round1`` to ``round3`` (each held out for the parser of its time, then used to
  correct it) and ``held_out`` (written after the current parser was frozen, never used to
  change it).

Per field: ``n`` reports that state it, accuracy over them, the unknown rate (the parser said
None), and how often it gave a value for a report that does not state the field. And the
parsing speed.
"""

import argparse
import time
from pathlib import Path

import pandas as pd
from report_corpus import FIELDS, corpus

from llnm3d.phantom import make_phantom
from llnm3d.report_location import THIRDS, parse_location


def phantom_items(folder: Path, patients: int, seed: int) -> list[dict]:
    """One item per phantom nodule: its report and the truth it states."""
    phantom = make_phantom(folder, patients, seed=seed, workers=2, progress=False)
    truth = phantom.truth.assign(nodule_id=phantom.truth["nodule_id"].astype(str))
    rows = phantom.manifest.drop_duplicates(["patient_id", "nodule_id"]).astype(
        {"nodule_id": str}).merge(truth, on=["patient_id", "nodule_id"], suffixes=("", "_true"))
    return [{"report": row["report"], "nodule_id": row["nodule_id"], "side": row["side_true"],
             "lobe_third": row["lobe_third"] if row["lobe_third"] in THIRDS else None,
             "front_back": None, "capsule_contact": None} for _, row in rows.iterrows()]


def score(items: list[dict]) -> tuple[pd.DataFrame, float]:
    """Accuracy table of the parser on items, and reports parsed per second."""
    start = time.perf_counter()
    found = [parse_location(item["report"], item["nodule_id"]) for item in items]
    rate = len(items) / (time.perf_counter() - start)
    rows = []
    for field in FIELDS:
        truth = [item[field] for item in items]
        said = [getattr(f, field) for f in found]
        stated = [(t, s) for t, s in zip(truth, said, strict=True) if t is not None]
        unstated = [s for t, s in zip(truth, said, strict=True) if t is None]
        rows.append({
            "field": field, "n": len(stated),
            "accuracy": (sum(t == s for t, s in stated) / len(stated)) if stated else None,
            "unknown rate": (sum(s is None for _, s in stated) / len(stated)) if stated else None,
            "n not stated": len(unstated),
            "said when not stated": (sum(s is not None for s in unstated) / len(unstated))
            if unstated else None})
    return pd.DataFrame(rows), rate


def _markdown(table: pd.DataFrame) -> str:
    def cell(value):
        if value is None or value != value:
            return "-"
        return f"{value:.1%}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in
              table.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", type=int, default=1000, help="reports per template set")
    args = parser.parse_args()
    sets = {f"phantom ({args.patients} patients, seed {args.seed})":
            phantom_items(args.work / "phantom", args.patients, args.seed),
            **{f"{kind} phrasings": corpus(kind, args.corpus, args.seed)
               for kind in ("development", "round1", "round2", "round3", "held_out")}}
    for name, items in sets.items():
        table, rate = score(items)
        print(f"\n### {name}: {len(items)} reports, {rate:,.0f} reports/s\n")
        print(_markdown(table))


if __name__ == "__main__":
    main()
