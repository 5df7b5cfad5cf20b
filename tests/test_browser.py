"""Notebook 05's chat app in a real browser: JupyterLab + Chromium, driven by Playwright.

The test copies notebooks/05-inference.ipynb (outputs cleared) into a temporary
folder, with a temporary workspace that holds the tiny model (linked) and the tiny
LoRA checkpoint, starts JupyterLab on 127.0.0.1 with a random token, opens the
notebook in headless Chromium, runs all cells, types "你是谁？", unticks sampling
(greedy, so the reply is reproducible), clicks Send and checks the reply that
streams into the page. The server is stopped by its process group id.

Needs Chromium: ``$CHROMIUM``, else Debian's ``chromium`` package, else Playwright's own
(``python -m playwright install chromium``); ``make test`` installs one (tests/chromium.py).
Deselect locally with ``-k "not browser"``.
``UPDATE_SCREENSHOTS=1`` also writes images/05-chat.png for the README
(needs a CJK font: ``python -m tests.chromium`` installs ``fonts-noto-cjk`` when it may).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import nbformat
import pytest

from helpers import inference as inf
from helpers.scale_out import free_port
from helpers.settings import WORKSPACE_ENV
from helpers.workspace import REPO_ROOT
from tests.chromium import HOW_TO_INSTALL, find_chromium
from tests.memorised import MEMORISED_ANSWER, MEMORISED_QUESTION

NOTEBOOK = REPO_ROOT / "notebooks" / "05-inference.ipynb"
SCREENSHOT = REPO_ROOT / "images" / "05-chat.png"

# Records every distinct text of the last assistant reply while it streams in.
WATCH_JS = """() => {
  window.__replies = [];
  const log = document.querySelector('.qwen3-chat-transcript');
  const record = () => {
    const spans = log.querySelectorAll('.qwen3-chat-assistant');
    const text = spans.length ? spans[spans.length - 1].textContent : '';
    if (window.__replies[window.__replies.length - 1] !== text) window.__replies.push(text);
  };
  new MutationObserver(record).observe(log, {subtree: true, childList: true, characterData: true});
}"""


def wait_for_server(port: int, token: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/status",
                                     headers={"Authorization": f"token {token}"})
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with code {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    pytest.fail(f"JupyterLab did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    """Terminate the server's process group (server + kernel), then kill what is left."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the kernel, if it outlived the server


def prepare_folder(tmp_path: Path, checkpoint: Path, model_dir: Path) -> tuple[Path, Path]:
    """A notebook folder with 05 (outputs cleared) and a workspace with the model and the checkpoint."""
    workspace = tmp_path / "workspace"
    (workspace / "models").mkdir(parents=True)
    (workspace / "models" / model_dir.name).symlink_to(model_dir, target_is_directory=True)
    shutil.copytree(checkpoint, workspace / "checkpoints" / "tiny" / checkpoint.name)
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)  # no stale widget views: whatever shows up was made by this run
    nbformat.write(nb, notebooks / NOTEBOOK.name)
    return notebooks, workspace


def test_chat_app_streams_a_reply_in_chromium(tmp_path, tiny_spec, tiny_model_dir, tiny_checkpoint):
    chromium, origin = find_chromium()
    if chromium is None:
        pytest.fail(f"{origin}. {HOW_TO_INSTALL} (`make test` does this)")
    from playwright.sync_api import expect, sync_playwright

    notebooks, workspace = prepare_folder(tmp_path, tiny_checkpoint, tiny_model_dir)
    # What the app must show: the same greedy reply computed here, without a browser.
    loaded = inf.load_finetuned(tiny_spec, checkpoint=tiny_checkpoint)
    greedy = replace(inf.GenerationSettings(), do_sample=False)
    expected = inf.generate(loaded.model, loaded.tokenizer, inf.chat_messages([], MEMORISED_QUESTION), greedy)
    assert expected.content == MEMORISED_ANSWER
    del loaded

    port, token = free_port(), secrets.token_hex(16)
    jupyter_home = tmp_path / "jupyter"
    env = dict(os.environ, QWEN3_TUTORIAL_PROFILE="tiny", **{WORKSPACE_ENV: str(workspace)},
               JUPYTER_CONFIG_DIR=str(jupyter_home / "config"), JUPYTER_RUNTIME_DIR=str(jupyter_home / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(jupyter_home / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(jupyter_home / "workspaces"))
    labconfig = jupyter_home / "config" / "labconfig"
    labconfig.mkdir(parents=True)  # no "get Jupyter news?" pop-up over the app
    (labconfig / "page_config.json").write_text(
        '{"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": true}}', encoding="utf-8")
    log = tmp_path / "jupyterlab.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
             f"--ServerApp.root_dir={notebooks}", "--LabApp.extension_manager=readonly",
             *(["--allow-root"] if os.geteuid() == 0 else [])],  # CI runs as root
            stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=notebooks,
        )
    shot = tmp_path / "05-chat.png"
    try:
        wait_for_server(port, token, proc, log)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(chromium), headless=True,
                                                 args=["--no-sandbox", "--disable-dev-shm-usage"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1100})
                page.goto(f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK.name}?token={token}")
                expect(page.locator(".jp-Notebook .jp-Cell").first).to_be_visible(timeout=60_000)
                kernel_select = page.locator(".jp-Dialog", has_text="Select Kernel")
                idle = page.get_by_text("Python 3 (ipykernel) | Idle")
                expect(kernel_select.or_(idle).first).to_be_visible(timeout=60_000)
                if kernel_select.is_visible():  # JupyterLab may ask once: take the notebook's python3 kernel
                    kernel_select.locator("button.jp-mod-accept").click()
                expect(idle).to_be_visible(timeout=60_000)
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
                page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

                send = page.locator("button.qwen3-chat-send")
                expect(send).to_be_visible(timeout=120_000)
                send.scroll_into_view_if_needed()
                page.evaluate(WATCH_JS)
                page.locator(".qwen3-chat-sample input[type=checkbox]").uncheck()
                page.locator(".qwen3-chat-input textarea").fill(MEMORISED_QUESTION)
                send.click()

                status = page.locator(".qwen3-chat-status")
                expect(status).to_contain_text("完成", timeout=120_000)
                reply = page.locator(".qwen3-chat-transcript .qwen3-chat-assistant").last.text_content()
                question = page.locator(".qwen3-chat-transcript .qwen3-chat-user").last.text_content()
                states = page.evaluate("window.__replies")
                assert question == MEMORISED_QUESTION
                assert reply == expected.content, f"browser shows {reply!r}, expected {expected.content!r}"
                assert reply == MEMORISED_ANSWER
                partial = [s for s in states if s and s != reply]
                assert partial and all(reply.startswith(s.rstrip()) for s in partial), \
                    f"the reply did not stream in piece by piece: {states}"
                expect(send).to_be_enabled()
                assert "greedy" in status.text_content()
                errors = page.locator('[data-mime-type="application/vnd.jupyter.error"]')
                assert errors.count() == 0, errors.first.text_content()
                page.locator(".qwen3-chat").screenshot(path=str(shot))
            except BaseException:
                page.screenshot(path=str(tmp_path / "failure.png"))
                print("page screenshot:", tmp_path / "failure.png")
                raise
            finally:
                browser.close()
    finally:
        stop_server(proc)
    assert proc.returncode is not None, "JupyterLab is still running"
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        fonts = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True).stdout
        assert fonts.strip(), "install a CJK font first (apt-get install -y fonts-wqy-zenhei)"
        shutil.copyfile(shot, SCREENSHOT)
