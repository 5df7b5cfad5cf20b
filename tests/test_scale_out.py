"""Scale-out: the training CLI under `accelerate launch` with two processes on CPU (gloo), and the
shipped accelerate configs for DDP / FSDP / DeepSpeed."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from unittest import mock

import pytest
import torch

from helpers import checkpoints, models, runs, scale_out
from helpers.errors import CourseError
from helpers.recipes import estimate_lora_memory_gb
from helpers.workspace import REPO_ROOT, course_folder
from tests.conftest import tiny_spec_for

ROWS, PER_DEVICE, EPOCHS, RANKS = 16, 2, 2, 2
STEPS_PER_EPOCH = ROWS // (PER_DEVICE * RANKS)
FINAL_STEP = STEPS_PER_EPOCH * EPOCHS
RUN = (f"data.max_rows={ROWS}", f"training.per_device_train_batch_size={PER_DEVICE}",
       f"training.num_train_epochs={EPOCHS}", "training.save_steps=2", "training.logging_steps=1",
       "training.disable_tqdm=true")
SUMMARY_LINE = f"effective batch / 有效批次     {PER_DEVICE * RANKS}（每卡批次 × 梯度累积 × {RANKS} 个进程）"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """An empty workspace of its own: the first launch must build the tiny model itself (no notebook,
    no earlier run), and its SwanLab runs can be counted."""
    return tmp_path_factory.mktemp("scale-out-workspace")


def _launch(workspace: Path, out: Path, *overrides: str, resume: bool = False):
    return scale_out.cpu_launch(out, *overrides, resume=resume,
                                env={"QWEN3_TUTORIAL_WORKSPACE": str(workspace), "QWEN3_TUTORIAL_PROFILE": "tiny"})


def _finish(proc, timeout: int = 240) -> str:
    try:
        log, _ = proc.communicate(timeout=timeout)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    assert proc.returncode == 0, log[-4000:]
    return log


@pytest.fixture(scope="module")
def reference(workspace, tmp_path_factory):
    """Two processes, the tiny profile, SwanLab on (offline): trains to the end."""
    out = tmp_path_factory.mktemp("ddp-run")
    log = _finish(_launch(workspace, out, *RUN))
    return out, log


def _rows_by_rank(steps: list[dict[int, list[int]]]) -> dict[int, list[list[int]]]:
    return {rank: [step[rank] for step in steps] for rank in range(RANKS)}


def test_two_processes_train_to_the_end_in_an_empty_workspace(reference, workspace):
    out, log = reference
    assert (workspace / "models" / "tiny-qwen3" / "model.safetensors").is_file(), "rank 0 built the model"
    final = checkpoints.find_latest_checkpoint(out)
    assert final is not None and checkpoints.checkpoint_step(final) == FINAL_STEP
    entries = scale_out.read_sample_log(out)
    assert {e["rank"] for e in entries} == {0, 1}
    assert len({e["pid"] for e in entries}) == RANKS, "one process per rank"


def test_ranks_train_disjoint_shards_that_cover_each_epoch(reference):
    out, _ = reference
    steps = scale_out.shards_per_step(scale_out.read_sample_log(out))
    assert len(steps) == FINAL_STEP
    for call, ranks in enumerate(steps):
        assert sorted(ranks) == [0, 1], f"micro-batch {call}: both ranks must train"
        assert all(len(rows) == PER_DEVICE for rows in ranks.values())
        assert not set(ranks[0]) & set(ranks[1]), f"micro-batch {call}: ranks share rows {ranks}"
    for epoch in range(EPOCHS):
        seen = [row for step in steps[epoch * STEPS_PER_EPOCH:(epoch + 1) * STEPS_PER_EPOCH]
                for rows in step.values() for row in rows]
        assert sorted(seen) == list(range(ROWS)), f"epoch {epoch} must see every row exactly once"
    first, second = steps[:STEPS_PER_EPOCH], steps[STEPS_PER_EPOCH:]
    assert first != second, "each epoch is shuffled anew"
    # the effective batch the course prints is what one optimizer step really consumed
    per_step = {len([row for rows in step.values() for row in rows]) for step in steps}
    assert per_step == {runs.effective_batch(PER_DEVICE, 1, RANKS)}


def test_only_rank_0_prints_tracks_and_reports_the_effective_batch(reference, workspace):
    out, log = reference
    assert log.count(SUMMARY_LINE) == 1, log[-3000:]
    assert log.count("global step / 全局步数") == 1
    assert log.count("编码了 ") == 1, "the data report is printed once, by rank 0"
    runs = [p for p in (workspace / "swanlog").iterdir() if p.is_dir() and p.name.startswith("run-")]
    assert len(runs) == 1, f"exactly one SwanLab run, found {[p.name for p in runs]}"
    from helpers.tracking import read_scalars

    state = __import__("json").loads((out / f"checkpoint-{FINAL_STEP}" / "trainer_state.json").read_text())
    history = [(e["step"], e["loss"]) for e in state["log_history"] if "loss" in e]
    logged = read_scalars(runs[0])["train/loss"]
    assert [s for s, _ in logged] == [s for s, _ in history] == list(range(1, FINAL_STEP + 1))
    assert [v for _, v in logged] == pytest.approx([v for _, v in history], rel=1e-6)
    assert state["train_batch_size"] == PER_DEVICE
    assert len(list((workspace / "plots").glob(f"train-tiny-{out.name}-*.png"))) == 1   # this run's own loss plot


def test_saved_adapter_loads_and_was_trained(reference, workspace):
    from peft import PeftModel

    from helpers.models import load_base_model

    out, _ = reference
    base = load_base_model(tiny_spec_for(QWEN3_TUTORIAL_WORKSPACE=str(workspace)))
    model = PeftModel.from_pretrained(base, checkpoints.find_latest_checkpoint(out)).eval()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b), "lora_B starts at zero: trained weights are not"
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[151644, 872, 198]])).logits
    assert logits.shape[-1] == 151936 and torch.isfinite(logits).all()


def test_two_process_run_killed_resumes_to_the_same_end(reference, workspace, tmp_path):
    ref_out, _ = reference
    out = tmp_path / "crashed"
    victim = _launch(workspace, out, *RUN, "swanlab=null")
    deadline = time.time() + 240
    try:
        while checkpoints.find_latest_checkpoint(out) is None:
            assert victim.poll() is None, victim.stdout.read()[-4000:]
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.1)
    finally:
        os.killpg(victim.pid, signal.SIGKILL)  # the launcher and both ranks, no clean-up
        victim.wait()
    victim.stdout.close()
    step = checkpoints.checkpoint_step(checkpoints.find_latest_checkpoint(out))
    assert step < FINAL_STEP, "the kill must interrupt the run"
    killed_pids = {e["pid"] for e in scale_out.read_sample_log(out)}

    log = _finish(_launch(workspace, out, *RUN, "swanlab=null", resume=True))
    assert len(re.findall(rf"从 \S*checkpoint-{step} 继续训练", log)) == 1, "rank 0 says where it resumes, once"
    assert checkpoints.checkpoint_step(checkpoints.find_latest_checkpoint(out)) == FINAL_STEP

    entries = scale_out.read_sample_log(out)
    resumed_pids = {e["pid"] for e in entries} - killed_pids
    resumed = _rows_by_rank(scale_out.shards_per_step(entries, resumed_pids))
    expected = _rows_by_rank(scale_out.shards_per_step(scale_out.read_sample_log(ref_out)))
    for rank in range(RANKS):
        assert resumed[rank] == expected[rank][step:], f"rank {rank} must continue the reference's data order"

    from safetensors.torch import load_file

    a = load_file(out / f"checkpoint-{FINAL_STEP}" / "adapter_model.safetensors")
    b = load_file(ref_out / f"checkpoint-{FINAL_STEP}" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- configs

CONFIGS = {
    "single-gpu.yaml": "NO", "ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP",
    "zero2.yaml": "DEEPSPEED", "zero3.yaml": "DEEPSPEED", "cpu-2proc.yaml": "MULTI_GPU", "multi-node.yaml": "MULTI_GPU",
}


def _launch_env(name: str) -> dict[str, str]:
    """What `accelerate launch --config_file <name>` would put in each process's environment."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    path = str(scale_out.ACCELERATE_CONFIG_DIR / name)
    args = launch_command_parser().parse_args(["--config_file", path, "-m", "helpers.train"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


def test_every_shipped_config_is_one_we_know():
    shipped = sorted(p.name for p in scale_out.ACCELERATE_CONFIG_DIR.glob("*.yaml"))
    assert shipped == sorted(CONFIGS)
    assert {s.config for s in scale_out.STRATEGIES.values()} <= set(shipped)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_parses_and_documents_itself(name):
    from accelerate.commands.config.config_args import load_config_from_file

    path = scale_out.ACCELERATE_CONFIG_DIR / name
    config = load_config_from_file(str(path))
    assert config.distributed_type.value == CONFIGS[name]
    assert config.compute_environment.value == "LOCAL_MACHINE"
    assert config.num_machines == (2 if name == "multi-node.yaml" else 1)  # multi-node: 2 machines x 8 GPUs
    text = path.read_text(encoding="utf-8")
    assert f"accelerate launch --config_file configs/accelerate/{name} -m helpers.train --config" in text
    if name == "cpu-2proc.yaml":
        assert config.mixed_precision == "no" and config.num_processes == 2
        return
    if name == "multi-node.yaml":  # DDP across machines: the per-GPU memory is DDP's (ddp.yaml documents it)
        assert config.mixed_precision == "bf16" and config.num_processes == 16 and config.main_process_ip
        assert "--machine_rank 0" in text and "--machine_rank 1" in text
        return
    assert config.mixed_precision == "bf16", "the course trains Qwen3-8B in bf16"
    assert "适用：" in text                  # what the strategy suits
    key = next(k for k, s in scale_out.STRATEGIES.items() if s.config == name)
    claims = re.findall(r"(\d+) 卡 ([\d.]+) GB", text)   # "2 卡 19.2 GB": 2 GPUs, 19.2 GB on each
    assert claims and "估算" in text
    for gpus, gb in claims:
        assert float(gb) == pytest.approx(scale_out.per_gpu_memory_gb(key, int(gpus))["total"], abs=0.06)


def test_fsdp_config_has_the_lora_settings():
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers.models.qwen3 import modeling_qwen3

    env = _launch_env("fsdp.yaml")
    with mock.patch.dict(os.environ, env, clear=True):
        plugin = FullyShardedDataParallelPlugin()
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True  # FULL_SHARD in FSDP2 terms
    assert plugin.transformer_cls_names_to_wrap == ["Qwen3DecoderLayer"]
    assert hasattr(modeling_qwen3, "Qwen3DecoderLayer")
    assert plugin.state_dict_type.name == "FULL_STATE_DICT" and plugin.cpu_ram_efficient_loading
    assert plugin.activation_checkpointing is False, "the Trainer refuses FSDP + its own checkpointing at once"


@pytest.mark.parametrize(("name", "stage"), [("zero2.yaml", 2), ("zero3.yaml", 3)])
def test_deepspeed_configs_build_a_plugin_without_deepspeed(name, stage):
    from accelerate.utils import DeepSpeedPlugin

    env = _launch_env(name)
    with mock.patch.dict(os.environ, env, clear=True):
        plugin = DeepSpeedPlugin()
    ds = plugin.deepspeed_config
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert ds["zero_optimization"]["stage"] == stage
    # the Trainer fills these from configs/train/*.yaml: one source of truth for the batch maths
    assert ds["gradient_accumulation_steps"] == "auto" and ds["train_micro_batch_size_per_gpu"] == "auto"
    assert "gradient_accumulation_steps" not in env["ACCELERATE_CONFIG_DS_FIELDS"]
    if stage == 3:
        assert plugin.zero3_init_flag is True
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


# --------------------------------------------------------------------------- memory estimates

@pytest.mark.parametrize("size", sorted(models.QWEN3_SHAPES))
def test_parameter_counts_match_the_real_architectures(size):
    from peft import get_peft_model

    model = models.qwen3_on_meta(size)
    counts = models.qwen3_counts(size)
    assert sum(p.numel() for p in model.parameters()) == counts["params"]
    lora = get_peft_model(model, models.lora_config())
    assert sum(p.numel() for p in lora.parameters() if p.requires_grad) == counts["lora_params"]
    if size == "Qwen3-8B":
        assert counts["lora_params"] == 21_823_488


def test_per_gpu_memory_follows_what_each_strategy_shards():
    from helpers.models import qwen3_on_meta

    one = scale_out.per_gpu_memory_gb("single-gpu", 1)
    assert one == pytest.approx(estimate_lora_memory_gb("Qwen3-8B"))
    assert one["total"] == pytest.approx(estimate_lora_memory_gb()["total"], abs=0.01)
    # one decoder layer of the real architecture, in bf16: what FSDP / ZeRO-3 gather at a time
    layer_gb = sum(p.numel() for p in qwen3_on_meta().model.layers[0].parameters()) * 2 / 1e9
    lora_gb = one["LoRA weights + grads + Adam (fp32)"]
    for gpus in (2, 4, 8):
        zero2, fsdp = scale_out.per_gpu_memory_gb("zero2", gpus), scale_out.per_gpu_memory_gb("fsdp", gpus)
        # ZeRO-2 keeps the fp32 LoRA weights (4 of 16 bytes) and shards grads + Adam (12 of 16)
        assert zero2["LoRA weights + grads + Adam (fp32)"] == pytest.approx(lora_gb / 4 + lora_gb * 3 / 4 / gpus)
        assert zero2["weights (bf16)"] == one["weights (bf16)"], "ZeRO-2 never shards the frozen weights"
        # FSDP: 1/N of the weights plus the layer being gathered and the one prefetched
        assert fsdp["weights (bf16)"] == pytest.approx(one["weights (bf16)"] / gpus + 2 * layer_gb, abs=0.01)
        assert fsdp["LoRA weights + grads + Adam (fp32)"] == pytest.approx(lora_gb / gpus)
        assert fsdp["activations"] == one["activations"], "activations belong to each GPU's own micro-batch"
        assert fsdp["total"] == pytest.approx(sum(v for k, v in fsdp.items() if k != "total"))
    assert scale_out.per_gpu_memory_gb("fsdp", 8)["total"] < scale_out.per_gpu_memory_gb("fsdp", 2)["total"]
    table = scale_out.memory_table()
    assert "ESTIMATED" in table and "FSDP2" in table and "DeepSpeed ZeRO-3" in table
    # --gpus 3: the count asked for gets its own column, with its own estimate
    fsdp_row = next(line for line in scale_out.memory_table(gpus=3).splitlines() if line.startswith("FSDP2"))
    numbers = [float(x) for x in fsdp_row.split()[1:]]
    assert numbers == [round(scale_out.per_gpu_memory_gb("fsdp", n)["total"], 1) for n in (2, 3, 4, 8)]


def test_launch_commands_name_shipped_configs():
    assert scale_out.launch_command("ddp", gpus=4) == (
        "accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 4 "
        "-m helpers.train --config configs/train/qwen3-8b.yaml")
    for strategy in scale_out.STRATEGIES.values():
        assert (REPO_ROOT / "configs" / "accelerate" / strategy.config).is_file()


def test_the_cpu_demo_never_touches_the_gpu_profiles_model(tmp_path):
    """On a GPU machine notebook 07's spec is ``full``: the demo links the workspace's tiny model, built beside
    Qwen3-8B, and the downloaded folder keeps every byte."""
    from helpers.settings import WORKSPACE_ENV
    from helpers.spec import build_spec
    from helpers.workspace import course_folder

    spec = build_spec(profile="full", env={WORKSPACE_ENV: str(tmp_path / "ws")}, settings_file=None, cuda=True)
    qwen = course_folder(spec.paths.model_dir)   # as the download leaves it
    (qwen / "config.json").write_text('{"hidden_size": 4096}', encoding="utf-8")
    (qwen / "model-00001-of-00005.safetensors").write_bytes(b"16 GB of weights")
    before = {p.name: p.read_bytes() for p in qwen.iterdir()}
    root = scale_out.demo_workspace(spec)
    assert {p.name: p.read_bytes() for p in qwen.iterdir()} == before
    link = root / "models" / "tiny-qwen3"
    assert link.resolve() == (tmp_path / "ws" / "models" / "tiny-qwen3") and (link / "model.safetensors").is_file()


def test_the_command_line_prints_every_strategy_command():
    from tests.cli_runner import run_cli

    done = run_cli("scale_out", ["--gpus", "8", "--model", "Qwen3-14B"], env={"PATH": os.environ["PATH"]},
                   cwd=REPO_ROOT)
    assert done.code == 0, done.output
    commands = [line for line in done.stdout.splitlines() if line.startswith("accelerate launch")]
    assert [c.split()[3] for c in commands] == [f"configs/accelerate/{s.config}" for s in scale_out.STRATEGIES.values()]
    assert all(("--num_processes 8" in c) == ("single-gpu" not in c) for c in commands)
    assert "Qwen3-14B" in done.stdout.splitlines()[0]


def test_one_gpu_gets_the_single_gpu_command_only(capsys):
    """A multi-GPU launch with ``--num_processes 1`` is the single-GPU run at best: one GPU gets that command."""
    assert scale_out.main(["--gpus", "1"]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("accelerate launch")]
    assert commands == [scale_out.launch_command("single-gpu")]


def test_commands_printed_outside_the_repository_say_where_to_run_them_and_gpus_has_a_ceiling(tmp_path):
    """The commands name configs/ relative to the repository: printed elsewhere they failed when pasted, so the
    output names the folder to cd into; a --gpus of 20 digits broke the table and went into the commands."""
    import shlex

    from tests.cli_runner import run_cli

    env = {"PATH": os.environ["PATH"], "QWEN3_TUTORIAL_WORKSPACE": str(tmp_path / "ws")}
    elsewhere = run_cli("scale_out", ["--gpus", "2"], env=env, cwd=tmp_path)
    home = run_cli("scale_out", ["--gpus", "2"], env=env, cwd=REPO_ROOT)
    assert elsewhere.code == home.code == 0
    cd = [line for line in elsewhere.stdout.splitlines() if f"cd {shlex.quote(str(REPO_ROOT))}" in line]
    assert len(cd) == 1 and "cd " not in home.stdout
    too_many = run_cli("scale_out", ["--gpus", str(scale_out.MAX_GPUS + 1)], env=env, cwd=tmp_path)
    assert too_many.code == 2 and "accelerate launch" not in too_many.stdout


def test_the_demo_keeps_a_run_still_training_and_reports_its_ranks_error_in_one_line(tmp_path, monkeypatch):
    """A second demo (another cell, a terminal) never deletes the run a first one trains into; a course error in the
    ranks (here: the dataset) is their one line, a CourseError, not accelerate's pages of traceback."""
    from helpers.checkpoints import RunLockedError, lock_run

    spec = tiny_spec_for(QWEN3_TUTORIAL_WORKSPACE=str(tmp_path / "workspace"))
    monkeypatch.setattr(scale_out, "build_tiny_model", lambda folder: course_folder(folder))
    out = scale_out.demo_workspace(spec) / "checkpoints" / "tiny-2proc"
    (course_folder(out) / "sample_log.jsonl").write_text("{}\n", encoding="utf-8")
    log = ("Traceback (most recent call last):\n  ...\nerror: 数据集 /nope/huanhuan.json 不存在：请先下载\n"
           "（加上 --debug 可查看完整的 traceback）\nerror: 数据集 /nope/huanhuan.json 不存在：请先下载\n")

    class Failed:
        returncode = 1

        def __init__(self, cmd, **_):
            pass

        def communicate(self, timeout=None):
            return log, None

    monkeypatch.setattr(scale_out.subprocess, "Popen", Failed)
    with lock_run(out), pytest.raises(RunLockedError) as locked:
        scale_out.run_cpu_demo(spec)
    assert "--output-dir" not in str(locked.value)     # the demo has no such flag: wait for the other one
    assert (out / "sample_log.jsonl").is_file()
    with pytest.raises(scale_out.DemoError) as caught:
        scale_out.run_cpu_demo(spec)
    assert isinstance(caught.value, CourseError) and str(caught.value).count("\n") == 0
    assert "/nope/huanhuan.json 不存在" in str(caught.value) and not out.exists()
    log = "Segmentation fault\n"      # no course error: a bug keeps its output for the traceback
    with pytest.raises(RuntimeError, match="Segmentation fault") as caught:
        scale_out.run_cpu_demo(spec)
    assert not isinstance(caught.value, CourseError)


def test_notebook_07s_equivalent_command_launches_what_the_demo_launches(tmp_path, monkeypatch):
    """The command notebook 07 prints as equivalent to its live demo trains the same thing into the same folder of
    the demo's own workspace (pasted at the repository root, it leaves lesson 04's run and data alone)."""
    import ast
    import json
    import shlex

    cells = json.loads((REPO_ROOT / "notebooks" / "07-scale-out.ipynb").read_text(encoding="utf-8"))["cells"]
    [text] = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown" and "cpu-2proc.yaml" in
              "".join(c["source"]) and "```bash" in "".join(c["source"])]
    words = shlex.split(text.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " "))
    typed_env = dict(w.split("=", 1) for w in words[:words.index("accelerate")])
    typed = words[words.index("accelerate"):]
    [call] = [node for c in cells if c["cell_type"] == "code" and "run_cpu_demo" in "".join(c["source"])
              for node in ast.walk(ast.parse("".join(c["source"])))
              if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "run_cpu_demo"]
    overrides = [arg.value for arg in call.args[1:]]

    launched = {}

    class Finished:
        returncode = 0

        def __init__(self, cmd, env, **_):
            launched.update(cmd=cmd, env=env)

        def communicate(self, timeout=None):
            return "", None

    spec = tiny_spec_for(QWEN3_TUTORIAL_WORKSPACE=str(tmp_path / "workspace"))
    monkeypatch.setattr(scale_out, "build_tiny_model", lambda folder: course_folder(folder))
    monkeypatch.setattr(scale_out.subprocess, "Popen", Finished)
    scale_out.run_cpu_demo(spec, *overrides)

    def where(path: str) -> Path:      # a path typed at the repository root; workspace/... is the spec's workspace
        parts = Path(path).parts
        return (spec.paths.workspace.joinpath(*parts[1:]) if parts[0] == "workspace" else REPO_ROOT / path).resolve()

    def meaning(argv: list[str]) -> dict:
        argv = argv[1:]
        sets = {argv[i + 1] for i, word in enumerate(argv) if word == "--set"} - {"training.disable_tqdm=true"}
        paths = {flag: where(argv[argv.index(flag) + 1]) if not Path(argv[argv.index(flag) + 1]).is_absolute()
                 else Path(argv[argv.index(flag) + 1]).resolve() for flag in ("--config_file", "--config", "--output-dir")}
        return {"module": argv[argv.index("-m") + 1], "no-resume": "--no-resume" in argv, "sets": sets, **paths}

    assert meaning(typed) == meaning(launched["cmd"])      # the progress bar (disable_tqdm) aside
    assert where(typed_env["QWEN3_TUTORIAL_WORKSPACE"]) == Path(launched["env"]["QWEN3_TUTORIAL_WORKSPACE"]).resolve()
    for name in ("QWEN3_TUTORIAL_PROFILE", "CUDA_VISIBLE_DEVICES"):
        assert typed_env[name] == launched["env"][name]


@pytest.mark.parametrize(("model", "config"), [("Qwen3-0.6B", "qwen3-0.6b.yaml"), ("Qwen3-8B", "qwen3-8b.yaml"),
                                              ("Qwen3-32B", "qwen3-8b.yaml")])
def test_the_printed_commands_train_the_model_of_the_table_or_say_they_do_not(model, config, capsys):
    assert scale_out.main(["--model", model, "--gpus", "2"]) == 0
    out = capsys.readouterr().out
    commands = [line for line in out.splitlines() if line.startswith("accelerate launch")]
    assert len(commands) == len(scale_out.STRATEGIES)
    assert all(c.endswith(f"--config configs/train/{config}") for c in commands)
    assert (REPO_ROOT / "configs" / "train" / config).is_file()
    assert (f"{model} 的训练配置" in out) == (model not in scale_out.TRAIN_CONFIGS)   # an estimate-only size says so


@pytest.mark.parametrize(("profile", "config", "note"), [("small", "qwen3-0.6b.yaml", False),
                                                         ("full", "qwen3-8b.yaml", False),
                                                         ("tiny", "qwen3-8b.yaml", True)])
def test_the_commands_follow_the_profile_of_the_settings(profile, config, note, monkeypatch, capsys):
    """A command printed under QWEN3_TUTORIAL_PROFILE=small trains small (an 8B config would contradict the
    variable); a tiny setting cannot run an 8B command, so the output says which setting to change first."""
    monkeypatch.setenv("QWEN3_TUTORIAL_PROFILE", profile)
    assert scale_out.main(["--gpus", "2"]) == 0
    out = capsys.readouterr().out
    commands = [line for line in out.splitlines() if line.startswith("accelerate launch")]
    assert commands and all(c.endswith(f"--config configs/train/{config}") for c in commands)
    assert ("setup --profile full" in out) == note
