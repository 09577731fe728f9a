"""What `evaluate` hands back: the console table, the JSON record, and --report DIR's report.md with
its pictures (reconstructions, samples, and histograms of a few latent dimensions of z_mean against
the N(0, 1) density, drawn with Pillow in the style of scratchvae.images).
"""

import io
import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from scratchvae import images
from scratchvae.run import atomic

ROWS = (("total", "total (beta*MSE + KL)", "{:.2f}"), ("reconstruction", "reconstruction (beta*MSE)", "{:.2f}"),
        ("kl", "KL (nats per image)", "{:.2f}"), ("mse", "MSE per pixel", "{:.5f}"),
        ("psnr", "PSNR (dB)", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"))
# A --recon sigma model's total is the sigma-VAE's: the Gaussian likelihood at variance MSE, in nats.
SIGMA_LABELS = {"total": "total (sigma-VAE, nats per image)",
                "reconstruction": "reconstruction (D/2 log(2 pi e MSE), nats)"}


def rows_for(record):
    """ROWS with the total and reconstruction labelled in the units of the record's objective."""
    if record.get("recon") != "sigma":
        return ROWS
    return tuple((key, SIGMA_LABELS.get(key, label), fmt) for key, label, fmt in ROWS)


def objective(record):
    """The objective in words for report.md: the seed's beta, or the sigma-VAE."""
    what = "sigma-VAE" if record.get("recon") == "sigma" else f"beta {record['beta']:g}"
    return f"{what}, {record.get('decoder', 'transpose')} decoder"


def _fmt(fmt, v):
    return "n/a" if v is None else fmt.format(v)


def ratio(a, b):
    return None if a is None or not b else a / b


def table_rows(record):
    """(header, rows) of the console and Markdown tables: reconstruction measures, then samples."""
    rec = [[label, _fmt(fmt, record["z_sampled"][key]), _fmt(fmt, record["z_mean"][key])]
           for key, label, fmt in rows_for(record)]
    s = record["samples"]
    gen = [["blur (variance of the Laplacian)", _fmt("{:.5f}", s["blur"]["samples"]),
            _fmt("{:.5f}", s["blur"]["real"]), _fmt("{:.3f}", s["blur"]["ratio"])],
           ["checkerboard (Nyquist energy share)", _fmt("{:.5f}", s["checkerboard"]["samples"]),
            _fmt("{:.5f}", s["checkerboard"]["real"]), _fmt("{:.3f}", s["checkerboard"]["ratio"])]]
    if "grid" in s:  # records written before the grid measure lack it
        gen.append(["upsampling grid (peak / neighbour power)", _fmt("{:.3f}", s["grid"]["samples"]),
                    _fmt("{:.3f}", s["grid"]["real"]), _fmt("{:.3f}", s["grid"]["ratio"])])
    return ((["reconstruction", "z sampled", "z = mu"], rec),
            ([f"{s.get('count', '')} samples of {s.get('codes', 'z ~ N(0, I)')}".strip(), "samples", "real", "ratio"],
             gen))


def _distance_cells(d):
    kid = f"{d['kid']:.6f}" if d["kid_subsets"] == 1 else f"{d['kid']:.6f} ± {d['kid_std']:.6f}"
    return [str(d["count"]), f"{d['frechet_distance']:.4f}", kid]


def feature_rows(record):
    """(header, rows) of the feature distances, or None without --features."""
    f = record.get("features")
    if not f:
        return None
    ref = f["reference"]
    rows = [[f"samples of {record['samples'].get('codes', 'z ~ N(0, I)')}"] + _distance_cells(f["samples"]),
            ["reconstructions (z = mu)"] + _distance_cells(f["reconstructions"])]
    if f.get("training_reconstructions"):
        rows.append(["training reconstructions (z = mu): any prior's best"] +
                    _distance_cells(f["training_reconstructions"]))
    for key in ("at_sample_count", "at_reference_count") if f["floor"] else ():
        row = ["floor: training photographs"] + _distance_cells(f["floor"][key])
        if row not in rows:  # the same set when there are as many samples as reference images
            rows.append(row)
    return [f"against {ref['images']} {ref['what']}", "images", "Fréchet distance", "KID"], rows


def feature_lines(record):
    """The lines under the feature table: the network, the seeds' spread, what the counts mean."""
    f = record.get("features")
    if not f:
        return []
    size = "any size" if f["input_size"] is None else "{}x{} bicubic".format(*f["input_size"])
    lines = [f"feature network {os.path.basename(f['model'])}: {f['layout']}, {size}; {f['dims']} features. "
             f"Its distances compare only models measured with the same file."]
    seeds = f.get("sample_seeds")
    if seeds:
        fd, kid = seeds["frechet_distance_spread"], seeds["kid_spread"]
        lines.append(f"samples over seeds {','.join(map(str, seeds['seeds']))}: Fréchet distance median "
                     f"{fd['median']:.4f} (range {fd['range'][0]:.4f} to {fd['range'][1]:.4f}); KID median "
                     f"{kid['median']:.6f} (range {kid['range'][0]:.6f} to {kid['range'][1]:.6f})")
    ref, n = f["reference"]["images"], f["samples"]["count"]
    if ref < n:
        lines.append(f"the reference is the {ref} {f['reference']['what']}, all there are: the Fréchet distance is "
                     f"biased upward at such counts, so compare it with the floor and between models at equal counts")
    if f["floor"] is None:
        lines.append("no floor: it needs the run's own training photographs (evaluate its own --data, held-out split)")
    return lines


def console_table(record):
    lines = [f"{record['images']} {record['split']} images of {record['data']} at "
             f"{record['image_size']}x{record['image_size']}, seed {record['seed']}"]
    for table in [*table_rows(record), feature_rows(record)]:
        lines += _text_table(table)
    notes = feature_lines(record)
    return "\n".join(lines + ([""] + notes if notes else []))


def _text_table(table):
    if table is None:
        return []
    header, rows = table
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    out = ["", "  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(header)),
           "-" * (sum(widths) + 2 * (len(widths) - 1))]
    return out + ["  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
                  for r in rows]


def write_json(path, record):
    """Every number of the record as strict JSON (a non-finite number, from a diverged model, is null)."""
    atomic.write_bytes(path, (json.dumps(_finite(record), indent=2, allow_nan=False) + "\n").encode())


def _finite(v):
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_report(folder, record, rec, gen, command):
    """report.md, reconstructions.png, samples.png and latents.png into folder."""
    os.makedirs(folder, exist_ok=True)
    shown = rec["shown"]
    images.save_rows(os.path.join(folder, "reconstructions.png"),
                     [shown["original"], shown["z_mean"], shown["z_sampled"]],
                     labels=[record["split"], "z = mu", "z sampled"])
    images.save_grid(os.path.join(folder, "samples.png"), gen["shown"], ncols=8)
    save_latent_histograms(os.path.join(folder, "latents.png"), rec["latents"])
    md = [f"# Evaluation of {record['checkpoint']}", "", f"`{command}`", "",
          f"{record['images']} {record['split']} images of {record['data']} at "
          f"{record['image_size']}x{record['image_size']} ({objective(record)}, seed {record['seed']}); "
          f"{record['samples'].get('count', record['images'])} samples of "
          f"{record['samples'].get('codes', 'z ~ N(0, I)')}. Definitions: docs/EVALUATE.md.", ""]
    tables = list(table_rows(record)) + ([feature_rows(record)] if feature_rows(record) else [])
    for header, rows in tables:
        md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(r) + " |" for r in rows]
        md.append("")
    md += [f"- {line}" for line in feature_lines(record)]
    md += ["", "## Reconstructions", "", f"Top: {record['split']} images; middle: decoded from z = mu; "
           f"bottom: decoded from z sampled as in training.", "", "![reconstructions](reconstructions.png)", "",
           "## Samples", "", "![samples](samples.png)", "",
           "## Latent codes", "", f"Histograms of z_mean over the {record['images']} images for the first "
           f"{rec['latents'].shape[1]} latent dimensions, against the N(0, 1) density (the prior).", "",
           "![latents](latents.png)", ""]
    atomic.write_bytes(os.path.join(folder, "report.md"), "\n".join(md).encode())


def save_latent_histograms(path, z, bins=40, panel=(220, 160), ncols=4):
    """One panel per column of z (N, k): a density histogram and the N(0, 1) curve over the same axis."""
    z = np.asarray(z, np.float64)
    k = z.shape[1]
    ncols = max(1, min(ncols, k))
    nrows = math.ceil(k / ncols)
    pw, ph = panel
    legend_h = 24
    img = Image.new("RGB", (ncols * pw, nrows * ph + legend_h), images.BACKGROUND)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    black, bar_color, curve_color = (0, 0, 0), images.COLORS[0], images.COLORS[1]
    draw.rectangle([10, 8, 24, 18], fill=bar_color)
    draw.text((30, 13), "histogram of z_mean (density)", fill=black, font=font, anchor="lm")
    draw.line([(230, 13), (250, 13)], fill=curve_color, width=3)
    draw.text((256, 13), "N(0, 1)", fill=black, font=font, anchor="lm")
    finite = z[np.isfinite(z)]
    # The axis spans the prior's +-4 or 99.5% of the codes, whichever is wider; a few far codes are
    # counted in the end bins rather than squeezing every panel.
    half = max(4.0, math.ceil(float(np.quantile(np.abs(finite), 0.995))) if finite.size else 4.0)
    step = 2 if half <= 6 else math.ceil(half / 3)
    edges = np.linspace(-half, half, bins + 1)
    grid = np.linspace(-half, half, 200)
    normal = np.exp(-grid ** 2 / 2) / math.sqrt(2 * math.pi)
    for d in range(k):
        col = z[:, d][np.isfinite(z[:, d])]
        counts, _ = np.histogram(np.clip(col, -half, half), bins=edges)
        density = counts / max(1, len(col)) / (edges[1] - edges[0])
        y_top = 1.1 * max(float(density.max(initial=0.0)), float(normal.max()))
        ox, oy = (d % ncols) * pw, legend_h + (d // ncols) * ph
        left, right, top, bottom = ox + 10, ox + pw - 10, oy + 18, oy + ph - 22

        def px(v):
            return left + (v + half) / (2 * half) * (right - left)

        def py(v):
            return bottom - v / y_top * (bottom - top)

        sd = float(col.std()) if len(col) else float("nan")
        mean = float(col.mean()) if len(col) else float("nan")
        draw.text(((left + right) / 2, oy + 9), f"z[{d}]  mean {mean:.2f}  sd {sd:.2f}", fill=black, font=font,
                  anchor="mm")
        for i, v in enumerate(density):
            if v > 0:
                draw.rectangle([px(edges[i]), py(v), max(px(edges[i]), px(edges[i + 1]) - 1), bottom], fill=bar_color)
        draw.line([(px(g), py(p)) for g, p in zip(grid, normal)], fill=curve_color, width=2)
        draw.line([(left, bottom), (right, bottom)], fill=black)
        for t in range(-int(half // step) * step, int(half) + 1, step):
            draw.line([(px(t), bottom), (px(t), bottom + 3)], fill=black)
            draw.text((px(t), bottom + 4), str(t), fill=black, font=font, anchor="mt")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic.write_bytes(path, buf.getvalue())
