"""The latent explorer page (vaestudy/explorer_page.py fills it, visualize.py writes it) in headless Chromium,
driven through selenium:

    python explorer.py     # output/explorer.png: the page with a digit drawn on it, and its decode time

Needs Debian's chromium and chromium-driver (the tests of the page use the same browser).
"""
import os

from vaestudy.cli import ArgumentParser, UserError, run_cli
from vaestudy.files import atomic_write

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
            raise UserError(f"no {binary}: install Chromium and its driver "
                            "(Debian: apt-get install chromium chromium-driver)")
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
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    driver = open_browser()
    try:
        load_page(driver, page)
        draw_stroke(driver, driver.find_element(By.ID, "pad"), THREE)
        plane = driver.find_elements(By.CSS_SELECTOR, "canvas.plane")[0]
        ActionChains(driver).move_to_element_with_offset(plane, 40, -60).perform()
        ms = driver.execute_script("const t = performance.now(); for (let i = 0; i < 200; i++) "
                                   "explorer.decode(explorer.models[0], [i / 100 - 1, 0.5]); "
                                   "return (performance.now() - t) / 200")
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
    p = ArgumentParser(__doc__)
    p.add_argument("--page", default="output/explorer.html", help="the page visualize.py wrote (default: %(default)s)")
    p.add_argument("--png", default="output/explorer.png", help="where the screenshot goes (default: %(default)s)")
    args = p.parse_args(argv)
    if not os.path.exists(args.page):
        raise UserError(f"no page at {args.page}: run python visualize.py first")
    ms = screenshot(args.page, args.png)
    print(f"wrote {args.png}; the page decodes one image in {ms:.1f} ms")


if __name__ == "__main__":
    run_cli(main)
