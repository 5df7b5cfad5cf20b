"""Course profiles: which model the very same notebook code drives.

The run spec (:mod:`helpers.spec`) picks one of:

* ``full``     - the real Qwen/Qwen3-8B from ModelScope, bf16, ``device_map="auto"`` (GPU).
* ``small``    - the real Qwen/Qwen3-0.6B from ModelScope: real answers on a laptop CPU (fp32) or a
                 6-8 GB GPU (bf16). The same code paths as ``full``, a smaller entry in the shape table.
* ``tiny``     - the real Qwen3 tokenizer and chat template (offline) plus a tiny,
                 randomly initialised Qwen3 saved as a normal model directory (CPU).
* ``random8b`` - the real Qwen3-8B architecture with random bf16 weights on whatever
                 device is present: for GPU smoke tests and benchmarks where the
                 weights cannot be downloaded (throughput does not depend on values).
* ``auto``     - (default) ``full`` when CUDA is available, else ``tiny``.

Adding a profile means adding one :class:`Profile` entry to :data:`PROFILES`.
Every profile ends up as a model directory with ``config.json`` and the tokenizer,
so later notebooks load it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """What one profile uses: model source, precision, data and training sizes."""

    name: str
    description: str
    #: folder name of the model directory under ``workspace/models``
    model_dirname: str
    #: ``"modelscope"`` (download), ``"tiny"`` (build a tiny model) or ``"config-only"``
    #: (write the Qwen3-8B config; weights are drawn at random when loaded)
    source: str
    #: ``"pretrained"`` (load weights from the directory) or ``"random"``
    weights: str
    dtype: str
    device_map: str | None
    #: ``"huanhuan"`` (the real 3,729-row set, downloaded) or ``"sample"`` (shipped)
    dataset: str
    #: the training config (``configs/train/<name>.yaml``) whose numbers this profile uses
    train_config: str = "qwen3-8b"
    #: the profile whose training configs this one may run (``random8b`` runs the ``full`` recipe)
    recipe_of: str = ""
    #: the Qwen3 size (a key of ``models.QWEN3_SHAPES``) whose architecture the profile loads
    model: str = "Qwen3-8B"
    #: whether the profile is meant for a GPU only (its CPU path is not a course path)
    needs_gpu: bool = False
    #: the dtype on a machine without CUDA ("" keeps ``dtype``)
    cpu_dtype: str = ""

    @property
    def recipe(self) -> str:
        return self.recipe_of or self.name

    @property
    def model_id(self) -> str:
        """The ModelScope / Hugging Face id of the real model (``Qwen/Qwen3-8B``)."""
        return f"Qwen/{self.model}"


PROFILES: dict[str, Profile] = {
    "full": Profile(
        name="full",
        description="从 ModelScope 下载的 Qwen/Qwen3-8B，bf16（需要约 24 GB 显存的 GPU；16 GB 用 QLoRA）",
        model_dirname="Qwen3-8B",
        source="modelscope",
        weights="pretrained",
        dtype="bfloat16",
        device_map="auto",
        dataset="huanhuan",
        train_config="qwen3-8b",
        needs_gpu=True,
    ),
    "small": Profile(
        name="small",
        description="从 ModelScope 下载的真实 Qwen/Qwen3-0.6B（笔记本电脑 CPU 或 6–8 GB 显存的 GPU；回答是真正的中文）",
        model_dirname="Qwen3-0.6B",
        source="modelscope",
        weights="pretrained",
        dtype="bfloat16",
        device_map="auto",
        dataset="huanhuan",
        train_config="qwen3-0.6b",
        model="Qwen3-0.6B",
        cpu_dtype="float32",
    ),
    "tiny": Profile(
        name="tiny",
        description="真实的 Qwen3 分词器 + 随机初始化的迷你 Qwen3（CPU、离线、几分钟）",
        model_dirname="tiny-qwen3",
        source="tiny",
        weights="pretrained",
        dtype="float32",
        device_map=None,
        dataset="sample",
        train_config="tiny",
    ),
    "random8b": Profile(
        name="random8b",
        description="真实的 Qwen3-8B 结构 + 随机 bf16 权重（GPU 冒烟测试与性能基准）",
        model_dirname="Qwen3-8B-random",
        source="config-only",
        weights="random",
        dtype="bfloat16",
        device_map=None,
        dataset="huanhuan",
        train_config="qwen3-8b",
        recipe_of="full",
    ),
}
