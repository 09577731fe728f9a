// scratchvae in the browser: faces drawn from a seed (from N(0, I), or from the fitted prior that
// export/to_web.py --prior puts in prior.json), attribute sliders, a photo encoded with
// encoder.onnx, and morphs between two faces, all decoded by onnxruntime-web (WebAssembly) here.
// The pure functions at the top (the seeded draw, Pillow's Lanczos resize, the walks) are exported
// so that Node can test them against Python; the page starts only where there is a document.

// ---- The seeded draw: scratchvae.latent.draw_z, step for step ------------------------------------

const GOLDEN = 0x9E3779B97F4A7C15n;
const MASK64 = (1n << 64n) - 1n;

function mix64(x) {
  x = ((x ^ (x >> 30n)) * 0xBF58476D1CE4E5B9n) & MASK64;
  x = ((x ^ (x >> 27n)) * 0x94D049BB133111EBn) & MASK64;
  return x ^ (x >> 31n);
}

/** `count` float64 normals: SplitMix64 from seed mod 2^64, 53-bit uniforms, Box–Muller pairs. */
export function standardNormals(seed, count) {
  let state = BigInt.asUintN(64, BigInt(seed));
  const out = new Float64Array(count + (count % 2));
  for (let j = 0; j < out.length; j += 2) {
    state = (state + GOLDEN) & MASK64;
    const a = mix64(state);
    state = (state + GOLDEN) & MASK64;
    const b = mix64(state);
    const u1 = (Number(a >> 11n) + 1) * 2 ** -53; // (0, 1]: log(u1) is finite
    const u2 = Number(b >> 11n) * 2 ** -53; // [0, 1)
    const r = Math.sqrt(-2 * Math.log(u1));
    const t = 2 * Math.PI * u2;
    out[j] = r * Math.cos(t);
    out[j + 1] = r * Math.sin(t);
  }
  return out.subarray(0, count);
}

/** n rows of zDim (row-major Float32Array): the normals times the temperature, rounded to float32. */
export function drawZ(seed, n, zDim, temperature = 1) {
  const normals = standardNormals(seed, n * zDim);
  return Float32Array.from(normals, (x) => temperature * x);
}

// ---- The draw from a fitted prior: scratchvae.latent.mixture.draw, step for step ---------------

const PRIOR_SALT = 0xD1B54A32D192ED03n; // the component choice: SplitMix64 from seed ^ PRIOR_SALT

/** n rows (Float32Array n * d) from a Gaussian mixture {weights, means, cholesky}: the normals of
 * standardNormals(seed, n * d) by rows; row i's component k = the count of c[k] / c[K-1] <= u_i
 * (c the running sum of the weights), at most K - 1, u_i the 53-bit uniform of output i + 1 of
 * SplitMix64 from seed ^ PRIOR_SALT; z_i = means[k] + temperature * sum_j L[:, j] * e_i[j], summed over j
 * in order in float64 (L's lower triangle by rows: L[r][j] at r (r + 1) / 2 + j), then rounded to float32. */
export function drawPrior(prior, seed, n, temperature = 1) {
  const { weights, means, cholesky } = prior;
  const K = weights.length, d = means[0].length;
  const e = standardNormals(seed, n * d);
  const cum = [];
  let total = 0;
  for (const w of weights) cum.push(total += w);
  const cdf = cum.map((c) => c / cum[K - 1]);
  let state = BigInt.asUintN(64, BigInt(seed)) ^ PRIOR_SALT;
  const z = new Float32Array(n * d);
  const acc = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    state = (state + GOLDEN) & MASK64;
    const u = Number(mix64(state) >> 11n) * 2 ** -53;
    let k = 0;
    while (k < K - 1 && cdf[k] <= u) k++;
    const L = cholesky[k], mu = means[k];
    acc.fill(0);
    for (let j = 0; j < d; j++) {
      const ej = e[i * d + j];
      for (let r = j; r < d; r++) acc[r] += L[(r * (r + 1)) / 2 + j] * ej; // above the diagonal L is 0
    }
    for (let r = 0; r < d; r++) z[i * d + r] = mu[r] + temperature * acc[r];
  }
  return z;
}

// ---- Walks between two codes: scratchvae.latent.lerp and slerp -----------------------------------

export function lerp(a, b, t) {
  return Float32Array.from(a, (x, j) => (1 - t) * x + t * b[j]);
}

export function slerp(a, b, t) {
  let dot = 0, na = 0, nb = 0;
  for (let j = 0; j < a.length; j++) {
    dot += a[j] * b[j];
    na += a[j] * a[j];
    nb += b[j] * b[j];
  }
  const cos = dot / Math.max(Math.sqrt(na) * Math.sqrt(nb), 1e-300);
  const omega = Math.acos(Math.min(Math.max(cos, -1), 1));
  if (Math.sin(omega) < 1e-6) return lerp(a, b, t);
  const wa = Math.sin((1 - t) * omega), wb = Math.sin(t * omega), s = Math.sin(omega);
  return Float32Array.from(a, (x, j) => (wa * x + wb * b[j]) / s);
}

// ---- Images prepared as scratchvae/data/imagefile.py prepares them -------------------------------
// Pillow's Lanczos resize (libImaging/Resample.c): separable, horizontal pass first, weights in
// 22-bit fixed point, each pass rounded to 8 bits. Written again here so the same pixels come out.

const PRECISION_BITS = 22;

function sinc(x) {
  if (x === 0) return 1;
  x *= Math.PI;
  return Math.sin(x) / x;
}

function lanczos(x) {
  return -3 <= x && x < 3 ? sinc(x) * sinc(x / 3) : 0;
}

/** Per output pixel: the first input pixel it reads and its integer weights. in0, in1 are C floats. */
function coefficients(inSize, in0, in1, outSize) {
  const first = Math.fround(in0);
  const scale = Math.fround(Math.fround(in1) - first) / outSize;
  const filterscale = Math.max(scale, 1);
  const support = 3 * filterscale;
  const ss = 1 / filterscale;
  const rows = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = first + (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const count = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const w = [];
    let total = 0;
    for (let x = 0; x < count; x++) {
      w.push(lanczos((x + xmin - center + 0.5) * ss));
      total += w[x];
    }
    const k = w.map((v) => {
      const u = total !== 0 ? v / total : v;
      return Math.trunc(u < 0 ? -0.5 + u * 2 ** PRECISION_BITS : 0.5 + u * 2 ** PRECISION_BITS);
    });
    rows.push({ min: xmin, k });
  }
  return rows;
}

function clip8(sum) {
  return Math.min(Math.max(Math.floor(sum / 2 ** PRECISION_BITS), 0), 255);
}

/** RGB bytes (height, width, 3) -> (size, size, 3): Image.resize((size, size), LANCZOS, box). */
export function resizeLanczos(rgb, width, height, box, size) {
  const [x0, y0, x1, y1] = box.map(Math.fround);
  const needH = size !== width || x0 !== 0 || x1 !== size;
  const needV = size !== height || y0 !== 0 || y1 !== size;
  const vert = coefficients(height, y0, y1, size);
  const top = vert[0].min;
  const bottom = vert[size - 1].min + vert[size - 1].k.length;
  let src = rgb, srcWidth = width, shift = 0;
  if (needH) {
    const hor = coefficients(width, x0, x1, size);
    const tmp = new Uint8Array((bottom - top) * size * 3);
    for (let y = 0; y < bottom - top; y++) {
      for (let xx = 0; xx < size; xx++) {
        const { min, k } = hor[xx];
        for (let c = 0; c < 3; c++) {
          let sum = 1 << (PRECISION_BITS - 1);
          for (let x = 0; x < k.length; x++) sum += rgb[((y + top) * width + x + min) * 3 + c] * k[x];
          tmp[(y * size + xx) * 3 + c] = clip8(sum);
        }
      }
    }
    src = tmp;
    srcWidth = size;
    shift = top;
  }
  if (!needV) return src;
  const out = new Uint8Array(size * size * 3);
  for (let yy = 0; yy < size; yy++) {
    const { min, k } = vert[yy];
    for (let xx = 0; xx < srcWidth; xx++) {
      for (let c = 0; c < 3; c++) {
        let sum = 1 << (PRECISION_BITS - 1);
        for (let y = 0; y < k.length; y++) sum += src[((y + min - shift) * srcWidth + xx) * 3 + c] * k[y];
        out[(yy * size + xx) * 3 + c] = clip8(sum);
      }
    }
  }
  return out;
}

/** Pillow's JPEG draft: decode at 1/2, 1/4 or 1/8 when the picture is that much over 2*size.
 * The browser decodes at full size, so the block average stands in for libjpeg's DCT scaling. */
export function draftReduce(rgb, width, height, size) {
  const scale = Math.min(Math.floor(width / (2 * size)), Math.floor(height / (2 * size)));
  const a = [8, 4, 2, 1].find((f) => scale >= f) ?? 1;
  if (a === 1) return { rgb, width, height };
  const w = Math.ceil(width / a), h = Math.ceil(height / a);
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      for (let c = 0; c < 3; c++) {
        let sum = 0, n = 0;
        for (let dy = 0; dy < a && y * a + dy < height; dy++) {
          for (let dx = 0; dx < a && x * a + dx < width; dx++, n++) sum += rgb[((y * a + dy) * width + x * a + dx) * 3 + c];
        }
        out[(y * w + x) * 3 + c] = Math.round(sum / n);
      }
    }
  }
  return { rgb: out, width: w, height: h };
}

/** Centre square crop resized to size (RGB bytes), then gray when the model has one channel. */
export function prepareRGB(rgb, width, height, size, channels, isJpeg) {
  ({ rgb, width, height } = isJpeg ? draftReduce(rgb, width, height, size) : { rgb, width, height });
  const s = Math.min(width, height);
  const box = [(width - s) / 2, (height - s) / 2, (width + s) / 2, (height + s) / 2];
  const square = resizeLanczos(rgb, width, height, box, size);
  if (channels === 3) return square;
  const gray = new Uint8Array(size * size); // Pillow's convert("L"): ITU-R 601-2 in 16-bit fixed point
  for (let i = 0; i < gray.length; i++) {
    gray[i] = (square[3 * i] * 19595 + square[3 * i + 1] * 38470 + square[3 * i + 2] * 7471 + 0x8000) >> 16;
  }
  return gray;
}

/** "JPEG", "PNG", "WEBP", "BMP", "GIF" from a file's first bytes, or null: what scratchvae reads. */
export function sniffFormat(bytes) {
  const ascii = (from, to) => String.fromCharCode(...bytes.subarray(from, to));
  if (bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return "JPEG";
  if (ascii(0, 8) === "\x89PNG\r\n\x1a\n") return "PNG";
  if (ascii(0, 4) === "RIFF" && ascii(8, 12) === "WEBP") return "WEBP";
  if (ascii(0, 2) === "BM") return "BMP";
  if (ascii(0, 4) === "GIF8") return "GIF";
  return null;
}

// ---- The page ------------------------------------------------------------------------------------

const GRID = 16; // faces in the sample grid
const MAX_PIXELS = 64_000_000; // as scratchvae/data/imagefile.py: larger pictures are refused
const TEST = typeof location !== "undefined" && new URLSearchParams(location.search).has("test");
const $ = (id) => document.getElementById(id);

const results = { ready: false, message: null, decodes: 0, edits: 0, decode_ms: null };
const app = { ort: null, decoder: null, encoder: null, model: null, vectors: null, prior: null, sliders: 0,
  faces: [], selected: 0, timings: [], busy: false, again: null, playing: false, queue: Promise.resolve() };

/** Test mode (?test=1): results as JSON in the hidden #test-results, for the browser test. */
function report(patch) {
  Object.assign(results, patch);
  if (TEST) $("test-results").textContent = JSON.stringify(results);
}

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = false;
  report({ message: text });
}

function setStatus(text) {
  $("status").textContent = text;
}

/** Run an async handler; a failure becomes the visible message, never an uncaught error. */
function guard(fn) {
  return (...args) => fn(...args).catch((e) => showMessage(e.message || String(e)));
}

async function fetchJSON(name) {
  const response = await fetch(name);
  if (!response.ok) throw new Error(`${name}: ${response.status} ${response.statusText}: rebuild the site with export/to_web.py`);
  return response.json();
}

/** Runs on the models one after another: a slider, a morph and a photo may all want the model at once. */
function serial(task) {
  const run = app.queue.then(task);
  app.queue = run.catch(() => {});
  return run;
}

/** Decode n codes (Float32Array n * zDim) to images; records the time per face. */
async function decode(z, n) {
  let perFace;
  const out = await serial(async () => {
    const t0 = performance.now();
    const result = await app.decoder.run({ z: new app.ort.Tensor("float32", z, [n, app.model.z_dim]) });
    perFace = (performance.now() - t0) / n;
    return result;
  });
  if (n === 1) {
    app.timings = [...app.timings.slice(-19), perFace];
    const ms = median(app.timings);
    $("timing").textContent = `Decoding one face took ${ms.toFixed(1)} ms (median of the last ${app.timings.length}).`;
  }
  report({ decodes: results.decodes + n });
  return out.image.data;
}

function median(values) {
  const v = [...values].sort((a, b) => a - b);
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
}

/** Draw face i of a decoded batch (NHWC floats in [0, 1]) into a canvas. */
function paint(canvas, images, i) {
  const { image_size: s, channels: c } = app.model;
  const ctx = canvas.getContext("2d");
  const picture = ctx.createImageData(s, s);
  for (let p = 0; p < s * s; p++) {
    for (let k = 0; k < 3; k++) {
      const v = images[(i * s * s + p) * c + (c === 1 ? 0 : k)];
      picture.data[4 * p + k] = Math.round(Math.min(Math.max(v || 0, 0), 1) * 255);
    }
    picture.data[4 * p + 3] = 255;
  }
  ctx.putImageData(picture, 0, 0);
}

/** A face's code with its slider strengths added: z + sum_k s_k v_k (the sum in float64). */
function editedZ(face) {
  const z = Float32Array.from(face.base);
  if (!app.vectors) return z;
  const direction = new Float64Array(z.length);
  face.strengths.forEach((s, k) => {
    if (s !== 0) app.vectors.vectors[k].forEach((v, j) => { direction[j] += s * v; });
  });
  return z.map((x, j) => x + Math.fround(direction[j]));
}

function newFace(label, base) {
  return { label, base, strengths: new Float64Array(app.sliders), canvas: null };
}

/** Rebuild the grid's buttons and the morph lists from app.faces, then decode every face. */
async function renderGrid() {
  const grid = $("grid");
  grid.replaceChildren();
  const s = app.model.image_size;
  app.faces.forEach((face, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "face";
    button.setAttribute("aria-label", `Select ${face.label}`);
    button.setAttribute("aria-pressed", String(i === app.selected));
    face.canvas = Object.assign(document.createElement("canvas"), { width: s, height: s });
    button.append(face.canvas, Object.assign(document.createElement("span"), { textContent: face.label.replace(/^face /, "") }));
    button.addEventListener("click", guard(() => select(i)));
    grid.append(button);
  });
  for (const id of ["morph-a", "morph-b"]) {
    const list = $(id), keep = list.value;
    list.replaceChildren(...app.faces.map((f, i) => new Option(f.label, String(i))));
    list.value = keep && Number(keep) < app.faces.length ? keep : String(id === "morph-a" ? 0 : 1);
  }
  const z = new Float32Array(app.faces.length * app.model.z_dim);
  app.faces.forEach((f, i) => z.set(editedZ(f), i * app.model.z_dim));
  const images = await decode(z, app.faces.length);
  app.faces.forEach((f, i) => paint(f.canvas, images, i));
  await showSelected();
}

async function select(i) {
  app.selected = i;
  document.querySelectorAll("#grid .face").forEach((b, j) => b.setAttribute("aria-pressed", String(j === i)));
  const face = app.faces[i];
  $("selected-label").textContent = face.label;
  document.querySelectorAll("#sliders input").forEach((input, k) => {
    input.value = String(face.strengths[k]);
    input.nextElementSibling.textContent = face.strengths[k].toFixed(1);
  });
  await showSelected();
}

/** Decode the selected face as edited, into its tile and the large view. Calls arriving while a
 * decode runs are folded into one more decode afterwards (a dragged slider fires many events). */
async function showSelected() {
  if (app.busy) {
    app.again = true;
    return;
  }
  app.busy = true;
  try {
    do {
      app.again = false;
      const face = app.faces[app.selected];
      const images = await decode(editedZ(face), 1);
      paint(face.canvas, images, 0);
      paint($("selected"), images, 0);
    } while (app.again);
  } finally {
    app.busy = false;
  }
}

function readSeed() {
  const text = $("seed").value.trim();
  if (!/^-?\d+$/.test(text)) throw new Error(`seed ${JSON.stringify(text)}: write a whole number, e.g. 0`);
  return BigInt(text);
}

/** The sample grid for the seed and temperature: python -m scratchvae.sample --seed S draws the same z
 * (with --prior prior.npz when the site carries the fitted prior). */
async function drawFaces() {
  const seed = readSeed(), temperature = Number($("temperature").value);
  $("temperature-value").textContent = temperature.toFixed(2);
  const z = app.prior ? drawPrior(app.prior, seed, GRID, temperature) : drawZ(seed, GRID, app.model.z_dim, temperature);
  const photos = app.faces.filter((f) => f.photo);
  const samples = Array.from({ length: GRID }, (_, i) =>
    newFace(`face ${i}`, z.subarray(i * app.model.z_dim, (i + 1) * app.model.z_dim)));
  app.faces = [...samples, ...photos];
  app.selected = Math.min(app.selected, app.faces.length - 1);
  await renderGrid();
  await select(app.selected);
  await showStrip();
}

function buildSliders() {
  const box = $("sliders");
  if (!app.vectors) {
    $("no-vectors").hidden = false;
    return;
  }
  const { names, counts, ratio } = app.vectors;
  for (let k = 0; k < app.sliders; k++) {
    const row = document.createElement("div");
    row.className = "slider";
    const label = Object.assign(document.createElement("label"), { htmlFor: `attr-${k}`, textContent: names[k].replaceAll("_", " ") });
    label.title = `${counts[k][0]} images with, ${counts[k][1]} without; length / spread ${ratio[k]}`;
    const input = Object.assign(document.createElement("input"), { type: "range", id: `attr-${k}`, min: "-3", max: "3", step: "0.1", value: "0" });
    const output = Object.assign(document.createElement("output"), { textContent: "0.0" });
    output.htmlFor = input.id;
    input.addEventListener("input", guard(async () => {
      const face = app.faces[app.selected];
      face.strengths[k] = Number(input.value);
      output.textContent = face.strengths[k].toFixed(1);
      await showSelected();
      report({ edits: results.edits + 1, edited: app.selected });
    }));
    row.append(label, input, output);
    box.append(row);
  }
  $("reset").hidden = false;
}

/** Vectors from vectors.json, refused (with the sliders left out) when made for another model. */
async function loadVectors() {
  if (!app.model.vectors) return null;
  const v = await fetchJSON(app.model.vectors);
  const zDim = app.model.z_dim;
  if (v.z_dim !== zDim || !v.vectors.every((row) => row.length === zDim)) {
    showMessage(`The attribute vectors hold ${v.z_dim}-dimensional directions but the model's z has ${zDim}: ` +
      "rebuild the site with vectors made for this model. The sliders are left out.");
    return null;
  }
  if (v.identity !== app.model.identity) {
    showMessage("The attribute vectors were made for another checkpoint: rebuild the site with this model's vectors. " +
      "The sliders are left out.");
    return null;
  }
  v.vectors = v.vectors.map((row) => Float64Array.from(row));
  return v;
}

/** The fitted prior from prior.json; refused (faces then from N(0, I)) when made for another model. */
async function loadPrior() {
  if (!app.model.prior) return null;
  const p = await fetchJSON(app.model.prior);
  const d = app.model.z_dim;
  const fits = p.z_dim === d && p.weights.length >= 1 && p.means.length === p.weights.length &&
    p.cholesky.length === p.weights.length && p.means.every((m) => m.length === d) &&
    p.cholesky.every((c) => c.length === (d * (d + 1)) / 2);
  if (!fits) {
    showMessage(`The prior does not fit the model (codes of ${p.z_dim} numbers, the model's z has ${d}): rebuild the ` +
      "site with the prior fitted for this model. Faces are drawn from N(0, I).");
    return null;
  }
  if (p.identity !== app.model.identity) {
    showMessage("The prior was fitted for another checkpoint: rebuild the site with this model's prior. " +
      "Faces are drawn from N(0, I).");
    return null;
  }
  $("prior-note").hidden = false;
  $("prior-components").textContent = String(p.weights.length);
  return { weights: Float64Array.from(p.weights), means: p.means.map((m) => Float64Array.from(m)),
    cholesky: p.cholesky.map((c) => Float64Array.from(c)) };
}

/** A dropped or chosen photo: read as scratchvae reads images, encoded (z = z_mean), then selected. */
async function usePhoto(file) {
  $("message").hidden = true;
  const bytes = new Uint8Array(await file.arrayBuffer());
  const format = sniffFormat(bytes);
  if (!format) throw new Error(`${file.name}: not a JPEG, PNG, WebP, BMP or GIF image`);
  let bitmap;
  try {
    bitmap = await createImageBitmap(new Blob([bytes]), { imageOrientation: "from-image", premultiplyAlpha: "none", colorSpaceConversion: "none" });
  } catch {
    throw new Error(`${file.name}: the ${format} image could not be decoded (damaged?)`);
  }
  const { width: w, height: h } = bitmap;
  if (w * h > MAX_PIXELS) throw new Error(`${file.name}: ${w}x${h} is over the ${MAX_PIXELS.toLocaleString("en")} pixel limit`);
  const canvas = Object.assign(document.createElement("canvas"), { width: w, height: h });
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#fff"; // transparent pixels on white, as scratchvae composites them
  ctx.fillRect(0, 0, w, h);
  ctx.drawImage(bitmap, 0, 0);
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const rgb = new Uint8Array(w * h * 3);
  for (let p = 0; p < w * h; p++) rgb.set(rgba.subarray(4 * p, 4 * p + 3), 3 * p);
  const { image_size: s, channels: c } = app.model;
  const pixels = prepareRGB(rgb, w, h, s, c, format === "JPEG");
  const x = Float32Array.from(pixels, (v) => v * Math.fround(1 / 255));
  const out = await serial(() => app.encoder.run({ image: new app.ort.Tensor("float32", x, [1, s, s, c]) }));
  const face = Object.assign(newFace(`photo: ${file.name}`, Float32Array.from(out.z_mean.data)), { photo: true });
  app.faces.push(face);
  app.selected = app.faces.length - 1;
  await renderGrid();
  await select(app.selected);
  setStatus(`Encoded ${file.name}; it is the selected face.`);
  report({ photo: { name: file.name, pixels: Array.from(pixels), z: Array.from(face.base) } });
}

/** The two chosen faces' codes, as edited, and the chosen path. */
function morphEnds() {
  const a = app.faces[Number($("morph-a").value)], b = app.faces[Number($("morph-b").value)];
  const walk = $("morph-kind").value === "linear" ? lerp : slerp;
  return { a: editedZ(a), b: editedZ(b), walk };
}

async function showMorphAt(t) {
  const { a, b, walk } = morphEnds();
  paint($("morph-view"), await decode(walk(a, b, t), 1), 0);
  $("morph-t").value = String(t);
}

/** Eight frames across t in [0, 1] as one strip, and the view at the position slider's t. */
async function showStrip() {
  const { a, b, walk } = morphEnds();
  const steps = 8, zDim = app.model.z_dim, s = app.model.image_size;
  const z = new Float32Array(steps * zDim);
  for (let i = 0; i < steps; i++) z.set(walk(a, b, i / (steps - 1)), i * zDim);
  const images = await decode(z, steps);
  const strip = $("morph-strip");
  Object.assign(strip, { width: steps * s, height: s });
  const tile = Object.assign(document.createElement("canvas"), { width: s, height: s });
  for (let i = 0; i < steps; i++) {
    paint(tile, images, i);
    strip.getContext("2d").drawImage(tile, i * s, 0);
  }
  await showMorphAt(Number($("morph-t").value));
  report({ strips: (results.strips || 0) + 1 });
}

/** Play the walk there and back in the view for six seconds (the button stops it sooner). */
async function playMorph() {
  if (app.playing) {
    app.playing = false;
    return;
  }
  await showStrip();
  app.playing = true;
  $("morph-play").textContent = "Stop";
  const start = performance.now();
  while (app.playing && performance.now() - start < 6000) {
    const phase = ((performance.now() - start) / 2000) % 2;
    await showMorphAt(phase < 1 ? phase : 2 - phase);
    await new Promise(requestAnimationFrame);
  }
  app.playing = false;
  $("morph-play").textContent = "Play";
}

/** Test mode: the mean time of 20 single-face decodes after 3 warm-up runs, timed as a whole
 * (performance.now() ticks in 0.1 ms steps on a page without cross-origin isolation). */
async function measureDecode() {
  const feeds = { z: new app.ort.Tensor("float32", editedZ(app.faces[0]), [1, app.model.z_dim]) };
  const ms = await serial(async () => {
    for (let i = 0; i < 3; i++) await app.decoder.run(feeds);
    const t0 = performance.now();
    for (let i = 0; i < 20; i++) await app.decoder.run(feeds);
    return (performance.now() - t0) / 20;
  });
  report({ decode_ms: ms });
}

function wire() {
  $("sample-form").addEventListener("submit", guard(async (event) => {
    event.preventDefault();
    await drawFaces();
  }));
  $("new-faces").addEventListener("click", guard(async () => {
    $("seed").value = String(readSeed() + 1n);
    await drawFaces();
  }));
  $("temperature").addEventListener("input", guard(drawFaces));
  $("reset").addEventListener("click", guard(async () => {
    app.faces[app.selected].strengths.fill(0);
    await select(app.selected);
  }));
  $("photo").addEventListener("change", guard(async () => {
    try {
      if ($("photo").files.length) await usePhoto($("photo").files[0]);
    } finally {
      $("photo").value = ""; // the same file chosen again is read again
    }
  }));
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", guard(async (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) await usePhoto(file);
  }));
  $("morph-play").addEventListener("click", guard(playMorph));
  for (const id of ["morph-a", "morph-b", "morph-kind"]) $(id).addEventListener("change", guard(showStrip));
  $("morph-t").addEventListener("input", guard(() => showMorphAt(Number($("morph-t").value))));
}

async function main() {
  if (typeof WebAssembly !== "object") {
    throw new Error("This browser has no WebAssembly, which the model needs: use a current Firefox, Chrome, Edge or Safari.");
  }
  setStatus("Loading the model…");
  try {
    app.ort = await import("./ort/ort.wasm.min.js");
  } catch (e) {
    throw new Error(`onnxruntime-web could not be loaded (${e.message}): rebuild the site with export/to_web.py`);
  }
  app.ort.env.wasm.numThreads = 1; // threads need cross-origin isolation, which a plain static server lacks
  app.ort.env.wasm.wasmPaths = { mjs: new URL("ort/ort-wasm-simd-threaded.js", import.meta.url).href,
    wasm: new URL("ort/ort-wasm-simd-threaded.wasm", import.meta.url).href };
  app.model = await fetchJSON("model.json");
  const options = { executionProviders: ["wasm"] };
  try {
    app.decoder = await app.ort.InferenceSession.create("decoder.onnx", options);
    app.encoder = await app.ort.InferenceSession.create("encoder.onnx", options);
  } catch (e) {
    throw new Error(`The model could not be loaded (${e.message || e}): rebuild the site with export/to_web.py`);
  }
  for (const canvas of ["selected", "morph-view"]) Object.assign($(canvas), { width: app.model.image_size, height: app.model.image_size });
  app.vectors = await loadVectors();
  app.prior = await loadPrior();
  if (typeof app.model.temperature === "number") $("temperature").value = String(app.model.temperature);
  app.sliders = app.vectors ? app.vectors.sliders : 0;
  buildSliders();
  wire();
  await drawFaces();
  setStatus(`Ready: ${app.model.image_size}×${app.model.image_size} faces, z of ${app.model.z_dim}` +
    `${app.prior ? " from the fitted prior" : ""}, ${app.sliders} attribute sliders. Click a face to edit it.`);
  if (TEST) await measureDecode();
  report({ ready: true, z_dim: app.model.z_dim, image_size: app.model.image_size, faces: app.faces.length,
    prior: app.prior ? app.prior.weights.length : 0,
    sliders: app.vectors ? app.vectors.names.slice(0, app.sliders) : [] });
}

if (typeof document !== "undefined") {
  main().catch((e) => {
    setStatus("The page could not start.");
    showMessage(e.message || String(e));
    report({ ready: false, failed: true });
  });
}
