"""Notebook 06: did the fine-tune work? Base model vs LoRA on held-out prompts.

One model is loaded (the base with the LoRA adapter on top); every comparison switches the
adapter off for the base answers (PEFT's ``disable_adapter``), so both sides share weights,
prompt format and decoding. What is measured, each by a small pure function below:

* held-out loss and perplexity on the answer tokens only (the encoded labels, one forward per batch);
* character-level ROUGE-L against the reference answers (Google's ``rouge-score`` with a character
  tokenizer), reported as the change from base to LoRA;
* persona markers: the share of replies holding a role word (臣妾, 皇上, ...; the list is derived
  from the training answers, see :func:`derive_role_words`) vs the reference answers' share, and the
  share holding assistant boilerplate ("作为AI", "语言模型", ...);
* identity: paraphrased "who are you" probes that are not in the training data;
* degeneration: replies that hit ``max_new_tokens`` without ``<|im_end|>``, the repeated n-gram
  ratio, distinct-1/2;
* thinking: with ``enable_thinking=True``, the share of replies that open ``<think>`` with non-empty
  content and close it;
* a decoding study (greedy vs Qwen3's recommended sampling vs a repetition penalty) on the
  degeneration metrics, and a side-by-side table.

``python -m helpers.evaluate --config configs/train/tiny.yaml`` runs it all, logs every metric to
SwanLab and writes ``eval_report.json`` into the run folder. On the tiny profile the numbers only
prove the code path; on Qwen3-8B they mean something.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import checkpoints, data_files, runs, tracking
from .data import encode_records, user_text
from .download import prepare_model
from .errors import ArgumentParser, positive_int, run_cli
from .hardware import cuda_available
from .inference import chat_messages, greedy_settings, load_finetuned, recommended_settings
from .metrics import (
    IDENTITY_PROBES,
    Generated,
    answer_loss,
    boilerplate_rate,
    change,
    degeneration,
    derive_role_words,
    generate_replies,
    identity_accuracy,
    marker_rate,
    mean,
    mean_rouge_l,
    thinking_conclusion,
    thinking_cut_off,
    thinking_rate,
    unrelated_baseline,
    unseen_probes,
)
from .models import refuse_without_gpu
from .spec import build_spec
from .workspace import (
    REPO_ROOT,
    MissingArtifactError,
    atomic_path,
    course_folder,
    display_path,
    record_made,
    shareable_path,
    typed_paths,
)

#: The report written next to the checkpoints.
REPORT_FILE = "eval_report.json"
# =========================================================================== the evaluation


@dataclass(frozen=True)
class EvalOptions:
    limit: int | None = 16               # prompts generated per set (None: all)
    max_new_tokens: int = 24
    thinking_prompts: int = 8
    thinking_max_new_tokens: int = 24
    batch_size: int = 8
    thinking_batch_size: int = 8
    table_rows: int = 20
    repetition_penalty: float = 1.1
    seed: int = 42
    split_as_trained: bool = True        # the held-out set as the adapter's run cut it (False: as the spec says)

    @classmethod
    def for_spec(cls, spec, limit: int | None = None, max_new_tokens: int | None = None,
                 cuda: bool | None = None) -> EvalOptions:
        """Small numbers for the tiny profile (CPU seconds), real ones for a real model on a GPU, and a sample
        for a real model without one (``small`` on a laptop: every held-out row at 256 tokens, four ways,
        would take hours)."""
        cuda = cuda_available() if cuda is None else cuda
        if spec.profile.name == "tiny":
            options = cls()
        elif not cuda:
            options = cls(limit=32, max_new_tokens=128, thinking_prompts=8, thinking_max_new_tokens=1024,
                          thinking_batch_size=4)
        else:
            # thinking: Qwen suggests up to 32,768 new tokens; 4,096 keeps 16 prompts affordable, and a
            # thought still open at the end is counted as cut off, not as a lost thinking mode. Four at a time:
            # Qwen3-8B's KV cache is 144 KiB per token, so 16 replies of ~4,150 tokens would hold an ESTIMATED
            # 9.8 GB beside 16.4 GB of weights, more than a 24 GB card; four hold 2.4 GB
            options = cls(limit=None, max_new_tokens=256, thinking_prompts=16, thinking_max_new_tokens=4096,
                          batch_size=16, thinking_batch_size=4)
        if limit is not None:
            options = dataclasses.replace(options, limit=limit)
        if max_new_tokens is not None:
            options = dataclasses.replace(options, max_new_tokens=max_new_tokens)
        return options


def prepare(spec, checkpoint: str | Path | None = None) -> None:
    """Everything the evaluation needs: held-out rows, an adapter and the model folder. It never trains:
    without an adapter it stops (before any download) with the command that makes one."""
    refuse_without_gpu(spec, "评估")
    tracking.require_key(spec)
    if spec.data.eval_fraction <= 0:
        raise MissingArtifactError(
            f"{display_path(spec.config_file)}：data.eval_fraction 是 0，没有留出任何数据。"
            "请设置它（例如 --set data.eval_fraction=0.05），再重新训练。")
    # a mistyped adapter folder is said at once, never after a download of the base model (load_finetuned checks the
    # adapter inside it, once)
    named = checkpoints.named_adapter_folder(spec, checkpoint) is not None
    if not named and checkpoints.latest_good_checkpoint(spec.paths.run_dir).checkpoint is None:
        raise MissingArtifactError(f"{display_path(spec.paths.run_dir)} 里还没有训练好的 LoRA 适配器。"
                                   + checkpoints.how_to_train(spec))
    data_files.require_given_dataset(spec)   # before the model is built or downloaded
    prepare_model(spec)


def evaluate_set(loaded, records: list[dict], options: EvalOptions, role_words: Sequence[str],
                 system_prompt: str | None, max_length: int, name: str = "held_out") -> tuple[dict, dict]:
    """Loss, ROUGE-L, persona, boilerplate and degeneration of base vs LoRA on ``records``.

    Returns (metrics, generations) where generations holds the prompts, references and both replies.
    """

    model, tokenizer = loaded.model, loaded.tokenizer
    samples, _ = encode_records(records, tokenizer, system_prompt, max_length)
    if not samples:
        raise data_files.SplitSizeError(
            f"{name} 的 {len(records)} 条数据全都超过 data.max_length={max_length} 个 token，无法在上面计算 loss："
            "请调大 data.max_length（例如 --set data.max_length=2048）。")
    loss = {side: answer_loss(model, tokenizer, samples, adapter=side == "lora",
                              batch_size=options.batch_size) for side in ("base", "lora")}
    chosen = records[: options.limit] if options.limit else records
    prompts = [user_text(r) for r in chosen]
    references = [r["output"] for r in chosen]
    conversations = [chat_messages([], p, system_prompt) for p in prompts]
    settings = greedy_settings(False, options.max_new_tokens)
    replies = _both(loaded, conversations, settings, options)
    texts = {side: [g.content for g in replies[side]] for side in replies}
    metrics = {
        "rows": len(records),
        "loss_rows": len(samples),    # rows longer than max_length are left out of the loss (never cut)
        "prompts": len(chosen),
        "answer_tokens": loss["lora"]["tokens"],
        "loss": {side: loss[side]["loss"] for side in loss},
        "perplexity": {side: loss[side]["perplexity"] for side in loss},
        "rouge_l": {**change(mean_rouge_l(texts["base"], references), mean_rouge_l(texts["lora"], references)),
                    "baseline": unrelated_baseline(references)},
        "persona": {"reference": marker_rate(references, role_words),
                    **{side: marker_rate(texts[side], role_words) for side in texts}},
        "boilerplate": {"reference": boilerplate_rate(references),
                        **{side: boilerplate_rate(texts[side]) for side in texts}},
        "degeneration": {side: degeneration(texts[side], [g.finished for g in replies[side]])
                         for side in texts},
    }
    generations = {"prompts": prompts, "references": references, "conversations": conversations,
                   "base": replies["base"], "lora": replies["lora"]}
    return metrics, generations


def decoding_study(loaded, conversations: list[list[dict]], references: list[str], greedy: list[Generated],
                   options: EvalOptions) -> list[dict]:
    """The LoRA model's degeneration under greedy, Qwen3's non-thinking sampling and a repetition penalty."""

    plain = greedy_settings(False, options.max_new_tokens)
    sampling = recommended_settings(False, options.max_new_tokens)
    penalty = {"repetition_penalty": options.repetition_penalty}

    def run(settings, extra=None):
        return generate_replies(loaded.model, loaded.tokenizer, conversations, settings,
                                batch_size=options.batch_size, extra=extra, seed=options.seed)

    runs = [
        ("greedy", plain.describe(), greedy),
        ("sampling", sampling.describe(), run(sampling)),
        (f"greedy+repetition_penalty={options.repetition_penalty}",
         f"{plain.describe()}, repetition_penalty={options.repetition_penalty}", run(plain, penalty)),
    ]
    rows = []
    for name, described, replies in runs:
        texts = [g.content for g in replies]
        rows.append({"decoding": name, "settings": described,
                     **degeneration(texts, [g.finished for g in replies]),
                     "rouge_l": mean_rouge_l(texts, references)})
    return rows


def _both(loaded, conversations, settings, options: EvalOptions, seed: int = 0) -> dict[str, list[Generated]]:
    """The base model's and the LoRA model's replies to the same conversations."""
    return {side: generate_replies(loaded.model, loaded.tokenizer, conversations, settings, adapter=side == "lora",
                                   batch_size=options.batch_size, seed=seed)
            for side in ("base", "lora")}


def identity_check(loaded, probes: list[str], system_prompt: str | None, options: EvalOptions) -> dict:
    """Who does each model say it is, on questions the training data does not hold."""
    replies = _both(loaded, [chat_messages([], p, system_prompt) for p in probes],
                    greedy_settings(False, max(options.max_new_tokens, 32)), options)
    return {
        "probes": probes,
        "accuracy": {side: identity_accuracy([g.content for g in got]) for side, got in replies.items()},
        "replies": [{"probe": p, "base": b.content, "lora": lo.content}
                    for p, b, lo in zip(probes, *replies.values(), strict=True)],
    }


def thinking_check(loaded, conversations: list[list[dict]], options: EvalOptions) -> dict:
    """Does thinking mode still open and close its <think> block, base vs LoRA."""
    settings = recommended_settings(True, options.thinking_max_new_tokens)
    replies = _both(loaded, conversations, settings, dataclasses.replace(options, batch_size=options.thinking_batch_size),
                    options.seed)
    thinking = {"prompts": len(replies["lora"]), "settings": settings.describe(),
                **{side: thinking_rate([g.text for g in got], [g.finished for g in got]) for side, got in replies.items()},
                "cut_off": {side: mean(1.0 if thinking_cut_off(g.text, g.finished) else 0.0 for g in got)
                            for side, got in replies.items()}}
    thinking["conclusion"] = thinking_conclusion(thinking["base"], thinking["lora"])
    return thinking


def adapter_origin(spec, checkpoint: Path) -> str:
    """Where the evaluated adapter came from, with no machine path (the report may be shared): relative to the
    workspace, the repository or the home folder (``~/...``), else its last two folder names."""
    checkpoint = Path(checkpoint).resolve()
    for base, prefix in ((spec.paths.workspace, ""), (REPO_ROOT, ""), (Path.home(), "~/")):
        try:
            return prefix + checkpoint.relative_to(Path(base).resolve()).as_posix()
        except ValueError:
            continue
    return f"{checkpoint.parent.name}/{checkpoint.name}"


def evaluate(spec, checkpoint: str | Path | None = None, options: EvalOptions | None = None) -> dict:
    """The whole evaluation of the spec's adapter; returns the report (also saved and logged)."""

    options = options or EvalOptions.for_spec(spec)
    prepare(spec, checkpoint)
    loaded = load_finetuned(spec, checkpoint)   # resolves (and checks) the adapter once
    for note in loaded.notes:
        print(note)
    spec, split_notes = runs.split_as_trained(spec, loaded.checkpoint) if options.split_as_trained else (spec, [])
    train_records, eval_records = data_files.load_split(spec)
    if not eval_records:    # (a split saved before empty sides were refused)
        raise data_files.SplitSizeError(f"留出集是 0 条（data.eval_fraction={spec.data.eval_fraction}）：请调大它。")
    system_prompt = loaded.recipe.get("system_prompt", spec.data.system_prompt)
    role = derive_role_words([r["output"] for r in train_records])
    notes = split_notes + runs.data_notes(spec, loaded.checkpoint)

    sets = {"held_out": eval_records}
    if spec.data.max_rows:  # the training set is a memorisation subset: also show that it was learnt
        sets["memorised"] = train_records
    metrics, generations = {}, {}
    for name, records in sets.items():
        print(f"评估 {name}：{len(records)} 条（生成 {min(len(records), options.limit or len(records))} 条）……")
        metrics[name], generations[name] = evaluate_set(loaded, records, options, role.words, system_prompt,
                                                        spec.data.max_length, name)
        if metrics[name]["loss_rows"] < len(records):
            notes.append(f"{name}：{len(records)} 条里有 {len(records) - metrics[name]['loss_rows']} 条超过 "
                         f"data.max_length={spec.data.max_length} 个 token，没有计入 loss（仍然为它们生成回答）")

    probes, seen = unseen_probes(IDENTITY_PROBES, [user_text(r) for r in train_records])
    if seen:
        notes.append(f"训练数据里已有这些身份问题，所以评估时没有使用它们：{'、'.join(seen)}")
    identity = identity_check(loaded, probes, system_prompt, options)
    held = generations["held_out"]
    thinking = thinking_check(loaded, held["conversations"][: options.thinking_prompts], options)
    decoding = decoding_study(loaded, held["conversations"], held["references"], held["lora"], options)
    table = side_by_side(generations, options.table_rows)
    report = {
        "profile": spec.profile.name,
        "config_file": display_path(spec.config_file),
        "checkpoint": shareable_path(loaded.checkpoint, spec.paths.run_dir, spec.paths.workspace),
        "adapter_origin": adapter_origin(spec, loaded.checkpoint),
        "options": dataclasses.asdict(options),
        "system_prompt": system_prompt,
        "split": {"train_rows": len(train_records), "held_out_rows": len(eval_records),
                  "eval_fraction": spec.data.eval_fraction, "seed": spec.data.split_seed},
        "role_words": {"words": list(role.words), "neutral_share": role.neutral_share,
                       "min_share": role.min_share, "answers": role.answers, "table": role.table},
        "sets": metrics,
        "identity": identity,
        "thinking": thinking,
        "decoding": decoding,
        "table": table,
        "notes": notes,
    }
    path = save_report(spec, report, loaded.checkpoint)   # saved before SwanLab: kept if logging fails
    report["swanlab_run"] = shareable_path(log_to_swanlab(spec, report), spec.paths.run_dir, spec.paths.workspace)
    save_report(spec, report, loaded.checkpoint)
    report["report_file"] = display_path(path)
    return report


def side_by_side(generations: dict, rows: int = 20) -> list[dict]:
    """Up to ``rows`` (set, prompt, reference, base, LoRA) rows; the memorised set first when there is one."""
    table = []
    for name in sorted(generations, key=lambda n: n != "memorised"):
        g = generations[name]
        for prompt, reference, base, lora in zip(g["prompts"], g["references"], g["base"], g["lora"],
                                                 strict=True):
            table.append({"set": name, "prompt": prompt, "reference": reference, "base": base.content,
                          "lora": lora.content})
    if len(table) <= rows:
        return table
    memorised = [r for r in table if r["set"] == "memorised"][: rows // 2]
    return memorised + [r for r in table if r["set"] != "memorised"][: rows - len(memorised)]


# =========================================================================== output


def scalars(report: dict) -> dict[str, float]:
    """Every number of the report as a flat ``eval/...`` key (what SwanLab charts)."""
    out: dict[str, float] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[prefix] = float(value)
        elif isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}/{key}", inner)

    walk("eval", report["sets"])
    walk("eval/identity", report["identity"]["accuracy"])
    walk("eval/thinking", {k: report["thinking"][k] for k in ("base", "lora")})
    walk("eval/thinking/cut_off", report["thinking"].get("cut_off", {}))
    for row in report["decoding"]:
        numbers = {k: v for k, v in row.items() if k not in ("decoding", "settings")}
        walk(f"eval/decoding/{row['decoding']}", numbers)
    return out


TABLE_COLUMNS = ("set", "prompt", "reference", "base", "lora")


def swanlab_folder(spec, report: dict) -> Path | None:
    """The SwanLab run the report was logged to (None: SwanLab was disabled)."""
    return spec.paths.workspace / report["swanlab_run"] if report.get("swanlab_run") else None


def log_to_swanlab(spec, report: dict) -> Path | None:
    """Each metric as a scalar, the side-by-side table as SwanLab's table and as text.

    Returns the run folder (None when tracking is off).
    """
    if not spec.swanlab.enabled or spec.swanlab.mode == "disabled":
        return None
    import swanlab

    name = f"{spec.swanlab.experiment_name}-eval"
    eval_spec = spec.replace(swanlab=dataclasses.replace(spec.swanlab, experiment_name=name))
    config = {"report": {k: report[k] for k in ("profile", "checkpoint", "options")}, "spec": spec.to_dict()}
    run = tracking.start_run(eval_spec, config=config)
    try:
        swanlab.log(scalars(report), step=0)
        table = swanlab.echarts.Table()
        table.add(list(TABLE_COLUMNS), [[row[c] for c in TABLE_COLUMNS] for row in report["table"]])
        swanlab.log({"eval/samples": table}, step=0)
        texts = [swanlab.Text("\n".join(f"**{c}**: {row[c]}" for c in TABLE_COLUMNS), caption=f"{row['set']} {i + 1}")
                 for i, row in enumerate(report["table"])]
        swanlab.log({"eval/samples_text": texts}, step=0)
        swanlab.log({"eval/thinking_conclusion": swanlab.Text(report["thinking"]["conclusion"])}, step=0)
    finally:
        folder = tracking.finish_run(run, error=sys.exc_info()[1])
    return folder


def save_report(spec, report: dict, adapter: Path | None = None) -> Path:
    """The report beside this run's adapter, or under a name of its own for an adapter from elsewhere."""
    path = runs.report_path(spec.paths.run_dir, adapter or spec.paths.run_dir, REPORT_FILE)
    course_folder(spec.paths.run_dir, only=checkpoints.RUN_FILES)   # made here (no training yet): as train marks it
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    return record_made(path)             # also in a learner's own --output-dir: make reset removes it


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(rows: Sequence[dict], width: int = 28) -> str:
    """The side-by-side table as Markdown (each cell clipped to ``width`` characters)."""
    lines = ["| 集合 | 提示 | 参考答案 | 基座 | LoRA |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append("| " + " | ".join(_clip(row[c], width) for c in TABLE_COLUMNS) + " |")
    return "\n".join(lines)


def describe_report(report: dict) -> str:
    """The report's numbers in a few lines (Chinese)."""
    lines = [f"检查点 {report['checkpoint']}，留出集 {report['split']['held_out_rows']} 条"]
    for name, m in report["sets"].items():
        lines.append(
            f"[{name}] loss 基座 {m['loss']['base']:.3f} → LoRA {m['loss']['lora']:.3f}；"
            f"困惑度 {m['perplexity']['base']:.1f} → {m['perplexity']['lora']:.1f}；"
            f"ROUGE-L {m['rouge_l']['base']:.3f} → {m['rouge_l']['lora']:.3f}（{m['rouge_l']['change']:+.3f}；"
            f"两条不相关回答的基线 {m['rouge_l']['baseline']:.3f}）；"
            f"角色词 参考 {m['persona']['reference']:.0%} / 基座 {m['persona']['base']:.0%} / "
            f"LoRA {m['persona']['lora']:.0%}；套话 基座 {m['boilerplate']['base']:.0%} / "
            f"LoRA {m['boilerplate']['lora']:.0%}")
    identity = report["identity"]
    lines.append(f"身份问答准确率 基座 {identity['accuracy']['base']:.0%} → "
                 f"LoRA {identity['accuracy']['lora']:.0%}（{len(identity['probes'])} 个改写的问题）")
    lines.append(f"思考模式：{report['thinking']['conclusion']}")
    if report.get("notes"):
        lines += [f"注意: {note}" for note in report["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m helpers.evaluate",
        description="在留出集的提示上，对比 LoRA 适配器和它的基座模型（notebook 06）。")
    parser.add_argument("--config",
                        help="configs/train/tiny.yaml、qwen3-8b.yaml 等（默认：档位自己的训练配置）")
    parser.add_argument("--checkpoint", help="适配器文件夹（默认：这次运行最新的完好检查点；"
                        "没有的话会停下，并给出训练它的命令）")
    parser.add_argument("--output-dir", help="运行目录（默认 workspace/checkpoints/<profile>）")
    parser.add_argument("--limit", type=positive_int,
                        help="每个集合生成回答的提示数（tiny：16；真实模型在 GPU 上：全部；没有 GPU：32）")
    parser.add_argument("--max-new-tokens", type=positive_int,
                        help="回答长度上限（tiny：24；真实模型在 GPU 上：256；没有 GPU：128）")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="覆盖一个配置项，例如 --set data.eval_fraction=0.1（可重复）")
    parser.add_argument("--debug", action="store_true", help="显示完整的 traceback")
    args = typed_paths(parser, argv, "output_dir")

    def work() -> int:
        spec = build_spec(args.config, args.overrides, output_dir=args.output_dir)
        print(spec.describe())
        chosen = {item.partition("=")[0].strip() for item in args.overrides}   # a split setting typed here wins
        options = dataclasses.replace(EvalOptions.for_spec(spec, args.limit, args.max_new_tokens),
                                      split_as_trained=not chosen & {f"data.{key}" for key in runs.SPLIT_KEYS})
        report = evaluate(spec, args.checkpoint, options)
        print(format_table(report["table"]))
        print()
        print("解码方式对比（LoRA，留出集）:")
        for row in report["decoding"]:
            print(f"  {row['decoding']:<32} 截断 {row['truncated']:.0%}  "
                  f"重复3-gram {row['repeated_3gram']:.3f}  distinct-1 {row['distinct_1']:.3f}  "
                  f"distinct-2 {row['distinct_2']:.3f}  ROUGE-L {row['rouge_l']:.3f}")
        print(describe_report(report))
        print(f"报告: {report['report_file']}")
        folder = swanlab_folder(spec, report)
        if folder is not None:
            print(f"SwanLab: {display_path(folder)}")
        return 0

    return run_cli(work, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
