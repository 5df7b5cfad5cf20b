"""Solutions to notebook 00's exercises: PyTorch's floating-point types and what they mean for Qwen3-8B.

Run from the repository root:  python solutions/00_environment.py [exercise number]
"""

import torch
from _common import exercise, run

#: Qwen3-8B's parameters (notebook 01 counts them on the ``meta`` device)
QWEN3_8B_PARAMETERS = 8_190_735_360


@exercise(1, "bf16 和 fp16 能表示多大的数")
def ranges():
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        info = torch.finfo(dtype)
        print(f"{str(dtype):<15} 最大 {info.max:.4g}，eps {info.eps:.4g}")
    fp16 = torch.tensor(70000.0).to(torch.float16)
    bf16 = torch.tensor(70000.0).to(torch.bfloat16)
    rounded = torch.tensor(1 + 1 / 256).to(torch.bfloat16)
    print(f"70000 存成 fp16 → {fp16.item()}，存成 bf16 → {bf16.item()}；1 + 1/256 存成 bf16 → {rounded.item()}")
    assert torch.isinf(fp16), "fp16 overflows above 65504"
    assert bf16.item() == 70144.0, "bf16 keeps the range but rounds to 8 significant bits"
    assert rounded.item() == 1.0, "bf16's 7-bit mantissa cannot hold 1/256 next to 1"
    assert torch.finfo(torch.bfloat16).max > 1e38 > torch.finfo(torch.float16).max
    tiny_gradient = torch.tensor(1e-8)
    print(f"一个 1e-8 的小梯度存成 fp16 → {tiny_gradient.to(torch.float16).item()}，存成 bf16 → "
          f"{tiny_gradient.to(torch.bfloat16).item():.3g}")
    assert tiny_gradient.to(torch.float16).item() == 0.0 and tiny_gradient.to(torch.bfloat16).item() > 0
    print("结论: bf16 的范围和 fp32 一样，但只有约 3 位有效数字；fp16 更精确，范围却小：65504 以上溢出，"
          "很小的梯度下溢成 0，所以 fp16 训练要先把损失放大（损失缩放）再反向传播。")


@exercise(2, "Qwen3-8B 的权重有多大")
def weight_sizes():
    sizes = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("int8", torch.int8)):
        sizes[name] = QWEN3_8B_PARAMETERS * torch.tensor([], dtype=dtype).element_size() / 1e9
    sizes["4-bit"] = QWEN3_8B_PARAMETERS / 2 / 1e9  # two 4-bit numbers per uint8 byte
    for name, gb in sizes.items():
        print(f"{name:<6} {gb:6.1f} GB")
    assert round(sizes["bf16"], 1) == 16.4, "the bf16 safetensors notebook 01 downloads"
    assert sizes["fp32"] == 2 * sizes["bf16"] == 4 * sizes["int8"] == 8 * sizes["4-bit"]
    assert sizes["bf16"] > 16 > sizes["4-bit"], "a 16 GB card holds the weights only in 4 bits"
    print("结论: bf16 的 16.4 GB 正是要下载的大小；16 GB 的卡连 bf16 权重都放不下，只能用 4-bit（QLoRA）。")


if __name__ == "__main__":
    run()
