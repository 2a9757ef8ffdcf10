"""The latent explorer: a self-contained web page to move through the latent space and draw digits
(or, for a Fashion-MNIST run, articles of clothing: the page takes its words and class names from the dataset).

    python visualize.py    # writes output/explorer.html with the other figures; open it in any browser
    python explorer.py     # output/explorer.png: the page in headless Chromium, a digit drawn on it

The page (the template explorer.html filled with data) holds the two latent-2 models, Autoencoder
and VAE, whole, and the selected VAE's decoder for its sliders; their weights are int8 with one
float32 scale per output row (a quarter of float32's size), dequantized by the page when it opens.
"""
import base64
import json
import os
import sys

import torch

from models import MODEL_NAMES
from vaestudy.datasets import MNIST
from vaestudy.files import atomic_write
from vaestudy.metrics import active_dims, encode_means, reconstruct

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "explorer.html")
PAGE_LIMIT = 16 * 2**20  # bytes: a page that opens quickly from disk
N_POINTS = 3000  # test codes drawn on each plane (of 10,000)


def quantize(weight):
    """Symmetric int8 per output row: weight ~ q * scale[:, None], |error| <= scale / 2."""
    scale = weight.abs().amax(dim=1).clamp(min=1e-30) / 127
    return torch.round(weight / scale[:, None]).to(torch.int8), scale


def linear_layers(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


def b64(tensor):
    return base64.b64encode(tensor.detach().contiguous().cpu().numpy().tobytes()).decode("ascii")


def layers(sequential):
    specs = []
    for layer in linear_layers(sequential):
        q, scale = quantize(layer.weight.detach().float())
        specs.append({"in": layer.in_features, "out": layer.out_features, "q": b64(q), "scale": b64(scale),
                      "b": b64(layer.bias.detach().float())})
    return specs


def model_entry(run, name, test, whole=True, plane=False, sliders=False):
    """What the page knows of one run: its weights (the decoder alone unless whole), its test
    codes for a plane, or its active dimensions for sliders; None for weights or codes that are not
    finite."""
    model, (test_x, test_y) = run.model, test
    codes = encode_means(model, test_x).float()
    if not all(torch.isfinite(p).all() for p in model.parameters()) or not torch.isfinite(codes).all():
        return None
    entry = {"name": name, "kind": run.config.model, "latent": run.config.latent,
             "checkpoint": run.path, "epochs": run.ckpt["epoch"],
             "test_mse": float((reconstruct(model, test_x) - test_x).pow(2).mean()),
             "decoder": {"layers": layers(model.decoder)}}
    if whole:
        entry["encoder"] = {"layers": layers(model.encoder), "final_relu": run.config.code_relu}
    if plane:
        keep = torch.randperm(len(test_x), generator=torch.Generator().manual_seed(0))[:N_POINTS].to(codes.device)
        low, high = torch.quantile(codes, 0.005, dim=0), torch.quantile(codes, 0.995, dim=0)
        margin = 0.1 * (high - low)
        entry["plane"] = {"codes": b64(codes[keep]), "labels": b64(test_y[keep].to(torch.uint8)),
                          "extent": [float(low[0] - margin[0]), float(high[0] + margin[0]),
                                     float(low[1] - margin[1]), float(high[1] + margin[1])]}
    if sliders:
        entry["sliders"] = {"dims": active_dims(codes)}
    return entry


def page_runs(groups, selected):
    """The runs the page is built from, as (run, name, whole, plane, sliders): each model's latent-2
    run of the study's configuration (of the first variant that has one where the study's has
    none), lowest seed; and the selected latent size of that VAE's variant, decoder only.
    groups: {(kind, settings): {latent: [runs, by seed]}}; selected: {(kind, settings): latent size}."""
    chosen = []
    for kind in ("ae", "vae"):
        options = [(settings, by_latent) for (k, settings), by_latent in groups.items() if k == kind and 2 in by_latent]
        if not options:
            continue
        settings, by_latent = min(options, key=lambda o: o[0] != ())
        chosen.append((by_latent[2][0], f"{MODEL_NAMES[kind]} latent 2", True, True, False))
        latent = selected.get((kind, settings)) if kind == "vae" else None
        if latent is not None and latent != 2 and latent in by_latent:
            chosen.append((by_latent[latent][0], f"VAE latent {latent}", False, False, True))
    return chosen


def write_page(chosen, test, path, dataset=MNIST):
    """Fill the template with the chosen runs and write the page; the slider decoder is left out if
    the page would exceed PAGE_LIMIT with it. Returns the page's size in bytes, or None when there
    is no latent-2 model to show."""
    entries = []
    for run, name, whole, plane, sliders in chosen:
        entry = model_entry(run, name, test, whole, plane, sliders)
        if entry is None:
            print(f"leaving {run.path} out of the explorer: its weights or codes are not finite", file=sys.stderr)
        else:
            entries.append(entry)
    entries = [e for e in entries if "sliders" not in e or e["sliders"]["dims"]]  # no active dimension: no sliders
    with open(TEMPLATE) as f:
        template = f.read()
    note = ("Weights are stored as int8 with one float32 scale per output row, and the page computes in float32; "
            "it was written by python visualize.py.")
    words = {"title": dataset.title, "classes": list(dataset.classes), "class_word": dataset.class_word,
             "noun": dataset.noun}

    def fill(models):
        data = json.dumps({"models": models, "note": note, "dataset": words}, separators=(",", ":"), allow_nan=False)
        return template.replace("/*DATA*/", data.replace("</", "<\\/"))  # JSON inside a script element

    if not any("plane" in e for e in entries):
        return None
    page = fill(entries)
    if len(page.encode()) > PAGE_LIMIT:
        page = fill([e for e in entries if "sliders" not in e])
    atomic_write(path, lambda f: f.write(page), mode="w")
    return len(page.encode())
