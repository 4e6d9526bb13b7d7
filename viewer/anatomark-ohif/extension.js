// anatomark OHIF extension (plain ES module, loaded at run time by the prebuilt OHIF 3 app through
// window.config.extensions; no build step). It adds:
//   - the side panel "Landmarks" (panel.js: model and version, Auto-landmark, the landmark list with the quality
//     verdict, Save, training and the retraining schedule);
//   - the cornerstone tool "AnatomarkPoint": a Probe whose label (the landmark's short name) is placed next to its
//     point, away from other points and labels, with a leader line when it had to move away; points are draggable;
//   - on opening an image, its saved correction (the final label, GET /datastore/label/info) is drawn and marked as
//     such; Auto-landmark asks before replacing it on screen and Save asks before storing unedited model points over
//     it;
//   - commands "anatomarkAutoLandmark" (POST /infer/<model>?image=<series UID> on the MONAI Label server: the JSON
//     gives one point per landmark, the label map (landmark k = disk of value k) is kept for display),
//     "anatomarkToggleLabelmap" (the label map as an OHIF labelmap segmentation, one segment per landmark) and "anatomarkSave" (PUT /datastore/label?image=<series UID>&tag=final with
//     {"landmarks": [{name, x, y}]}, which the server validates and keeps as a final label for training).
// Pixel convention: the server's (x, y) is in pixels with (0, 0) at the centre of the top-left pixel; cornerstone3D's
// image coordinates put (0, 0) at the pixel's corner, hence the 0.5 offsets below.

import { getPanelModule, injectStyles } from './panel.js';

export const TOOL_NAME = 'AnatomarkPoint';
const EXTENSION_ID = 'anatomark';

export const state = {
  status: 'idle', // idle | running | done | saving | saved | error
  error: null,
  model: null,
  seriesInstanceUID: null,
  imageId: null,
  result: null, // the server's JSON of the last /infer
  saved: null, // the server's answer to the last save
  annotationUIDs: [],
  styles: {}, // landmark name -> {short, color} from the server's /info/ (anatomark.landmarks)
  labelmap: null, // {width, height, values: Uint8Array} of the last /infer
  labelmapSegmentationId: null, // shown as a segmentation when set
  info: null, // the server's last /info/
  selectedModel: null, // chosen in the panel (else window.config.anatomark.model, else the server's first)
  // per image (series instance UID): what is drawn ('saved' correction, 'model' output, null) and the saved label info
  images: {},
  train: null, // /info/ train_stats.<model> of the selected model
  trainMessage: null, // the answer to the last Train now / Stop ({type, text})
  schedule: null, // GET /anatomark/schedule ({every_n_labels, interval_hours}); null = not offered by the server
  scheduleMessage: null,
};

const listeners = new Set();

/** Call `fn` after every change of `state` (the panel re-renders); returns the unsubscribe function. */
export function subscribe(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** Tell the listeners that `state` changed. */
export function changed() {
  for (const fn of listeners) {
    try {
      fn(state);
    } catch (e) {
      console.error('[anatomark] listener failed', e);
    }
  }
}

/** The per-image record of `seriesUID` (created empty). */
export function imageState(seriesUID) {
  state.images[seriesUID] = state.images[seriesUID] || { source: null, saved: null, loaded: false, edited: false };
  return state.images[seriesUID];
}

let ctx = null; // { servicesManager, extensionManager, commandsManager }

export function monaiUrl() {
  return (window.config?.anatomark?.monaiUrl || '/monai').replace(/\/$/, '');
}

export function libs() {
  const entry = ctx.extensionManager.getModuleEntry('@ohif/extension-cornerstone.utilityModule.common');
  return entry.exports.getCornerstoneLibraries();
}

let toolRegistered = false;

/** Register the AnatomarkPoint tool with cornerstoneTools (once per page). */
export function registerTool() {
  if (toolRegistered) return TOOL_NAME;
  const { cornerstoneTools } = libs();
  class AnatomarkPointTool extends cornerstoneTools.ProbeTool {
    static toolName = TOOL_NAME;
    constructor(toolProps = {}, defaultToolProps) {
      super(toolProps, defaultToolProps);
      // the Probe draws the ring only; the labels are laid out together below (drawLabels)
      this.configuration.getTextLines = () => undefined;
      const base = this.renderAnnotation.bind(this);
      this.renderAnnotation = (enabledElement, svgDrawingHelper) => {
        const rendered = base(enabledElement, svgDrawingHelper);
        try {
          drawLabels(enabledElement.viewport, svgDrawingHelper);
        } catch (e) {
          console.warn('[anatomark] drawing the labels failed', e);
        }
        return rendered;
      };
      // a drag is an edit: the panel says "edited, not saved" and a shown label map follows. cornerstone3D's
      // ProbeTool ends a drag in `_endCallback` (an instance arrow function; `endCallback` does not exist there)
      const key = typeof this._endCallback === 'function' ? '_endCallback' : 'endCallback';
      const done = this[key]?.bind(this);
      if (done) {
        this[key] = evt => {
          const r = done(evt);
          markEdited();
          return r;
        };
      }
    }
  }
  cornerstoneTools.addTool(AnatomarkPointTool);
  toolRegistered = true;
  return TOOL_NAME;
}

const RING_PX = 8; // the Probe's ring (radius 6 px) plus a margin
const CHAR_PX = 8.2; // width of a character of the 14 px label font (estimate)
const LABEL_H = 18;
const LEADER_MIN_PX = 14; // a label farther than this from its point gets a leader line

/**
 * Place each visible point's label (its short name) beside the point: the first of several positions around it
 * (right/left, above/below, then farther out) that overlaps no other point's ring and no label already placed.
 * A label that is not next to its point gets a leader line, in the point's colour, from the ring to the label.
 */
function drawLabels(viewport, svgDrawingHelper) {
  const { cornerstoneTools } = libs();
  const { drawing, annotation } = cornerstoneTools;
  const imageId = viewport.getCurrentImageId?.();
  const anns = ourAnnotations(viewport.element, imageId).filter(
    a => annotation.visibility?.isAnnotationVisible?.(a.annotationUID) !== false
  );
  const pts = anns.map(a => ({ a, c: viewport.worldToCanvas(a.data.handles.points[0]) }));
  const placed = [];
  const overlaps = (b, self) =>
    placed.some(o => b.x < o.x + o.w && o.x < b.x + b.w && b.y < o.y + o.h && o.y < b.y + b.h) ||
    pts.some(
      p =>
        p !== self &&
        p.c[0] > b.x - RING_PX &&
        p.c[0] < b.x + b.w + RING_PX &&
        p.c[1] > b.y - RING_PX &&
        p.c[1] < b.y + b.h + RING_PX
    );
  for (const p of [...pts].sort((u, v) => u.c[1] - v.c[1])) {
    const text = p.a.data.anatomark?.short || p.a.data.label;
    if (!text) continue;
    const w = text.length * CHAR_PX + 6;
    const [x, y] = p.c;
    let box = null;
    for (const d of [RING_PX, 2.5 * RING_PX, 4.5 * RING_PX, 7 * RING_PX]) {
      const tries = [
        { x: x + d, y: y - d - LABEL_H / 2 },
        { x: x + d, y: y + d - LABEL_H / 2 },
        { x: x - d - w, y: y - d - LABEL_H / 2 },
        { x: x - d - w, y: y + d - LABEL_H / 2 },
        { x: x - w / 2, y: y - d - LABEL_H },
        { x: x - w / 2, y: y + d },
      ];
      box = tries.map(t => ({ ...t, w, h: LABEL_H })).find(b => !overlaps(b, p));
      if (box) break;
    }
    box = box || { x: x + RING_PX, y: y - RING_PX - LABEL_H / 2, w, h: LABEL_H };
    placed.push(box);
    const style = state.styles[p.a.data.label] || {};
    const color = style.color || 'rgb(255, 255, 0)';
    const uid = p.a.annotationUID;
    // nearest point of the box to the point: the leader line's end
    const nx = Math.min(Math.max(x, box.x), box.x + box.w);
    const ny = Math.min(Math.max(y, box.y), box.y + box.h);
    const dist = Math.hypot(nx - x, ny - y);
    if (dist > LEADER_MIN_PX) {
      const ux = (nx - x) / dist;
      const uy = (ny - y) / dist;
      drawing.drawLine(svgDrawingHelper, uid, 'anatomarkLeader', [x + 6 * ux, y + 6 * uy], [nx, ny], {
        color,
        width: 1,
      });
    }
    drawing.drawTextBox(svgDrawingHelper, uid, 'anatomarkLabel', [text], [box.x, box.y], {
      color,
      fontSize: '14px',
      padding: 2,
    });
  }
}

/** A point was dragged on the active image: mark the image's points as edited (not saved yet). */
function markEdited() {
  try {
    const { seriesUID } = activeImage();
    if (seriesUID) imageState(seriesUID).edited = true;
    try {
      refreshLabelmap();
    } catch (e) {
      console.warn('[anatomark] redrawing the label map failed', e);
    }
    changed();
  } catch (e) {
    /* no active image */
  }
}

export function notify(title, message, type = 'info') {
  try {
    ctx.servicesManager.services.uiNotificationService.show({ title, message, type, duration: 4000 });
  } catch (e) {
    console.log(`[anatomark] ${title}: ${message}`);
  }
}

/** The active cornerstone viewport, its current image id and series instance UID. */
export function activeImage() {
  const { viewportGridService, cornerstoneViewportService, displaySetService } = ctx.servicesManager.services;
  const viewportId = viewportGridService.getActiveViewportId();
  const viewport = cornerstoneViewportService.getCornerstoneViewport(viewportId);
  if (!viewport) throw new Error('No image viewport is active');
  const imageId = viewport.getCurrentImageId();
  const { cornerstone } = libs();
  let seriesUID = cornerstone.metaData.get('generalSeriesModule', imageId)?.seriesInstanceUID;
  if (!seriesUID) {
    const vp = viewportGridService.getState().viewports.get(viewportId);
    const ds = displaySetService.getDisplaySetByUID(vp?.displaySetInstanceUIDs?.[0]);
    seriesUID = ds?.SeriesInstanceUID;
  }
  return { viewportId, viewport, imageId, seriesUID };
}

/** Server pixel (x, y) -> world point of the image. */
export function pixelToWorld(imageId, x, y) {
  return libs().cornerstone.utilities.imageToWorldCoords(imageId, [x + 0.5, y + 0.5]);
}

/** World point -> server pixel (x, y). */
export function worldToPixel(imageId, world) {
  const [i, j] = libs().cornerstone.utilities.worldToImageCoords(imageId, world);
  return [i - 0.5, j - 0.5];
}

/** Our points on the image shown in `element` (points of other images of the study are left alone). */
function ourAnnotations(element, imageId) {
  const { cornerstoneTools } = libs();
  const all = cornerstoneTools.annotation.state.getAnnotations(TOOL_NAME, element) || [];
  return imageId ? all.filter(a => a.metadata?.referencedImageId === imageId) : all;
}

function clearPoints(viewport, imageId) {
  const { cornerstoneTools } = libs();
  for (const a of ourAnnotations(viewport.element, imageId)) {
    cornerstoneTools.annotation.state.removeAnnotation(a.annotationUID);
  }
  state.annotationUIDs = [];
}

/** Draw one named, draggable point per landmark (points with null x/y are skipped). */
export function drawPoints(landmarks) {
  state.hidden = {};
  const { cornerstoneTools } = libs();
  const { viewport, imageId, viewportId } = activeImage();
  registerTool();
  clearPoints(viewport, imageId);
  const toolClass = cornerstoneTools.state.tools?.[TOOL_NAME]?.toolClass;
  for (const p of landmarks) {
    if (p.x === null || p.y === null || p.x === undefined) continue;
    const world = pixelToWorld(imageId, p.x, p.y);
    const style = state.styles[p.name] || {};
    const ann = toolClass.createAnnotationForViewport(viewport, {
      data: {
        handles: { points: [world] },
        label: p.name,
        anatomark: { index: p.index, confidence: p.confidence, short: style.short, source: p.source },
      },
    });
    ann.metadata.referencedImageId = ann.metadata.referencedImageId || imageId;
    cornerstoneTools.annotation.state.addAnnotation(ann, viewport.element); // assigns ann.annotationUID
    if (style.color) {
      const c = style.color;
      cornerstoneTools.annotation.config.style.setAnnotationStyles(ann.annotationUID, {
        color: c,
        colorHighlighted: c,
        colorSelected: c,
        textBoxColor: c,
        textBoxColorHighlighted: c,
        textBoxColorSelected: c,
      });
    }
    state.annotationUIDs.push(ann.annotationUID);
  }
  cornerstoneTools.utilities.triggerAnnotationRenderForViewportIds([viewportId]);
  viewport.render();
}

/** Current points on the active viewport: [{name, x, y, world}] in the server's pixel convention. */
export function currentPoints() {
  const { viewport, imageId } = activeImage();
  return ourAnnotations(viewport.element, imageId).map(a => {
    const world = a.data.handles.points[0];
    const [x, y] = worldToPixel(imageId, world);
    return { name: a.data.label, x, y, world: Array.from(world), annotationUID: a.annotationUID };
  });
}

/** Names of the landmark models in /info/: the label-map tasks (each also has a `<name>_points` detection task,
 * which is what 3D Slicer shows as points; the viewer draws points itself). */
export function landmarkModels(info) {
  return Object.entries(info.models || {})
    .filter(([, m]) => !m.type || m.type === 'segmentation')
    .map(([name]) => name);
}

/** The model to run (window.config.anatomark.model, else the server's first) and the landmarks' short labels and
 * colours (the app's /info/ "anatomark.landmarks"). */
export async function pickModel() {
  const info = await loadInfo();
  const names = landmarkModels(info);
  const wanted = state.selectedModel || window.config?.anatomark?.model;
  if (wanted) return wanted;
  if (!names.length) throw new Error('The MONAI Label server serves no model');
  return names[0];
}

/** GET /info/: models, landmark styles, published versions, train_stats (kept in state.info). */
export async function loadInfo() {
  const r = await fetch(`${monaiUrl()}/info/`);
  if (!r.ok) throw new Error(`MONAI Label /info/ answered ${r.status}`);
  const info = await r.json();
  state.info = info;
  state.styles = Object.fromEntries((info.anatomark?.landmarks || []).map(l => [l.name, l]));
  const names = landmarkModels(info);
  if (!state.selectedModel || !names.includes(state.selectedModel)) {
    const wanted = window.config?.anatomark?.model;
    state.selectedModel = wanted && names.includes(wanted) ? wanted : names[0] || null;
  }
  state.train = (info.train_stats || {})[state.selectedModel] || null;
  return info;
}

/** Served version of `model`: from the last Auto-landmark with it, else the last published one, else "shipped". */
export function modelVersion(model) {
  if (state.result && state.model === model && state.result.model_version) return state.result.model_version;
  const served = state.info?.anatomark?.served?.[model];
  if (served) return served;
  const kept = state.info?.anatomark?.versions?.[model] || [];
  const last = kept[kept.length - 1];
  if (last) return typeof last === 'string' ? last : last.version;
  // the version a training started from / compared with is the one served then
  const t = state.info?.train_stats?.[model];
  return t?.gate?.served_version || t?.started_from_version || null;
}

/** Landmark names of the served set, in label-value order (from /info/). */
function landmarkNames() {
  return (state.info?.anatomark?.landmarks || []).map(l => l.name);
}

/** The saved final label of `seriesUID` (GET /datastore/label/info), drawn when `draw` and the image shows no
 * points yet. Returns the label info or null. */
export async function loadSaved(seriesUID, { draw = true } = {}) {
  const img = imageState(seriesUID);
  let info = null;
  try {
    if (!state.info) await loadInfo();
    const q = new URLSearchParams({ label: seriesUID, tag: 'final' });
    const r = await fetch(`${monaiUrl()}/datastore/label/info?${q}`);
    if (r.ok) {
      const j = await r.json();
      if (j && Array.isArray(j.landmarks) && j.landmarks.length) info = j;
    }
  } catch (e) {
    console.warn('[anatomark] reading the saved label failed', e);
  }
  img.saved = info;
  img.loaded = true;
  if (info && draw) {
    const names = landmarkNames();
    const landmarks = info.landmarks.map((p, k) => ({
      index: k + 1,
      name: names[k] || `landmark ${k + 1}`,
      x: p ? p[0] : null,
      y: p ? p[1] : null,
      source: 'saved',
    }));
    const { seriesUID: shown } = activeImage();
    // not drawn on an image it does not belong to (another image of the series)
    const served = () =>
      checkServedImage(seriesUID).then(
        () => true,
        e => {
          console.warn('[anatomark] the saved correction is not drawn:', e);
          return false;
        }
      );
    if (shown === seriesUID && (await served())) {
      drawPoints(landmarks);
      img.source = 'saved';
      img.edited = false;
      img.landmarks = landmarks;
    }
  }
  changed();
  return info;
}

/** Called by the panel when the active image changes: load its saved correction once (unless points are shown). */
export async function onImageShown() {
  let shown;
  try {
    shown = activeImage();
  } catch (e) {
    return;
  }
  const { seriesUID, viewport, imageId } = shown;
  if (!seriesUID || !imageId || !viewport.getImageData?.()) return;
  const img = imageState(seriesUID);
  if (img.loaded || img.loading) return;
  img.loading = true;
  try {
    const hasPoints = ourAnnotations(viewport.element, imageId).length > 0;
    await loadSaved(seriesUID, { draw: !hasPoints });
  } finally {
    img.loading = false;
  }
}

async function errorText(r) {
  try {
    const j = await r.json();
    return typeof j.detail === 'string' ? j.detail : JSON.stringify(j.detail ?? j);
  } catch (e) {
    return r.statusText;
  }
}

/** Ask the user (window.confirm; the e2e test answers it). */
function ask(question) {
  state.lastQuestion = question;
  return window.confirm(question);
}

function savedWhen(saved) {
  return saved?.ts ? new Date(saved.ts * 1000).toLocaleString() : 'earlier';
}

/** A series of several images (OHIF shows each DX/CR instance as a display set of its own): the server reads one
 * of them, the lowest InstanceNumber (its `SOPInstanceUID` is in the image info once the server has fetched it).
 * Throws when the image on screen is another one, so that points are never drawn on, or saved from, an image they do
 * not belong to. */
export async function checkServedImage(seriesUID) {
  const { imageId } = activeImage();
  const shown = libs().cornerstone.metaData.get('sopCommonModule', imageId)?.sopInstanceUID;
  const r = await fetch(`${monaiUrl()}/datastore/image/info?${new URLSearchParams({ image: seriesUID })}`);
  if (!r.ok) throw new Error(`Reading the image info of ${seriesUID} failed (${r.status}): ${await errorText(r)}`);
  const info = await r.json();
  const served = info.SOPInstanceUID;
  if (!served || !shown || served === shown) return;
  throw new Error(
    `This series has ${info.n_instances || 'several'} images and anatomark reads only the first ` +
      `(lowest instance number, SOP instance ${served}): open that image to place or save its landmarks`
  );
}

export async function autoLandmark() {
  const { seriesUID: uid } = activeImage();
  const img = uid ? imageState(uid) : null;
  if (img?.saved && img.source !== 'model') {
    const q =
      `This image has a saved correction (${savedWhen(img.saved)}). Replace it on screen with the model's points? ` +
      'The saved correction stays in the datastore until you save.';
    if (!ask(q)) {
      state.status = 'cancelled';
      changed();
      return null;
    }
  }
  state.status = 'running';
  state.error = null;
  changed();
  try {
    const { imageId, seriesUID } = activeImage();
    if (!seriesUID) throw new Error('The active image has no series instance UID');
    const model = await pickModel();
    const form = new FormData();
    form.append('params', JSON.stringify({}));
    const q = new URLSearchParams({ image: seriesUID }); // multipart answer: JSON ("params") + label map ("image")
    const t0 = performance.now();
    const r = await fetch(`${monaiUrl()}/infer/${encodeURIComponent(model)}?${q}`, { method: 'POST', body: form });
    if (!r.ok) throw new Error(`Auto-landmark failed (${r.status}): ${await errorText(r)}`);
    let result;
    let labelmap = null;
    if ((r.headers.get('content-type') || '').startsWith('multipart/')) {
      const parts = await r.formData();
      result = JSON.parse(await new Response(parts.get('params')).text());
      if (parts.get('image')) labelmap = await decodeLabelmap(parts.get('image'));
    } else {
      result = await r.json();
    }
    if (state.labelmapSegmentationId) removeLabelmap();
    await checkServedImage(seriesUID);
    Object.assign(state, { model, seriesInstanceUID: seriesUID, imageId, result, labelmap });
    drawPoints(result.landmarks || []);
    Object.assign(imageState(seriesUID), { source: 'model', edited: false, landmarks: result.landmarks || [] });
    state.status = 'done';
    state.seconds = (performance.now() - t0) / 1000;
    const qv = result.quality || {};
    const shown = (result.landmarks || []).filter(p => p.x !== null && p.x !== undefined).length;
    const head = `${shown} landmarks from ${model} (${state.seconds.toFixed(1)} s)`;
    if (qv.reliable === false) {
      // the server's quality verdict: say it, do not present the points as an answer
      notify('Auto-landmark: UNRELIABLE', `${head}. ${(qv.warnings || []).join('; ')}`, 'warning');
    } else {
      const notes = (qv.warnings || []).length ? `. ${qv.warnings.join('; ')}` : '';
      notify('Auto-landmark', `${head}${notes}`, 'success');
    }
    changed();
    return result;
  } catch (e) {
    state.status = 'error';
    state.error = String(e.message || e);
    notify('Auto-landmark', state.error, 'error');
    changed();
    throw e;
  }
}

/** PNG label map (8-bit gray, value k = landmark k) -> {width, height, values}. */
async function decodeLabelmap(blob) {
  const bmp = await createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  const canvas = new OffscreenCanvas(bmp.width, bmp.height);
  const g = canvas.getContext('2d', { willReadFrequently: true });
  g.drawImage(bmp, 0, 0);
  const rgba = g.getImageData(0, 0, bmp.width, bmp.height).data;
  const values = new Uint8Array(bmp.width * bmp.height);
  for (let i = 0; i < values.length; i++) values[i] = rgba[4 * i];
  return { width: bmp.width, height: bmp.height, values };
}

function hexToRgba(hex) {
  return [1, 3, 5].map(i => parseInt(hex.slice(i, i + 2), 16)).concat([255]);
}

function removeLabelmap() {
  const { segmentationService } = ctx.servicesManager.services;
  try {
    segmentationService.remove(state.labelmapSegmentationId);
  } catch (e) {
    console.warn('[anatomark] removing the label map segmentation failed', e);
  }
  state.labelmapSegmentationId = null;
}

/** Show (or hide again) the label map of the last Auto-landmark as a labelmap segmentation of the image. */
export async function toggleLabelmap() {
  if (state.labelmapSegmentationId) {
    removeLabelmap();
    return false;
  }
  const lm = state.labelmap;
  if (!lm || !state.result) throw new Error('No label map yet: run Auto-landmark first');
  const t0 = performance.now();
  const { segmentationService, displaySetService, viewportGridService } = ctx.servicesManager.services;
  const { cornerstone, cornerstoneTools } = libs();
  const { viewportId, viewport, seriesUID } = activeImage();
  if (seriesUID !== state.seriesInstanceUID) throw new Error('Run Auto-landmark on this image first');
  const vp = viewportGridService.getState().viewports.get(viewportId);
  const displaySet = displaySetService.getDisplaySetByUID(vp.displaySetInstanceUIDs[0]);
  const segments = {};
  for (const p of state.result.landmarks) {
    segments[p.index] = { label: p.name, active: p.index === 1 };
  }
  const segmentationId = await segmentationService.createLabelmapForDisplaySet(displaySet, {
    label: `anatomark ${state.model}`,
    segments,
  });
  const seg = segmentationService.getSegmentation(segmentationId);
  const segImageId = seg.representationData.Labelmap.imageIds[0];
  const image = cornerstone.cache.getImage(segImageId);
  const { columns, rows } = image;
  if (columns !== lm.width || rows !== lm.height) {
    segmentationService.remove(segmentationId);
    throw new Error(`label map is ${lm.width}x${lm.height}, the image ${columns}x${rows}`);
  }
  setLabelmapValues(image, editedLabelmap());
  await segmentationService.addSegmentationRepresentation(viewportId, { segmentationId });
  for (const p of state.result.landmarks) {
    const style = state.styles[p.name];
    if (style?.color) segmentationService.setSegmentColor(viewportId, segmentationId, p.index, hexToRgba(style.color));
  }
  cornerstoneTools.segmentation.triggerSegmentationEvents.triggerSegmentationDataModified(segmentationId);
  viewport.render();
  state.labelmapSegmentationId = segmentationId;
  state.labelmapSeconds = (performance.now() - t0) / 1000;
  return true;
}

function setLabelmapValues(image, values) {
  if (image.voxelManager?.setScalarData) image.voxelManager.setScalarData(values);
  else image.getPixelData().set(values);
}

/** The label map of the points on screen: the server's (value k = landmark k), with the disk of each landmark that
 * was dragged since moved to where its point is now (same number of pixels, so the same radius). */
function editedLabelmap() {
  const lm = state.labelmap;
  const values = lm.values.slice();
  const served = new Map((state.result?.landmarks || []).map(p => [p.name, p]));
  let counts = null;
  for (const p of currentPoints()) {
    const s = served.get(p.name);
    if (!s || s.x === null || s.x === undefined) continue;
    if (Math.abs(p.x - s.x) < 0.01 && Math.abs(p.y - s.y) < 0.01) continue;
    if (!counts) {
      counts = new Uint32Array(256);
      for (const v of lm.values) counts[v]++;
    }
    const k = s.index;
    for (let i = 0; i < values.length; i++) if (values[i] === k) values[i] = 0;
    const r = Math.sqrt(counts[k] / Math.PI);
    const { width: w, height: h } = lm;
    for (let j = Math.max(0, Math.ceil(p.y - r)); j <= Math.min(h - 1, Math.floor(p.y + r)); j++) {
      for (let i = Math.max(0, Math.ceil(p.x - r)); i <= Math.min(w - 1, Math.floor(p.x + r)); i++) {
        if ((i - p.x) ** 2 + (j - p.y) ** 2 <= r * r) values[j * w + i] = k;
      }
    }
  }
  return values;
}

/** After a drag: the shown label map follows the points (not left at the model's answer). */
function refreshLabelmap() {
  if (!state.labelmapSegmentationId || !state.labelmap) return;
  const { viewport, seriesUID } = activeImage();
  if (seriesUID !== state.seriesInstanceUID) return;
  const { segmentationService } = ctx.servicesManager.services;
  const { cornerstone, cornerstoneTools } = libs();
  const seg = segmentationService.getSegmentation(state.labelmapSegmentationId);
  setLabelmapValues(cornerstone.cache.getImage(seg.representationData.Labelmap.imageIds[0]), editedLabelmap());
  cornerstoneTools.segmentation.triggerSegmentationEvents.triggerSegmentationDataModified(state.labelmapSegmentationId);
  viewport.render();
}

/** Label values of the shown segmentation (for checks): {width, height, counts[k], centroids[k]}. */
export function labelmapStats() {
  if (!state.labelmapSegmentationId) return null;
  const { segmentationService } = ctx.servicesManager.services;
  const { cornerstone } = libs();
  const seg = segmentationService.getSegmentation(state.labelmapSegmentationId);
  const image = cornerstone.cache.getImage(seg.representationData.Labelmap.imageIds[0]);
  const data = image.voxelManager?.getScalarData ? image.voxelManager.getScalarData() : image.getPixelData();
  const { columns: w, rows: h } = image;
  const n = {};
  const sx = {};
  const sy = {};
  for (let j = 0; j < h; j++) {
    for (let i = 0; i < w; i++) {
      const v = data[j * w + i];
      if (!v) continue;
      n[v] = (n[v] || 0) + 1;
      sx[v] = (sx[v] || 0) + i;
      sy[v] = (sy[v] || 0) + j;
    }
  }
  const centroids = Object.fromEntries(Object.keys(n).map(k => [k, [sx[k] / n[k], sy[k] / n[k]]]));
  return { width: w, height: h, counts: n, centroids };
}

export async function save() {
  const { seriesUID: uid } = activeImage();
  const img = uid ? imageState(uid) : null;
  if (img?.saved && img.source === 'model' && !img.edited) {
    const q =
      `This image has a saved correction (${savedWhen(img.saved)}) and the points shown are the model's, unedited. ` +
      "Replace the saved correction with the model's points?";
    if (!ask(q)) {
      state.status = 'cancelled';
      changed();
      return null;
    }
  }
  state.status = 'saving';
  state.error = null;
  changed();
  try {
    const { seriesUID } = activeImage();
    await checkServedImage(seriesUID); // the points of the image the label is for, not of another in the series
    const points = currentPoints();
    if (!points.length) throw new Error('No landmarks to save: run Auto-landmark first');
    const body = {
      landmarks: points.map(p => ({ name: p.name, x: p.x, y: p.y })),
      source: 'anatomark-ohif',
      model: state.model,
    };
    const form = new FormData();
    form.append('label', new Blob([JSON.stringify(body)], { type: 'application/json' }), 'landmarks.json');
    const params = { client: 'anatomark-ohif', origin: img?.source === 'model' && !img.edited ? 'model' : 'correction' };
    if (state.model) Object.assign(params, { model: state.model, model_version: state.result?.model_version });
    form.append('params', JSON.stringify(params));
    const q = new URLSearchParams({ image: seriesUID, tag: 'final' });
    const r = await fetch(`${monaiUrl()}/datastore/label?${q}`, { method: 'PUT', body: form });
    if (!r.ok) throw new Error(`Save failed (${r.status}): ${await errorText(r)}`);
    state.saved = await r.json();
    const info = await loadSaved(seriesUID, { draw: false }); // ts, pacs_sr
    Object.assign(imageState(seriesUID), { source: 'saved', edited: false });
    state.status = 'saved';
    const pacs = info?.pacs_sr;
    const where = pacs?.SOPInstanceUID ? ' and in the PACS (DICOM SR)' : pacs?.error ? ` (not in the PACS: ${pacs.error})` : '';
    notify('Landmarks saved', `${points.length} landmarks stored as the final label of this image${where}`, 'success');
    changed();
    return state.saved;
  } catch (e) {
    state.status = 'error';
    state.error = String(e.message || e);
    notify('Save landmarks', state.error, 'error');
    changed();
    throw e;
  }
}

/** Show or hide one landmark's point (annotation visibility; hidden points are not dragged or saved over). */
export function setLandmarkVisible(name, visible) {
  const { cornerstoneTools } = libs();
  const { viewport, imageId, viewportId } = activeImage();
  for (const a of ourAnnotations(viewport.element, imageId)) {
    if (a.data.label === name) cornerstoneTools.annotation.visibility.setAnnotationVisibility(a.annotationUID, visible);
  }
  state.hidden = state.hidden || {};
  state.hidden[name] = !visible;
  cornerstoneTools.utilities.triggerAnnotationRenderForViewportIds([viewportId]);
  viewport.render();
  changed();
}

/** Centre the view on one landmark and select its point. */
export function focusLandmark(name) {
  const { cornerstoneTools } = libs();
  const { viewport, imageId } = activeImage();
  const a = ourAnnotations(viewport.element, imageId).find(x => x.data.label === name);
  if (!a) return false;
  const world = a.data.handles.points[0];
  const cam = viewport.getCamera();
  const d = [0, 1, 2].map(i => cam.position[i] - cam.focalPoint[i]);
  viewport.setCamera({ focalPoint: [...world], position: [0, 1, 2].map(i => world[i] + d[i]) });
  try {
    cornerstoneTools.annotation.selection.setAnnotationSelected(a.annotationUID, true, false);
  } catch (e) {
    /* selection is cosmetic */
  }
  viewport.render();
  state.focused = name;
  changed();
  return true;
}

// ------------------------------------------------------------------------------------------------ training
async function answerText(r) {
  try {
    const j = await r.json();
    return typeof j.detail === 'string' ? j.detail : JSON.stringify(j.detail ?? j);
  } catch (e) {
    return r.statusText;
  }
}

/** Train now: POST /train/<model> (409 while a training runs: said in the panel). */
export async function trainNow() {
  const model = await pickModel();
  const params = window.anatomark?.trainParams || {};
  const r = await fetch(`${monaiUrl()}/train/${encodeURIComponent(model)}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(params),
  });
  if (r.ok) {
    state.trainMessage = { type: 'info', text: `Training of ${model} started`, status: r.status };
    state.trainRequestedAt = Date.now();
  } else if (r.status === 409) {
    state.trainMessage = { type: 'warning', text: `A training is already running (409): ${await answerText(r)}`, status: 409 };
  } else {
    state.trainMessage = { type: 'error', text: `Train failed (${r.status}): ${await answerText(r)}`, status: r.status };
  }
  changed();
  pollTraining(true);
  return state.trainMessage;
}

/** Stop: DELETE /train/ (MONAI Label stops the running training). */
export async function stopTraining() {
  const r = await fetch(`${monaiUrl()}/train/`, { method: 'DELETE' });
  state.trainMessage = r.ok
    ? { type: 'info', text: 'Stop requested', status: r.status }
    : { type: 'error', text: `Stop failed (${r.status}): ${await answerText(r)}`, status: r.status };
  changed();
  pollTraining(true);
  return state.trainMessage;
}

let pollTimer = null;

/** Poll /info/ train_stats every 2 s while a training runs or was just asked for, else every 10 s. */
export function pollTraining(now = false) {
  clearTimeout(pollTimer);
  const tick = async () => {
    try {
      await loadInfo();
    } catch (e) {
      /* the server is restarting: keep polling */
    }
    changed();
    const recent = state.trainRequestedAt && Date.now() - state.trainRequestedAt < 60000;
    const running = ['RUNNING', 'SUBMITTED'].includes(state.train?.status);
    if (listeners.size) pollTimer = setTimeout(tick, running || recent ? 2000 : 10000);
  };
  pollTimer = setTimeout(tick, now ? 0 : 2000);
}

/** GET /anatomark/schedule (null when the server has no such route: 404). */
export async function loadSchedule() {
  try {
    const r = await fetch(`${monaiUrl()}/anatomark/schedule`);
    state.schedule = r.ok ? await r.json() : null;
    if (!r.ok && r.status !== 404) state.scheduleMessage = { type: 'error', text: `Schedule: ${r.status}` };
  } catch (e) {
    state.schedule = null;
  }
  changed();
  return state.schedule;
}

/** PUT /anatomark/schedule {every_n_labels, interval_hours} (0 = off). */
export async function saveSchedule(everyN, intervalHours) {
  const body = { every_n_labels: Math.max(0, Math.round(Number(everyN) || 0)), interval_hours: Math.max(0, Number(intervalHours) || 0) };
  const r = await fetch(`${monaiUrl()}/anatomark/schedule`, {
    method: 'PUT',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (r.ok) {
    state.schedule = await r.json();
    const s = state.schedule;
    const parts = [];
    if (s.every_n_labels) parts.push(`every ${s.every_n_labels} saved labels`);
    if (s.interval_hours) parts.push(`every ${s.interval_hours} h`);
    state.scheduleMessage = { type: 'success', text: `Retraining ${parts.length ? parts.join(' and ') : 'off'}` };
  } else if (r.status === 404) {
    state.scheduleMessage = { type: 'warning', text: 'This server has no retraining schedule (404)' };
  } else {
    state.scheduleMessage = { type: 'error', text: `Schedule refused (${r.status}): ${await answerText(r)}` };
  }
  changed();
  return state.scheduleMessage;
}

/** Next sample: the server's active-learning strategy picks an image; its study is opened in this mode. */
/** Skip the active image (not labelled now): the next sample, which is not this image. */
export async function skipSample() {
  const { seriesUID } = activeImage();
  return nextSample({ skip: seriesUID ? [seriesUID] : [] });
}

export async function nextSample({ skip = [] } = {}) {
  const strategies = Object.keys(state.info?.strategies || {});
  const strategy = strategies[0] || 'random';
  const r = await fetch(`${monaiUrl()}/activelearning/${encodeURIComponent(strategy)}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    // lowest_confidence does not give the skipped images now, and gives them back after the others
    body: JSON.stringify(skip.length ? { skip } : {}),
  });
  if (!r.ok) throw new Error(`Next sample failed (${r.status}): ${await answerText(r)}`);
  const { id } = await r.json();
  if (!id) throw new Error('No image left to label');
  const info = await (await fetch(`${monaiUrl()}/datastore/image/info?${new URLSearchParams({ image: id })}`)).json();
  const study = info.StudyInstanceUID;
  if (!study) throw new Error(`No study for image ${id}`);
  // the image id is the series instance UID: OHIF's hanging protocols show the series named by
  // initialSeriesInstanceUID first, so the proposed image is the one on screen (not the study's first series)
  const q = new URLSearchParams({ StudyInstanceUIDs: study, initialSeriesInstanceUID: id });
  window.location.assign(`/anatomark?${q}`);
  return { id, study };
}

function getCommandsModule({ servicesManager, commandsManager, extensionManager }) {
  ctx = ctx || { servicesManager, commandsManager, extensionManager };
  return {
    definitions: {
      anatomarkAutoLandmark: { commandFn: () => autoLandmark().catch(e => console.error(e)) },
      anatomarkSave: { commandFn: () => save().catch(e => console.error(e)) },
      anatomarkToggleLabelmap: {
        commandFn: () =>
          toggleLabelmap().catch(e => {
            console.error(e);
            notify('Label map', String(e.message || e), 'error');
          }),
      },
    },
    defaultContext: 'DEFAULT',
  };
}

const extension = {
  id: EXTENSION_ID,
  preRegistration({ servicesManager, commandsManager, extensionManager }) {
    ctx = { servicesManager, commandsManager, extensionManager };
    // test and scripting hook (the end-to-end test reads the state and the points from here)
    window.anatomark = {
      state,
      autoLandmark,
      save,
      loadSaved,
      trainNow,
      stopTraining,
      loadSchedule,
      saveSchedule,
      focusLandmark,
      setLandmarkVisible,
      libs,
      toggleLabelmap,
      labelmapStats,
      currentPoints,
      activeImage,
      pixelToWorld,
      worldToPixel,
      TOOL_NAME,
      services: () => ctx.servicesManager.services,
    };
    injectStyles();
  },
  getCommandsModule,
  getPanelModule,
};

export default extension;
