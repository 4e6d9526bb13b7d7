// End-to-end run of the anatomark OHIF mode in headless Chromium (Debian /usr/bin/chromium, driven by
// playwright-core). Usage:
//   node e2e/landmarks.e2e.mjs --viewer http://127.0.0.1:3000 --study <StudyInstanceUID> --out result.json
//        [--patient <PatientID>: start at the study list, click the study, then the "X-ray landmarks" mode]
//        [--screenshot shot.png] [--move sella] [--dx=40] [--dy=-30] [--chromium /usr/bin/chromium]
// Steps: open the study in /anatomark (from the study list with --patient), read the side panel (model version),
// click the panel's "Auto-landmark", read the panel's landmark rows and quality verdict and the drawn points, check
// that each point's ring is rendered at its canvas position (screenshot pixels), show the label map (segmentation)
// and hide it again, focus / hide / show a landmark from the panel, drag one point with the mouse, click "Save",
// visit another series of the study (if any) and come back, reload the page (the saved correction must be drawn and
// marked), click "Auto-landmark" again (the question is answered "no": the correction stays), set the retraining
// schedule, click "Train now" and follow its progress to its end, click "Next sample" (the proposed image must be
// the one on screen) and "Skip" (another image must come).
// Writes everything measured to --out (JSON); the Python test compares it with the server's JSON and datastore.
import { chromium } from 'playwright-core';
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    viewer: { type: 'string' },
    study: { type: 'string' },
    patient: { type: 'string' }, // when given, open the study from OHIF's study list (row with this patient id)
    out: { type: 'string' },
    screenshot: { type: 'string' },
    'labelmap-screenshot': { type: 'string' },
    move: { type: 'string', default: 'sella' },
    dx: { type: 'string', default: '40' },
    dy: { type: 'string', default: '-30' },
    chromium: { type: 'string', default: process.env.CHROMIUM || '/usr/bin/chromium' },
    timeout: { type: 'string', default: '180000' },
    'panel-screenshot': { type: 'string' },
    'reload-screenshot': { type: 'string' },
    'train-screenshot': { type: 'string' },
    'train-wait': { type: 'string', default: '240000' },
    'sr-screenshot': { type: 'string' },
    'multi-study': { type: 'string' }, // a study whose series --multi-series has several images
    'multi-sop': { type: 'string' }, // its second image (not the one the server reads)
  },
});
const timeout = Number(args.timeout);
const result = { steps: [], console_errors: [] };
const t0 = Date.now();
const step = (name, extra = {}) => result.steps.push({ name, ms: Date.now() - t0, ...extra });

const browser = await chromium.launch({ executablePath: args.chromium, args: ['--no-sandbox'] });
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.on('console', m => {
    if (m.type() === 'error') result.console_errors.push(m.text().slice(0, 500));
  });
  page.on('pageerror', e => result.console_errors.push(`pageerror: ${e.message.slice(0, 500)}`));
  result.dialogs = [];
  page.on('dialog', d => {
    result.dialogs.push(d.message());
    d.dismiss(); // "no": keep the saved correction
  });
  const panelText = sel => page.evaluate(q => document.querySelector(q)?.innerText ?? null, sel);
  const panelAttr = (sel, attr) => page.evaluate(([q, a]) => document.querySelector(q)?.getAttribute(a) ?? null, [sel, attr]);
  // the series and SOP instance on screen once its image is loaded, else null
  const onScreen = () =>
    page.evaluate(() => {
      try {
        const { viewport, seriesUID, imageId } = window.anatomark.activeImage();
        if (!viewport.getImageData()) return null;
        const sop = window.anatomark.libs().cornerstone.metaData.get('sopCommonModule', imageId)?.sopInstanceUID;
        return { seriesUID, sop };
      } catch (e) {
        return null;
      }
    });
  const seriesOnScreen = async () => (await onScreen())?.seriesUID ?? null;
  // read() again every `every` ms until done(value) or `ms` have passed; the last value read
  const pollUntil = async (read, done, ms, every = 250) => {
    const until = Date.now() + ms;
    let v = await read();
    while (!done(v) && Date.now() < until) {
      await page.waitForTimeout(every);
      v = await read();
    }
    return v;
  };
  const panelRows = () =>
    page.evaluate(() =>
      [...document.querySelectorAll('[data-cy="anatomark-landmark-row"]')].map(r => ({
        name: r.dataset.name,
        cells: [...r.querySelectorAll('td')].map(td => td.innerText.trim()),
        visible: r.querySelector('input[type=checkbox]')?.checked,
      }))
    );

  if (args.patient) {
    // the user's route: study list -> click the study -> "X-ray landmarks" in Launch workflow
    await page.goto(`${args.viewer}/`, { waitUntil: 'load', timeout });
    await page.getByText(args.patient, { exact: true }).first().click({ timeout });
    await page.getByRole('button', { name: 'X-ray landmarks' }).first().click({ timeout });
    await page.waitForURL(url => url.pathname === '/anatomark' && url.search.includes(args.study), { timeout });
    step('study list -> mode');
  } else {
    await page.goto(`${args.viewer}/anatomark?StudyInstanceUIDs=${args.study}`, { waitUntil: 'load', timeout });
  }
  await page.waitForSelector('[data-cy="AnatomarkAutoLandmark"]', { timeout });
  await page.waitForFunction(
    () => {
      try {
        const { viewport, imageId } = window.anatomark.activeImage();
        return !!imageId && !!viewport.getImageData();
      } catch (e) {
        return false;
      }
    },
    null,
    { timeout }
  );
  step('image displayed');
  result.image = await page.evaluate(() => {
    const { imageId, seriesUID } = window.anatomark.activeImage();
    return { imageId, seriesUID };
  });
  // the side panel: model and its version, no saved correction yet
  await page.waitForSelector('[data-cy="anatomark-panel"] [data-cy="anatomark-model-version"]', { timeout });
  await page.waitForSelector('[data-cy="anatomark-source"][data-source="none"]', { timeout });
  result.panel_before = {
    model: await page.evaluate(() => document.querySelector('[data-cy="anatomark-model"]')?.value ?? null),
    version: await panelText('[data-cy="anatomark-model-version"]'),
    source: await panelText('[data-cy="anatomark-source"]'),
    toolbar: await page.evaluate(() =>
      ['AnatomarkAutoLandmark', 'AnatomarkSave', 'AnatomarkLabelmap'].map(id => {
        const b = document.querySelector(`[data-cy="${id}"]`);
        return b ? getComputedStyle(b, '::after').content : null;
      })
    ),
  };
  step('panel');

  // 1. Auto-landmark (a real click on the panel's button)
  await page.click('[data-cy="anatomark-panel-auto"]');
  await page.waitForFunction(() => ['done', 'error'].includes(window.anatomark.state.status), null, { timeout });
  const st = await page.evaluate(() => ({ ...window.anatomark.state }));
  step('auto-landmark', { status: st.status, error: st.error, seconds: st.seconds });
  result.auto = { status: st.status, error: st.error, seconds: st.seconds, model: st.model };
  result.server = st.result;
  if (st.status !== 'done') throw new Error(`auto-landmark failed: ${st.error}`);
  await page.waitForTimeout(500);
  await page.waitForFunction(() => document.querySelectorAll('[data-cy="anatomark-landmark-row"]').length > 0, null, { timeout });
  result.panel_after_auto = {
    version: await panelText('[data-cy="anatomark-model-version"]'),
    source: await panelText('[data-cy="anatomark-source"]'),
    source_kind: await panelAttr('[data-cy="anatomark-source"]', 'data-source'),
    quality: await panelText('[data-cy="anatomark-quality"]'),
    quality_reliable: await panelAttr('[data-cy="anatomark-quality"]', 'data-reliable'),
    rows: await panelRows(),
  };
  if (args['panel-screenshot']) await page.locator('[data-cy="anatomark-panel"]').screenshot({ path: args['panel-screenshot'] });

  // 2. the points as drawn: image pixels, world (mm) and page position of each
  const drawn = await page.evaluate(() => {
    const { viewport } = window.anatomark.activeImage();
    const rect = viewport.element.getBoundingClientRect();
    const styles = window.anatomark.state.styles;
    return window.anatomark.currentPoints().map(p => {
      const [cx, cy] = viewport.worldToCanvas(p.world);
      return { ...p, page: [rect.left + cx, rect.top + cy], color: styles[p.name]?.color || null };
    });
  });
  result.drawn = drawn;
  const shot = await page.screenshot({ path: args.screenshot || undefined });
  step('screenshot');

  // rendered check: the point's ring (radius 6 px, drawn in the tool colour) must be on the screenshot around the
  // computed page position (ray test below; the mean of coloured pixels is reported too, but neighbouring
  // landmarks' rings and names can shift it).
  result.rings = await page.evaluate(
    async ({ png, points }) => {
      const img = new Image();
      img.src = `data:image/png;base64,${png}`;
      await img.decode();
      const c = document.createElement('canvas');
      c.width = img.width;
      c.height = img.height;
      const g = c.getContext('2d');
      g.drawImage(img, 0, 0);
      const out = [];
      const rgb = hex => (hex ? [1, 3, 5].map(i => parseInt(hex.slice(i, i + 2), 16)) : null);
      // a pixel of the point's ring: its landmark colour (or any strongly coloured pixel when no colour is known);
      // the X-ray underneath is gray
      // (anti-aliased: pixel = a * colour + (1 - a) * gray, so its chroma, pixel minus its mean, is a times the
      // colour's chroma; a pixel counts when a >= 0.5 and the chroma points the colour's way)
      const chroma = v => {
        const m = (v[0] + v[1] + v[2]) / 3;
        return [v[0] - m, v[1] - m, v[2] - m];
      };
      const isRing = (d, k, want) => {
        const cp = chroma([d[k], d[k + 1], d[k + 2]]);
        if (!want) return Math.max(...cp) - Math.min(...cp) > 120;
        const cw = chroma(want);
        const n2 = cw[0] ** 2 + cw[1] ** 2 + cw[2] ** 2;
        const a = (cp[0] * cw[0] + cp[1] * cw[1] + cp[2] * cw[2]) / n2;
        const res = Math.hypot(cp[0] - a * cw[0], cp[1] - a * cw[1], cp[2] - a * cw[2]);
        return a >= 0.5 && a <= 1.3 && res < 12 + 0.1 * Math.sqrt(n2);
      };
      for (const p of points) {
        const [px, py] = p.page;
        const want = rgb(p.color);
        const x0 = Math.round(px) - 9;
        const y0 = Math.round(py) - 9;
        const d = g.getImageData(x0, y0, 19, 19).data;
        let n = 0;
        let sx = 0;
        let sy = 0;
        for (let j = 0; j < 19; j++) {
          for (let i = 0; i < 19; i++) {
            const k = (j * 19 + i) * 4;
            if (isRing(d, k, want)) {
              n += 1;
              sx += x0 + i + 0.5;
              sy += y0 + j + 0.5;
            }
          }
        }
        // ring test: along 16 rays from the computed position, a coloured pixel at 4.5-7.5 px (the handle's radius
        // is 6 px); a ring centred 3 px away would miss the rays pointing towards and away from its centre
        let hits = 0;
        for (let a = 0; a < 16; a++) {
          const ang = (a * Math.PI) / 8;
          let hit = false;
          for (let rr = 4.5; rr <= 7.5 && !hit; rr += 0.5) {
            const i = Math.floor(px + rr * Math.cos(ang)) - x0;
            const j = Math.floor(py + rr * Math.sin(ang)) - y0;
            hit = isRing(d, (j * 19 + i) * 4, want);
          }
          hits += hit ? 1 : 0;
        }
        out.push({ name: p.name, pixels: n, ray_hits: hits, centre: n ? [sx / n, sy / n] : null });
      }
      return out;
    },
    { png: shot.toString('base64'), points: drawn }
  );

  // 2b. the label map as a segmentation (toolbar "Label map"), then hidden again
  await page.click('[data-cy="AnatomarkLabelmap"]');
  await page.waitForFunction(() => !!window.anatomark.state.labelmapSegmentationId, null, { timeout });
  step('label map shown');
  await page.waitForTimeout(500);
  result.labelmap = await page.evaluate(() => ({
    ...window.anatomark.labelmapStats(),
    seconds: window.anatomark.state.labelmapSeconds,
  }));
  step('label map read');
  if (args['labelmap-screenshot']) await page.screenshot({ path: args['labelmap-screenshot'] });
  step('label map screenshot');
  await page.click('[data-cy="AnatomarkLabelmap"]');
  await page.waitForFunction(() => !window.anatomark.state.labelmapSegmentationId, null, { timeout });
  step('label map hidden');

  // 2c. the panel's list: a click centres the view on the landmark, the check box hides / shows its point
  const focusName = drawn.find(p => p.name !== args.move)?.name;
  await page.evaluate(() => {
    const { viewport } = window.anatomark.activeImage();
    window.__camera = viewport.getCamera();
  });
  await page.click(`[data-cy="anatomark-landmark-row"][data-name="${focusName}"] td.am-name`);
  await page.waitForTimeout(300);
  result.focus = await page.evaluate(name => {
    const { viewport } = window.anatomark.activeImage();
    const p = window.anatomark.currentPoints().find(q => q.name === name);
    return { name, focal: Array.from(viewport.getCamera().focalPoint), world: p.world };
  }, focusName);
  const visibility = () =>
    page.evaluate(name => {
      const { cornerstoneTools } = window.anatomark.libs();
      const p = window.anatomark.currentPoints().find(q => q.name === name);
      return cornerstoneTools.annotation.visibility.isAnnotationVisible(p.annotationUID) !== false;
    }, focusName);
  await page.click(`[data-cy="anatomark-landmark-row"][data-name="${focusName}"] input[type=checkbox]`);
  await page.waitForTimeout(200);
  const hidden = await visibility();
  await page.click(`[data-cy="anatomark-landmark-row"][data-name="${focusName}"] input[type=checkbox]`);
  await page.waitForTimeout(200);
  result.visibility = { name: focusName, after_hide: hidden, after_show: await visibility() };
  // back to the whole image (the drag below uses the page positions measured above)
  await page.evaluate(() => {
    const { viewport } = window.anatomark.activeImage();
    viewport.setCamera(window.__camera);
    viewport.render();
  });
  await page.waitForTimeout(300);
  step('panel focus / hide / show');

  // 3. drag one point with the mouse
  const target = drawn.find(p => p.name === args.move);
  if (!target) throw new Error(`no drawn point named ${args.move}`);
  const [dx, dy] = [Number(args.dx), Number(args.dy)];
  const [px, py] = target.page;
  await page.mouse.move(px, py);
  await page.mouse.down();
  await page.mouse.move(px + dx / 2, py + dy / 2, { steps: 5 });
  await page.mouse.move(px + dx, py + dy, { steps: 5 });
  await page.mouse.up();
  await page.waitForTimeout(300);
  const after = await page.evaluate(
    ({ name, dropPage }) => {
      const { viewport, imageId } = window.anatomark.activeImage();
      const rect = viewport.element.getBoundingClientRect();
      const world = viewport.canvasToWorld([dropPage[0] - rect.left, dropPage[1] - rect.top]);
      const expected = window.anatomark.worldToPixel(imageId, world);
      const p = window.anatomark.currentPoints().find(q => q.name === name);
      return { name, x: p.x, y: p.y, expected_x: expected[0], expected_y: expected[1] };
    },
    { name: args.move, dropPage: [px + dx, py + dy] }
  );
  result.moved = { ...after, before_x: target.x, before_y: target.y, drag_page_px: [dx, dy] };
  result.after_move = await page.evaluate(() => window.anatomark.currentPoints());
  step('drag', { landmark: after.name, x: after.x, y: after.y });
  // 3b. the label map shown after the drag follows it: the dragged landmark's disk is where its point is now; then a
  // second drag back half-way with the label map on screen moves it again
  await page.click('[data-cy="AnatomarkLabelmap"]');
  await page.waitForFunction(() => !!window.anatomark.state.labelmapSegmentationId, null, { timeout });
  result.labelmap_after_drag = await page.evaluate(() => window.anatomark.labelmapStats());
  await page.mouse.move(px + dx, py + dy);
  await page.mouse.down();
  await page.mouse.move(px + dx / 2, py + dy / 2, { steps: 5 });
  await page.mouse.up();
  await page.waitForTimeout(300);
  result.labelmap_while_shown = {
    ...(await page.evaluate(() => window.anatomark.labelmapStats())),
    point: await page.evaluate(name => window.anatomark.currentPoints().find(q => q.name === name), args.move),
  };
  await page.mouse.move(px + dx / 2, py + dy / 2); // and back where the first drag put it
  await page.mouse.down();
  await page.mouse.move(px + dx, py + dy, { steps: 5 });
  await page.mouse.up();
  await page.waitForTimeout(300);
  await page.click('[data-cy="AnatomarkLabelmap"]');
  await page.waitForFunction(() => !window.anatomark.state.labelmapSegmentationId, null, { timeout });
  result.after_move = await page.evaluate(() => window.anatomark.currentPoints());
  step('label map follows the drag');

  // 4. save (a real click on the panel's button) -> PUT /datastore/label (and the SR in the PACS)
  await page.click('[data-cy="anatomark-panel-save"]');
  await page.waitForFunction(() => ['saved', 'error'].includes(window.anatomark.state.status), null, { timeout });
  const saved = await page.evaluate(() => ({ status: window.anatomark.state.status, error: window.anatomark.state.error, saved: window.anatomark.state.saved }));
  result.save = saved;
  await page.waitForSelector('[data-cy="anatomark-source"][data-source="saved"]', { timeout: 10000 }).catch(() => null);
  result.save.source = await panelText('[data-cy="anatomark-source"]');
  step('save', { status: saved.status });
  if (args.screenshot) await page.screenshot({ path: args.screenshot });

  // 5. another series of the study (when there is one): no points there, its label map refused; back on the first
  // image its points are still there
  const thumbs = await page.$$('[data-cy="study-browser-thumbnail"]');
  result.other_series = null;
  if (thumbs.length > 1) {
    const first = result.image.seriesUID;
    const showSeries = async want => {
      const wanted = uid => !!uid && (want ? uid === want : uid !== first);
      for (const t of thumbs) {
        await t.dblclick();
        // a thumbnail of the series already shown changes nothing
        const uid = await pollUntil(seriesOnScreen, wanted, 8000, 200);
        if (wanted(uid)) return uid;
      }
      throw new Error(`could not show series ${want || '(other)'}`);
    };
    const other = await showSeries(null);
    const there = await page.evaluate(async () => ({
      points: window.anatomark.currentPoints().length,
      labelmap: await window.anatomark.toggleLabelmap().then(
        () => 'shown',
        e => e.message
      ),
    }));
    await showSeries(first);
    await page.waitForTimeout(300);
    const back = await page.evaluate(() => window.anatomark.currentPoints().length);
    result.other_series = { uid: other, points: there.points, labelmap: there.labelmap, points_back_on_first: back };
    step('other series', result.other_series);
  }
  // 6. reload: the saved correction is drawn (not the model's points) and marked as such
  await page.reload({ waitUntil: 'load', timeout });
  await page.waitForSelector('[data-cy="anatomark-source"][data-source="saved"]', { timeout });
  await page.waitForTimeout(500);
  result.reload = await page.evaluate(() => {
    const { seriesUID } = window.anatomark.activeImage();
    return { seriesUID, points: window.anatomark.currentPoints(), status: window.anatomark.state.status };
  });
  result.reload.source = await panelText('[data-cy="anatomark-source"]');
  result.reload.rows = await panelRows();
  if (args['reload-screenshot']) await page.screenshot({ path: args['reload-screenshot'] });
  step('reload');
  // Auto-landmark asks first; answered "no", the correction stays
  await page.click('[data-cy="anatomark-panel-auto"]');
  await page.waitForFunction(() => ['cancelled', 'done', 'error'].includes(window.anatomark.state.status), null, { timeout });
  result.reauto = await page.evaluate(() => ({
    status: window.anatomark.state.status,
    points: window.anatomark.currentPoints(),
  }));
  result.reauto.source_kind = await panelAttr('[data-cy="anatomark-source"]', 'data-source');
  step('auto-landmark over the saved correction', { status: result.reauto.status });

  // 7. the retraining schedule from the panel
  result.schedule = null;
  if (await page.$('[data-cy="anatomark-schedule"]')) {
    await page.fill('[data-cy="anatomark-schedule"] [data-field="every_n_labels"]', '5');
    await page.fill('[data-cy="anatomark-schedule"] [data-field="interval_hours"]', '0');
    await page.click('[data-cy="anatomark-schedule-save"]');
    await page.waitForSelector('[data-cy="anatomark-schedule-message"]', { timeout });
    result.schedule = { message: await panelText('[data-cy="anatomark-schedule-message"]') };
    step('schedule', result.schedule);
  }

  // 8. Train now (1 epoch), progress in the panel until the run ends (or a 409 answer)
  await page.evaluate(() => (window.anatomark.trainParams = { max_epochs: 4 }));
  await page.click('[data-cy="anatomark-train"]');
  await page.waitForSelector('[data-cy="anatomark-train-message"]', { timeout });
  result.train = { message: await panelText('[data-cy="anatomark-train-message"]'), seen: [] };
  const until = Date.now() + Number(args['train-wait']);
  while (Date.now() < until) {
    // status and text read together (two reads can straddle a re-render of the panel)
    const { status, text } = await page.evaluate(() => {
      const el = document.querySelector('[data-cy="anatomark-train-status"]');
      return { status: el?.getAttribute('data-status') ?? null, text: el?.innerText ?? null };
    });
    if (text && !result.train.seen.some(x => x.text === text)) result.train.seen.push({ status, text, ms: Date.now() - t0 });
    if (['DONE', 'FAILED', 'STOPPED'].includes(status) && result.train.seen.some(x => x.status === 'RUNNING')) break;
    if (result.train.message.includes('409')) break;
    await page.waitForTimeout(1000);
  }
  result.train.final = await panelText('[data-cy="anatomark-train-status"]');
  result.train.final_status = await panelAttr('[data-cy="anatomark-train-status"]', 'data-status');
  result.train.gate = await panelText('[data-cy="anatomark-gate"]');
  result.train.stats = await page.evaluate(() => window.anatomark.state.train);
  if (args['train-screenshot']) await page.screenshot({ path: args['train-screenshot'] });
  step('train', { final: result.train.final_status });

  // 8b. the saved correction as OHIF itself shows the study's DICOM SR: open the SR's thumbnail (no image), the SR
  // viewport draws its SCOORD points on the referenced X-ray
  result.sr_view = null;
  const srThumb = page.locator('[data-cy="study-browser-thumbnail-no-image"]', { hasText: 'SR' }).first();
  if (await srThumb.count()) {
    await srThumb.dblclick();
    const srShown = () =>
      page.evaluate(() => {
        const { cornerstoneTools } = window.anatomark.libs();
        const all = cornerstoneTools.annotation.state.getAllAnnotations?.() || [];
        const sr = all.filter(a => /^DICOMSRDisplay/.test(a.metadata?.toolName || ''));
        let imageId = null;
        try {
          imageId = window.anatomark.activeImage().imageId;
        } catch (e) {
          /* no image viewport yet */
        }
        const pixels = {};
        for (const a of sr) {
          const w = a.data?.handles?.points?.[0];
          if (w && imageId) {
            const [x, y] = window.anatomark.worldToPixel(imageId, w);
            pixels[`${x.toFixed(3)},${y.toFixed(3)}`] = [x, y];
          }
        }
        return { n: sr.length, imageId, pixels: Object.values(pixels) };
      });
    await pollUntil(srShown, v => v.n > 0, 60000, 500);
    await page.waitForTimeout(1000);
    result.sr_view = await srShown();
    result.sr_view.display_sets = await page.evaluate(() =>
      window.anatomark
        .services()
        .displaySetService.getActiveDisplaySets()
        .filter(d => d.Modality === 'SR')
        .map(d => ({ handler: d.SOPClassHandlerId, loaded: d.isLoaded, measurements: d.measurements?.length }))
    );
    if (args['sr-screenshot']) await page.screenshot({ path: args['sr-screenshot'] });
    step('SR shown by OHIF', { n: result.sr_view.n });
  }

  // 9. Next sample: the strategy's image opens with its own series on screen; Skip gives another image
  const sampleFrom = async (cy, before) => {
    await page.click(`[data-cy="${cy}"]`);
    await page.waitForURL(u => (u.searchParams.get('initialSeriesInstanceUID') || before) !== before, { timeout });
    await page.waitForSelector('[data-cy="anatomark-panel-next"]', { timeout });
    const id = new URL(page.url()).searchParams.get('initialSeriesInstanceUID');
    const on = await pollUntil(seriesOnScreen, uid => uid === id, 60000); // once its image is loaded
    return { id, study: new URL(page.url()).searchParams.get('StudyInstanceUIDs'), shown: on };
  };
  result.next = await sampleFrom('anatomark-panel-next', '');
  step('next sample', result.next);
  result.skip = await sampleFrom('anatomark-panel-skip', result.next.id);
  step('skip', result.skip);

  // 10. a series of two images, its second one on screen (OHIF shows each DX instance as its own display set):
  // the server reads the first, so Auto-landmark says so and draws nothing, rather than the first image's points
  result.multi = null;
  if (args['multi-study']) {
    const q = new URLSearchParams({ StudyInstanceUIDs: args['multi-study'], initialSOPInstanceUID: args['multi-sop'] });
    await page.goto(`${args.viewer}/anatomark?${q}`, { waitUntil: 'load', timeout });
    const sop = await pollUntil(async () => (await onScreen())?.sop ?? null, v => v === args['multi-sop'], 60000);
    await page.waitForSelector('[data-cy="anatomark-panel-auto"]', { timeout });
    await page.click('[data-cy="anatomark-panel-auto"]');
    await page.waitForFunction(() => ['done', 'error'].includes(window.anatomark.state.status), null, { timeout });
    result.multi = await page.evaluate(() => ({
      status: window.anatomark.state.status,
      error: window.anatomark.state.error,
      points: window.anatomark.currentPoints().length,
    }));
    result.multi.sop = sop;
    step('two-image series', result.multi);
  }

  result.ok = saved.status === 'saved';
} catch (e) {
  result.ok = false;
  result.error = String(e.stack || e);
} finally {
  await browser.close();
  writeFileSync(args.out, JSON.stringify(result, null, 2));
}
process.exit(result.ok ? 0 : 1);
