"""The benchmarks count what they claim to count.

Each test compares a benchmark's figure with the same quantity obtained another way: the shared
README's facts about the real dataset, an encoding done here, the linear layers of the real
architecture counted on the ``meta`` device, PyTorch's own FLOP counter, PEFT's parameter count.
Nothing here asserts a speed.
"""

from __future__ import annotations

import itertools
import json
import os

import pytest

from bench import common
from helpers.workspace import REPO_ROOT
from tests.cli_runner import run_cli

#: The shared README's facts about the real 3,729-row dataset and the original tutorial's encoding:
#: 269,343 real tokens per epoch; random batches of 4 padded to their longest row compute 379,557,
#: so 29.0% of the work is padding.
ROWS, ORIGINAL_REAL, ORIGINAL_COMPUTED, ORIGINAL_PADDING_SHARE = 3729, 269_343, 379_557, 0.290
#: ``--quick --train-rows 4``: the quick recipes train 4 rows per optimizer step (2 x 2 and 4 x 1),
#: so with 4 rows every measured step trains exactly these 4 rows once.
TRAIN_ROWS = 4


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, huanhuan_path, tiny_model_dir):
    """``python -m bench.cpu --quick`` on the real dataset (its ``main``, in this process): (JSON, printed report)."""
    out = tmp_path_factory.mktemp("bench") / "cpu.json"
    env = dict(os.environ, HUANHUAN_JSON=str(huanhuan_path), PYTHONUNBUFFERED="1")
    env.pop("QWEN3_TUTORIAL_PROFILE", None)
    done = run_cli("bench.cpu", ["--quick", "--train-rows", TRAIN_ROWS, "--out", out], env=env, cwd=REPO_ROOT)
    assert done.code == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8")), done.stdout


def test_padding_table_of_the_benchmark_equals_the_readme_facts(quick_run, real_records, real_encoded):
    result, printed = quick_run
    table = {row["strategy"]: row for row in result["padding"]["table"]}
    assert result["padding"]["rows"] == len(real_records) == ROWS
    assert (table["original"]["real"], table["original"]["computed"]) == (ORIGINAL_REAL, ORIGINAL_COMPUTED)
    assert round(table["original"]["padding_share"], 3) == ORIGINAL_PADDING_SHARE
    # the course's side, against the session's own encoding: packed computes exactly the real tokens
    ours_real = sum(len(s["input_ids"]) for s in real_encoded[0])
    assert table["ours_packed"]["real"] == table["ours_packed"]["computed"] == ours_real
    assert table["ours_random"]["real"] == table["ours_grouped"]["real"] == ours_real
    assert ours_real < table["ours_grouped"]["computed"] < table["ours_random"]["computed"]
    assert f"{ORIGINAL_COMPUTED:,}" in printed and f"{ours_real:,}" in printed


def test_quick_training_counts_the_tokens_of_the_rows_it_trained(quick_run, real_records, tokenizer):
    from helpers.data import encode_records
    from helpers.original import original_process_func

    result, _ = quick_run
    rows = real_records[:TRAIN_ROWS]
    ours = encode_records(rows, tokenizer)[0]
    original = [original_process_func(r, tokenizer) for r in rows]
    recipes = result["train"]["recipes"]
    assert result["train"]["rows"] == TRAIN_ROWS and set(recipes) == {"original", "ours"}

    packed = recipes["ours"]
    steps = packed["measured_steps"]
    assert steps == result["train"]["measured_steps"] >= 1
    lengths = [len(s["input_ids"]) for s in ours]
    assert packed["samples"] == TRAIN_ROWS * steps
    assert packed["real_tokens"] == packed["computed_tokens"] == steps * sum(lengths)
    assert packed["trained_tokens"] == steps * sum(sum(label != -100 for label in s["labels"]) for s in ours)
    assert packed["attention_pairs"] == steps * sum(n * (n + 1) for n in lengths)
    assert packed["padding_share"] == 0

    padded = recipes["original"]
    o_lengths = [len(s["input_ids"]) for s in original]
    assert padded["measured_steps"] == steps
    assert padded["samples"] == TRAIN_ROWS * steps
    assert padded["real_tokens"] == steps * sum(o_lengths)
    # each step: the 4 rows in two micro-batches of 2, each padded to its longer row; which rows pair up
    # depends on the sampler's order, so the total is one of the sums of these per-step options
    a, b, c, d = o_lengths
    options = {2 * max(a, b) + 2 * max(c, d), 2 * max(a, c) + 2 * max(b, d), 2 * max(a, d) + 2 * max(b, c)}
    assert padded["computed_tokens"] in {sum(combo) for combo in itertools.product(options, repeat=steps)}


def test_padded_and_packed_batches_give_the_same_loss(quick_run):
    eq = quick_run[0]["loss_equivalence"]
    assert eq["rows"] == TRAIN_ROWS
    assert eq["loss_padded"] > 1 and eq["abs_diff"] < 1e-4


def test_flop_formula_matches_the_real_architecture_on_meta():
    from peft import get_peft_model

    from bench.gpu_qwen3_8b import linear_weights_on_meta, worker_spec
    from helpers.models import lora_config, qwen3_on_meta

    counted = linear_weights_on_meta()
    config, lora = counted["config"], worker_spec("random8b").lora
    params = common.matmul_parameters(config)
    assert params["layers"] + params["lm_head"] == counted["linear_weights"]
    peft_model = get_peft_model(qwen3_on_meta(), lora_config(worker_spec("random8b").lora))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert common.lora_parameters(config, lora) == trainable


def test_flop_formula_matches_pytorchs_flop_counter():
    """Forward + backward of a small Qwen3 with the course's LoRA, counted by ``FlopCounterMode``.

    Eager attention computes the full L x L square, the formula counts the causal half
    (L(L+1)/2 pairs), so the counter sees the formula's per-token FLOPs plus twice its
    attention term without the diagonal: 2 x per_pair x L^2.
    """
    import torch
    from peft import get_peft_model
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from bench.gpu_qwen3_8b import worker_spec
    from helpers.models import lora_config

    spec = worker_spec("random8b")
    config = Qwen3Config(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                         attn_implementation="eager")
    torch.manual_seed(0)
    model = get_peft_model(Qwen3ForCausalLM(config), lora_config(spec.lora))
    length = 37
    ids = torch.randint(0, config.vocab_size, (1, length))
    # inputs that need a gradient, as every layer but the first has: the first layer's frozen
    # weights then also compute input gradients (4 FLOPs per weight per token, as the formula says)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        model(inputs_embeds=embeds, labels=ids, use_cache=False).loss.backward()
    per_token, per_pair = common.lora_flop_coefficients(config, spec.lora)
    assert counter.get_total_flops() == per_token * length + 2 * per_pair * length**2
    assert common.lora_training_flops(config, [length], spec.lora) == per_token * length + per_pair * length * (length + 1)


def test_batch_counter_counts_real_tokens_and_samples(tokenizer):
    from helpers.train import make_collator

    features = [{"input_ids": [1] * n, "labels": [-100] * (n - 2) + [5, 6]} for n in (3, 7, 5)]
    for batching in ("padded", "packed"):
        counter = common.BatchCounter()
        counter(None, (), dict(make_collator(batching, tokenizer)(features)))
        snap = counter.snapshot()
        assert snap["samples"] == 3 and snap["real"] == 15 and snap["trained"] == 6
        assert snap["pairs"] == 3 * 4 + 7 * 8 + 5 * 6
        assert snap["computed"] == (21 if batching == "padded" else 15)


def test_peak_table_matches_the_most_specific_name_first():
    assert common.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert common.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert common.peak_tflops("NVIDIA H200") == 989.4
    assert common.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert common.peak_tflops("NVIDIA GeForce RTX 4090") == 165.2
    assert common.peak_tflops("Some Future GPU") is None


def test_notebook_04_table_on_the_real_dataset(real_records, tokenizer):
    from bench.common import format_tokens_table, tokens_per_epoch_table

    rows = tokens_per_epoch_table(tokenizer, real_records)
    assert [r.strategy for r in rows] == ["original", "ours_random", "ours_grouped", "ours_packed"]
    assert (rows[0].real, rows[0].computed) == (ORIGINAL_REAL, ORIGINAL_COMPUTED)
    assert rows[-1].padding == 0
    text = format_tokens_table(rows)
    assert f"{ORIGINAL_COMPUTED:,}" in text and f"{rows[-1].computed / ORIGINAL_COMPUTED:.1%}" in text


def test_helpers_never_import_bench():
    for path in sorted((REPO_ROOT / "helpers").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "import bench" not in text and "from bench" not in text, path.name
        assert "sys.path" not in text, path.name
    for path in sorted((REPO_ROOT / "bench").glob("*.py")):
        assert "sys.path" not in path.read_text(encoding="utf-8"), path.name


def test_the_benchmarks_find_the_course_copy_of_the_dataset(tmp_path, monkeypatch, huanhuan_path):
    """Without $HUANHUAN_JSON and ../shared (a learner's clone): the full profile's own huanhuan.json, if pinned."""
    import shutil

    monkeypatch.setattr(common, "REPO_ROOT", tmp_path / "clone")          # no ../shared beside it
    env = {"QWEN3_TUTORIAL_WORKSPACE": str(tmp_path / "ws")}
    with pytest.raises(FileNotFoundError, match="HUANHUAN_JSON"):
        common.real_dataset_path(env)
    course = tmp_path / "ws" / "data" / "huanhuan.json"
    course.parent.mkdir(parents=True)
    course.write_text("[]", encoding="utf-8")                             # not the pinned file: not used
    with pytest.raises(FileNotFoundError, match="huanhuan.json"):
        common.real_dataset_path(env)
    shutil.copyfile(huanhuan_path, course)
    assert common.real_dataset_path(env) == course


# --------------------------------------------------------------------------- the GPU scripts' command lines


class Stop(Exception):
    """Raised where a script would start its long work: what it decided before is what the test checks."""


@pytest.mark.parametrize("module, argv", [("gpu_run", ["--device", "cpu"]), ("gpu_qwen3_8b", ["--device", "cpu"]),
                                          ("gpu_run", ["--table", "nope.json"]),
                                          ("gpu_run", ["--adopt", "nope.json"]),
                                          ("gpu_check", ["--table", "nope.json"]),
                                          ("gpu_run", ["--table", "other.json"]),
                                          ("gpu_run", ["--adopt", "other.json"]),
                                          ("gpu_check", ["--table", "other.json"])])
def test_the_gpu_scripts_refuse_what_cannot_work_in_one_line(module, argv, tmp_path, monkeypatch, capsys):
    """The 8B architecture on a CPU ran for hours in silence; a missing result file was a traceback."""
    import importlib

    script = importlib.import_module(f"bench.{module}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "other.json").write_text('{"global_step": 60}', encoding="utf-8")   # a JSON, but no result
    for name in ("run_all", "run_check"):   # never reached: the refusal comes first
        if hasattr(script, name):
            monkeypatch.setattr(script, name, lambda args: pytest.fail("started the run"))
    with pytest.raises(SystemExit) as stop:
        script.main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and "Traceback" not in "\n".join(lines)
    assert ("CUDA" if "--device" in argv else argv[-1]) in lines[-1]


@pytest.mark.parametrize("module, runner", [("gpu_check", "run_check"), ("gpu_run", "run_all")])
def test_a_cpu_rehearsal_writes_into_the_workspace_never_over_the_committed_gpu_result(module, runner, tmp_path,
                                                                                      monkeypatch):
    import importlib

    script = importlib.import_module(f"bench.{module}")
    monkeypatch.setenv("QWEN3_TUTORIAL_WORKSPACE", str(tmp_path / "ws"))
    seen = {}

    def started(args):
        seen.update(out=args.out, workdir=getattr(args, "workdir", None))
        raise Stop

    monkeypatch.setattr(script, runner, started)
    with pytest.raises(Stop):
        script.main(["--tiny"])
    assert seen["out"] == str(tmp_path / "ws" / "bench" / f"{module}-tiny.json")
    assert seen["workdir"] in (None, str(tmp_path / "ws"))
