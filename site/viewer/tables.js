// Page text: the region and capsule-distance tables, the cohort facts and notes. Always
// textContent: the data may hold markup.
import { app } from './state.js';
import { $, element, fmtCount, fmtP, missing } from './util.js';

const COLUMN_LABELS = {
  region: 'Region', label: 'Label', bin: 'Distance to capsule', low_mm: 'From (mm)',
  high_mm: 'To (mm)', nodules: 'Nodules', events: 'LLNM', risk: 'Risk',
  mean_model_probability: 'Model mean', half: 'Half',
};
const PROBABILITY_COLUMNS = new Set(['risk', 'ci_low', 'ci_high', 'mean_model_probability',
  'probability', 'proportion']);

function formatValue(column, value) {
  if (typeof value !== 'number') return String(value);
  if (PROBABILITY_COLUMNS.has(column)) return fmtP(value);
  return Number.isInteger(value) ? fmtCount(value) : value.toFixed(1);
}

// Table columns as shown: events with nodules ("30 / 59") and risk with its interval, so the
// tables fit beside the 3D view. Each column gives a header and the cell's text parts.
function tableColumns(columns) {
  const at = Object.fromEntries(columns.map((c, i) => [c, i]));
  const withEvents = 'events' in at && 'nodules' in at;
  const withCi = 'risk' in at && 'ci_low' in at && 'ci_high' in at;
  const merged = new Set([withEvents && 'events', withCi && 'ci_low', withCi && 'ci_high']
    .filter(Boolean));
  return columns.filter((c) => !merged.has(c)).map((c) => {
    if (c === 'nodules' && withEvents) {
      return {
        header: 'LLNM / nodules', keys: [at.nodules, at.events],
        parts: (row) => [`${fmtCount(row[at.events])} / ${fmtCount(row[at.nodules])}`],
      };
    }
    if (c === 'risk' && withCi) {
      return {
        header: 'Risk (95 % CI)', keys: [at.risk, at.ci_low, at.ci_high],
        parts: (row) => [fmtP(row[at.risk]),
          `${fmtP(row[at.ci_low])}\u2013${fmtP(row[at.ci_high])}`],
      };
    }
    return {
      header: COLUMN_LABELS[c] ?? c.replaceAll('_', ' '), keys: [at[c]],
      parts: (row) => [formatValue(c, row[at[c]])],
    };
  });
}

function tableCell(column, row, isHeader) {
  const cell = element(isHeader ? 'th' : 'td');
  if (isHeader) cell.scope = 'row';
  if (column.keys.some((k) => missing(row[k]))) {
    cell.textContent = 'suppressed';
    cell.className = 'suppressed';
    return cell;
  }
  const [main, detail] = column.parts(row);
  cell.append(main);
  if (detail) cell.append(element('span', detail, 'detail'));
  if (typeof row[column.keys[0]] === 'number') cell.className = 'num';
  return cell;
}

function fillTable(table, spec, caption) {
  table.replaceChildren();
  if (!spec || !spec.rows?.length) {
    table.closest('section').hidden = true;
    return;
  }
  const columns = tableColumns(spec.columns);
  table.append(element('caption', caption, 'visually-hidden'));
  const head = table.createTHead().insertRow();
  for (const column of columns) head.append(element('th', column.header));
  for (const th of head.cells) th.scope = 'col';
  const body = table.createTBody();
  for (const row of spec.rows) {
    const tr = body.insertRow();
    // A row whose every value after its leading labels is suppressed gets one note.
    const labels = row.findIndex((value) => typeof value !== 'string');
    const suppressed = labels > 0 && row.slice(labels).every(missing);
    const shown = suppressed ? columns.filter((column) => column.keys[0] < labels) : columns;
    shown.forEach((column, i) => tr.append(tableCell(column, row, i === 0)));
    if (suppressed) {
      const note = element('td', `suppressed (< ${app.data.min_cases} nodules)`, 'suppressed');
      note.colSpan = columns.length - shown.length;
      tr.append(note);
    }
  }
}

export function fillPage() {
  const { data } = app;
  if (data.title) $('title').textContent = data.title;
  if (data.description) $('description').textContent = data.description;
  fillTable($('table-regions'), data.tables?.regions, 'LLNM risk by atlas region');
  fillTable($('table-capsule-distance'), data.tables?.capsule_distance,
    'LLNM risk by distance from the capsule');
  const facts = [
    ['Nodules', data.nodules != null ? fmtCount(data.nodules) : null],
    ['LLNM events', data.events != null ? fmtCount(data.events) : null],
    ['Cohort rate', data.prevalence != null ? `${(100 * data.prevalence).toFixed(1)} %` : null],
    ['Risk map', data.estimator],
    ['Smoothing', data.smoothing],
    ['Weighting', data.weight != null ? `${data.weight} footprints` : null],
    ['Minimum cases per voxel or cell', data.min_cases],
    ['Field spacing', data.field_spacing_mm != null ? `${data.field_spacing_mm} mm` : null],
    ['Voxels in the field', data.points != null ? fmtCount(data.points) : null],
    ['Space', data.space],
    ['llnm3d version', data.llnm3d_version],
  ];
  for (const [term, value] of facts) {
    if (value === null || value === undefined) continue;
    $('cohort').append(element('dt', term), element('dd', String(value)));
  }
  for (const note of data.notes ?? []) $('notes').append(element('li', note));
}

export function showMessage(text) {
  app.errors.push(text);
  $('messages').append(element('p', text, 'message'));
}
