// anatomark OHIF extension (plain ES module, loaded at run time by the prebuilt OHIF 3 app through
// window.config.extensions; no build step). It adds:
//   - the cornerstone tool "AnatomarkPoint": a Probe whose text is the landmark name; points are draggable;
//   - commands "anatomarkAutoLandmark" (POST /infer/<model>?image=<series UID>&output=json on the MONAI Label
//     server, one point per landmark) and "anatomarkSave" (PUT /datastore/label?image=<series UID>&tag=final with
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

function ourAnnotations(element) {
  const { cornerstoneTools } = libs();
  return cornerstoneTools.annotation.state.getAnnotations(TOOL_NAME, element) || [];
}

function clearPoints(viewport) {
  const { cornerstoneTools } = libs();
  for (const a of ourAnnotations(viewport.element)) {
    cornerstoneTools.annotation.state.removeAnnotation(a.annotationUID);
  }
  state.annotationUIDs = [];
}

/** Draw one named, draggable point per landmark (points with null x/y are skipped). */
export function drawPoints(landmarks) {
  const { cornerstoneTools } = libs();
  const { viewport, imageId, viewportId } = activeImage();
  registerTool();
  clearPoints(viewport);
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
  return ourAnnotations(viewport.element).map(a => {
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
    const q = new URLSearchParams({ image: seriesUID, output: 'json' });
    const t0 = performance.now();
    const r = await fetch(`${monaiUrl()}/infer/${encodeURIComponent(model)}?${q}`, { method: 'POST', body: form });
    if (!r.ok) throw new Error(`Auto-landmark failed (${r.status}): ${await errorText(r)}`);
    const result = await r.json();
    Object.assign(state, { model, seriesInstanceUID: seriesUID, imageId, result });
    drawPoints(result.landmarks || []);
    state.status = 'done';
    state.seconds = (performance.now() - t0) / 1000;
    notify('Auto-landmark', `${result.landmarks.length} landmarks from ${model} (${state.seconds.toFixed(1)} s)`, 'success');
    return result;
  } catch (e) {
    state.status = 'error';
    state.error = String(e.message || e);
    notify('Auto-landmark', state.error, 'error');
    throw e;
  }
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
    },
    defaultContext: 'DEFAULT',
  };
}

const extension = {
  id: EXTENSION_ID,
  preRegistration({ servicesManager, commandsManager, extensionManager }) {
    ctx = { servicesManager, commandsManager, extensionManager };
    // test and scripting hook (the end-to-end test reads the state and the points from here)
    window.anatomark = { state, autoLandmark, save, currentPoints, activeImage, pixelToWorld, worldToPixel, TOOL_NAME };
  },
  getCommandsModule,
};

export default extension;
