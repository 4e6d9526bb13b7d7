// anatomark OHIF extension (plain ES module, loaded at run time by the prebuilt OHIF 3 app through
// window.config.extensions; no build step). It adds:
//   - the cornerstone tool "AnatomarkPoint": a Probe whose text is the landmark name; points are draggable;
//   - commands "anatomarkAutoLandmark" (POST /infer/<model>?image=<series UID> on the MONAI Label server: the JSON
//     gives one point per landmark, the label map (landmark k = disk of value k) is kept for display),
//     "anatomarkToggleLabelmap" (the label map as an OHIF labelmap segmentation, one segment per landmark) and "anatomarkSave" (PUT /datastore/label?image=<series UID>&tag=final with
//     {"landmarks": [{name, x, y}]}, which the server validates and keeps as a final label for training).
// Pixel convention: the server's (x, y) is in pixels with (0, 0) at the centre of the top-left pixel; cornerstone3D's
// image coordinates put (0, 0) at the pixel's corner, hence the 0.5 offsets below.

export const TOOL_NAME = 'AnatomarkPoint';
const EXTENSION_ID = 'anatomark';

const state = {
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
};

let ctx = null; // { servicesManager, extensionManager, commandsManager }

function monaiUrl() {
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
      // the short label (S, N, Or ...) keeps text boxes next to their points; the full name is data.label
      this.configuration.getTextLines = data => {
        const text = data.anatomark?.short || data.label;
        return text ? [text] : undefined;
      };
    }
  }
  cornerstoneTools.addTool(AnatomarkPointTool);
  toolRegistered = true;
  return TOOL_NAME;
}

function notify(title, message, type = 'info') {
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
        anatomark: { index: p.index, confidence: p.confidence, short: style.short },
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

/** The model to run (window.config.anatomark.model, else the server's first) and the landmarks' short labels and
 * colours (the app's /info/ "anatomark.landmarks"). */
async function pickModel() {
  const r = await fetch(`${monaiUrl()}/info/`);
  if (!r.ok) throw new Error(`MONAI Label /info/ answered ${r.status}`);
  const info = await r.json();
  state.styles = Object.fromEntries((info.anatomark?.landmarks || []).map(l => [l.name, l]));
  const names = Object.keys(info.models || {});
  const wanted = window.config?.anatomark?.model;
  if (wanted) return wanted;
  if (!names.length) throw new Error('The MONAI Label server serves no model');
  return names[0];
}

async function errorText(r) {
  try {
    const j = await r.json();
    return typeof j.detail === 'string' ? j.detail : JSON.stringify(j.detail ?? j);
  } catch (e) {
    return r.statusText;
  }
}

export async function autoLandmark() {
  state.status = 'running';
  state.error = null;
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
    Object.assign(state, { model, seriesInstanceUID: seriesUID, imageId, result, labelmap });
    drawPoints(result.landmarks || []);
    state.status = 'done';
    state.seconds = (performance.now() - t0) / 1000;
    const q = result.quality || {};
    const shown = (result.landmarks || []).filter(p => p.x !== null && p.x !== undefined).length;
    const head = `${shown} landmarks from ${model} (${state.seconds.toFixed(1)} s)`;
    if (q.reliable === false) {
      // the server's quality verdict: say it, do not present the points as an answer
      notify('Auto-landmark: UNRELIABLE', `${head}. ${(q.warnings || []).join('; ')}`, 'warning');
    } else {
      const notes = (q.warnings || []).length ? `. ${q.warnings.join('; ')}` : '';
      notify('Auto-landmark', `${head}${notes}`, 'success');
    }
    return result;
  } catch (e) {
    state.status = 'error';
    state.error = String(e.message || e);
    notify('Auto-landmark', state.error, 'error');
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
  if (image.voxelManager?.setScalarData) {
    image.voxelManager.setScalarData(lm.values.slice());
  } else {
    image.getPixelData().set(lm.values);
  }
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
  state.status = 'saving';
  state.error = null;
  try {
    const { seriesUID } = activeImage();
    const points = currentPoints();
    if (!points.length) throw new Error('No landmarks to save: run Auto-landmark first');
    const body = {
      landmarks: points.map(p => ({ name: p.name, x: p.x, y: p.y })),
      source: 'anatomark-ohif',
      model: state.model,
    };
    const form = new FormData();
    form.append('label', new Blob([JSON.stringify(body)], { type: 'application/json' }), 'landmarks.json');
    form.append('params', JSON.stringify({ client: 'anatomark-ohif' }));
    const q = new URLSearchParams({ image: seriesUID, tag: 'final' });
    const r = await fetch(`${monaiUrl()}/datastore/label?${q}`, { method: 'PUT', body: form });
    if (!r.ok) throw new Error(`Save failed (${r.status}): ${await errorText(r)}`);
    state.saved = await r.json();
    state.status = 'saved';
    notify('Landmarks saved', `${points.length} landmarks stored as the final label of this image`, 'success');
    return state.saved;
  } catch (e) {
    state.status = 'error';
    state.error = String(e.message || e);
    notify('Save landmarks', state.error, 'error');
    throw e;
  }
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
      toggleLabelmap,
      labelmapStats,
      currentPoints,
      activeImage,
      pixelToWorld,
      worldToPixel,
      TOOL_NAME,
    };
  },
  getCommandsModule,
};

export default extension;
