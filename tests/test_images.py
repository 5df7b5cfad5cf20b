"""The README's pictures: the script redraws them, and SwanLab's own dashboard serves the course's run.

``images/make_images.py`` draws four pictures from the course's code and data; the fifth is a
screenshot of SwanLab's local dashboard (``swanlab watch``) on a tiny run recorded in ``local``
mode. The dashboard test asks the dashboard's own HTTP API for the run's ``train/loss`` and
compares it with what the Trainer logged and what SwanLab wrote to disk.
"""

from __future__ import annotations

import socket
import urllib.parse

import pytest
from PIL import Image

from helpers.errors import ERROR_EXIT
from images import make_images
from images.make_images import IMAGES, PICTURES

DRAWN = ("lora-shapes", "label-mask", "padding-vs-packing", "course-map")
MAX_BYTES = 200 * 1024


def check_png(path, min_size=(900, 300), max_size=(2000, 1400)) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert path.stat().st_size < MAX_BYTES, f"{path.name}: {path.stat().st_size} bytes"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        size = image.size
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert min_size[0] <= size[0] <= max_size[0] and min_size[1] <= size[1] <= max_size[1], (path.name, size)
    assert colours is None or len(colours) > 16, f"{path.name} is nearly blank"
    return size


def test_the_script_redraws_every_drawn_picture(tmp_path, monkeypatch, huanhuan_path):
    monkeypatch.setenv("HUANHUAN_JSON", str(huanhuan_path))
    assert set(DRAWN) | {"swanlab-dashboard"} == set(PICTURES)
    assert make_images.main(["--out", str(tmp_path), "--only", *DRAWN]) == 0
    for name in DRAWN:
        size = check_png(tmp_path / f"{name}.png")
        committed = IMAGES / f"{name}.png"
        assert committed.is_file(), f"images/{name}.png is not committed"
        assert check_png(committed) == size, f"images/{name}.png is out of date: rerun python -m images.make_images"


def test_the_committed_screenshots_are_small_pngs():
    check_png(IMAGES / "swanlab-dashboard.png")
    check_png(IMAGES / "05-chat.png", min_size=(600, 200))


def test_label_mask_pieces_are_the_encoded_sample():
    from helpers.data import IGNORE_INDEX
    from helpers.models import course_tokenizer

    tokenizer, _ = course_tokenizer()
    record, sample = make_images.first_sample(tokenizer)
    pieces = make_images.token_pieces(sample, tokenizer)
    assert [i for _, _, ids in pieces for i in ids] == sample["input_ids"]
    trained = [text for text, is_trained, _ in pieces if is_trained]
    assert "".join(trained) == record["output"] + "<|im_end|>"
    assert sum(len(ids) for _, t, ids in pieces if t) == sum(1 for x in sample["labels"] if x != IGNORE_INDEX)


def test_a_missing_cjk_font_is_named_with_the_fix(monkeypatch, capsys):
    monkeypatch.setattr(make_images, "CJK_FONTS", ("No Such Font SC",))
    with pytest.raises(make_images.MissingFontError, match="fonts-noto-cjk"):
        make_images.cjk_font()
    assert make_images.main(["--out", "unused", "--only", "course-map"]) == ERROR_EXIT
    assert "fonts-noto-cjk" in capsys.readouterr().err


def test_swanlab_dashboard_serves_the_runs_train_loss(tmp_path):
    from helpers.tracking import read_scalars

    summary = make_images.record_local_run(tmp_path, steps=4, eval_steps=2)
    assert summary["swanlab_mode"] == "local"
    on_disk = read_scalars(summary["swanlab_run"])["train/loss"]
    logged = [(e["step"], e["loss"]) for e in summary["log_history"] if "loss" in e]
    assert [step for step, _ in on_disk] == [step for step, _ in logged] == [1, 2, 3, 4]

    with make_images.swanlab_dashboard_server(tmp_path / "swanlog") as port:
        project = make_images.dashboard_json(port, "project")
        assert project["name"] == "qwen3-8b-huanhuan-lora"
        (experiment,) = project["experiments"]
        charts = make_images.dashboard_json(port, f"experiment/{experiment['id']}/chart")["charts"]
        assert {"train/loss", "eval/loss", "train/learning_rate"} <= {chart["name"] for chart in charts}
        tag = urllib.parse.quote("train/loss", safe="")
        served = make_images.dashboard_json(port, f"experiment/{experiment['id']}/tag/{tag}")["list"]
        shot = make_images.chromium_screenshot(f"http://127.0.0.1:{port}/charts", tmp_path / "charts.png")
    assert [(int(p["index"]), p["data"]) for p in served] == [(s, pytest.approx(v, rel=1e-6)) for s, v in logged]
    assert [p["data"] for p in served] == [v for _, v in on_disk]
    with Image.open(shot) as image:
        assert image.size == (1280, 520)
    with socket.socket() as probe:  # the server was stopped
        assert probe.connect_ex(("127.0.0.1", port)) != 0
