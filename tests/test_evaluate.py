"""Evaluation: each metric on hand-built strings, the leak-free split on the real data, and the
whole evaluation end to end on the tiny profile (the memorisation adapter, then the CLI on a fresh
workspace)."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
from collections import Counter
from types import SimpleNamespace

import pytest

from helpers import data_files, metrics, runs
from helpers import evaluate as ev
from helpers.data_files import grouped_split, normalise
from helpers.validation import load_records
from helpers.workspace import REPO_ROOT
from tests.cli_runner import run_cli

LOOP = "臣妾臣妾臣妾臣妾臣妾"                       # a looping reply: 10 characters, 2 distinct
ANSWER = "我是甄嬛，家父是大理寺少卿甄远道。"          # 17 characters


# --------------------------------------------------------------------------- metrics on hand-built strings


def lcs(a: list[str], b: list[str]) -> int:
    """Longest common subsequence by dynamic programming (independent of rouge-score)."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def lcs_f1(prediction: str, reference: str) -> float:
    p, r = metrics.chars(prediction), metrics.chars(reference)
    common = lcs(p, r)
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def test_rouge_l_exact_match_disjoint_and_partial():
    assert metrics.rouge_l(ANSWER, ANSWER) == 1.0
    assert metrics.rouge_l("春花秋月", "皇上万福") == 0.0
    # "我是甄嬛" is a subsequence of the answer: precision 4/4, recall 4/15 (punctuation is no token), F1 = 8/19
    assert metrics.rouge_l("我是甄嬛", ANSWER) == pytest.approx(8 / 19)
    # punctuation alone matches nothing (it scored 0.08 against any line ending in 「。」 when it counted)
    assert metrics.rouge_l("。", "臣妾给皇上请安。") == 0.0
    assert metrics.rouge_l("我是甄嬛。", "我是甄嬛！") == 1.0
    # whitespace is not a token
    assert metrics.rouge_l("我 是 甄 嬛", "我是甄嬛") == 1.0
    assert metrics.mean_rouge_l([ANSWER, "春花秋月"], [ANSWER, "皇上万福"]) == 0.5
    # the baseline pairs each answer with the next question's: unrelated answers, shared characters only
    assert metrics.unrelated_baseline(["我是甄嬛", "我是皇上", "春花秋月"]) == pytest.approx(
        (metrics.rouge_l("我是甄嬛", "我是皇上") + metrics.rouge_l("我是皇上", "春花秋月")
         + metrics.rouge_l("春花秋月", "我是甄嬛")) / 3)


@pytest.mark.parametrize(("prediction", "reference"), [
    ("皇上万福金安，臣妾给皇上请安。", "臣妾给皇上请安，皇上万福。"),
    ("我住在碎玉轩，院子不大。", "我住在碎玉轩，院子不大，胜在清静。"),
    ("本宫乏了，你们都退下吧。", "嫔妾告退。"),
])
def test_rouge_l_equals_the_library_and_an_independent_lcs(prediction, reference):
    import unicodedata

    from rouge_score import rouge_scorer

    class Characters:
        def tokenize(self, text):
            return [c for c in text if not c.isspace() and not unicodedata.category(c).startswith("P")]

    library = rouge_scorer.RougeScorer(["rougeL"], tokenizer=Characters()).score(reference, prediction)
    assert metrics.rouge_l(prediction, reference) == library["rougeL"].fmeasure
    assert metrics.rouge_l(prediction, reference) == pytest.approx(
        lcs_f1(*("".join(Characters().tokenize(t)) for t in (prediction, reference))))


def test_a_looping_reply():
    # 8 character 3-grams, 2 distinct: 6 of them repeat an earlier one
    assert metrics.repeated_ngram_ratio(LOOP, 3) == pytest.approx(6 / 8)
    assert metrics.distinct_n([LOOP], 1) == pytest.approx(2 / 10)
    assert metrics.distinct_n([LOOP], 2) == pytest.approx(2 / 9)
    # a reply without repeats, and one too short for a 3-gram
    assert metrics.repeated_ngram_ratio(ANSWER, 3) == 0.0
    assert metrics.repeated_ngram_ratio("好", 3) == 0.0
    assert metrics.distinct_n([ANSWER], 1) == pytest.approx(len(set(ANSWER)) / len(ANSWER))
    # distinct-n is over all replies: the same reply twice halves it
    assert metrics.distinct_n(["春花秋月", "春花秋月"], 2) == pytest.approx(3 / 6)


def test_a_reply_cut_at_max_new_tokens():
    assert metrics.truncation_rate([True, True, True]) == 0.0
    assert metrics.truncation_rate([False, True, False, True]) == 0.5
    found = metrics.degeneration([LOOP, ANSWER], [False, True])
    assert found == {"truncated": 0.5, "repeated_3gram": pytest.approx(0.375),
                       "distinct_1": pytest.approx(len(set(LOOP + ANSWER)) / 27),
                       "distinct_2": pytest.approx(18 / 25)}


def test_a_reply_with_boilerplate_and_identity():
    replies = ["作为一个AI语言模型，我没有名字。", "我是通义千问，由阿里云开发。", ANSWER, "qwen 是我的名字"]
    assert metrics.boilerplate_rate(replies) == 0.75
    assert metrics.boilerplate_rate([ANSWER, "臣妾告退。"]) == 0.0
    assert metrics.identity_correct(ANSWER)
    assert not metrics.identity_correct("我是甄嬛，也是一个人工智能助手。")   # names the persona, but breaks it
    assert not metrics.identity_correct("我是一个乐于助人的助手。")
    assert metrics.identity_accuracy([ANSWER, "嬛嬛在此。", "我是AI助手。", "不告诉你"]) == 0.5


def test_persona_markers_and_their_derivation():
    answers = ["臣妾参见皇上。", "皇上万福。", "用户您好，很高兴为您服务。", "今日天气甚好。"]
    role = metrics.derive_role_words(answers, candidates=("皇上", "臣妾", "本宫"), neutral=("用户", "手机"),
                                min_share=0.1)
    # 皇上: 2 of 4 answers, beats the neutral 用户 (1 of 4); 臣妾 only ties it; 本宫 never appears
    assert role.words == ("皇上",)
    assert role.neutral_share == 0.25
    assert [(r["word"], r["answers"], r["kept"]) for r in role.table] == [
        ("皇上", 2, True), ("臣妾", 1, False), ("本宫", 0, False), ("用户", 1, False), ("手机", 0, False)]
    assert metrics.marker_rate(answers, role.words) == 0.5
    assert metrics.marker_rate(answers, ()) == 0.0
    assert "皇上" in role.describe()


def test_thinking_blocks():
    assert metrics.thinking_complete("<think>\n她问的是花，我答杏花。\n</think>\n\n我最爱杏花。")
    assert not metrics.thinking_complete("<think>\n\n</think>\n\n我最爱杏花。")          # empty
    assert not metrics.thinking_complete("<think>\n她问的是花，我想想……")              # never closed
    assert not metrics.thinking_complete("我最爱杏花。")                               # never opened
    assert metrics.thinking_rate(["<think>想</think>答", "答", "<think> </think>答", "<think>想</think>"]) == 0.5
    # a thought still open when max_new_tokens ran out is cut off by the budget: not counted as lost
    assert metrics.thinking_cut_off("<think>\n她问的是花，我想想", finished=False)
    assert not metrics.thinking_cut_off("<think>\n她问的是花，我想想", finished=True)
    assert metrics.thinking_rate(["<think>想</think>答", "<think>想了很久"], [True, False]) == 1.0
    assert metrics.thinking_rate(["<think>想</think>答", "<think>想了很久"]) == 0.5
    assert metrics.thinking_conclusion(0.0, 0.0).startswith("无法判断")
    assert metrics.thinking_conclusion(0.9, 0.85).startswith("思考模式保住了")
    assert metrics.thinking_conclusion(0.9, 0.2).startswith("思考模式受损")


def test_masked_loss_counts_answer_tokens_only():
    import torch

    vocab = 7
    labels = torch.tensor([[-100, -100, 3, 5]])      # logits at t predict labels at t + 1
    uniform = torch.zeros(1, 4, vocab)
    total, count = metrics.masked_nll(uniform, labels)
    assert count == 2
    assert total == pytest.approx(2 * math.log(vocab))
    assert metrics.perplexity(total / count) == pytest.approx(vocab)
    certain = torch.full((1, 4, vocab), -50.0)
    certain[0, 1, 3] = certain[0, 2, 5] = 50.0        # sure of both answer tokens
    certain[0, 0, 0] = 50.0                           # a wrong guess at a prompt position does not count
    total, count = metrics.masked_nll(certain, labels)
    assert (total, count) == (pytest.approx(0.0, abs=1e-6), 2)


def test_identity_probes_are_not_training_prompts(real_records):
    prompts = [r["instruction"] for r in real_records]
    kept, seen = metrics.unseen_probes(metrics.IDENTITY_PROBES, prompts)
    assert seen == [] and kept == list(metrics.IDENTITY_PROBES)
    # the check is on normalised forms: "你是谁" is the data's "你是谁？"
    assert metrics.unseen_probes(["你是谁", "你是何人？"], prompts) == (["你是何人？"], ["你是谁"])


def test_epoch_boundaries_of_a_log_history():
    history = [{"loss": 3.0, "epoch": 0.5, "step": 1}, {"loss": 2.0, "epoch": 1.0, "step": 2},
               {"eval_loss": 2.5, "epoch": 1.0, "step": 2}, {"loss": 1.0, "epoch": 1.5, "step": 3},
               {"loss": 0.5, "epoch": 2.0, "step": 4}]
    assert runs.epoch_boundaries(history) == [2, 4]


# --------------------------------------------------------------------------- the split on the real data


def _leaks(train: list[dict], held: list[dict]) -> tuple[set, set]:
    def prompt(r):
        return normalise(r["instruction"] + r.get("input", ""))

    return ({prompt(r) for r in train} & {prompt(r) for r in held},
            {normalise(r["output"]) for r in train} & {normalise(r["output"]) for r in held})


def test_split_of_the_real_dataset_is_leak_free_and_stable(real_records):
    records = real_records
    split = grouped_split(records, 0.05, seed=42)
    assert _leaks(split.train, split.eval) == (set(), set())
    # sizes measured for seed 42; a change here means the split (and every eval number) changed
    assert (len(split.train), len(split.eval), split.groups, split.eval_groups) == (3542, 187, 3286, 143)
    assert sorted(split.train_rows + split.eval_rows) == list(range(len(records)))
    again = grouped_split(records, 0.05, seed=42)
    assert again.eval_rows == split.eval_rows
    other = grouped_split(records, 0.05, seed=7)
    assert other.eval_rows != split.eval_rows and _leaks(other.train, other.eval) == (set(), set())
    # the 51 copies of "你是谁？" form one group, which stays on the training side whole
    who = [r for r in split.train if normalise(r["instruction"]) == "你是谁"]
    assert len(who) == 51 and not [r for r in split.eval if normalise(r["instruction"]) == "你是谁"]


def test_split_keeps_the_tiny_memorisation_subset(tiny_spec):
    records = load_records(tiny_spec.paths.dataset).records
    split = grouped_split(records, tiny_spec.data.eval_fraction, tiny_spec.data.split_seed, keep_in_train=8)
    assert split.train == records[:8]
    assert len(split.eval) == 12 and min(split.eval_rows) >= 8
    assert _leaks(split.train, split.eval) == (set(), set())


def test_split_cli_on_the_real_file(huanhuan_path, tmp_path):
    from helpers.models import sha256_file

    out = tmp_path / "split"
    result = run_cli("data", ["split", huanhuan_path, out], env=dict(os.environ), cwd=REPO_ROOT)
    assert result.code == 0, result.stderr
    train = json.loads((out / "train.json").read_text(encoding="utf-8"))
    held = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    assert (len(train), len(held)) == (3542, 187)
    source = json.loads(huanhuan_path.read_text(encoding="utf-8"))

    def key(r):
        return json.dumps(r, ensure_ascii=False, sort_keys=True)

    assert Counter(map(key, train + held)) == Counter(map(key, source))
    meta = json.loads((out / "split.json").read_text(encoding="utf-8"))
    assert (meta["seed"], meta["eval_fraction"]) == (42, 0.05)
    assert meta["source_sha256"] == sha256_file(huanhuan_path)
    assert _leaks(train, held) == (set(), set())


def test_real_role_words_from_the_training_side(real_records):
    split = grouped_split(real_records, 0.05, seed=42)
    role = metrics.derive_role_words([r["output"] for r in split.train])
    assert role.words[:4] == ("皇上", "臣妾", "姐姐", "娘娘")
    assert {"本宫", "嫔妾", "小主"} <= set(role.words)
    assert not set(role.words) & set(metrics.NEUTRAL_WORDS)
    assert {"陛下", "朕", "微臣"}.isdisjoint(role.words)   # the court of this drama says 皇上, not 陛下
    # measured: 91 of the 187 held-out reference answers hold a role word
    assert metrics.marker_rate([r["output"] for r in split.eval], role.words) == pytest.approx(91 / 187)


# --------------------------------------------------------------------------- end to end on the tiny profile


@pytest.fixture(scope="module")
def memorised(memorised_run, tiny_checkpoint):
    from helpers.inference import load_finetuned

    spec, summary = memorised_run
    train_records, eval_records = data_files.load_split(spec, say=lambda _: None)
    return spec, summary, load_finetuned(spec, tiny_checkpoint), train_records, eval_records


def test_lora_reproduces_the_memorised_answers_and_the_base_does_not(memorised):
    from helpers.inference import chat_messages, greedy_settings

    spec, _, loaded, train_records, _ = memorised
    assert train_records == load_records(spec.paths.dataset).records[:8]
    conversations = [chat_messages([], r["instruction"], loaded.system_prompt) for r in train_records]
    references = [r["output"] for r in train_records]
    settings = greedy_settings(False, 32)
    lora = metrics.generate_replies(loaded.model, loaded.tokenizer, conversations, settings, adapter=True)
    base = metrics.generate_replies(loaded.model, loaded.tokenizer, conversations, settings, adapter=False)
    assert [metrics.rouge_l(g.content, r) for g, r in zip(lora, references, strict=True)] == [1.0] * 8
    assert metrics.mean_rouge_l([g.content for g in base], references) < 0.2
    assert all(g.finished for g in lora)                 # each ended with <|im_end|>
    # batched (left-padded) generation gives the same replies as one prompt at a time
    single = metrics.generate_replies(loaded.model, loaded.tokenizer, conversations[:3], settings, batch_size=1)
    assert [g.content for g in single] == [g.content for g in lora[:3]]
    # cut at max_new_tokens: not finished, and exactly that many tokens
    cut = metrics.generate_replies(loaded.model, loaded.tokenizer, conversations[:2], greedy_settings(False, 3))
    assert [(g.finished, g.new_tokens) for g in cut] == [(False, 3), (False, 3)]
    assert metrics.truncation_rate([g.finished for g in cut]) == 1.0


def test_held_out_loss_matches_the_trainers_eval_loss(memorised):
    from helpers.data import encode_records

    spec, summary, loaded, _, eval_records = memorised
    samples, _ = encode_records(eval_records, loaded.tokenizer, spec.data.system_prompt, spec.data.max_length)
    lora = metrics.answer_loss(loaded.model, loaded.tokenizer, samples, adapter=True)
    base = metrics.answer_loss(loaded.model, loaded.tokenizer, samples, adapter=False)
    final = [e for e in summary["log_history"] if "eval_loss" in e][-1]
    assert final["step"] == summary["global_step"]
    # the Trainer averages per batch, we average per token: close, not identical
    assert lora["loss"] == pytest.approx(final["eval_loss"], rel=0.01)
    assert lora["tokens"] == sum(sum(1 for t in s["labels"][1:] if t != -100) for s in samples)
    assert base["loss"] != pytest.approx(lora["loss"], rel=0.01)


def test_train_run_logs_eval_loss_to_swanlab_and_keeps_the_best_checkpoint(memorised_run):
    from helpers.tracking import read_scalars

    spec, summary = memorised_run
    logged = read_scalars(summary["swanlab_run"])
    history = [(e["step"], e["eval_loss"]) for e in summary["log_history"] if "eval_loss" in e]
    eval_steps = int(spec.training["eval_steps"])
    assert [step for step, _ in history] == list(range(eval_steps, summary["global_step"] + 1, eval_steps))
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in logged["eval/loss"]] == history
    assert "train/loss" in logged
    best_step, best_loss = min(history, key=lambda item: item[1])
    best = summary["best_eval"]
    assert (best["step"], best["eval_loss"]) == (best_step, best_loss)
    assert (spec.paths.run_dir / best["checkpoint"] / "adapter_model.safetensors").is_file()


def test_prepare_never_trains_and_names_the_command_without_an_adapter(tmp_path, tiny_model_dir, tiny_checkpoint):
    from helpers.workspace import MissingArtifactError
    from tests.conftest import tiny_spec_for

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / tiny_model_dir.name).symlink_to(tiny_model_dir, target_is_directory=True)
    spec = tiny_spec_for(QWEN3_TUTORIAL_WORKSPACE=str(tmp_path))
    with pytest.raises(MissingArtifactError, match="python -m helpers.train --config configs/train/tiny.yaml"):
        ev.prepare(spec)
    assert not spec.paths.run_dir.exists()           # nothing was trained
    own = tiny_spec_for(tmp_path / "新 运行", QWEN3_TUTORIAL_WORKSPACE=str(tmp_path))   # --output-dir: train into it
    with pytest.raises(MissingArtifactError) as caught:
        ev.prepare(own)
    assert shlex.split(str(caught.value).split("`")[1])[-2:] == ["--output-dir", str(tmp_path / "新 运行")]
    assert "04-train.ipynb" not in str(caught.value)      # notebook 04 trains the profile's own folder, not this one
    ev.prepare(spec, checkpoint=tiny_checkpoint)     # an adapter named: ready
    shutil.copytree(tiny_checkpoint, spec.paths.run_dir / tiny_checkpoint.name)
    ev.prepare(spec)                                 # an adapter in the run folder: ready


def test_evaluate_cli_on_a_fresh_workspace(tmp_path, tiny_model_dir, memorised_run):
    """The CLI in a workspace holding only the model and the session's tiny run (as notebook 04 leaves it)."""
    from helpers.tracking import read_scalars

    workspace = tmp_path / "workspace"
    (workspace / "models").mkdir(parents=True)
    (workspace / "models" / tiny_model_dir.name).symlink_to(tiny_model_dir, target_is_directory=True)
    run = memorised_run[0].paths.run_dir
    shutil.copytree(run, workspace / "checkpoints" / "tiny", ignore=shutil.ignore_patterns("*.log", "code_*"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QWEN3_TUTORIAL_", "SWANLAB_"))}
    env.update(QWEN3_TUTORIAL_WORKSPACE=str(workspace), QWEN3_TUTORIAL_SWANLAB_MODE="offline")
    result = run_cli("evaluate", ["--config", "configs/train/tiny.yaml", "--limit", "4"], env=env, cwd=REPO_ROOT)
    assert result.code == 0, result.stdout[-3000:] + result.stderr[-3000:]
    path = workspace / "checkpoints" / "tiny" / ev.REPORT_FILE
    text = path.read_text(encoding="utf-8")
    assert str(tmp_path) not in text                   # no machine paths in the report
    report = json.loads(text)
    assert report["checkpoint"] == "checkpoint-60"
    assert report["split"] == {"train_rows": 8, "held_out_rows": 12, "eval_fraction": 0.25, "seed": 42}
    memorised = report["sets"]["memorised"]
    assert memorised["prompts"] == 4 and memorised["rows"] == 8
    assert memorised["rouge_l"]["lora"] == 1.0 and memorised["rouge_l"]["base"] < 1.0
    # each set's ROUGE-L comes with the unrelated-answers baseline the course compares it with, printed too
    assert all(0 < s["rouge_l"]["baseline"] < 1 for s in report["sets"].values())
    assert f"基线 {report['sets']['held_out']['rouge_l']['baseline']:.3f}" in result.stdout
    assert memorised["loss"]["lora"] < 0.1 < memorised["loss"]["base"]
    assert report["sets"]["held_out"]["rows"] == 12
    assert [row["decoding"] for row in report["decoding"]] == [
        "greedy", "sampling", "greedy+repetition_penalty=1.1"]
    assert len(report["identity"]["probes"]) == len(metrics.IDENTITY_PROBES)
    assert report["thinking"]["conclusion"]
    assert len(report["table"]) == 8 and report["table"][0]["set"] == "memorised"
    assert ev.format_table(report["table"]) in result.stdout
    logged = read_scalars(workspace / report["swanlab_run"])
    assert {k: v[0][1] for k, v in logged.items()} == pytest.approx(ev.scalars(report))

    path.unlink()   # SwanLab failing at the end (a revoked key, the network gone) loses no evaluation
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ev, "log_to_swanlab", lambda spec, report: (_ for _ in ()).throw(RuntimeError("swanlab down")))
        failed = run_cli("evaluate", ["--config", "configs/train/tiny.yaml", "--limit", "4"], env=env, cwd=REPO_ROOT)
    assert failed.code == 1 and "swanlab down" in failed.stderr
    assert json.loads(path.read_text(encoding="utf-8"))["sets"] == report["sets"]


def test_the_report_names_where_the_adapter_came_from_without_a_machine_path(tiny_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    inside = tiny_spec.paths.workspace / "checkpoints" / "run" / "checkpoint-60"
    assert ev.adapter_origin(tiny_spec, inside) == "checkpoints/run/checkpoint-60"
    assert ev.adapter_origin(tiny_spec, tmp_path / "home" / "adapters" / "a" / "checkpoint-9") == \
        "~/adapters/a/checkpoint-9"
    elsewhere = ev.adapter_origin(tiny_spec, tmp_path / "elsewhere" / "run" / "checkpoint-3")
    assert elsewhere == "run/checkpoint-3" and str(tmp_path) not in elsewhere


def test_the_thinking_check_on_qwen3_8b_fits_a_24_gb_card(monkeypatch):
    """Up to 4,096 thinking tokens per reply: the replies generated at once hold an ESTIMATED KV cache that,
    beside the bf16 weights, stays under 90% of a 24 GB card, and thinking_check really generates that many."""
    from helpers.models import qwen3_config, qwen3_counts
    from helpers.spec import build_spec

    options = ev.EvalOptions.for_spec(build_spec(profile="full", env={}, settings_file=None, cuda=True), cuda=True)
    config = qwen3_config("Qwen3-8B")
    kv_per_token = config["num_hidden_layers"] * 2 * config["num_key_value_heads"] * config["head_dim"] * 2
    kv = kv_per_token * options.thinking_batch_size * (options.thinking_max_new_tokens + 100)
    assert kv + qwen3_counts("Qwen3-8B")["params"] * 2 < 0.9 * 24e9, (kv / 1e9, options)
    seen = []
    monkeypatch.setattr(ev, "generate_replies", lambda *a, batch_size, **k: seen.append(batch_size) or [])
    monkeypatch.setattr(ev, "thinking_rate", lambda texts, finished: 0.0)
    ev.thinking_check(SimpleNamespace(model=None, tokenizer=None), [[]] * 16, options)
    assert seen == [options.thinking_batch_size] * 2


def test_a_real_model_without_a_gpu_is_evaluated_on_a_sample():
    from helpers.spec import build_spec

    small = build_spec(profile="small", env={}, settings_file=None, cuda=False)
    on_gpu, on_cpu = ev.EvalOptions.for_spec(small, cuda=True), ev.EvalOptions.for_spec(small, cuda=False)
    assert on_gpu.limit is None and on_cpu.limit == 32
    assert on_cpu.max_new_tokens < on_gpu.max_new_tokens and on_cpu.thinking_max_new_tokens < on_gpu.thinking_max_new_tokens
    assert ev.EvalOptions.for_spec(small, limit=5, cuda=False).limit == 5     # --limit still wins


def test_a_learners_data_file_leaves_no_machine_path_in_the_spec(tmp_path):
    from helpers.spec import build_spec

    data = tmp_path / "mine" / "my-data.json"
    data.parent.mkdir()
    data.write_text((REPO_ROOT / "data" / "huanhuan_sample.json").read_text(encoding="utf-8"), encoding="utf-8")
    spec = build_spec(overrides=[f"data.source={data}"], profile="tiny", env={}, settings_file=None)
    shared = json.dumps(spec.to_dict(), ensure_ascii=False)
    assert str(tmp_path) not in shared and "my-data.json" in shared



def test_held_out_rows_longer_than_max_length_are_counted_or_refused(memorised):
    """Rows too long for max_length are left out of the loss (never cut) and the report says how many;
    when none is left, one error instead of a NaN loss."""
    import dataclasses

    from helpers.data import encode_records

    spec, _, loaded, _, eval_records = memorised
    samples, _ = encode_records(eval_records, loaded.tokenizer, spec.data.system_prompt, 100_000)
    lengths = sorted(len(s["input_ids"]) for s in samples)
    options = dataclasses.replace(ev.EvalOptions.for_spec(spec), limit=1, max_new_tokens=4)
    found, _ = ev.evaluate_set(loaded, eval_records, options, ["臣妾"], spec.data.system_prompt,
                               lengths[len(lengths) // 2])
    assert found["rows"] == len(eval_records) and 0 < found["loss_rows"] < len(eval_records)
    assert found["loss_rows"] == sum(1 for n in lengths if n <= lengths[len(lengths) // 2])
    assert math.isfinite(found["loss"]["lora"]) and math.isfinite(found["loss"]["base"])
    with pytest.raises(data_files.SplitSizeError, match=f"held_out .*{len(eval_records)} .*data.max_length={lengths[0] - 1} "):
        ev.evaluate_set(loaded, eval_records, options, ["臣妾"], spec.data.system_prompt, lengths[0] - 1)


def test_the_adapter_data_warning_compares_the_data_file_itself(tmp_path):
    """A learner's own data file, given as a path: the same file (from anywhere) is no warning; another file
    with the same name is one."""
    from helpers.workspace import display_path, sha256_file
    from tests.conftest import tiny_spec_for

    records = json.loads((REPO_ROOT / "data" / "huanhuan_sample.json").read_text(encoding="utf-8"))
    mine, other = tmp_path / "my data" / "mine.json", tmp_path / "elsewhere" / "mine.json"
    for path, rows in ((mine, records), (other, records[:-1])):
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    trained = tiny_spec_for(tmp_path / "run", overrides=[f"data.source={mine}"])
    checkpoint = trained.paths.run_dir / "checkpoint-1"
    checkpoint.mkdir(parents=True)
    summary = {"spec": trained.to_dict(), "dataset_sha256": sha256_file(mine)}
    (trained.paths.run_dir / "run_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    assert runs.data_notes(trained, checkpoint) == []
    changed = tiny_spec_for(tmp_path / "run", overrides=[f"data.source={other}"])
    assert display_path(other) in runs.data_notes(changed, checkpoint)[0]
    resplit = tiny_spec_for(tmp_path / "run", overrides=[f"data.source={mine}", "data.split_seed=7"])
    assert "split_seed=42" in runs.data_notes(resplit, checkpoint)[0]
    # the course's data for an adapter trained on a file of the learner's: the way to its own held-out set
    assert "--set data.source=" in runs.data_notes(tiny_spec_for(tmp_path / "run"), checkpoint)[0]
    assert "--set data.source=" not in runs.data_notes(resplit, checkpoint)[0]
    # the same file: the held-out set is cut as that run cut it (another run may have saved the split last)
    adopted, notes = runs.split_as_trained(resplit, checkpoint)
    assert adopted.data == trained.data and "split_seed=42" in notes[0] and runs.data_notes(adopted, checkpoint) == []
    everything = tiny_spec_for(tmp_path / "run", overrides=[f"data.source={mine}", "data.max_rows=null"])
    assert runs.split_as_trained(everything, checkpoint)[0].data.max_rows == trained.data.max_rows == 8
    assert runs.split_as_trained(changed, checkpoint) == (changed, [])        # another file: only the warning
    summary["spec"]["data"]["eval_fraction"] = 0.0      # a run that held nothing out: no split is clean, warn
    (trained.paths.run_dir / "run_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    assert runs.split_as_trained(resplit, checkpoint) == (resplit, [])
    (trained.paths.run_dir / "run_summary.json").write_text("{", encoding="utf-8")    # damaged: nothing to go by
    assert runs.split_as_trained(resplit, checkpoint) == (resplit, []) and runs.data_notes(resplit, checkpoint) == []


def test_scoring_with_a_released_model_says_which_cell_to_run(tokenizer):
    """Notebook 06 releases its model before ev.evaluate (``loaded = model = None``); a scoring cell run again
    afterwards stops with what to re-run, not an AttributeError deep in generate."""
    from helpers.inference import greedy_settings
    from helpers.workspace import MissingArtifactError

    with pytest.raises(MissingArtifactError, match="inf.load_finetuned"):
        metrics.generate_replies(None, tokenizer, [[{"role": "user", "content": "你是谁？"}]], greedy_settings())
    with pytest.raises(MissingArtifactError, match="inf.load_finetuned"):
        metrics.answer_loss(None, tokenizer, [{"input_ids": [1], "attention_mask": [1], "labels": [1]}])
