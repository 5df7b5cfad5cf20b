"""Draw the README's pictures from the course's own code and data.

Run from the repository root (``make notebooks`` runs it after the notebooks)::

    python -m images.make_images                 # every picture below, into images/
    python -m images.make_images --only label-mask course-map --out /tmp/pics

==========================  ===============================================================
``lora-shapes.png``         LoRA beside Qwen3-8B's seven linear layers, drawn to scale from the
                            real architecture (``helpers.models.qwen3_on_meta``) and PEFT's own
                            adapter shapes and counts (r = 8).
``label-mask.png``          The first row of ``data/huanhuan_sample.json`` encoded by the course
                            (``helpers.data.encode_records``, the offline Qwen3 tokenizer
                            ``helpers.models.course_tokenizer``): every
                            token, label -100 or trained, ``<|im_end|>`` marked.
``padding-vs-packing.png``  One random micro-batch of 4 real rows (``huanhuan.json``, seed 0) as the
                            course's two collators build it (``helpers.train.make_collator``):
                            padded to the longest row vs packed into one row, to scale.
``course-map.png``          The notebooks in order and what each leaves in the workspace for the next.
``swanlab-dashboard.png``   SwanLab's own local dashboard (``swanlab watch``) showing a short tiny
                            run recorded in ``local`` mode, screenshotted by headless Chromium.
``05-chat.png``             Not made here: ``UPDATE_SCREENSHOTS=1 pytest tests/test_browser.py`` writes
                            it (notebook 05's chat app in JupyterLab, driven by Playwright).
==========================  ===============================================================

The labels are Chinese, so a CJK font is needed (Debian: ``apt-get install fonts-noto-cjk``;
``make test`` installs it through ``python -m tests.chromium``). The dashboard needs
``swanlab[dashboard]`` (``swanboard``, pinned in requirements.txt) and Chromium.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from helpers.errors import CourseError, run_cli
from helpers.runs import CJK_FONTS, use_chinese_font
from helpers.workspace import REPO_ROOT

IMAGES = REPO_ROOT / "images"
DPI = 110
FONT_FIX = ("install one, e.g. `sudo apt-get install -y fonts-noto-cjk` (Debian/Ubuntu; "
            "`python -m tests.chromium` does it when it may)")

GREY, GREY_EDGE, TEXT = "#e4e4e4", "#9a9a9a", "#333333"
TRAINED, TRAINED_EDGE = "#f6b26b", "#b45f06"
B_COLOUR, A_COLOUR = "#f6b26b", "#6fa8dc"
ROW_COLOURS = ("#6fa8dc", "#93c47d", "#f6b26b", "#c27ba0")
END_TOKEN = "<|im_end|>"


class MissingFontError(CourseError, RuntimeError):
    """No font with Chinese glyphs is installed."""


def cjk_font() -> str:
    """The name of an installed font with Chinese glyphs (the course's own finder, ``runs.use_chinese_font``)."""
    found = use_chinese_font()
    if found is not None:
        return found
    raise MissingFontError(f"No CJK font for the pictures' Chinese labels (looked for: {', '.join(CJK_FONTS)}): "
                           f"{FONT_FIX}.")


def setup_matplotlib() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.family": "sans-serif", "font.sans-serif": [cjk_font(), "DejaVu Sans"],
                         "axes.unicode_minus": False, "font.size": 11, "savefig.dpi": DPI})


def save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, facecolor="white")
    plt.close(fig)
    return small_png(buffer, path)


def small_png(source, path: Path) -> Path:
    """A 256-colour PNG of ``source`` (a file or buffer): a third of the size, the same look for line art."""
    from PIL import Image

    with Image.open(source) as image:
        image.convert("RGB").quantize(colors=256, dither=Image.Dither.NONE).save(path, optimize=True)
    return path


def bare_axes(fig, rect=(0, 0, 1, 1)):
    ax = fig.add_axes(rect)
    ax.set_axis_off()
    return ax


def grouped(number: int) -> str:
    return f"{number:,}"


# --------------------------------------------------------------------------- (a) LoRA beside Qwen3-8B's layers


def lora_shapes(out_dir: Path) -> Path:
    """Qwen3-8B's seven linear layers (real shapes, to scale) with the B and A PEFT adds beside each."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle
    from peft import get_peft_model

    from helpers.models import lora_config, qwen3_on_meta

    model = qwen3_on_meta("Qwen3-8B")
    config = model.config
    base_total = sum(p.numel() for p in model.parameters())
    lora = lora_config()  # the course's LoraSpec defaults
    shapes = {}  # module -> (out, in): the weight's own shape
    for name, module in model.model.layers[0].named_modules():
        if name.rsplit(".", 1)[-1] in lora.target_modules:
            shapes[name.rsplit(".", 1)[-1]] = tuple(module.weight.shape)
    peft_model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    layer = peft_model.base_model.model.model.layers[0]
    adapters = {}  # module -> (B shape, A shape)
    for name in shapes:
        block = layer.self_attn if hasattr(layer.self_attn, name) else layer.mlp
        module = getattr(block, name)
        adapters[name] = (tuple(module.lora_B["default"].weight.shape), tuple(module.lora_A["default"].weight.shape))
    per_layer = sum(b[0] * b[1] + a[0] * a[1] for b, a in adapters.values())
    layers = config.num_hidden_layers
    if per_layer * layers != trainable:
        raise RuntimeError(f"LoRA count per layer {per_layer} x {layers} != PEFT's trainable {trainable}")
    r, unit = lora.r, config.hidden_size

    fig = plt.figure(figsize=(13.5, 6.6))
    ax = bare_axes(fig, (0.01, 0.2, 0.98, 0.66))
    thick, gap, space = 0.1, 0.04, 0.55  # B/A drawn `thick` units wide (one unit = hidden_size)
    x = 0.0
    spans = {}
    for name, (out_features, in_features) in shapes.items():
        w, h = in_features / unit, out_features / unit
        (b_out, b_r), (a_r, a_in) = adapters[name]
        x_w = x + thick + gap
        ax.add_patch(Rectangle((x, -h), thick, h, facecolor=B_COLOUR, edgecolor=TRAINED_EDGE, lw=0.8))
        ax.add_patch(Rectangle((x_w, gap), w, thick, facecolor=A_COLOUR, edgecolor="#3d6f9e", lw=0.8))
        ax.add_patch(Rectangle((x_w, -h), w, h, facecolor=GREY, edgecolor=GREY_EDGE, lw=1))
        ax.text(x_w + w / 2, gap + thick + 0.08, name, ha="center", va="bottom", fontsize=12, weight="bold")
        w_text = f"W  {out_features}×{in_features}\n{grouped(out_features * in_features)}\n冻结"
        if h >= 0.9:
            ax.text(x_w + w / 2, -h / 2, w_text, ha="center", va="center", fontsize=10, color=TEXT)
            below = -h - 0.1
        else:
            ax.text(x_w + w / 2, -h - 0.08, w_text, ha="center", va="top", fontsize=10, color=TEXT)
            below = -h - 0.72
        lora_count = b_out * b_r + a_r * a_in
        ax.text(x_w + w / 2, below, f"LoRA: {r}×({in_features}+{out_features})\n= {grouped(lora_count)}",
                ha="center", va="top", fontsize=10, color=TRAINED_EDGE)
        spans[name] = (x, x_w + w)
        x = x_w + w + space
    for label, first, last in (("注意力 self_attn", "q_proj", "o_proj"), ("MLP", "gate_proj", "down_proj")):
        left, right = spans[first][0], spans[last][1]
        ax.plot([left, right], [0.62, 0.62], color=GREY_EDGE, lw=1)
        ax.text((left + right) / 2, 0.68, label, ha="center", va="bottom", fontsize=12, color=TEXT)
    ax.text(spans["q_proj"][0], -2.05, f"A（上方）宽 = 输入维度 in，B（左侧）高 = 输出维度 out：\n"
            f"BA 的形状和 W 一样是 out×in，却只有 {r}×(in+out) 个参数。\n"
            "训练时 W 不动，梯度和优化器状态只给 B、A。", ha="left", va="top", fontsize=11.5, color=TEXT,
            linespacing=1.6)
    ax.set_xlim(-0.1, x - space + 0.1)
    ax.set_ylim(-3.75, 0.95)
    ax.set_aspect("equal")

    fig.text(0.5, 0.955, f"LoRA：冻结的 W 旁边只训练 B 和 A（Qwen3-8B 每层的 7 个线性层，真实形状等比例画，r = {r}）",
             ha="center", va="center", fontsize=15, weight="bold")
    fig.text(0.5, 0.905, f"h = Wx + (α/r)BAx，α = {lora.lora_alpha}，α/r = {lora.lora_alpha // r}。"
             "B 初始化为 0：训练开始时 BA = 0，模型和基座完全一样。", ha="center", va="center", fontsize=12)
    ax.legend(handles=[Patch(facecolor=GREY, edgecolor=GREY_EDGE, label="W：冻结，不更新"),
                       Patch(facecolor=B_COLOUR, edgecolor=TRAINED_EDGE, label=f"B：out×{r}，初始为 0（训练）"),
                       Patch(facecolor=A_COLOUR, edgecolor="#3d6f9e", label=f"A：{r}×in，随机初始化（训练）")],
              loc="lower right", bbox_to_anchor=(1.0, 0.0), fontsize=11, frameon=False)
    share = trainable / base_total
    fig.text(0.5, 0.13, f"每层 LoRA 参数 {grouped(per_layer)} × {layers} 层 = {grouped(trainable)} 个可训练参数，"
             f"占 Qwen3-8B 全部 {grouped(base_total)} 个参数的 {share:.2%}", ha="center", fontsize=13,
             weight="bold", color=TRAINED_EDGE)
    fig.text(0.5, 0.06, f"B、A 的厚度放大了 {thick * unit / r:.0f} 倍才看得见（按比例只有 W 边长的 {r}/{unit}）；"
             "形状来自 transformers 的 Qwen3Config 在 meta 设备上建的模型，参数量来自 PEFT 的 get_peft_model。",
             ha="center", fontsize=10, color="#666666")
    return save(fig, out_dir / "lora-shapes.png")


# --------------------------------------------------------------------------- (b) one sample's label mask


def first_sample(tokenizer):
    """Row 1 of data/huanhuan_sample.json, encoded by the course."""
    from helpers.data import encode_records
    from helpers.data_files import SAMPLE_PATH

    records = json.loads(SAMPLE_PATH.read_text(encoding="utf-8"))
    samples, _ = encode_records(records[:1], tokenizer)
    return records[0], samples[0]


def token_pieces(sample: dict, tokenizer) -> list[tuple[str, bool, list[int]]]:
    """(text, trained?, token ids) per piece; a character split over byte tokens is one piece."""
    from helpers.data import IGNORE_INDEX

    pieces, pending = [], []
    for token_id, label in zip(sample["input_ids"], sample["labels"], strict=True):
        pending.append(token_id)
        text = tokenizer.decode(pending)
        if "\ufffd" not in text or len(pending) >= 4:
            pieces.append((text.replace("\n", "\\n"), label != IGNORE_INDEX, pending))
            pending = []
    return pieces


def text_width(text: str) -> float:
    """Width in half-em units: a CJK character counts twice."""
    return sum(2.0 if ord(ch) > 0x2E7F else 1.0 for ch in text)


def label_mask(out_dir: Path) -> Path:
    """Every token of one real training sample: label -100 (grey) or trained (orange), <|im_end|> marked."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch, Patch

    from helpers.data import IGNORE_INDEX
    from helpers.models import course_tokenizer

    tokenizer, _ = course_tokenizer()
    record, sample = first_sample(tokenizer)
    pieces = token_pieces(sample, tokenizer)
    masked = sum(1 for label in sample["labels"] if label == IGNORE_INDEX)
    trained = len(sample["labels"]) - masked

    fig = plt.figure(figsize=(13.5, 4.9))
    ax = bare_axes(fig, (0.01, 0.12, 0.98, 0.7))
    row_width, char_w, digit_w, box_h, row_h = 100.0, 0.62, 0.45, 0.62, 1.3
    x, y = 0.0, 0.0
    last_end = max(i for i, (text, _, _) in enumerate(pieces) if text == END_TOKEN)
    for index, (text, is_trained, ids) in enumerate(pieces):
        label = ",".join(str(i) for i in ids) if is_trained else "-100"
        width = max(text_width(text) * char_w + 0.9, len(label) * digit_w + 0.5, 2.2)
        if x + width > row_width:
            x, y = 0.0, y - row_h
        end = text == END_TOKEN
        face, edge = (TRAINED, TRAINED_EDGE) if is_trained else (GREY, GREY_EDGE)
        ax.add_patch(FancyBboxPatch((x, y), width, box_h, boxstyle="round,pad=0,rounding_size=0.18",
                                    facecolor=face, edgecolor="#cc0000" if end else edge, lw=2.2 if end else 0.8))
        ax.text(x + width / 2, y + box_h / 2, text, ha="center", va="center", fontsize=11,
                color=TEXT if is_trained else "#555555", weight="bold" if end else "normal")
        ax.text(x + width / 2, y - 0.08, label, ha="center", va="top", fontsize=7.5,
                color=TRAINED_EDGE if is_trained else "#888888")
        if index == last_end:
            ax.annotate("结尾的 <|im_end|> 也参与训练：模型学会在这里停下", xy=(x + width / 2, y - 0.38),
                        xytext=(x + width / 2 - 2, y - 0.95), ha="right", va="center", fontsize=11.5,
                        color="#cc0000", arrowprops={"arrowstyle": "->", "color": "#cc0000", "lw": 1.5})
        x += width + 0.35
    ax.set_xlim(-0.5, row_width + 0.5)
    ax.set_ylim(y - 1.15, box_h + 0.1)

    question = record["instruction"]
    fig.text(0.5, 0.93, f"一条训练样本里哪些 token 参与训练（data/huanhuan_sample.json 第 1 条：“{question}”）",
             ha="center", va="center", fontsize=15, weight="bold")
    fig.text(0.5, 0.86, "每个方块是一个 token，下面的小字是它的 label：提示部分 label = -100（模型看得到，不算损失），"
             "回答和结尾的 <|im_end|> 的 label 就是它自己的 token id", ha="center", va="center", fontsize=11)
    fig.legend(handles=[Patch(facecolor=GREY, edgecolor=GREY_EDGE,
                              label=f"不参与训练：系统提示 + 问题 + 生成提示，{masked} 个 token（label = -100）"),
                        Patch(facecolor=TRAINED, edgecolor=TRAINED_EDGE,
                              label=f"参与训练：回答 + <|im_end|>，{trained} 个 token")],
               loc="lower center", ncol=2, fontsize=11, frameon=False, bbox_to_anchor=(0.5, 0.02))
    return save(fig, out_dir / "label-mask.png")


# --------------------------------------------------------------------------- (c) padded vs packed batch


def real_dataset() -> Path:
    """The real huanhuan.json: $HUANHUAN_JSON or ../shared/data, else the pinned download into workspace/data."""
    from bench.common import real_dataset_path
    from helpers.data_files import download_huanhuan

    try:
        return real_dataset_path(os.environ)
    except FileNotFoundError:
        return download_huanhuan(REPO_ROOT / "workspace" / "data" / "huanhuan.json")


def padding_vs_packing(out_dir: Path, dataset: Path | None = None, batch_size: int = 4, seed: int = 0) -> Path:
    """The first random micro-batch of the real data (seed 0), padded and packed by the course's collators."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from helpers.data import encode_records
    from helpers.models import course_tokenizer
    from helpers.padding import padding_table, random_order
    from helpers.train import make_collator

    tokenizer, _ = course_tokenizer()
    records = json.loads(Path(dataset or real_dataset()).read_text(encoding="utf-8"))
    samples, _ = encode_records(records, tokenizer)
    lengths = [len(s["input_ids"]) for s in samples]
    batch = [samples[i] for i in random_order(len(samples), seed)[:batch_size]]
    features = [{k: s[k] for k in ("input_ids", "attention_mask", "labels")} for s in batch]
    padded = make_collator("padded", tokenizer)(features)
    packed = make_collator("packed", tokenizer)(features)
    rows, longest = padded["input_ids"].shape
    real = padded["attention_mask"].sum(dim=1).tolist()
    packed_len = packed["input_ids"].shape[1]
    starts = (packed["position_ids"][0] == 0).nonzero().flatten().tolist() + [packed_len]
    segments = [(a, b - a) for a, b in zip(starts, starts[1:], strict=False)]
    if [n for _, n in segments] != real or sum(real) != packed_len:
        raise RuntimeError(f"packed segments {segments} do not match the padded rows' lengths {real}")
    epoch = {r.strategy: r for r in padding_table(lengths, batch_size=batch_size, seed=seed)}

    fig = plt.figure(figsize=(13.5, 6.2))
    ax = bare_axes(fig, (0.17, 0.14, 0.79, 0.74))
    bar_h = 0.7
    for i, n in enumerate(real):
        y = -i
        ax.add_patch(Rectangle((0, y), n, bar_h, facecolor=ROW_COLOURS[i], edgecolor="white", lw=1))
        if n < longest:
            ax.add_patch(Rectangle((n, y), longest - n, bar_h, facecolor="#f3f3f3", edgecolor="#bbbbbb",
                                   hatch="///", lw=0.8))
            ax.text(longest + 2, y + bar_h / 2, f"+{longest - n} 个填充", va="center", fontsize=11, color="#888888")
        ax.text(n / 2, y + bar_h / 2, f"{n}", ha="center", va="center", fontsize=11, color="white", weight="bold")
        ax.text(-3, y + bar_h / 2, f"第 {batch[i]['row'] + 1} 条", ha="right", va="center", fontsize=11)
    pad_total = rows * longest
    ax.text(0, 0.95, f"补齐（padding）：{rows} 行 × 最长的 {longest} = 计算 {pad_total} 个 token，"
            f"其中 {pad_total - sum(real)} 个是填充（{(pad_total - sum(real)) / pad_total:.0%}）",
            fontsize=12.5, weight="bold", va="bottom")
    y = -rows - 1.2
    for i, (start, n) in enumerate(segments):
        ax.add_patch(Rectangle((start, y), n, bar_h, facecolor=ROW_COLOURS[i], edgecolor="white", lw=1.5))
        ax.text(start + n / 2, y + bar_h / 2, f"{n}", ha="center", va="center", fontsize=11, color="white",
                weight="bold")
        ax.plot([start, start], [y - 0.15, y + bar_h + 0.1], color="#333333", lw=1.2)
        ax.text(start, y - 0.2, "position_ids = 0", ha="left", va="top", fontsize=8.5, color="#555555")
    ax.text(-3, y + bar_h / 2, "1 行", ha="right", va="center", fontsize=11)
    ax.text(0, y + bar_h + 0.25, f"无填充打包（DataCollatorWithFlattening）：同样 {rows} 条首尾相接成 1 行 = "
            f"计算 {packed_len} 个 token，0 个填充", fontsize=12.5, weight="bold", va="bottom")
    ax.set_xlim(-2, packed_len + 2)
    ax.set_ylim(y - 0.8, 1.4)

    fig.text(0.5, 0.95, f"同一个 micro-batch 的两种组批方式（真实 huanhuan.json 随机取的 {rows} 条，按 token 数等比例画）",
             ha="center", va="center", fontsize=15, weight="bold")
    fig.text(0.5, 0.085, "数字是每条样本的 token 数（课程的编码器）；打包时每条样本的 position_ids 从 0 重新开始，"
             "注意力只在各自样本内部计算。", ha="center", fontsize=11)
    random_share = epoch["random"].padding_share
    fig.text(0.5, 0.035, f"整个数据集一个 epoch（{len(samples):,} 条，随机 {batch_size} 条一批）："
             f"补齐计算 {epoch['random'].computed:,} 个 token，其中 {random_share:.0%} 是填充；"
             f"打包只算真实的 {epoch['packing'].computed:,} 个", ha="center", fontsize=11, color="#444444")
    return save(fig, out_dir / "padding-vs-packing.png")


# --------------------------------------------------------------------------- (d) the course map

#: (notebook, what you do there, what it leaves in the workspace, who uses it next: notebook numbers, or a
#: word in parentheses for a user outside the course)
COURSE = (
    ("00-environment", "环境检查：版本、硬件、设置从哪里来、课前自检",
     "course-settings.yaml（可选，在仓库根目录）", ("01–08",)),
    ("01-download", "下载 Qwen3-8B（或构建 tiny 模型）；meta 设备上的真实结构",
     "models/：模型权重 + 分词器", ("02–08",)),
    ("02-chat-template", "对话模板：enable_thinking 开 / 关，特殊 token",
     "（只看不写：读 models/ 里的分词器）", ()),
    ("03-data", "校验、编码（label = -100）、填充分析、留出集",
     "data/train-<配置>.jsonl（带印章的编码文件）\ndata/split-<配置>/（train.json / eval.json）",
     ("04", "06", "08")),
    ("04-train", "LoRA + Trainer + SwanLab；检查点与续训",
     "checkpoints/<配置>/checkpoint-N（LoRA 适配器）\nswanlog/（SwanLab 记录）、plots/",
     ("05", "06")),
    ("05-inference", "generate、流式输出、基座 vs LoRA、聊天小程序、合并导出",
     "export/<配置>-merged/（合并后的完整模型）", ("(vLLM 等推理服务)",)),
    ("06-evaluate", "留出集 loss、ROUGE-L、身份问答、思考模式，基座 vs LoRA",
     "checkpoints/<配置>/eval_report.json（评估报告）", ()),
    ("07-scale-out", "DDP / FSDP / ZeRO 的显存估算；CPU 上 2 个进程的现场训练",
     "scale-out-demo/（演示用的独立工作目录）", ()),
    ("08-trl-sfttrainer", "附录：用 TRL 的 SFTTrainer 做同样的训练",
     "（用 01 的 models/ 和 03 的数据）", ()),
)


def course_map(out_dir: Path) -> Path:
    """Notebook -> what it leaves in the workspace -> the notebook that uses it."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig = plt.figure(figsize=(13.5, 10.2))
    ax = bare_axes(fig, (0.01, 0.01, 0.98, 0.9))
    step, box_h = 1.0, 0.72
    nb_x, nb_w, art_x, art_w = 0.0, 5.4, 6.3, 6.9
    n = len(COURSE)
    for i, (name, what, leaves, used_by) in enumerate(COURSE):
        y = -i * step
        appendix = name.startswith("08")
        face = "#f3f3f3" if appendix else "#dbe9f7"
        ax.add_patch(FancyBboxPatch((nb_x, y - box_h / 2), nb_w, box_h, boxstyle="round,pad=0.02,rounding_size=0.12",
                                    facecolor=face, edgecolor="#3d6f9e", lw=1.4, ls="--" if appendix else "-"))
        ax.text(nb_x + 0.15, y + 0.13, name, fontsize=13, weight="bold", va="center", color="#1c4587")
        ax.text(nb_x + 0.15, y - 0.17, what, fontsize=10, va="center", color=TEXT)
        if i < n - 1:
            ax.add_patch(FancyArrowPatch((nb_x + 0.6, y - box_h / 2), (nb_x + 0.6, y - step + box_h / 2),
                                         arrowstyle="-|>", mutation_scale=14, color="#3d6f9e", lw=1.4))
        if leaves and not leaves.startswith("（"):
            ax.add_patch(FancyBboxPatch((art_x, y - box_h / 2), art_w, box_h,
                                        boxstyle="round,pad=0.02,rounding_size=0.12",
                                        facecolor="#fdf0dd", edgecolor=TRAINED_EDGE, lw=1.2))
            ax.add_patch(FancyArrowPatch((nb_x + nb_w + 0.05, y), (art_x - 0.05, y), arrowstyle="-|>",
                                         mutation_scale=14, color=TRAINED_EDGE, lw=1.4))
            ax.text(art_x + 0.15, y, leaves, fontsize=10.5, va="center", color=TEXT, linespacing=1.5)
        elif leaves:
            ax.text(art_x + 0.15, y, leaves, fontsize=10.5, va="center", color="#888888")
        chip_x = art_x + art_w + 0.45
        if used_by:
            ax.add_patch(FancyArrowPatch((art_x + art_w + 0.05, y), (chip_x - 0.05, y), arrowstyle="-|>",
                                         mutation_scale=12, color="#3d6f9e", lw=1.2))
        for reader in used_by:
            outside = reader.startswith("(")
            label = reader.strip("()")
            width = 0.25 + 0.13 * text_width(label)
            ax.add_patch(FancyBboxPatch((chip_x, y - 0.17), width, 0.34, boxstyle="round,pad=0.02,rounding_size=0.1",
                                        facecolor="#f3f3f3" if outside else "#dbe9f7",
                                        edgecolor="#999999" if outside else "#3d6f9e", lw=1.2))
            ax.text(chip_x + width / 2, y, label, ha="center", va="center", fontsize=10.5,
                    color="#555555" if outside else "#1c4587", weight="normal" if outside else "bold")
            chip_x += width + 0.12
    ax.set_xlim(-0.2, art_x + art_w + 3.6)
    ax.set_ylim(-(n - 1) * step - 0.6, 0.6)
    fig.text(0.5, 0.965, "课程地图：每个笔记本在工作目录（workspace/）里留下什么，下一课用到什么",
             ha="center", va="center", fontsize=16, weight="bold")
    fig.text(0.5, 0.925, "蓝框：笔记本（按顺序做）；橙框：它写进工作目录的文件（git 忽略）；右边的小蓝框：接着用它的笔记本。"
             "<配置> 是 profile 名：full、tiny……", ha="center", va="center", fontsize=11, color="#555555")
    return save(fig, out_dir / "course-map.png")


# --------------------------------------------------------------------------- (e) SwanLab's own dashboard


def record_local_run(workspace: Path, steps: int = 16, eval_steps: int = 4) -> dict:
    """Train the tiny profile for a few steps with SwanLab in ``local`` mode; the Trainer's summary."""
    from helpers import train
    from helpers.settings import PROFILE_ENV, SWANLAB_MODE_ENV, WORKSPACE_ENV
    from helpers.spec import build_spec

    env = {PROFILE_ENV: "tiny", WORKSPACE_ENV: str(workspace), SWANLAB_MODE_ENV: "local"}
    spec = build_spec(None, [f"training.max_steps={steps}", "training.logging_steps=1",
                             f"training.eval_steps={eval_steps}", f"training.save_steps={steps}",
                             "training.disable_tqdm=true"],
                      profile="tiny", env=env, settings_file=None)
    return train.train(spec, resume=False)


def free_port() -> int:
    from helpers.scale_out import free_port as pick

    return pick()


def wait_for_dashboard(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`swanlab watch` exited with code {proc.returncode}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/project", timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    raise TimeoutError(f"SwanLab's dashboard did not answer on 127.0.0.1:{port} within {timeout:.0f} s")


@contextlib.contextmanager
def swanlab_dashboard_server(swanlog: Path, port: int | None = None):
    """``swanlab watch <swanlog>`` on 127.0.0.1; yields the port; stops the server by its process group."""
    port = port or free_port()
    command = [sys.executable, "-m", "swanlab", "watch", str(swanlog), "-h", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_dashboard(port, proc)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def dashboard_json(port: int, path: str) -> dict:
    """One answer of the dashboard's HTTP API (``/api/v1/...``); its ``data`` field."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/{path}", timeout=10) as response:
        answer = json.loads(response.read())
    if answer.get("code") != 0:
        raise RuntimeError(f"/api/v1/{path}: {answer}")
    return answer["data"]


def chromium_screenshot(url: str, path: Path, width: int = 1280, height: int = 520) -> Path:
    """Headless Chromium's screenshot of ``url`` (the page drawn in Chinese)."""
    from tests.chromium import HOW_TO_INSTALL, find_chromium

    chromium, origin = find_chromium()
    if chromium is None:
        raise RuntimeError(f"{origin}. {HOW_TO_INSTALL}")
    with tempfile.TemporaryDirectory() as profile:
        command = [str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                   "--virtual-time-budget=8000", "--hide-scrollbars", "--lang=zh-CN", "--accept-lang=zh-CN",
                   f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={path}", url]
        env = dict(os.environ, LANGUAGE="zh_CN", LANG="zh_CN.UTF-8")  # the dashboard follows navigator.language
        subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120,
                       check=True)
    return path


def swanlab_dashboard(out_dir: Path) -> Path:
    """SwanLab's own dashboard on a short tiny run recorded in ``local`` mode: the charts page, top row."""
    with tempfile.TemporaryDirectory(prefix="swanlab-dashboard-") as tmp:
        workspace = Path(tmp)
        record_local_run(workspace)
        with swanlab_dashboard_server(workspace / "swanlog") as port:
            experiments = dashboard_json(port, "project")["experiments"]
            if len(experiments) != 1:
                raise RuntimeError(f"expected one run on the dashboard, found {len(experiments)}")
            # /charts, not the project page: that one prints the log folder's absolute path
            return chromium_screenshot(f"http://127.0.0.1:{port}/charts", out_dir / "swanlab-dashboard.png")


# --------------------------------------------------------------------------- command line

PICTURES = {
    "lora-shapes": lora_shapes,
    "label-mask": label_mask,
    "padding-vs-packing": padding_vs_packing,
    "course-map": course_map,
    "swanlab-dashboard": swanlab_dashboard,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m images.make_images", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=IMAGES, help="folder to write into (default: images/)")
    parser.add_argument("--only", nargs="+", choices=sorted(PICTURES), help="draw only these pictures")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of a known error")
    args = parser.parse_args(argv)

    def work() -> int:
        setup_matplotlib()
        args.out.mkdir(parents=True, exist_ok=True)
        for name in args.only or PICTURES:
            path = PICTURES[name](args.out)
            print(f"{name}: {path} ({path.stat().st_size / 1024:.0f} KB)")
        return 0

    return run_cli(work, args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
