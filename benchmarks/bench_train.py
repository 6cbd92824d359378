#!/usr/bin/env python3
"""Training throughput: data pipeline images/s per worker, and our training step against plain torchvision.

1. Data: the SSD training augmentation (training/presets.py) on real VOC images through
   :class:`training.dataset.VocDetectionDataset`, in one process (= one DataLoader worker's rate).
2. Step: ``training.engine.train_step`` (loss reduction, NaN/inf guard, GradScaler, optimizer) against a plain
   torchvision step (``sum(model(images, targets).values())``, ``zero_grad``, ``backward``, ``step``) on the same
   model, the same batch, in the same process, alternating so load changes hit both alike. Reports the ratio.
3. On CUDA (when present): images/s with and without AMP and the projected wall time of the 120k-iteration
   batch-32 recipe.

    python benchmarks/bench_train.py --architecture ssd300_vgg16 --batch-size 8 --steps 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ssd_ros.evaluation.voc import VocSplit  # noqa: E402
from ssd_ros.vision.model import ARCHITECTURES, VOC_CLASSES, build_model, input_size  # noqa: E402
from training import engine  # noqa: E402
from training.dataset import VocDetectionDataset, collate_detection  # noqa: E402
from training.presets import SSDTrainPreset  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc2012_sample"


def bench_data(dataset: VocDetectionDataset, samples: int) -> float:
    """Augmented samples per second in this process."""
    dataset[(0, 0)]  # warm-up (imports, allocator)
    start = time.perf_counter()
    for i in range(samples):
        dataset[(i % len(dataset), i)]
    return samples / (time.perf_counter() - start)


def plain_step(model, images, targets, optimizer) -> float:
    """What a minimal torchvision training loop does per iteration."""
    loss = sum(model(images, targets).values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach().item()


def bench_steps(model, batch, device, steps: int, amp_dtype=None) -> tuple[float, float]:
    """Median seconds per step: (our train_step, plain torchvision step), interleaved."""
    images = [image.to(device) for image in batch[0]]
    targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in batch[1]]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    guard = engine.NonFiniteLossGuard()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    ours, plain = [], []
    for i in range(steps + 1):
        for which, times in ((0, ours), (1, plain)):
            sync()
            start = time.perf_counter()
            if which == 0:
                engine.train_step(model, images, targets, optimizer, scaler, guard, i, amp_dtype=amp_dtype)
            else:
                plain_step(model, images, targets, optimizer)
            sync()
            if i > 0:  # the first round warms up
                times.append(time.perf_counter() - start)
    return statistics.median(ours), statistics.median(plain)


def main() -> None:
    """Run the benchmarks and print a Markdown summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="VOCdevkit root with VOC2012")
    parser.add_argument("--split", default="2012/trainval", help="devkit split for the data benchmark")
    parser.add_argument("--architecture", choices=ARCHITECTURES, default="ssd300_vgg16")
    parser.add_argument("--batch-size", type=int, default=8, help="images per training step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--samples", type=int, default=100, help="augmented samples for the data benchmark")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    split = VocSplit.from_devkit(args.data, args.split)
    size = input_size(args.architecture)
    dataset = VocDetectionDataset(split, VOC_CLASSES, transforms=SSDTrainPreset(size))
    rate = bench_data(dataset, args.samples)
    print(f"data pipeline ({split.name}, {size[1]}x{size[0]}, SSD augmentation): {rate:.1f} images/s per worker")

    model = build_model(args.architecture, len(VOC_CLASSES) + 1).to(device).train()
    batch = collate_detection([dataset[(i, 1000 + i)] for i in range(args.batch_size)])
    ours, plain = bench_steps(model, batch, device, args.steps)
    print(
        f"training step, {args.architecture}, batch {args.batch_size}, {device.type}, {torch.get_num_threads()} "
        f"threads: ours {ours:.3f} s, plain torchvision {plain:.3f} s, ratio {ours / plain:.3f} "
        f"({args.batch_size / ours:.1f} vs {args.batch_size / plain:.1f} images/s)"
    )
    if device.type == "cuda":
        amp, _ = bench_steps(model, batch, device, args.steps, amp_dtype=torch.float16)
        for name, seconds in (("fp32", ours), ("amp fp16", amp)):
            hours = 120_000 * seconds * 32 / args.batch_size / 3600
            print(f"{name}: {args.batch_size / seconds:.0f} images/s; 120k x 32 images would take {hours:.1f} h")


if __name__ == "__main__":
    main()
