"""GPU guards, tested on a CPU machine by faking what ``torch.cuda`` reports.

Each fake answers only the queries the course makes (is_available, is_bf16_supported,
mem_get_info, get_device_properties, ...), so a test shows what the course does on a
V100 without bf16, on a card another kernel is still holding, and on a healthy single GPU.
"""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import pytest
import torch

from helpers import hardware, models
from helpers.spec import build_spec
from tests.conftest import stand_in_weights


def full_spec(tmp_path, *overrides):
    """The full profile (Qwen3-8B recipe) with its model directory in ``tmp_path``."""
    return build_spec("configs/train/qwen3-8b.yaml", ["swanlab=null", *overrides], env={
        "QWEN3_TUTORIAL_WORKSPACE": str(tmp_path)}, settings_file=None, cuda=True)


@pytest.fixture
def fake_gpu(monkeypatch):
    """Make torch report one CUDA GPU: ``fake_gpu(bf16=False, free_gb=3.2, total_gb=32, name=...)``."""

    # import what the course imports lazily while torch still tells the truth (bitsandbytes
    # probes the CUDA runtime when it is first imported)
    import transformers

    transformers.TrainingArguments, transformers.BitsAndBytesConfig, transformers.AutoModelForCausalLM  # noqa: B018

    def install(bf16: bool = True, free_gb: float = 79.0, total_gb: float = 80.0, name: str = "NVIDIA H100",
                major: int = 9, count: int = 1):
        props = SimpleNamespace(name=name, total_memory=int(total_gb * 1e9), major=major, minor=0)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        # as torch does: with emulation (its default) every CUDA card "supports" bf16, a V100 or T4 included
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16 or including_emulation)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (int(free_gb * 1e9), int(total_gb * 1e9)))
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: props)
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: 0)
        monkeypatch.setattr(torch.cuda, "set_device", lambda *a: None)  # TrainingArguments picks cuda:0
        return props

    return install


@pytest.fixture
def no_flash_attn(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))


# --------------------------------------------------------------------------- precision


def test_a_gpu_without_bf16_computes_in_fp16_with_loss_scaling(tmp_path, fake_gpu, no_flash_attn):
    from helpers import train

    fake_gpu(bf16=False, name="Tesla V100-SXM2-32GB", total_gb=32, free_gb=31, major=7)
    spec = full_spec(tmp_path)
    assert spec.profile.dtype == "bfloat16" and spec.training["bf16"] is True
    assert models.compute_dtype(spec) is torch.float16
    assert models.load_kwargs(spec)["dtype"] is torch.float16
    assert models.quantization_config(full_spec(tmp_path, "quantization=nf4")).bnb_4bit_compute_dtype is torch.float16
    args = train.training_arguments(spec)
    assert (args.bf16, args.fp16) == (False, True), "fp16 autocast with the Trainer's loss scaling"


def test_the_export_keeps_the_models_bf16_on_a_gpu_without_bf16(tmp_path, fake_gpu, monkeypatch):
    """The merge runs on the CPU: a V100's fp16 must not become the exported model's dtype."""
    import transformers

    from helpers import export

    fake_gpu(bf16=False, name="Tesla V100-SXM2-32GB", total_gb=32, free_gb=31, major=7)
    spec = full_spec(tmp_path)
    spec.paths.model_dir.mkdir(parents=True)
    (spec.paths.model_dir / "config.json").write_text("{}", encoding="utf-8")
    stand_in_weights(spec.paths.model_dir / "model.safetensors")     # a stand-in: from_pretrained is faked
    seen = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda path, dtype: seen.append(dtype))
    export._base_for_merge(spec)
    assert models.compute_dtype(spec) is torch.float16 and seen == [torch.bfloat16]


def test_a_gpu_with_bf16_keeps_bf16(tmp_path, fake_gpu, no_flash_attn):
    from helpers import train

    fake_gpu(bf16=True)
    spec = full_spec(tmp_path)
    assert models.compute_dtype(spec) is torch.bfloat16
    args = train.training_arguments(spec)
    assert (args.bf16, args.fp16) == (True, False)
    assert args.dataloader_pin_memory is True


def test_one_process_on_a_machine_with_two_gpus_trains_on_one(tmp_path, fake_gpu, no_flash_attn, capsys):
    """Not nn.DataParallel (the Trainer's choice for n_gpu > 1): the model sits on one GPU, and the batch stays the
    config's."""
    from helpers import train

    fake_gpu(count=2)
    args = train.training_arguments(full_spec(tmp_path))
    assert args.n_gpu == 1 and args.train_batch_size == args.per_device_train_batch_size
    assert "ddp.yaml" in capsys.readouterr().out


def test_loading_asks_only_this_processs_gpu(monkeypatch):
    """Under a launch, rank k asks GPU k (LOCAL_RANK) for its free memory, and no other GPU."""
    from helpers import hardware

    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: asked.append(index) or (int(7e9), int(8e9)))
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert hardware.free_gpu_gb() == 7.0 and asked == [3]


def test_on_a_cpu_nothing_is_switched(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = full_spec(tmp_path)
    assert models.compute_dtype(spec) is torch.bfloat16
    assert models.compute_dtype(spec, cuda=True, bf16=False) is torch.float16
    assert "device_map" not in models.load_kwargs(spec) and "attn_implementation" not in models.load_kwargs(spec)


# --------------------------------------------------------------------------- placement


def test_a_single_gpu_holds_the_whole_model(tmp_path, fake_gpu, no_flash_attn):
    fake_gpu()
    kwargs = models.load_kwargs(full_spec(tmp_path))
    assert kwargs["device_map"] == {"": 0}, "never 'auto': it would offload layers silently"
    assert kwargs["dtype"] is torch.bfloat16
    qlora = models.load_kwargs(full_spec(tmp_path, "quantization=nf4"))
    assert qlora["device_map"] == {"": 0} and qlora["quantization_config"].load_in_4bit


def _fake_model_dir(tmp_path):
    folder = tmp_path / "models" / "modelscope" / "Qwen" / "Qwen3-8B"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(models.qwen3_config()), encoding="utf-8")
    stand_in_weights(folder / "model.safetensors")     # a stand-in: from_pretrained is faked
    return folder


def test_an_offloaded_layer_stops_loading_naming_the_free_memory(tmp_path, fake_gpu, no_flash_attn, monkeypatch):
    from transformers import AutoModelForCausalLM

    fake_gpu(free_gb=3.2)
    _fake_model_dir(tmp_path)
    seen = {}

    def from_pretrained(path, **kwargs):  # what accelerate does when the GPU is too full for the model
        seen.update(kwargs)
        return SimpleNamespace(hf_device_map={"model.embed_tokens": 0, "model.layers.0": 0,
                                              "model.layers.35": "cpu", "lm_head": "disk"})

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    with pytest.raises(models.GpuPlacementError) as caught:
        models.load_base_model(full_spec(tmp_path))
    message = str(caught.value)
    assert "3.2 GB" in message and "Shut Down Kernel" in message and "nvidia-smi" in message
    assert "cpu/disk" in message and "2 部分" in message
    assert seen["device_map"] == {"": 0}


def test_check_placement_accepts_a_model_wholly_on_the_gpu():
    models.check_placement(SimpleNamespace(hf_device_map={"": 0}), free_gb=1.0)
    models.check_placement(SimpleNamespace(), free_gb=None)  # loaded without a device map
    with pytest.raises(models.GpuPlacementError, match="空闲显存不够"):
        models.check_placement(SimpleNamespace(hf_device_map={"model": "cpu"}))


def test_the_gpu_report_and_preflight_see_the_other_kernel(tmp_path, fake_gpu):
    from helpers import environment

    fake_gpu(free_gb=20.0, total_gb=80.0, name="NVIDIA A100-SXM4-80GB", major=8)
    [gpu] = hardware.gpus()
    assert (gpu["name"], gpu["memory_gb"], gpu["free_gb"], gpu["bf16"]) == ("NVIDIA A100-SXM4-80GB", 80.0, 20.0, True)
    assert environment.gpu_memory_held_by_others() == pytest.approx(60.0)
    checks = {c.name: c for c in environment.preflight(full_spec(tmp_path), versions={}, pins={}, kernel=True,
                                                       free_gb=500.0, dataset_reachable=lambda: True)}
    assert not checks["gpu"].ok and "已有 60.0 GB 被占用" in checks["gpu"].detail
    assert "nvidia-smi" in checks["gpu"].fix


# --------------------------------------------------------------------------- attention and the KV cache


def test_flash_attention_when_importable_else_sdpa(tmp_path, fake_gpu, monkeypatch):
    fake_gpu()
    real = importlib.util.find_spec
    installed = {"flash_attn": True}

    def find_spec(name, *args):
        if name == "flash_attn":
            return SimpleNamespace(name=name) if installed["flash_attn"] else None
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    spec = full_spec(tmp_path)
    assert models.attention_implementation() == "flash_attention_2"
    kwargs = models.load_kwargs(spec)
    assert kwargs["attn_implementation"] == "flash_attention_2"
    installed["flash_attn"] = False
    assert models.attention_implementation() == "sdpa"
    assert models.load_kwargs(spec)["attn_implementation"] == "sdpa"


def test_no_flash_attention_without_a_gpu(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: SimpleNamespace(name=name) if name == "flash_attn" else real(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.attention_implementation() == "sdpa"


def test_the_kv_cache_is_off_for_training_and_on_for_generation(tiny_spec, tiny_model_dir):
    from helpers import train

    trained = train.load_model_for_training(tiny_spec)
    assert trained.config.use_cache is False
    assert models.load_base_model(tiny_spec).config.use_cache is True
    assert models.load_base_model(tiny_spec, for_training=True).config.use_cache is False
