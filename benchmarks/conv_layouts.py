"""Micro-benchmark behind modules/convolution.py's choice: forward + backward of one ConvS2S
convolution (B=64, T=30, C=256 -> 2*256, k=3) in four layouts, on the CPU.

    python benchmarks/conv_layouts.py [--threads 2]

Measured here (2 threads, 2026-11-25): F.conv1d on transposed input 25.7 ms, unfold + one matmul
17.4 ms, torch.conv_tbc (fairseq's ConvTBC) 16.0 ms, k shifted matmuls 19.4 ms.
"""

import argparse
import time

import torch
import torch.nn.functional as F


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    B, T, C, C_out, k = 64, 30, 256, 512, 3
    x = torch.randn(B, T, C, requires_grad=True)
    w = torch.randn(C_out, C, k, requires_grad=True)  # Conv1d layout
    wt = torch.randn(k, C, C_out, requires_grad=True)  # ConvTBC layout
    b = torch.randn(C_out, requires_grad=True)

    def conv1d(x):
        return F.conv1d(F.pad(x.transpose(1, 2), (1, 1)), w, b).transpose(1, 2)

    def unfold(x):
        windows = F.pad(x, (0, 0, 1, 1)).unfold(1, k, 1).reshape(B * T, C * k)
        return F.linear(windows, w.view(C_out, -1), b).view(B, T, C_out)

    def conv_tbc(x):
        return torch.conv_tbc(x.transpose(0, 1).contiguous(), wt, b, 1).transpose(0, 1)

    def shifted(x):
        xp = F.pad(x, (0, 0, 1, 1))
        out = torch.addmm(b, xp[:, 0:T].reshape(B * T, C), w[:, :, 0].t())
        for j in range(1, k):
            out = out.addmm(xp[:, j : j + T].reshape(B * T, C), w[:, :, j].t())
        return out.view(B, T, C_out)

    for f in (conv1d, unfold, conv_tbc, shifted):
        for _ in range(3):
            f(x).sum().backward()
        start = time.perf_counter()
        for _ in range(args.reps):
            f(x).sum().backward()
        print(f"{f.__name__:10s} {(time.perf_counter() - start) / args.reps * 1000:.1f} ms")


if __name__ == "__main__":
    main()
