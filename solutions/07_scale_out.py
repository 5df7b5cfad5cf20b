"""Solutions to notebook 07's exercises: effective batch, uneven shards, memory per GPU.

Exercise 1 trains a few steps of the tiny profile in the solutions' own workspace
(``<workspace>/solutions``) and reads its sample log; exercise 2 asks accelerate's own batch
sampler how it shards the data; exercise 3 reads the estimate table of notebook 07.

Run from the repository root:  python solutions/07_scale_out.py [exercise number]
"""

import math

from _common import exercise, run, scratch_spec, train_fresh

from helpers import models, runs, scale_out
from helpers.recipes import CUDA_OVERHEAD_GB


@exercise(1, "算出有效 batch，再用 sample_log.jsonl 核对")
def effective_batch_from_log():
    per_device, accumulation, processes, rows = 2, 2, 1, 8
    spec = scratch_spec("effective-batch", f"training.per_device_train_batch_size={per_device}",
                        f"training.gradient_accumulation_steps={accumulation}", "training.num_train_epochs=1",
                        f"data.max_rows={rows}", "data.eval_fraction=0", "training.save_steps=100", "training.logging_steps=1",
                        "training.disable_tqdm=true", "swanlab=null")
    effective = runs.effective_batch(per_device, accumulation, processes)
    print(f"预测: 每卡 {per_device} × 累积 {accumulation} × {processes} 个进程 = 每次更新 {effective} 条；"
          f"{rows} 条数据 1 轮 = {rows // effective} 次更新")
    summary = train_fresh(spec)
    entries = scale_out.read_sample_log(spec.paths.run_dir)
    micro_batches = [entry["rows"] for entry in entries]
    steps = [sum(micro_batches[i:i + accumulation], []) for i in range(0, len(micro_batches), accumulation)]
    for number, step in enumerate(steps, 1):
        print(f"  第 {number} 次更新: 微批次 {micro_batches[(number - 1) * accumulation:number * accumulation]} → "
              f"{len(step)} 条")
    print(f"Trainer: global_step {summary['global_step']}，effective_batch_size {summary['effective_batch_size']}")
    assert all(len(batch) == per_device for batch in micro_batches)
    assert [len(step) for step in steps] == [effective] * (rows // effective)
    assert summary["global_step"] == len(steps) == rows // effective
    assert summary["effective_batch_size"] == effective
    assert sorted(sum(steps, [])) == list(range(rows)), "one epoch: every row exactly once"


def shards(rows: int, per_device: int, ranks: int) -> list[list[list[int]]]:
    """The micro-batches of each rank, as accelerate hands them out (even_batches=True, its default)."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, SequentialSampler

    batches = BatchSampler(SequentialSampler(range(rows)), per_device, drop_last=False)
    return [list(BatchSamplerShard(batches, num_processes=ranks, process_index=rank, even_batches=True))
            for rank in range(ranks)]


@exercise(2, "数据不能整除时，哪些样本被训练了两次")
def uneven_shards():
    per_device, ranks = 2, 2
    for rows in (10, 16):
        per_rank = shards(rows, per_device, ranks)
        seen = [row for rank in per_rank for batch in rank for row in batch]
        repeated = sorted(row for row in set(seen) if seen.count(row) > 1)
        predicted = math.ceil(rows / (per_device * ranks)) * per_device * ranks - rows
        print(f"{rows} 条、每卡 {per_device}、{ranks} 个 rank: " + "；".join(
            f"rank {rank} {batches}" for rank, batches in enumerate(per_rank)))
        print(f"  预测多训 {predicted} 条；实际训了两次的行: {repeated}")
        assert len(seen) == rows + predicted and len(repeated) == predicted
        assert set(seen) == set(range(rows))
        if predicted:
            assert per_rank[-1][-1] == per_rank[0][0], "the missing batch is borrowed from the epoch's start"


@exercise(3, "Qwen3-14B 放进 24 GB 的卡要几块")
def qwen3_14b_on_24gb():
    card, usable = 24, 0.9  # keep 10% free, as helpers.recipes.MARGIN does
    needed = {}
    for strategy in ("ddp", "zero2", "fsdp", "zero3"):
        totals = {n: scale_out.per_gpu_memory_gb(strategy, n, "Qwen3-14B")["total"] + CUDA_OVERHEAD_GB
                  for n in (1, 2, 4, 8)}
        fitting = [n for n, gb in totals.items() if gb <= card * usable]
        needed[strategy] = fitting[0] if fitting else None
        print(f"{scale_out.STRATEGIES[strategy].name:<17}" + "".join(f"{n} 卡 {gb:5.1f} GB  " for n, gb in totals.items())
              + f"→ {f'至少 {needed[strategy]} 块' if needed[strategy] else '多少块都放不下'}")
    single = scale_out.per_gpu_memory_gb("single-gpu", 1, "Qwen3-14B")
    assert needed["ddp"] is None and needed["zero2"] is None, "whole weights on every card: never fits"
    assert needed["fsdp"] == needed["zero3"] == 2
    # Independent check of FSDP on 2 cards: half of the weights and LoRA states, one layer gathered twice
    # (prefetch), activations and logits not divided.
    counts = models.qwen3_counts("Qwen3-14B")
    weights = single["weights (bf16)"]
    layer = (weights - counts["embedding_params"] * 2 / 1e9) / counts["layers"]
    by_hand = (weights / 2 + 2 * layer + single["LoRA weights + grads + Adam (fp32)"] / 2
               + single["activations"] + single["logits + grad (fp32)"])
    print(f"手算 FSDP 2 卡: {by_hand:.2f} GB（不含 CUDA 开销）")
    assert math.isclose(by_hand, scale_out.per_gpu_memory_gb("fsdp", 2, "Qwen3-14B")["total"])


if __name__ == "__main__":
    run()
