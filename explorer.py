"""The latent explorer: a self-contained web page to move through the latent space and draw digits.

    python visualize.py    # writes output/explorer.html with the other figures; open it in any browser
    python explorer.py     # output/explorer.png: the page in headless Chromium, a digit drawn on it

The page (the template explorer.html filled with data) holds the two latent-2 models, Autoencoder
and VAE, whole, and the selected VAE's decoder for its sliders; their weights are int8 with one
float32 scale per output row (a quarter of float32's size), dequantized by the page when it opens.
"""
import argparse
import base64
import json
import os
import sys

import torch

from common import UserError, atomic_write, run_cli
from metrics import ACTIVE_THRESHOLD, encode_means, reconstruct
from models import MODEL_NAMES

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "explorer.html")
PAGE_LIMIT = 16 * 2**20  # bytes: a page that opens quickly from disk
N_POINTS = 3000  # test codes drawn on each plane (of 10,000)


def quantize(weight):
    """Symmetric int8 per output row: weight ~ q * scale[:, None], |error| <= scale / 2."""
    scale = weight.abs().amax(dim=1).clamp(min=1e-30) / 127
    return torch.round(weight / scale[:, None]).to(torch.int8), scale


def dequantized(model):
    """A copy of model with the weights the page computes with, for exact comparisons."""
    import copy
    model = copy.deepcopy(model)
    with torch.no_grad():
        for layer in linear_layers(model):
            q, scale = quantize(layer.weight)
            layer.weight.copy_(q.float() * scale[:, None])
    return model


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
        variance = codes.double().var(dim=0)
        dims = [int(d) for d in variance.argsort(descending=True) if variance[d] > ACTIVE_THRESHOLD]
        entry["sliders"] = {"dims": dims}
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


def write_page(chosen, test, path):
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
    note = ("Weights are stored as int8 with one float32 scale per output row and computed with in float32; "
            "the page was written by python visualize.py.")

    def fill(models):
        data = json.dumps({"models": models, "note": note}, separators=(",", ":"), allow_nan=False)
        return template.replace("/*DATA*/", data.replace("</", "<\\/"))  # JSON inside a script element

    if not any("plane" in e for e in entries):
        return None
    page = fill(entries)
    if len(page.encode()) > PAGE_LIMIT:
        page = fill([e for e in entries if "sliders" not in e])
    atomic_write(path, lambda f: f.write(page), mode="w")
    return len(page.encode())


# The browser part: headless Chromium through selenium, for the screenshot and the tests.
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def open_browser(width=1400, height=1500):
    """Headless Chromium driven by chromedriver (Debian's packages chromium and chromium-driver), with
    its console kept for reading; raises UserError when it is not there."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise UserError("selenium is not installed: pip install -r requirements.txt")
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(binary):
            raise UserError(f"no {binary}: install Chromium and its driver (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except Exception as e:
        raise UserError(f"headless Chromium did not start: {str(e).strip().splitlines()[0]}")


def load_page(driver, path, timeout=60):
    """Open the page from disk and wait until its script has run."""
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get("file://" + os.path.abspath(path))
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return window.explorer && window.explorer.ready"))


def draw_stroke(driver, element, points):
    """Press, move through points (pixels from the element's top left), release: real pointer events."""
    from selenium.webdriver.common.action_chains import ActionChains
    width, height = element.size["width"], element.size["height"]
    chain = ActionChains(driver, duration=10)
    x, y = points[0]
    chain.move_to_element_with_offset(element, x - width // 2, y - height // 2).click_and_hold()
    for nx, ny in points[1:]:
        chain.move_by_offset(nx - x, ny - y)
        x, y = nx, ny
    chain.release().perform()


THREE = [(70, 60), (120, 40), (180, 50), (200, 90), (170, 130), (130, 140), (175, 150), (205, 190), (190, 235),
         (130, 250), (75, 230)]  # a hand-drawn 3 on the 280 x 280 pad


def screenshot(page, png):
    """The page with a digit drawn and the pointer on the first plane, as a PNG; returns the
    milliseconds the page takes to decode one image (mean of 200, on a latent-2 model)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.common.exceptions import WebDriverException
    driver = open_browser()
    try:
        load_page(driver, page)
        draw_stroke(driver, driver.find_element(By.ID, "pad"), THREE)
        plane = driver.find_elements(By.CSS_SELECTOR, "canvas.plane")[0]
        ActionChains(driver).move_to_element_with_offset(plane, 40, -60).perform()
        ms = driver.execute_script("const t = performance.now(); for (let i = 0; i < 200; i++) "
                                   "explorer.decode(explorer.models[0], [i / 100 - 1, 0.5]); return (performance.now() - t) / 200")
        for _ in range(2):  # the page reflows at the new size: measure again
            driver.set_window_size(1400, driver.execute_script("return document.documentElement.scrollHeight") + 140)
        data = driver.get_screenshot_as_png()
    except WebDriverException as e:  # a page that never finishes loading, a browser that went away
        raise UserError(f"{page} did not work in headless Chromium: {(e.msg or type(e).__name__).splitlines()[0]}")
    finally:
        driver.quit()
    atomic_write(png, lambda f: f.write(data))
    return ms


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--page", default="output/explorer.html", help="the page visualize.py wrote (default: %(default)s)")
    p.add_argument("--png", default="output/explorer.png", help="where the screenshot goes (default: %(default)s)")
    args = p.parse_args(argv)
    if not os.path.exists(args.page):
        raise UserError(f"no page at {args.page}: run python visualize.py first")
    ms = screenshot(args.page, args.png)
    print(f"wrote {args.png}; the page decodes one image in {ms:.1f} ms")


if __name__ == "__main__":
    run_cli(main)
