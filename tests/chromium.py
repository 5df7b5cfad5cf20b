"""The Chromium that tests/test_browser.py drives, and how ``make test`` gets one.

Where the browser comes from, in this order:

1. ``$CHROMIUM`` (a path), when set;
2. a system Chromium on ``PATH`` (Debian's ``chromium`` package: ``/usr/bin/chromium``);
3. Playwright's own Chromium (``python -m playwright install chromium``).

``python -m tests.chromium`` (run by ``make test``) makes sure one is there: Debian's ``chromium``
through apt-get when this user can install system packages (root, or sudo without a password),
otherwise Playwright's download into the user's cache. If neither works it prints one line saying
what to install and exits 1: the browser test is never skipped.

It also makes sure a CJK font is installed (Debian's ``fonts-noto-cjk``, through apt-get when this
user may): the screenshots show Chinese text and ``images/make_images.py`` (tests/test_images.py)
draws Chinese labels with matplotlib.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SYSTEM_NAMES = ("chromium", "chromium-browser")
#: Debian's CJK font (any font ``images.make_images.CJK_FONTS`` names will do)
FONT_PACKAGE = "fonts-noto-cjk"
HOW_TO_INSTALL = ("make test needs Chromium for tests/test_browser.py: install it with "
                  "`sudo apt-get install -y chromium` (Debian/Ubuntu) or `python -m playwright install chromium`, "
                  "or set CHROMIUM=/path/to/chromium")


def system_chromium() -> Path | None:
    for name in SYSTEM_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def playwright_chromium() -> Path | None:
    """The executable of Playwright's own Chromium, if it has been downloaded."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    with sync_playwright() as playwright:
        path = Path(playwright.chromium.executable_path)
    return path if path.is_file() else None


def find_chromium() -> tuple[Path | None, str]:
    """(the Chromium to use, where it came from); (None, why) when there is none."""
    chosen = os.environ.get("CHROMIUM", "").strip()
    if chosen:
        path = Path(chosen).expanduser()
        return (path, "$CHROMIUM") if path.is_file() else (None, f"CHROMIUM={chosen} does not exist")
    path = system_chromium()
    if path is not None:
        return path, "system package"
    path = playwright_chromium()
    if path is not None:
        return path, "Playwright's own Chromium"
    return None, "no Chromium found"


def can_install_system_packages() -> list[str] | None:
    """The command prefix that installs Debian packages ([] as root, ['sudo', '-n'] with passwordless sudo)."""
    if shutil.which("apt-get") is None:
        return None
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def install_with_apt(prefix: list[str], packages: tuple[str, ...] = ("chromium", FONT_PACKAGE)) -> bool:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"installing Debian's {' '.join(packages)} (apt-get install) for tests/test_browser.py and "
          "tests/test_images.py ...", flush=True)
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        if subprocess.run(prefix + command, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            return False
    return True


def install_with_playwright() -> bool:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return False
    print("installing Playwright's Chromium (python -m playwright install chromium) for tests/test_browser.py ...",
          flush=True)
    return subprocess.run([sys.executable, "-m", "playwright", "install", "chromium"]).returncode == 0


def cjk_font() -> str | None:
    """The CJK font matplotlib finds (None when there is none)."""
    from images.make_images import MissingFontError, cjk_font

    try:
        return cjk_font()
    except MissingFontError:
        return None


def ensure_cjk_font() -> int:
    """Find or install a CJK font; 0 when there is one, else 1 after one line saying what to install."""
    font = cjk_font()
    if font is None:
        prefix = can_install_system_packages()
        if prefix is not None and install_with_apt(prefix, (FONT_PACKAGE,)):
            font = cjk_font()
    if font is None:
        print(f"error: the pictures and screenshots need a CJK font: `sudo apt-get install -y {FONT_PACKAGE}` "
              "(Debian/Ubuntu) or any font named in images/make_images.py CJK_FONTS", file=sys.stderr)
        return 1
    print(f"CJK font for the pictures: {font}")
    return 0


def ensure(via: str = "auto") -> int:
    """Find or install Chromium and a CJK font; 0 when both are there, else 1 after one line saying what to install."""
    path, origin = find_chromium()
    if path is not None:
        print(f"Chromium for tests/test_browser.py: {path} ({origin})")
        return ensure_cjk_font()
    if os.environ.get("CHROMIUM", "").strip():
        print(f"error: {origin}. {HOW_TO_INSTALL}", file=sys.stderr)
        return 1
    prefix = can_install_system_packages() if via in ("auto", "apt") else None
    if prefix is not None and install_with_apt(prefix) and system_chromium() is not None:
        return ensure()
    if via in ("auto", "playwright") and install_with_playwright() and playwright_chromium() is not None:
        return ensure()
    print(f"error: {HOW_TO_INSTALL}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.chromium", description=__doc__.split("\n\n")[0])
    parser.add_argument("--via", choices=("auto", "apt", "playwright"), default="auto",
                        help="how to install a missing Chromium (default: apt-get if allowed, else Playwright)")
    raise SystemExit(ensure(parser.parse_args().via))
