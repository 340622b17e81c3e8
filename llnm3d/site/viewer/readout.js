// The readout: every value the field has at a voxel, where the voxel is (in words, atlas LPS
// and RAS), and what is shown where the field has no value.
import { voxelAt } from './field.js';
import { app } from './state.js';
import {
  $, element, fmtCount, fmtMm, fmtP, fmtPValue, fmtSigned, gridIndex,
} from './util.js';

// Which tools read which convention, so a reader can paste a position into theirs.
const COORDINATE_NOTE = 'LPS: ITK, ITK-SNAP, DICOM; RAS: NIfTI, nilearn, FreeSurfer, Slicer.';
const fmtPoint = ([x, y, z]) => `(${fmtMm(x)}, ${fmtMm(y)}, ${fmtMm(z)}) mm`;

function describePosition([x, y, z]) {
  const side = (v, neg, pos) => `${Math.abs(v).toFixed(1)} mm ${v < 0 ? neg : pos}`;
  return [
    ['Position', [side(x, 'right', 'left'), side(y, 'anterior', 'posterior'),
      side(z, 'inferior', 'superior')].join(', ')],
    ['LPS (x, y, z)', fmtPoint([x, y, z])],
    ['RAS (x, y, z)', fmtPoint([-x, -y, z])],
  ];
}

function regionName(code) {
  if (app.data.region_names?.[String(code)]) return app.data.region_names[String(code)];
  return code === 0 ? 'outside the gland' : `label ${code}`;
}

function labelAt(position) {
  const grid = app.labels;
  if (!grid) return null;
  const flat = gridIndex(grid.dims, grid.origin, grid.spacing, position);
  return flat < 0 ? 0 : grid.labels[flat];
}

function capsuleText(distance) {
  if (Math.abs(distance) < 0.05) return 'on the capsule';
  return `${Math.abs(distance).toFixed(1)} mm ${distance < 0 ? 'inside' : 'outside'}`;
}

function bandText(value) {
  if (value > 0) return 'above the cohort rate (family-wise 95 %)';
  if (value < 0) return 'below the cohort rate (family-wise 95 %)';
  return 'includes the cohort rate';
}

function fieldRows(i) {
  const { field } = app;
  const maps = field.maps;
  const rows = [
    ['95 % interval', `${fmtP(field.low[i])} to ${fmtP(field.high[i])} (width `
      + `${fmtP(maps.interval_width[i])})`],
    ['Coverage', `${fmtCount(field.n[i])} nodules`],
  ];
  if (app.data.prevalence != null) {
    const rate = app.data.prevalence;
    const excludes = field.low[i] > rate || field.high[i] < rate;
    rows.push(['Cohort rate', `${fmtP(rate)}; the interval ${excludes ? 'excludes' : 'includes'} it`]);
  }
  if (maps.probability_above_rate) {
    rows.push(['P(risk > rate)', fmtP(maps.probability_above_rate[i])]);
  }
  if (maps.significance) rows.push(['Simultaneous band', bandText(maps.significance[i])]);
  if (maps.t) rows.push(['t', fmtSigned(maps.t[i])]);
  if (maps.t_log10p_fwer) rows.push(['FWER p (t)', fmtPValue(maps.t_log10p_fwer[i])]);
  if (maps.tfce_log10p_fwer) rows.push(['FWER p (TFCE)', fmtPValue(maps.tfce_log10p_fwer[i])]);
  if (field.dist) rows.push(['Capsule', capsuleText(field.dist[i])]);
  rows.push(['Region', regionName(Math.round(field.region?.[i] ?? 0))]);
  return rows;
}

// A pick: {kind: 'field', index} (a voxel), {kind: 'cursor', position} (a slice point) or
// {kind: 'published', position}.
export function showReadout(pick, pinned) {
  const readout = $('readout');
  if (!pick) {
    readout.hidden = true;
    return;
  }
  const { field } = app;
  let title;
  let rows;
  let position = pick.position;
  let index = pick.kind === 'field' ? pick.index : -1;
  if (pick.kind === 'field') {
    position = Array.from(field.atlas.subarray(3 * index, 3 * index + 3));
  } else if (pick.kind === 'cursor' && field) {
    index = voxelAt(field, position);
  }
  if (pick.kind === 'published') {
    title = 'Published point';
    rows = [['Value', 'colour only; the published colour scale has no numbers'],
      ['Position', `${fmtPoint(position)}: published units rescaled to the atlas width, `
        + 'placed beside it']];
  } else if (index >= 0) {
    const p = field.maps.probability[index];
    title = `LLNM probability ${fmtP(p)} (${(100 * p).toFixed(1)} %)`;
    rows = [...fieldRows(index), ...describePosition(position)];
  } else {
    const label = labelAt(position);
    title = label ? 'No estimate shown here' : 'Outside the gland';
    rows = [['Region', regionName(label ?? 0)]];
    if (label) rows.push(['Why', `fewer than ${fmtCount(app.data.min_cases ?? 0)} nodules `
      + 'touch this voxel']);
    rows.push(...describePosition(position));
  }
  const list = element('dl');
  for (const [term, value] of rows) list.append(element('dt', term), element('dd', value));
  const hint = element('p', `${pinned ? 'Pinned: click elsewhere or press Escape to release.'
    : 'Click to pin.'} ${COORDINATE_NOTE}`, 'hint');
  readout.replaceChildren(element('p', title, 'readout-title'), list, hint);
  readout.hidden = false;
}
