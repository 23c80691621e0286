"""Drive ``bcosify serve``'s page in a real headless Chromium: upload a packaged photo, press
Explain, wait for the explanations, take a screenshot (docs/app.png). The browser test
(tests/test_app.py) uses :func:`explain_in_browser`.

    python scripts/app_screenshot.py                 # the packaged EfficientNet-Lite0, docs/app.png
    python scripts/app_screenshot.py --out /tmp/app.png --model-dir DIR
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def chromium() -> tuple[str, str] | None:
    """Paths of the system Chromium and its driver (Debian: chromium, chromium-driver)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def explain_in_browser(model, photo, screenshot: Path | None = None, timeout: float = 180) -> dict:
    """Serve ``model``'s app on a free local port, open it in headless Chromium, upload
    ``photo`` (a PIL image), press Explain and wait for the gallery. Returns what the page shows:
    the number of explanation images and their captions."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from bcosify.app import build_app

    found = chromium()
    if found is None:
        raise SystemExit("no chromium and chromedriver on PATH (apt-get install chromium-driver)")
    app = build_app(model)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    options = Options()
    options.binary_location = found[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,2000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.png"
        photo.save(path)
        try:
            driver.get(f"http://127.0.0.1:{port}/")
            wait = WebDriverWait(driver, timeout)
            upload = "#input-image input[type=file]"
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, upload))
            driver.find_element(By.CSS_SELECTOR, upload).send_keys(str(path))
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#input-image img"))
            driver.find_element(By.CSS_SELECTOR, "#explain-button").click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#explanations img")) >= 1)
            images = driver.find_elements(By.CSS_SELECTOR, "#explanations img")
            captions = [
                e.text
                for e in driver.find_elements(By.CSS_SELECTOR, "#explanations .caption-label")
            ]
            if screenshot is not None:
                driver.save_screenshot(str(screenshot))
            return {"images": len(images), "captions": captions}
        finally:
            driver.quit()
            app.close()


def recalibrated(model, photos):
    """The converted model with its BatchNorm statistics re-estimated on ``photos`` (as the
    recipes' ``train.bn_recalibration_batches`` does): a conversion changes every layer's scale,
    and with the source's statistics an unfine-tuned model's logits are nearly its constants."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average
    x = torch.stack([model.transform(p) for p in photos])
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def main(argv=None) -> int:
    import bcosify
    from bcosify.sources import demo_photos

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=None, help="default: the packaged EfficientNet-Lite0")
    p.add_argument("--photo", default="chelsea", help="a packaged photo")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "app.png")
    args = p.parse_args(argv)
    if args.model_dir:
        model = bcosify.load(args.model_dir)
    else:
        source = bcosify.build_model("timm/tf_efficientnet_lite0", weights="packaged")
        model = recalibrated(bcosify.convert(source), [im for _, im in demo_photos()])
    photo = dict(demo_photos())[args.photo]
    shown = explain_in_browser(model, photo, screenshot=args.out)
    print(f"{shown['images']} explanations shown; wrote {args.out}")
    for c in shown["captions"]:
        print("  " + c)
    return 0


if __name__ == "__main__":
    sys.exit(main())
