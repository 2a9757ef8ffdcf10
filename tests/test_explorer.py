"""The latent explorer page in a real browser (headless Chromium): its decode and encode agree with
PyTorch on the same checkpoints, pointer moves and drawn strokes change its images, and its console
shows no error."""
import json
import os

import pytest
import torch
from conftest import require

import explorer
import train
import visualize
from vaestudy import explorer_page
from vaestudy.checkpoints import load_runs
from vaestudy.cli import UserError
from vaestudy.data import load_splits

pytestmark = pytest.mark.slow  # every test here trains, or starts a cluster, a browser or jobs

TINY = ["--hidden", "32", "--limit", "512", "--epochs", "20", "--device", "cpu"]  # 20: long enough for active units
# int8 weights with one scale per row: each weight within scale / 2 = max|row| / 254 of float32's.
# Through the three layers of these models that moves pixels (in [0, 1]) by less than PIXEL_TOL and
# codes by less than CODE_TOL of their own spread; the page's float32 arithmetic on the dequantized
# weights matches PyTorch's to EXACT_TOL.
PIXEL_TOL, CODE_TOL, EXACT_TOL = 0.02, 0.02, 1e-4


@pytest.fixture(scope="module")
def study(mnist_dir, tmp_path_factory):
    """Tiny runs: Autoencoder latent 2, VAE latent 2 and 3; the page with VAE latent 3 on sliders."""
    out = tmp_path_factory.mktemp("explorer")
    train.main(["--model", "ae", "--latent", "2", *TINY, "--data-dir", mnist_dir, "--out", str(out)])
    train.main(["--model", "vae", "--latent", "2", "3", *TINY, "--data-dir", mnist_dir, "--out", str(out)])
    runs = load_runs(str(out))
    groups = {}
    for run in runs:
        groups.setdefault((run.config.model, run.variant), {}).setdefault(run.config.latent, []).append(run)
    chosen = explorer_page.page_runs(groups, {key: 3 for key in groups})
    test = load_splits(mnist_dir, 0, "cpu")["test"]
    page = out / "page.html"
    explorer_page.write_page(chosen, test, str(page))
    return {"out": out, "page": page, "runs": {name: run for run, name, *_ in chosen}, "test": test}


@pytest.fixture(scope="module")
def browser():
    try:
        driver = explorer.open_browser()
    except UserError as e:
        require(str(e))
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, study):
    explorer.load_page(browser, str(study["page"]))
    browser.load_log = browser.get_log("browser")  # what loading said; each test starts with an empty console
    return browser


def dequantized(model):
    """A copy of model with the weights the page computes with, for exact comparisons."""
    import copy
    model = copy.deepcopy(model)
    with torch.no_grad():
        for layer in explorer_page.linear_layers(model):
            q, scale = explorer_page.quantize(layer.weight)
            layer.weight.copy_(q.float() * scale[:, None])
    return model


def page_data(path):
    text = path.read_text()
    return json.loads(text.split('<script id="data" type="application/json">')[1].split("</script>")[0])


def canvas_pixels(driver, element):
    return driver.execute_script(
        "const c = arguments[0]; return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)",
        element)


def test_visualize_writes_the_page_with_both_latent_2_models(study, mnist_dir):
    visualize.main(["--out", str(study["out"]), "--data-dir", mnist_dir, "--device", "cpu"])
    data = page_data(study["out"] / "explorer.html")
    assert [m["name"] for m in data["models"]][:2] == ["Autoencoder latent 2", "VAE latent 2"]
    assert all("encoder" in m and "plane" in m for m in data["models"][:2])
    assert "http" not in (study["out"] / "explorer.html").read_text(), "nothing fetched from the network"


def test_decode_and_encode_agree_with_pytorch(page, study):
    assert page.execute_script("return explorer.models") == ["Autoencoder latent 2", "VAE latent 2", "VAE latent 3"]
    test_x = study["test"][0][:8]
    for name, run in study["runs"].items():
        exact = dequantized(run.model)
        z = torch.randn(4, run.config.latent, generator=torch.Generator().manual_seed(1))
        js = torch.tensor(page.execute_script(
            "return arguments[1].map((z) => explorer.decode(arguments[0], z))", name, z.tolist()))
        with torch.no_grad():
            assert (js - exact.decode(z)).abs().max() < EXACT_TOL, name
            assert (js - run.model.decode(z)).abs().max() < PIXEL_TOL, name
        if name.endswith("latent 3"):
            with pytest.raises(Exception, match="has no encoder in this page"):
                page.execute_script("return explorer.encode(arguments[0], arguments[1])", name, test_x[0].tolist())
            continue
        js = torch.tensor(page.execute_script(
            "return arguments[1].map((x) => explorer.encode(arguments[0], x))", name, test_x.tolist()))
        with torch.no_grad():
            assert (js - exact.encode(test_x)[0]).abs().max() < EXACT_TOL, name
            spread = run.model.encode(study["test"][0])[0].std(0).max()
            assert (js - run.model.encode(test_x)[0]).abs().max() < CODE_TOL * spread, name


def test_moving_the_pointer_over_a_plane_decodes_that_point(page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    for plane in page.find_elements(By.CSS_SELECTOR, "canvas.plane"):
        name = plane.get_attribute("data-model")
        decoded = page.find_element(By.CSS_SELECTOR, f"canvas.decoded[data-model='{name}']")
        images = []
        for offset in ((-120, -120), (120, 100)):
            ActionChains(page).move_to_element_with_offset(plane, *offset).perform()
            page.execute_script("return new Promise((done) => requestAnimationFrame(() => done()))")
            images.append(canvas_pixels(page, decoded))
        assert images[0] != images[1], name
        assert len(set(images[1])) > 2, f"{name}: an image, not a blank"


def test_a_drawn_digit_is_encoded_reconstructed_and_marked(page):
    from selenium.webdriver.common.by import By
    reconstructions = page.find_elements(By.CSS_SELECTOR, "canvas.reconstruction")
    assert len(reconstructions) == 2
    before = [canvas_pixels(page, c) for c in reconstructions]
    planes_before = [canvas_pixels(page, c) for c in page.find_elements(By.CSS_SELECTOR, "canvas.plane")]
    explorer.draw_stroke(page, page.find_element(By.ID, "pad"), explorer.THREE)
    page.execute_script("return new Promise((done) => requestAnimationFrame(() => done()))")
    drawn = torch.tensor(page.execute_script("return explorer.drawn"))
    assert drawn.shape == (784,) and drawn.min() >= 0 and drawn.max() <= 1 and drawn.sum() > 20
    image = drawn.reshape(28, 28)
    rows, cols = torch.arange(28.0)[:, None], torch.arange(28.0)[None, :]
    centre = ((image * rows).sum() / image.sum(), (image * cols).sum() / image.sum())
    assert all(abs(c - 13.5) <= 0.5 for c in centre), "centred by mass, as MNIST"
    after = [canvas_pixels(page, c) for c in reconstructions]
    assert all(a != b for a, b in zip(before, after))
    planes_after = [canvas_pixels(page, c) for c in page.find_elements(By.CSS_SELECTOR, "canvas.plane")]
    assert all(a != b for a, b in zip(planes_before, planes_after)), "the code is marked on each plane"


def test_a_slider_moves_the_selected_vae(page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    sliders = page.find_elements(By.CSS_SELECTOR, "#sliders input[type=range]")
    assert sliders, "the selected VAE has active dimensions"
    out = page.find_element(By.ID, "slider-out")
    before = canvas_pixels(page, out)
    ActionChains(page).drag_and_drop_by_offset(sliders[0], 80, 0).perform()
    assert float(sliders[0].get_attribute("value")) > 0
    assert canvas_pixels(page, out) != before


def test_the_console_shows_no_error(page):
    from selenium.webdriver.common.by import By
    explorer.draw_stroke(page, page.find_element(By.ID, "pad"), explorer.THREE)
    page.find_element(By.ID, "clear").click()
    # warnings too, but only the page's own: the tests' reads of canvases (execute_script) warn as well
    errors = [entry for entry in page.load_log + page.get_log("browser")
              if entry["level"] == "SEVERE" or entry["level"] == "WARNING" and entry["message"].startswith("file://")]
    assert errors == []


def test_a_page_over_the_size_limit_leaves_the_sliders_out(study, monkeypatch, tmp_path):
    chosen = [(run, name, "latent 3" not in name, "latent 3" not in name, "latent 3" in name)
              for name, run in study["runs"].items()]
    full = explorer_page.write_page(chosen, study["test"], str(tmp_path / "full.html"))
    monkeypatch.setattr(explorer_page, "PAGE_LIMIT", full - 1)
    smaller = explorer_page.write_page(chosen, study["test"], str(tmp_path / "small.html"))
    assert smaller < full and not any("sliders" in m for m in page_data(tmp_path / "small.html")["models"])
    assert any("sliders" in m for m in page_data(tmp_path / "full.html")["models"])


def test_names_and_paths_go_into_the_page_as_text(browser, study, tmp_path):
    """A checkpoint's folder is whatever the user named it: markup in it is shown, never parsed."""
    odd = "<b>bold</b> & <img src=nowhere>"
    chosen = [(run._replace(path=os.path.join(str(tmp_path), odd, os.path.basename(run.path))), name,
               "latent 3" not in name, "latent 3" not in name, "latent 3" in name) for name,
               run in study["runs"].items()]
    page = tmp_path / "odd.html"
    explorer_page.write_page(chosen, study["test"], str(page))
    explorer.load_page(browser, str(page))
    source = browser.execute_script("const s = document.getElementById('source'); "
                                    "return [s.textContent, s.querySelectorAll('b').length, "
                                    "s.querySelectorAll('img').length]")
    assert source[0].count(odd) == len(chosen), "each path shown as typed"
    assert source[1:] == [len(chosen), 0], "the only bold text is the models' names; no image element was made"


def test_a_fashion_mnist_page_names_its_classes(browser, study, fashion_dir, tmp_path):
    """One page serves every dataset: its title, legend and captions take the dataset's words from the
    page's data (vaestudy/datasets.py), here Fashion-MNIST's class names."""
    from vaestudy.datasets import FASHION_MNIST
    chosen = explorer_page.page_runs({("vae", ()): {2: [study["runs"]["VAE latent 2"]]}}, {})
    test = load_splits(fashion_dir, 0, "cpu", dataset="fashion-mnist")["test"]
    path = tmp_path / "fashion.html"
    explorer_page.write_page(chosen, test, str(path), FASHION_MNIST)
    explorer.load_page(browser, str(path))
    legend = browser.execute_script("return document.getElementById('legend').textContent")
    assert legend.startswith("class: T-shirt/top") and "Ankle boot" in legend
    assert browser.title == "Latent explorer: Autoencoder and VAE on Fashion-MNIST"
    assert browser.execute_script("return document.getElementById('draw-title').textContent") == "Draw an article"
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
