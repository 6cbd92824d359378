"""The pieces of the training loop: sampler, schedule, one optimisation step, loss guard, RNG state, logs.

Kept free of argument parsing so tests and the benchmark drive them directly (like torchvision's
``references/detection/engine.py``).
"""

from __future__ import annotations

import csv
import math
import random
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from training.distributed import all_reduce_mean

__all__ = [
    "InfiniteSampler",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "CsvLog",
    "build_lr_scheduler",
    "capture_rng_state",
    "lr_factor",
    "plot_training_curves",
    "recompute_bn_statistics",
    "restore_rng_state",
    "train_step",
]


class InfiniteSampler(Sampler):
    """An endless stream of ``(index, augmentation seed)``: a fresh permutation every pass over the data.

    Iteration-based training (the SSD recipe counts iterations, not epochs) needs no epoch boundary. The
    permutation of pass ``e`` comes from ``seed + e`` and is the same on every rank, padded with its own head
    to a multiple of ``w`` ranks; rank ``r`` takes every ``w``-th index from ``r`` (equal, disjoint shards apart
    from the padding, like DistributedSampler, so the ranks stay on the same pass). Each item carries a
    seed derived from ``(seed, rank, position)`` for its augmentation, so the stream, and therefore the
    training, is reproducible whatever the number of data workers. ``start`` skips that many items of this
    rank's stream (``iteration * batch_size`` when resuming).
    """

    def __init__(self, size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.start = start
        self.per_pass = math.ceil(size / world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        pass_index, offset = divmod(self.start, self.per_pass)
        position = self.start
        while True:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + pass_index))
            padded = self.per_pass * self.world_size
            if padded > self.size:
                order = order.repeat(math.ceil(padded / self.size))[:padded]
            for index in order[self.rank :: self.world_size][offset:].tolist():
                sample_seed = int(np.random.SeedSequence([self.seed, self.rank, position]).generate_state(1)[0])
                yield index, sample_seed
                position += 1
            pass_index, offset = pass_index + 1, 0


def lr_factor(
    iteration: int, *, warmup_iterations: int, warmup_factor: float, milestones: Sequence[int], gamma: float
) -> float:
    """Learning-rate multiplier at ``iteration``: linear warm-up from ``warmup_factor``, then x``gamma`` steps."""
    factor = gamma ** bisect_right(list(milestones), iteration)
    if iteration < warmup_iterations:
        alpha = iteration / warmup_iterations
        factor *= warmup_factor * (1.0 - alpha) + alpha
    return factor


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_iterations: int,
    warmup_factor: float,
    milestones: Sequence[int],
    gamma: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration LambdaLR over :func:`lr_factor` (its state_dict holds only the position)."""
    schedule = partial(
        lr_factor,
        warmup_iterations=warmup_iterations,
        warmup_factor=warmup_factor,
        milestones=tuple(milestones),
        gamma=gamma,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


class NonFiniteLossError(RuntimeError):
    """Training produced too many NaN/inf losses to go on."""


class NonFiniteLossGuard:
    """Counts NaN/inf losses (whose steps are skipped) and stops training after too many.

    Args:
        max_consecutive: abort after this many non-finite losses in a row (a diverged model).
        max_total: abort after this many in the whole run (data or numerics going wrong often).
    """

    def __init__(self, max_consecutive: int = 10, max_total: int = 100) -> None:
        self.max_consecutive, self.max_total = max_consecutive, max_total
        self.consecutive = 0
        self.total = 0

    def check(self, losses: Mapping[str, float], iteration: int) -> bool:
        """True when every loss is finite; otherwise count it (the caller skips the step) or raise."""
        if all(math.isfinite(v) for v in losses.values()):
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        values = ", ".join(f"{k}={v}" for k, v in losses.items())
        if self.consecutive >= self.max_consecutive or self.total >= self.max_total:
            raise NonFiniteLossError(
                f"non-finite loss at iteration {iteration} ({values}): {self.consecutive} in a row, {self.total} in "
                f"total (limits {self.max_consecutive} in a row / {self.max_total} in total). The model has "
                "probably diverged: lower --lr, lengthen --warmup-iterations, or check the data for broken boxes; "
                "resume from the last good checkpoint with --resume."
            )
        return False

    def state_dict(self) -> dict[str, int]:
        """Counters, for resume."""
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore the counters."""
        self.consecutive, self.total = int(state["consecutive"]), int(state["total"])


def train_step(
    model: torch.nn.Module,
    images: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    guard: NonFiniteLossGuard,
    iteration: int,
    *,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float] | None:
    """One SGD step on a batch; returns the (all-rank mean) losses, or None when the step was skipped.

    The loss is torchvision's SSD loss, which is the paper's: default boxes matched to the best ground
    truth at IoU >= 0.5 plus each ground truth's best box (``SSDMatcher``), smooth-L1 (beta 1) on the
    (0.1, 0.1, 0.2, 0.2)-variance box encoding, softmax cross-entropy with hard negatives at 3:1 chosen
    per image, both summed and divided by the number of matched boxes N (alpha = 1; Caffe's
    ``loc_weight = (3 + 1) / 4 = 1``). Total loss = ``bbox_regression + classification``. Differences:
    torchvision normalises by N over the whole batch (Caffe: the same, ``normalization: VALID``), and an
    image without positives gets no negatives (ssd.pytorch: the same; Caffe: likewise 3 x 0).

    A non-finite loss (agreed across ranks, so DDP processes stay in step) skips the backward pass.
    """
    autocast = nullcontext() if amp_dtype is None else torch.autocast(images[0].device.type, dtype=amp_dtype)
    with autocast:
        loss_dict = model(images, targets)
    loss = sum(loss_dict.values())
    values = torch.stack([loss.detach(), *(v.detach() for v in loss_dict.values())]).float()
    values = all_reduce_mean(values).tolist()
    losses = dict(zip(["loss", *loss_dict.keys()], values))
    optimizer.zero_grad(set_to_none=True)
    if not guard.check(losses, iteration):
        return None
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return losses


@torch.no_grad()
def recompute_bn_statistics(model: torch.nn.Module, batches) -> int:
    """Replace BatchNorm running statistics by their exact average over ``batches`` (Detectron2's PreciseBN).

    BatchNorm layers normalise with batch statistics while training and with running averages at inference;
    with torchvision's SSDlite momentum (0.03) the averages trail the weights by ~30 iterations, which after
    short or fast-moving training (fine-tuning a few hundred images) leaves the saved model much worse than the
    trained one. ``batches`` are ``(images, targets)`` pairs run through the model in training mode (the loss
    is computed and dropped; no gradient). Returns the number of BatchNorm layers updated (0: nothing to do,
    e.g. SSD300-VGG16).
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average: the exact mean over the batches
    model.train()
    try:
        for images, targets in batches:
            model(images, targets)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.train(was_training)
    return len(norms)


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, as tensors and plain values (checkpointable)."""
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only when both runs had the same GPUs)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class CsvLog:
    """Append rows to a CSV file with a fixed header (written once; appending continues a resumed run)."""

    def __init__(self, path: str | Path, fields: Sequence[str]) -> None:
        self.path, self.fields = Path(path), list(fields)
        if not self.path.exists() or self.path.stat().st_size == 0:
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.fields)

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one row (missing fields left empty)."""
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(row)

    def truncate_after(self, iteration: int) -> None:
        """Drop rows logged after ``iteration`` (a resumed run repeats them)."""
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= iteration]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)


def _read_csv(path: Path, column: str) -> tuple[list[int], list[float]]:
    if not path.exists():
        return [], []
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get(column) not in (None, "")]
    return [int(r["iteration"]) for r in rows], [float(r[column]) for r in rows]


def plot_training_curves(train_csv: str | Path, val_csv: str | Path, png_path: str | Path, *, title: str = "") -> None:
    """Training loss (raw and smoothed) and validation mAP against iteration, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iterations, losses = _read_csv(Path(train_csv), "loss")
    val_iterations, maps = _read_csv(Path(val_csv), "map")
    fig, loss_axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    if losses:
        loss_axis.plot(iterations, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss")
        window = max(1, len(losses) // 50)
        if window > 1:
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            loss_axis.plot(iterations[window - 1 :], smooth, color="tab:blue", label=f"loss (mean of {window})")
    loss_axis.set_xlabel("iteration")
    loss_axis.set_ylabel("training loss (loc + conf)", color="tab:blue")
    loss_axis.grid(alpha=0.3)
    map_axis = loss_axis.twinx()
    if maps:
        map_axis.plot(val_iterations, [100 * m for m in maps], "o-", color="tab:red", label="val mAP")
    map_axis.set_ylabel("validation mAP@0.5 (%)", color="tab:red")
    map_axis.set_ylim(0, 100)
    handles = loss_axis.get_legend_handles_labels()[0] + map_axis.get_legend_handles_labels()[0]
    if handles:
        loss_axis.legend(handles=handles, loc="upper right")
    loss_axis.set_title(title or "SSD training")
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
