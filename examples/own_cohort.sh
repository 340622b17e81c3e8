#!/usr/bin/env bash
# Walkthrough: llnm3d on your own cohort, from the command line.
#
#   bash examples/own_cohort.sh [WORKDIR]
#
# A small phantom cohort stands in for your data; replace step 0 with your own folder. Every
# command prints what it did; exit codes: 0 success, 1 some cases failed (each named, the rest
# done), 2 usage or input error.
set -euo pipefail
WORK=${1:-own-cohort-walkthrough}
COHORT=$WORK/cohort
MANIFEST=$COHORT/manifest.csv

step() { printf '\n== %s\n' "$*"; }

step "0. Your cohort: one folder with images, masks and a manifest.csv (here: a phantom)"
llnm3d phantom --patients 40 --seed 11 --out "$COHORT"

step "1. The manifest: one row per image; paths are relative to the manifest's folder"
# case_id: unique per image. patient_id + nodule_id: a nodule, grouping its transverse and
# longitudinal images. side L|R, view transverse|longitudinal, image, thyroid_mask and
# nodule_mask (white on black PNG, same size as the image), pixel_spacing_mm (empty: the
# registration's scale absorbs it), label 0|1|empty, age, sex F|M, report (free text).
# Comma or semicolon separated, UTF-8 with or without BOM; extra columns are kept.
head -n 3 "$MANIFEST"

step "2. Check it before anything else: bad rows are listed by case id"
llnm3d check-manifest --manifest "$MANIFEST"

step "3. A missing thyroid mask: drop one, and give the nodule's coarse location instead"
python - "$MANIFEST" <<'EOF'
import sys

import pandas as pd

path = sys.argv[1]
table = pd.read_csv(path, dtype=str, keep_default_na=False)
first = table["patient_id"] == table.loc[0, "patient_id"]
nodule = first & (table["nodule_id"] == table.loc[0, "nodule_id"])
table.loc[nodule, "thyroid_mask"] = ""      # e.g. never segmented
table["lobe_third"] = ""                     # where the report says the nodule is
table["front_back"] = ""
table.loc[nodule, "lobe_third"] = "middle"
table.loc[nodule, "front_back"] = "front"
table.to_csv(path, index=False)
print(f"{table.loc[0, 'patient_id']}-N{table.loc[0, 'nodule_id']}: thyroid masks removed, "
      "placed at the middle third, front half")
EOF

step "4. LLNM probability and GradCAM++ heatmap per image (bundled LLNM-Net; resumable)"
llnm3d heatmap --manifest "$MANIFEST" --out "$WORK/heatmaps"

step "5. Register every nodule onto the atlas"
# Without a thyroid mask a view cannot be registered: that nodule fails by id (exit 1) and the
# rest of the cohort is registered.
status=0
llnm3d register --manifest "$MANIFEST" --heatmaps "$WORK/heatmaps" \
    --out "$WORK/registered-strict" || status=$?
echo "exit code $status (1: some nodules failed, the rest are in registered-strict/)"
# Accepting the manifest's coarse location registers it too (flagged in qc.csv).
llnm3d register --manifest "$MANIFEST" --heatmaps "$WORK/heatmaps" \
    --out "$WORK/registered" --allow-coarse-location

step "6. Voxelwise statistics (a small cohort: fewer nodules per voxel, fewer permutations)"
llnm3d aggregate --registered "$WORK/registered" --out "$WORK/stats" --min-cases 5 \
    --permutations 200

step "7. The 3D viewer site, and the glTF files alone"
llnm3d build-site --stats "$WORK/stats" --out "$WORK/site" --title "My cohort"
llnm3d export --stats "$WORK/stats" --out "$WORK/gltf"
echo "view it: llnm3d serve $WORK/site  (then open http://localhost:8000)"
