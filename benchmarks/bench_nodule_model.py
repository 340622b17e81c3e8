"""Recovery study of the nodule-level logistic models (llnm3d.statistics.nodule_model) on the
bundled phantom risk spec.

The phantom's outcomes are drawn from a known logistic model (``risk_spec_default.json``: a
step in capsule distance at 1.0 and 2.5 mm, lobe third, size, age, sex and four morphology
terms). For each seed, :func:`llnm3d.phantom.sample_truth` draws the true covariates and
outcomes (no images; the capsule distances are the true ones, not registered ones). Two
models are fitted:

``spec``
    the spec's own bins (0, 1, 2.5 mm, open) and every planted covariate, morphology
    included: the correctly specified model, which should recover the planted log odds ratios
    (estimate, and the 95 % interval's coverage);
``default``
    what ``nodule_model_table`` fits by default (bins of DEFAULT_BINS_MM, region, size, age,
    sex): the morphology terms are not observed, so the capsule odds ratios move towards 1
    (omitted covariates and the non-collapsibility of odds ratios), which this measures.

Besides the phantom's own outcomes, each seed's outcomes are redrawn ``--redraws`` times from
the true risk of each nodule (covariates fixed), so coverage is measured over many fits.

With ``--pipeline N``, one rendered phantom of N patients is also registered (nodule masks,
as ``llnm3d register`` does for a user), and the default model is fitted twice to the same
nodules and outcomes: with the true covariates (capsule distance, region, size) and with the
registered ones from ``qc.csv``; the difference is what registration error does to the table.

Usage::

    python benchmarks/bench_nodule_model.py --patients 2000 --seeds 0,1,2,3,4 --redraws 30
    python benchmarks/bench_nodule_model.py --pipeline 600 --work /tmp/nodule-model

Writes ``benchmarks/results/nodule_model/``: ``fits.csv`` (one row per fit, term and level)
and ``summary.{csv,md}``; with ``--pipeline``, ``pipeline.{csv,md}``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd

from llnm3d.phantom import RiskSpec, sample_truth
from llnm3d.registration import load_registered
from llnm3d.statistics.nodule_model import (
    COVARIATE_TERMS,
    Z_95,
    Term,
    bin_name,
    fit_model,
    nodule_model_table,
    prepare_nodules,
)
from llnm3d.statistics.tables import DEFAULT_BINS_MM

ROOT = Path(__file__).resolve().parent
# Spec covariates that nodule_model_table adjusts for, by its covariate name.
OBSERVED = {"lobe_third": "region", "diameter_mm": "size", "age_years": "age", "sex": "sex"}


def spec_terms(spec: RiskSpec) -> tuple[list[Term], np.ndarray]:
    """The correctly specified model's terms (capsule bins first) and its bin edges (mm)."""
    terms, edges = [], None
    for term in spec.data["terms"]:
        covariate = term["covariate"]
        if term["type"] == "step":
            edges = np.array([0.0, *term["thresholds"], np.inf])
            names = tuple(bin_name(a, b) for a, b in pairwise(edges))
            terms.insert(0, Term("capsule_distance", "capsule_bin", names,
                                 reference=names[::-1], required=True))
        elif covariate in OBSERVED:
            terms.append(COVARIATE_TERMS[OBSERVED[covariate]])
        elif term["type"] == "categorical":
            levels = tuple(term["coefficients"])
            terms.append(Term(covariate, covariate, levels, reference=levels))
        else:
            terms.append(Term(covariate, covariate, contrast="per 1 unit"))
    return terms, edges


def planted(spec: RiskSpec, terms: list[Term], edges_mm, references: dict[str, str]) -> dict:
    """Planted log odds ratio of every (term, level) of ``terms`` against ``references``.

    A bin's value is the spec's step at the bin's lower edge (mm), exact when the spec's
    thresholds are among the bin edges (true of the spec's own bins and of DEFAULT_BINS_MM).
    Spec terms the model lacks (morphology in the default model) are skipped.
    """
    by_name = {t.name: t for t in terms}
    values = {}
    for term in spec.data["terms"]:
        name = OBSERVED.get(term["covariate"], term["covariate"])
        if term["type"] == "step":
            steps = np.asarray(term["coefficients"], float)
            step = {bin_name(low, high): steps[np.searchsorted(term["thresholds"], low,
                                                               side="right")]
                    for low, high in pairwise(edges_mm)}
            reference = step[references["capsule_distance"]]
            values.update({("capsule_distance", level): value - reference
                           for level, value in step.items()})
        elif name not in by_name:
            continue
        elif term["type"] == "categorical":
            coefficients = term["coefficients"]
            reference = coefficients.get(references[name], 0.0)
            values.update({(name, level): coefficients.get(level, 0.0) - reference
                           for level in by_name[name].levels})
        else:
            values[name, ""] = term["coefficient"] * by_name[name].per
    return values


def observed_frame(truth: pd.DataFrame, edges_mm: np.ndarray, extra: list[str]) -> pd.DataFrame:
    """The prepared nodule table of a truth table, with the morphology columns ``extra``."""
    nodules = truth.rename(columns={"age_years": "age"})
    frame = prepare_nodules(nodules, edges_mm)
    for column in extra:
        frame[column] = truth[column].to_numpy()
    return frame


def estimates(table: pd.DataFrame) -> pd.DataFrame:
    """Log odds ratio and standard error of every estimated row of a model table."""
    rows = table[table["status"] == "estimated"]
    return pd.DataFrame({"model": rows["model"], "term": rows["term"], "level": rows["level"],
                         "contrast": rows["contrast"], "log_or": np.log(rows["odds_ratio"]),
                         "se": np.log(rows["ci_high"] / rows["ci_low"]) / (2 * Z_95)})


def references(table: pd.DataFrame) -> dict[str, str]:
    rows = table[table["status"] == "reference"]
    return dict(zip(rows["term"], rows["level"], strict=True))


def study(args) -> tuple[pd.DataFrame, dict]:
    spec = RiskSpec.default()
    terms, spec_edges = spec_terms(spec)
    extra = [t.column for t in terms if t.column in ("echogenicity", "margin",
                                                     "taller_than_wide", "microcalcification")]
    fits, planted_values, timing = [], {}, {"sample_truth_s": 0.0, "fits": 0, "fit_s": 0.0}
    for seed in args.seeds:
        start = time.perf_counter()
        truth = sample_truth(args.patients, seed, spec, workers=1)
        timing["sample_truth_s"] += time.perf_counter() - start
        spec_frame = observed_frame(truth, spec_edges, extra)
        rng = np.random.default_rng([seed, 1])
        for replicate in range(args.redraws + 1):
            # Replicate 0 is the phantom's own outcomes; the others redraw them from the risk.
            label = (truth["label"].to_numpy() if replicate == 0 else
                     (rng.random(len(truth)) < truth["risk"].to_numpy()).astype(int))
            start = time.perf_counter()
            spec_table, _ = fit_model("spec", spec_frame.assign(label=label.astype(float)),
                                      terms)
            default_table, _ = nodule_model_table(truth.rename(columns={"age_years": "age"})
                                                  .assign(label=label))
            timing["fit_s"] += time.perf_counter() - start
            timing["fits"] += 1
            for model, table in (("spec", spec_table),
                                 ("default", default_table[default_table["model"]
                                                           == "capsule_bins"])):
                key = model, tuple(sorted(references(table).items()))
                if key not in planted_values:
                    model_terms, edges = ((terms, spec_edges) if model == "spec" else
                                          (list(COVARIATE_TERMS.values()),
                                           np.asarray(DEFAULT_BINS_MM)))
                    planted_values[key] = planted(spec, model_terms, edges, references(table))
                found = estimates(table).assign(model=model, seed=seed, replicate=replicate)
                found["planted"] = [planted_values[key].get((t, lv), np.nan)
                                    for t, lv in zip(found["term"], found["level"], strict=True)]
                fits.append(found)
            for model in ("capsule_trend", "capsule_continuous"):
                fits.append(estimates(default_table[default_table["model"] == model])
                            .assign(model=f"default {model}", seed=seed,
                                    replicate=replicate, planted=np.nan))
    return pd.concat(fits, ignore_index=True), timing


def summarise(fits: pd.DataFrame) -> pd.DataFrame:
    """Per model, term and level: planted log OR, mean estimate, empirical SD, mean SE,
    coverage of the 95 % interval, and the mean estimate on the phantom's own outcomes."""
    fits = fits.assign(covered=(fits["log_or"] - Z_95 * fits["se"] <= fits["planted"])
                       & (fits["planted"] <= fits["log_or"] + Z_95 * fits["se"]))
    groups = fits.groupby(["model", "term", "level", "contrast"], sort=False)
    summary = groups.agg(fits=("log_or", "size"), planted=("planted", "first"),
                         mean_log_or=("log_or", "mean"), sd_log_or=("log_or", "std"),
                         mean_se=("se", "mean"), coverage=("covered", "mean")).reset_index()
    own = fits[fits["replicate"] == 0].groupby(["model", "term", "level", "contrast"])
    summary = summary.join(own["log_or"].mean().rename("phantom_log_or"),
                           on=["model", "term", "level", "contrast"])
    summary["ratio_to_planted"] = summary["mean_log_or"] / summary["planted"]
    summary.loc[summary["planted"].isna(), "coverage"] = np.nan
    return summary


def markdown(summary: pd.DataFrame, args, timing: dict) -> str:
    lines = [f"{args.patients} patients x seeds {','.join(map(str, args.seeds))}; "
             f"{args.redraws} outcome redraws per seed; {timing['fits']} fits of both models in "
             f"{timing['fit_s']:.1f} s, sample_truth {timing['sample_truth_s']:.0f} s", "",
             "| model | term | level | contrast | fits | planted log OR | mean estimate | SD | "
             "mean SE | 95 % coverage | estimate/planted | phantom's own outcomes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in summary.itertuples():
        lines.append(
            f"| {row.model} | {row.term} | {row.level} | {row.contrast} | {row.fits} | "
            f"{_fmt(row.planted)} | "
            f"{row.mean_log_or:.3f} | {row.sd_log_or:.3f} | {row.mean_se:.3f} | "
            f"{_fmt(row.coverage, '.2f')} | {_fmt(row.ratio_to_planted, '.2f')} | "
            f"{_fmt(row.phantom_log_or)} |")
    return "\n".join(lines) + "\n"


def _fmt(value, spec=".3f"):
    return "" if pd.isna(value) else format(value, spec)


def pipeline(patients: int, work: Path, seed: int = 7) -> tuple[pd.DataFrame, str]:
    """The default model on true and on registered covariates of one rendered phantom."""
    phantom, registered = work / "phantom", work / "registered"
    if not (phantom / "truth.csv").exists():
        subprocess.run([sys.executable, "-m", "llnm3d", "phantom", "--out", str(phantom),
                        "--patients", str(patients), "--seed", str(seed), "--workers", "1"],
                       check=True)
    if not (registered / "register.json").exists():
        # Exit code 1 (some nodules failed) still leaves a complete QC table.
        subprocess.run([sys.executable, "-m", "llnm3d", "register", "--manifest",
                        str(phantom / "manifest.csv"), "--out", str(registered),
                        "--workers", "1"], check=False)
    truth = pd.read_csv(phantom / "truth.csv", dtype={"patient_id": str})
    qc = load_registered(registered).qc
    qc = qc[qc["status"] != "failed"].assign(nodule_id=lambda t: t["nodule_id"].astype(int))
    both = qc.merge(truth, on=["patient_id", "nodule_id"], suffixes=("", "_true"))
    true_covariates = both.assign(
        capsule_distance_mm=both["capsule_distance_mm_true"], region=both["region_true"],
        diameter_mm=both["diameter_mm_true"], label=both["label_true"])
    tables = []
    for source, nodules in (("true covariates", true_covariates),
                            ("registered covariates", both.assign(label=both["label_true"]))):
        table, _ = nodule_model_table(nodules)
        tables.append(estimates(table).assign(source=source))
    paired = tables[0].merge(tables[1], on=["model", "term", "level"],
                             suffixes=("_true", "_registered"))
    error = (both["capsule_distance_mm"] - both["capsule_distance_mm_true"]).abs()
    header = (f"{patients} patients, seed {seed}: {len(both)} registered nodules of "
              f"{len(truth)}; capsule distance error |registered - true| median "
              f"{error.median():.2f} mm, 90th percentile {error.quantile(0.9):.2f} mm; region "
              f"agreement {np.mean(both['region'] == both['region_true']):.1%}")
    return paired, header


def pipeline_markdown(paired: pd.DataFrame, header: str) -> str:
    lines = [header, "", "| model | term | level | log OR, true covariates (SE) | "
             "log OR, registered (SE) | registered/true |", "|---|---|---|---|---|---|"]
    for row in paired.itertuples():
        lines.append(f"| {row.model} | {row.term} | {row.level} | {row.log_or_true:.3f} "
                     f"({row.se_true:.3f}) | {row.log_or_registered:.3f} "
                     f"({row.se_registered:.3f}) | "
                     f"{row.log_or_registered / row.log_or_true:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")],
                        default=[0, 1, 2, 3, 4])
    parser.add_argument("--redraws", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "nodule_model")
    parser.add_argument("--pipeline", type=int, default=0,
                        help="patients of the rendered and registered phantom (0: none)")
    parser.add_argument("--work", type=Path, help="folder for the --pipeline phantom")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.pipeline:
        paired, header = pipeline(args.pipeline, args.work)
        paired.to_csv(args.out / "pipeline.csv", index=False)
        text = pipeline_markdown(paired, header)
        (args.out / "pipeline.md").write_text(text)
        print(text)
        return
    fits, timing = study(args)
    fits.to_csv(args.out / "fits.csv", index=False)
    summary = summarise(fits)
    summary.to_csv(args.out / "summary.csv", index=False)
    text = markdown(summary, args, timing)
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
