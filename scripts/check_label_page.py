"""Check the `rlhf label` page in a real headless browser and take the screenshot kept in docs/label.png.

Starts `rlhf label` on a free port of 127.0.0.1 (on a tiny model fine-tuned for a few seconds on the shipped
task, unless --model_name_or_path is given), opens the page in headless Chromium, ranks one prompt with
clicks and one key press (Backspace undoes one pick on the way), submits it with Enter, skips the next one
with the S key, and checks the rankings file.

Needs Debian's chromium and chromium-driver (`apt-get install -y chromium chromium-driver`) and
`pip install selenium` (not a dependency of the package: this check is run by hand, not in CI).

    python scripts/check_label_page.py [--screenshot docs/label.png] [--model_name_or_path DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "rlhf" / "data"
CHROME_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,640",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quick_sft_model(work: Path) -> Path:
    """The tiny model after a few seconds of SFT on the shipped task, so the responses read like reviews."""
    from rlhf.steps.sft import main as sft_main
    from rlhf.steps.tiny_model import main as tiny_main

    tiny_main(["--output_dir", str(work / "tiny")])
    sft_main([
        "--model_name_or_path", str(work / "tiny"), "--dataset_name", str(DATA / "sft.jsonl"),
        "--output_dir", str(work / "sft"), "--max_steps", "150", "--per_device_train_batch_size", "32",
        "--learning_rate", "3e-3", "--lr_scheduler_type", "cosine", "--warmup_steps", "5",
        "--eval_holdout_fraction", "0", "--seed", "0", "--disable_tqdm", "true", "--report_to", "none",
    ])
    return work / "sft"


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # the element is not there yet
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshot", default=str(REPO / "docs" / "label.png"))
    parser.add_argument("--model_name_or_path", default=None)
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    work = Path(tempfile.mkdtemp(prefix="label-check-"))
    model = args.model_name_or_path or str(quick_sft_model(work))
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join((DATA / "prompts.jsonl").read_text().splitlines(keepends=True)[:12]))
    rankings = work / "rankings.jsonl"
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "rlhf", "label", "--model_name_or_path", model, "--dataset_name", str(prompts),
         "--output_file", str(rankings), "--num_responses", "4", "--max_new_tokens", "24", "--port", str(port)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in [*CHROME_FLAGS, f"--user-data-dir={work / 'chrome-profile'}"]:
        options.add_argument(flag)
    driver = None
    try:
        import httpx

        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/api/progress").status_code == 200, 120, "the server")
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                                  options=options)
        driver.get(f"http://127.0.0.1:{port}/")

        def text_of(elem_id: str) -> str:
            return driver.find_element(By.ID, elem_id).text

        def response(i: int) -> str:
            return driver.find_element(By.CSS_SELECTOR, f"#response-{i} textarea").get_attribute("value")

        def button(elem_id: str):
            found = driver.find_element(By.ID, elem_id)
            return found if found.tag_name == "button" else found.find_element(By.TAG_NAME, "button")

        wait_for(lambda: "0 / 12" in text_of("progress") and response(0), 60, "the first prompt")
        shown = [response(i) for i in range(4)]
        prompt = driver.find_element(By.CSS_SELECTOR, "#prompt textarea").get_attribute("value")
        print(f"prompt: {prompt!r}\nresponses: {shown}")
        button("pick-1").click()  # B best
        wait_for(lambda: "#1" in button("pick-1").text, 10, "B marked #1")
        button("pick-2").click()  # C second ... then taken back with Backspace
        wait_for(lambda: "#2" in button("pick-2").text, 10, "C marked #2")
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.BACKSPACE)
        wait_for(lambda: "Pick C" in button("pick-2").text, 10, "C unpicked by Backspace")
        button("pick-0").click()  # then A
        wait_for(lambda: "#2" in button("pick-0").text, 10, "A marked #2")
        driver.find_element(By.TAG_NAME, "body").send_keys("4")  # then D by its key; C is last by elimination
        wait_for(lambda: "B > A > D > C" in text_of("summary"), 10, "the ranking B > A > D > C")
        assert button("submit").is_enabled(), "submit should be enabled once every response is ranked"
        Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(args.screenshot)
        print(f"screenshot: {args.screenshot}")
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ENTER)  # submit by its key
        wait_for(lambda: "1 / 12" in text_of("progress"), 30, "progress 1 / 12 after submitting")
        rows = [json.loads(line) for line in rankings.read_text().splitlines()]
        assert rows == [{"prompt": prompt, "responses": [shown[1], shown[0], shown[3], shown[2]]}], rows
        wait_for(lambda: response(0) and driver.find_element(By.CSS_SELECTOR, "#prompt textarea")
                 .get_attribute("value") != prompt, 30, "the second prompt")
        driver.find_element(By.TAG_NAME, "body").send_keys("s")
        wait_for(lambda: "1 skipped" in text_of("progress"), 30, "the skip (S key)")
        assert len(rankings.read_text().splitlines()) == 1, "a skip must write nothing"
        print("page check passed: ranked one prompt by clicks and keys (4, Backspace, Enter), skipped one with S")
        return 0
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
