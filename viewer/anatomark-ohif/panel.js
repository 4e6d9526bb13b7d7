// anatomark side panel for OHIF 3 (plain ES module, no build): the layout MONAI Label users know from its OHIF
// plugin's MonaiLabelPanel (model, run, active learning: next sample, train / stop, progress), for landmarks:
//   - model selector with the served version; Auto-landmark, Save, Next sample;
//   - what is shown: the image's saved correction (marked as such) or the model's output (edited or not);
//   - the quality verdict of the last Auto-landmark and one row per landmark (name, confidence, expected error,
//     flags), a click centres the view on the point, the check box shows / hides it;
//   - training: Train now / Stop, progress from /info/ train_stats (polled every 2 s while it runs), the result of
//     the publication gate, and the retraining schedule (GET/PUT /anatomark/schedule).
// The prebuilt OHIF app does not export React to run-time extensions, so the panel component returns a plain React
// element (a host <div>) and draws itself into it with the DOM; it re-renders a section only when its HTML changed.
import {
  state,
  subscribe,
  imageState,
  activeImage,
  currentPoints,
  loadInfo,
  landmarkModels,
  modelVersion,
  autoLandmark,
  save,
  nextSample,
  skipSample,
  focusLandmark,
  setLandmarkVisible,
  trainNow,
  stopTraining,
  pollTraining,
  loadSchedule,
  saveSchedule,
  onImageShown,
  notify,
} from './extension.js';

const REACT_ELEMENT = Symbol.for('react.element'); // React 18 (OHIF 3.13.2 ships 18.3.1)

/** Toolbar buttons with their names as text (OHIF's tool buttons are icons only) and the panel's look. */
export function injectStyles() {
  if (document.getElementById('anatomark-styles')) return;
  const labels = {
    AnatomarkAutoLandmark: 'Auto-landmark',
    AnatomarkSave: 'Save',
    AnatomarkLabelmap: 'Label map',
    WindowLevel: 'W/L',
    Pan: 'Pan',
    Zoom: 'Zoom',
  };
  const css = Object.entries(labels)
    .map(
      ([id, text]) =>
        `[data-cy="${id}"]{width:auto!important;min-width:0!important;padding:0 8px 0 4px!important;gap:4px}` +
        `[data-cy="${id}"]::after{content:"${text}";font-size:13px;white-space:nowrap;color:#e2e8f0}`
    )
    .join('\n');
  const style = document.createElement('style');
  style.id = 'anatomark-styles';
  style.textContent = `${css}
.am-panel{font-size:13px;color:#e2e8f0;padding:8px 10px;display:flex;flex-direction:column;gap:8px;overflow-y:auto;height:100%}
.am-panel h3{font-size:12px;text-transform:uppercase;letter-spacing:.05em;color:#7dd3fc;margin:4px 0 2px}
.am-panel select,.am-panel input{background:#0b1a2e;color:#e2e8f0;border:1px solid #3a4a60;border-radius:4px;padding:2px 4px}
.am-panel input[type=number]{width:64px}
.am-panel button{background:#1e3a5f;color:#fff;border:1px solid #3b82f6;border-radius:4px;padding:3px 8px;margin:2px 4px 2px 0;cursor:pointer}
.am-panel button:disabled{opacity:.5;cursor:default}
.am-panel .am-muted{color:#94a3b8}
.am-panel .am-box{border-radius:4px;padding:4px 6px;border:1px solid #3a4a60}
.am-panel .am-saved{border-color:#22c55e;background:#052e16}
.am-panel .am-model{border-color:#eab308;background:#2a2205}
.am-panel .am-ok{color:#86efac}.am-panel .am-bad{color:#fca5a5;font-weight:bold}
.am-panel table{border-collapse:collapse;width:100%}
.am-panel table{table-layout:fixed;font-size:12px}
.am-panel td,.am-panel th{padding:1px 2px;text-align:left;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.am-panel td:first-child,.am-panel th:first-child{width:18px}
.am-panel td.am-n,.am-panel th.am-n{width:38px;text-align:right}
.am-panel td.am-f,.am-panel th.am-f{width:16px}
.am-panel th{color:#94a3b8;font-weight:normal;font-size:11px}
.am-panel tr.am-lm{cursor:pointer}.am-panel tr.am-lm:hover{background:#1e293b}
.am-panel tr.am-focused{background:#1e3a5f}
.am-panel tr.am-flag td.am-name{color:#fca5a5}
.am-panel .am-sw{display:inline-block;width:9px;height:9px;border-radius:50%;margin-right:4px}
.am-panel progress{width:100%;height:8px}
`;
  document.head.appendChild(style);
}

const esc = v =>
  String(v ?? '').replace(/[&<>"']/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
const num = (v, d = 2) => (typeof v === 'number' && Number.isFinite(v) ? v.toFixed(d) : '–');

/** Model selector and its version. */
function modelHtml() {
  const models = state.info ? landmarkModels(state.info) : [];
  if (!state.info) return '<div class="am-muted">Connecting to the MONAI Label server…</div>';
  const opts = models.map(m => `<option value="${esc(m)}"${m === state.selectedModel ? ' selected' : ''}>${esc(m)}</option>`);
  const version = modelVersion(state.selectedModel);
  return (
    `<h3>Model</h3><select data-cy="anatomark-model" data-change="model">${opts.join('')}</select>` +
    `<div data-cy="anatomark-model-version" class="am-muted">version ${esc(version || 'shipped')}</div>`
  );
}

/** Auto-landmark / Save / Next sample / Skip. */
function actionsHtml() {
  const busy = ['running', 'saving'].includes(state.status);
  const b = (action, text, cy) =>
    `<button data-action="${action}" data-cy="${cy}"${busy ? ' disabled' : ''}>${text}</button>`;
  const status = state.status === 'error' ? `<div class="am-bad">${esc(state.error)}</div>` : '';
  return (
    b('auto', 'Auto-landmark', 'anatomark-panel-auto') +
    b('save', 'Save', 'anatomark-panel-save') +
    b('next', 'Next sample', 'anatomark-panel-next') +
    b('skip', 'Skip', 'anatomark-panel-skip') +
    `<div class="am-muted" data-cy="anatomark-status">${esc(state.status)}</div>${status}`
  );
}

/** What is drawn on the active image: its saved correction, the model's output, or nothing yet. */
function sourceHtml(uid, img) {
  if (!uid) return '';
  if (img.source === 'saved' && img.saved) {
    const when = img.saved.ts ? new Date(img.saved.ts * 1000).toLocaleString() : '';
    const pacs = img.saved.pacs_sr?.SOPInstanceUID ? ' · in the PACS (DICOM SR)' : '';
    const edited = img.edited ? ' · <b>edited, not saved</b>' : '';
    return (
      `<div class="am-box am-saved" data-cy="anatomark-source" data-source="saved">` +
      `<b>Saved correction</b> · ${esc(when)}${pacs}${edited}</div>`
    );
  }
  if (img.source === 'model') {
    const saved = img.saved ? ' · a saved correction exists (not shown)' : '';
    const edited = img.edited ? ' · <b>edited, not saved</b>' : '';
    return (
      `<div class="am-box am-model" data-cy="anatomark-source" data-source="model">` +
      `<b>Model output</b> · ${esc(state.model)} ${esc(state.result?.model_version || '')}${edited}${saved}</div>`
    );
  }
  const none = img.loaded ? 'No saved correction: run Auto-landmark' : 'Looking for a saved correction…';
  const kind = img.loaded ? 'none' : 'loading';
  return `<div class="am-box am-muted" data-cy="anatomark-source" data-source="${kind}">${none}</div>`;
}

/** The quality verdict of the last Auto-landmark on this image. */
function qualityHtml(img) {
  if (img.source !== 'model' || !state.result?.quality) return '';
  const q = state.result.quality;
  const verdict = q.reliable === false ? '<span class="am-bad">UNRELIABLE</span>' : '<span class="am-ok">reliable</span>';
  const warnings = (q.warnings || []).map(w => `<li>${esc(w)}</li>`).join('');
  return (
    `<div class="am-box" data-cy="anatomark-quality" data-reliable="${q.reliable !== false}">Quality: ${verdict}` +
    ` (score ${num(q.score)})${warnings ? `<ul>${warnings}</ul>` : ''}</div>`
  );
}

/** One row per landmark drawn on the active image. */
function listHtml(img) {
  let points = [];
  try {
    points = currentPoints();
  } catch (e) {
    return '';
  }
  if (!points.length) return '';
  const model = img.source === 'model' ? Object.fromEntries((state.result?.landmarks || []).map(p => [p.name, p])) : {};
  const rows = points.map(p => {
    const m = model[p.name] || {};
    const style = state.styles[p.name] || {};
    const flag = m.reliable === false || m.in_image === false;
    const flags = [m.in_image === false ? 'outside' : '', m.reliable === false ? 'unreliable' : ''].filter(Boolean);
    const conf = img.source === 'model' ? num(m.confidence) : 'saved';
    const err = img.source === 'model' ? num(m.expected_error_mm, 1) : '';
    const hidden = state.hidden?.[p.name];
    return (
      `<tr class="am-lm${flag ? ' am-flag' : ''}${state.focused === p.name ? ' am-focused' : ''}" ` +
      `data-cy="anatomark-landmark-row" data-name="${esc(p.name)}" data-action="focus">` +
      `<td><input type="checkbox" data-change="visible" data-name="${esc(p.name)}"${hidden ? '' : ' checked'} ` +
      `title="show / hide"></td>` +
      `<td class="am-name" title="${esc(p.name)}"><span class="am-sw" style="background:${esc(style.color || '#ff0')}">` +
      `</span>${esc(style.short || '')} ${esc(p.name)}</td><td class="am-n">${conf}</td>` +
      `<td class="am-n">${err ? `±${err}` : ''}</td>` +
      `<td class="am-f am-bad" title="${esc(flags.join(', '))}">${flags.length ? '!' : ''}</td></tr>`
    );
  });
  const head =
    '<tr><th></th><th>landmark</th><th class="am-n">conf.</th>' +
    '<th class="am-n" title="expected error (mm)">± mm</th><th class="am-f"></th></tr>';
  return `<h3>Landmarks (${points.length})</h3><table data-cy="anatomark-landmarks">${head}${rows.join('')}</table>`;
}

/** Train now / Stop, progress and the gate's result. */
function trainingHtml() {
  const t = state.train || {};
  const running = ['RUNNING', 'SUBMITTED'].includes(t.status);
  let progress = '';
  if (running) {
    const frac = t.total_epochs ? Math.min(1, (t.epoch || 0) / t.total_epochs) : 0;
    progress =
      `<progress max="1" value="${frac}"></progress><div data-cy="anatomark-train-status" data-status="RUNNING">` +
      `Training ${esc(t.stage || '')}: epoch ${t.epoch ?? 0} / ${t.total_epochs ?? '?'} · loss ${num(t.loss, 4)}` +
      ` · val MRE ${num(t.val_mre_mm)} mm (best ${num(t.best_val_mre_mm)} mm) · ${num(t.total_time || t.elapsed_s, 0)} s</div>`;
  } else if (t.status) {
    const g = t.gate || {};
    const decision = t.published ? '<span class="am-ok">published</span>' : '<span class="am-bad">not published</span>';
    const scored = typeof g.candidate_val_mre_mm === 'number' && typeof g.served_val_mre_mm === 'number';
    const numbers = scored
      ? `: candidate ${num(g.candidate_val_mre_mm)} mm vs served ${num(g.served_val_mre_mm)} mm validation MRE on ` +
        `${g.n_val ?? '?'} image(s)`
      : g.n_val !== undefined
        ? ` (${g.n_val} validation image(s))`
        : '';
    const reason = g.reason || t.error ? `<div class="am-muted">${esc(g.reason || t.error)}</div>` : '';
    progress =
      `<div data-cy="anatomark-train-status" data-status="${esc(t.status)}">Last training: ${esc(t.status)}` +
      `${t.epoch !== undefined ? ` after ${t.epoch} / ${t.total_epochs ?? '?'} epochs` : ''}</div>` +
      `<div data-cy="anatomark-gate" data-published="${!!t.published}">Gate: ${decision}${numbers}${reason}</div>`;
  } else {
    progress = '<div class="am-muted" data-cy="anatomark-train-status" data-status="">No training yet</div>';
  }
  const msg = state.trainMessage
    ? `<div data-cy="anatomark-train-message" class="${state.trainMessage.type === 'error' ? 'am-bad' : 'am-muted'}">${esc(state.trainMessage.text)}</div>`
    : '';
  return (
    `<h3>Training</h3><button data-action="train" data-cy="anatomark-train"${running ? ' disabled' : ''}>Train now</button>` +
    `<button data-action="stop" data-cy="anatomark-stop"${running ? '' : ' disabled'}>Stop</button>${progress}${msg}`
  );
}

/** Retraining schedule form (absent when the server has no /anatomark/schedule). */
function scheduleHtml() {
  const s = state.schedule;
  if (!s) return '<h3>Retraining schedule</h3><div class="am-muted">not offered by this server</div>';
  return (
    `<h3>Retraining schedule</h3><div data-cy="anatomark-schedule">` +
    `<label>every <input type="number" min="0" step="1" data-field="every_n_labels" value="${esc(s.every_n_labels ?? 0)}"> saved labels</label><br>` +
    `<label>every <input type="number" min="0" step="0.5" data-field="interval_hours" value="${esc(s.interval_hours ?? 0)}"> hours</label><br>` +
    `<button data-action="schedule" data-cy="anatomark-schedule-save">Set schedule</button>` +
    `<button data-action="schedule-off" data-cy="anatomark-schedule-off">Off</button></div>`
  );
}

function scheduleMessageHtml() {
  const m = state.scheduleMessage;
  return m ? `<div data-cy="anatomark-schedule-message" class="${m.type === 'error' ? 'am-bad' : 'am-muted'}">${esc(m.text)}</div>` : '';
}

const SECTIONS = ['model', 'actions', 'source', 'quality', 'list', 'training', 'schedule', 'scheduleMessage'];

/** Re-render the sections of `root` whose HTML changed (the schedule form only while no field is being edited). */
function render(root) {
  let uid = null;
  try {
    uid = activeImage().seriesUID;
  } catch (e) {
    /* no viewport yet */
  }
  const img = uid ? imageState(uid) : {};
  const html = {
    model: modelHtml(),
    actions: actionsHtml(),
    source: sourceHtml(uid, img),
    quality: qualityHtml(img),
    list: listHtml(img),
    training: trainingHtml(),
    schedule: scheduleHtml(),
    scheduleMessage: scheduleMessageHtml(),
  };
  for (const name of SECTIONS) {
    const el = root.querySelector(`[data-section="${name}"]`);
    if (!el || el._html === html[name]) continue;
    if (name === 'schedule' && el.contains(document.activeElement)) continue;
    el.innerHTML = html[name];
    el._html = html[name];
  }
}

async function act(action, target, root) {
  try {
    if (action === 'auto') await autoLandmark();
    else if (action === 'save') await save();
    else if (action === 'next') await nextSample();
    else if (action === 'skip') await skipSample();
    else if (action === 'focus') focusLandmark(target.dataset.name);
    else if (action === 'train') await trainNow();
    else if (action === 'stop') await stopTraining();
    else if (action === 'schedule' || action === 'schedule-off') {
      const field = f => root.querySelector(`[data-field="${f}"]`)?.value;
      const off = action === 'schedule-off';
      await saveSchedule(off ? 0 : field('every_n_labels'), off ? 0 : field('interval_hours'));
      const el = root.querySelector('[data-section="schedule"]');
      if (el) el._html = null;
    }
  } catch (e) {
    console.error(e);
    if (!['auto', 'save'].includes(action)) notify('anatomark', String(e.message || e), 'error');
  }
  render(root);
}

let mounted = null; // {root, unsubscribe, timer}

/** Ref callback of the host <div>: build the panel into it (or tear it down when React removes it). */
function mount(el) {
  if (mounted && mounted.root !== el) {
    mounted.unsubscribe();
    clearInterval(mounted.timer);
    mounted = null;
  }
  if (!el || mounted) return;
  el.className = 'am-panel';
  el.setAttribute('data-cy', 'anatomark-panel');
  el.innerHTML = SECTIONS.map(n => `<div data-section="${n}"></div>`).join('');
  el.addEventListener('click', e => {
    if (e.target.closest('input')) return; // the show/hide check box is not a focus click
    const t = e.target.closest('[data-action]');
    if (t && !t.disabled) act(t.dataset.action, t, el);
  });
  el.addEventListener('change', e => {
    const t = e.target;
    if (t.dataset.change === 'model') {
      state.selectedModel = t.value;
      loadInfo().then(() => render(el));
    } else if (t.dataset.change === 'visible') {
      setLandmarkVisible(t.dataset.name, t.checked);
    }
  });
  const unsubscribe = subscribe(() => render(el));
  // the active image changes without telling us (thumbnails, reload): look every 0.5 s
  const timer = setInterval(() => {
    onImageShown().catch(e => console.warn(e));
    render(el);
  }, 500);
  mounted = { root: el, unsubscribe, timer };
  loadInfo()
    .catch(e => notify('anatomark', `MONAI Label server: ${e.message || e}`, 'error'))
    .finally(() => render(el));
  loadSchedule();
  pollTraining();
  render(el);
}

/** The panel component: a host element the panel draws itself into (see the module comment). */
function LandmarksPanel() {
  return { $$typeof: REACT_ELEMENT, type: 'div', key: null, ref: mount, props: {}, _owner: null, _store: {} };
}

/** OHIF panel module: "anatomark.panelModule.landmarks". */
export function getPanelModule() {
  return [
    {
      name: 'landmarks',
      iconName: 'tab-linear',
      iconLabel: 'Landmarks',
      label: 'Landmarks',
      component: LandmarksPanel,
    },
  ];
}
