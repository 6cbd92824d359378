#!/usr/bin/env python3
r"""Train the ssd_ros SSD detector: SSD300 on VOC07+12 with the paper's recipe, or any VOC-format dataset.

Examples::

    # The paper's SSD300 on VOC07+12 trainval, evaluated on VOC2007 test every 5000 iterations:
    python training/train.py --config training/configs/ssd300_voc0712.yaml --data-root ~/data/VOCdevkit

    # 4 GPUs (the batch of 32 is split over the processes), mixed precision:
    torchrun --nproc_per_node=4 training/train.py --config training/configs/ssd300_voc0712.yaml \\
        --data-root ~/data/VOCdevkit --amp

    # The rover's own labelled frames (class names read from the XML files, spaces allowed):
    python training/train.py --config training/configs/picar_custom.yaml

    # Continue an interrupted run exactly where its last checkpoint left it:
    python training/train.py --config ... --resume runs/ssd300_voc0712/last.pt

Options come from the YAML ``--config`` file (keys are the long option names, with ``-`` or ``_``) and the
command line; the command line wins. Outputs in ``--output-dir``: ``last.pt`` (full training state, written
atomically every ``--checkpoint-every`` iterations), ``best.pt`` (highest validation mAP), ``train_log.csv``
and ``val_log.csv`` (the log), ``training_curves.png`` (the log drawn, after every validation) and ``val_ap.md``. The
checkpoints are ssd_ros checkpoints (weights + model card): the detector node and evaluate.py load them.

An ``--output-dir`` that already holds a run (``last.pt`` or ``best.pt``) is refused unless ``--resume`` continues
it or ``--overwrite`` starts over there: rerunning a command after a crash must not replace the run's checkpoints.

Exit status: 0 done; 2 a usage or data error (options, a ``--batch-size`` that does not fit the processes or the
network, ``--config``, dataset, classes, ``--resume`` checkpoint, an ``--output-dir`` holding a run), reported in
one line before ``--output-dir`` is created; 1 a run that failed (the loss diverged, pretrained weights
unavailable); 130 interrupted (resume with ``--resume``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

if __package__ in (None, ""):  # run as a script: make the repository (ssd_ros, training) importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from ssd_ros.evaluation.voc import VocFormatError, VocSplit, discover_classes
from ssd_ros.evaluation.voc_metric import METRICS, evaluate_detections
from ssd_ros.evaluation.voc_report import format_ap_table
from ssd_ros.vision.checkpoint import CheckpointError, check_card, read_checkpoint_payload, save_checkpoint
from ssd_ros.vision.detector import EVALUATION_SETTINGS, Detector, resolve_device
from ssd_ros.vision.image_codec import ImageDecodeError
from ssd_ros.vision.model import ARCHITECTURES, VOC_CLASSES, WeightsUnavailableError, build_model, input_size
from ssd_ros.vision.model_card import ModelCard
from training import engine
from training.dataset import VocDetectionDataset, collate_detection, data_error_message
from training.detect import detect_split
from training.distributed import DistributedContext, barrier, init_distributed, is_main_process
from training.evaluate import mixup_hint
from training.presets import SSDEvalPreset, SSDTrainPreset

# What a run leaves in --output-dir besides its CSV logs; --overwrite removes them.
RUN_OUTPUTS = ("last.pt", "best.pt", "val_ap.md", "training_curves.png")
# Options that count iterations, images or batches: 0 would divide by zero or never make progress.
POSITIVE_OPTIONS = (
    "iterations",
    "batch_size",
    "checkpoint_every",
    "val_every",
    "log_every",
    "val_batch_size",
    "max_nonfinite_consecutive",
    "max_nonfinite_total",
)
NON_NEGATIVE_OPTIONS = ("workers", "threads", "warmup_iterations", "val_max_images", "precise_bn_batches")

TRAIN_LOG_FIELDS = ("iteration", "loss", "bbox_regression", "classification", "lr", "images_per_s", "skipped")
VAL_LOG_FIELDS = ("iteration", "map", "metric", "images", "seconds")


def build_parser() -> argparse.ArgumentParser:
    """Every option of the script, with the paper's SSD300/VOC recipe as defaults."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML file of option defaults (long option names as keys)")
    _add_data_options(parser.add_argument_group("data"))
    _add_model_options(parser.add_argument_group("model"))
    _add_optimisation_options(
        parser.add_argument_group("optimisation (SSD paper, sec. 3: SGD, 120k iterations, x0.1 at 80k/100k)")
    )
    _add_augmentation_options(
        parser.add_argument_group("augmentation (torchvision transforms v2, see training/presets.py)")
    )
    _add_run_options(parser.add_argument_group("run"))
    return parser


def _add_data_options(data: argparse._ArgumentGroup) -> None:
    data.add_argument("--data-root", type=Path, help="VOCdevkit folder (holding VOC2007/, VOC2012/)")
    data.add_argument(
        "--train-sets",
        nargs="+",
        default=["2007/trainval", "2012/trainval"],
        metavar="YEAR/SET",
        help="VOCdevkit splits to train on (concatenated)",
    )
    data.add_argument(
        "--val-set",
        default="2007/test",
        metavar="YEAR/SET",
        help="VOCdevkit split for periodic evaluation ('none': no evaluation); never a training image",
    )
    data.add_argument(
        "--train-folder",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="VOC-format folder(s) to train on instead of --data-root/--train-sets (Annotations/+JPEGImages/, "
        "or images with XML files beside them)",
    )
    data.add_argument("--val-folder", type=Path, metavar="DIR", help="VOC-format folder for periodic evaluation")
    data.add_argument(
        "--train-image-set",
        metavar="NAME",
        help="with --train-folder holding ImageSets/Main: the list to train on, e.g. train (default: every annotation)",
    )
    data.add_argument(
        "--val-image-set", metavar="NAME", help="with --val-folder holding ImageSets/Main: the list to evaluate on"
    )
    data.add_argument(
        "--classes",
        nargs="+",
        metavar="NAME",
        help="class names in label order (quote names with spaces); default: the 20 VOC classes with "
        "--data-root, the sorted names found in the --train-folder annotations otherwise",
    )
    data.add_argument(
        "--skip-difficult",
        action="store_true",
        help="leave objects flagged difficult out of the training targets (ssd.pytorch); default: train on "
        "them, as the released Caffe SSD does (they never count in the VOC metric either way)",
    )
    data.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),  # more than the cores only makes torch warn and the workers contend
        help="data loading processes per training process (default: min(4, CPU count))",
    )


def _add_model_options(model: argparse._ArgumentGroup) -> None:
    model.add_argument("--architecture", choices=ARCHITECTURES, default="ssd300_vgg16", help="detector to train")
    model.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start from ImageNet backbone weights (torchvision weights API; downloads once); "
        "--no-pretrained trains from scratch",
    )


def _add_optimisation_options(optim: argparse._ArgumentGroup) -> None:
    optim.add_argument("--iterations", type=int, default=120_000, help="training iterations (optimizer steps)")
    optim.add_argument(
        "--batch-size", type=int, default=32, help="images per iteration over all processes (split over GPUs)"
    )
    optim.add_argument("--lr", type=float, default=1e-3, help="base learning rate")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    optim.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay")
    optim.add_argument(
        "--lr-steps", type=int, nargs="*", default=[80_000, 100_000], help="iterations where the lr is multiplied"
    )
    optim.add_argument("--lr-gamma", type=float, default=0.1, help="lr multiplier at each --lr-steps iteration")
    optim.add_argument(
        "--warmup-iterations", type=int, default=500, help="linear lr warm-up length (0: none, as in the paper)"
    )
    optim.add_argument("--warmup-factor", type=float, default=0.001, help="lr multiplier at iteration 0 of warm-up")
    optim.add_argument("--amp", action="store_true", help="mixed precision (float16 on CUDA, bfloat16 on CPU)")
    optim.add_argument(
        "--max-nonfinite-consecutive", type=int, default=10, help="abort after this many NaN/inf losses in a row"
    )
    optim.add_argument(
        "--max-nonfinite-total", type=int, default=100, help="abort after this many NaN/inf losses in total"
    )


def _add_augmentation_options(augment: argparse._ArgumentGroup) -> None:
    augment.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="SSD augmentation; --no-augment only resizes (for overfitting checks on a few images)",
    )
    augment.add_argument("--hflip-prob", type=float, default=0.5, help="horizontal flip probability")
    augment.add_argument("--zoom-out-prob", type=float, default=0.5, help="zoom-out (expand) probability")
    augment.add_argument("--zoom-out-max", type=float, default=4.0, help="largest zoom-out factor")


def _add_run_options(run: argparse._ArgumentGroup) -> None:
    run.add_argument("--output-dir", type=Path, default=Path("runs/ssd300_voc0712"), help="where outputs go")
    run.add_argument("--resume", type=Path, metavar="CHECKPOINT", help="continue from a last.pt (full state)")
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an --output-dir that holds one, replacing its checkpoints and logs (without it, "
        "such a folder is refused so that rerunning a command never loses a run)",
    )
    run.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1', ...")
    run.add_argument("--seed", type=int, default=0, help="seed of initialisation, sampling and augmentation")
    run.add_argument("--checkpoint-every", type=int, default=5000, help="write last.pt every N iterations")
    run.add_argument("--val-every", type=int, default=5000, help="evaluate on the validation set every N iterations")
    run.add_argument(
        "--val-max-images", type=int, default=0, help="evaluate on this many evenly spaced images (0: all)"
    )
    run.add_argument("--val-metric", choices=METRICS, default="11point", help="VOC AP flavour (11point: VOC2007)")
    run.add_argument("--val-batch-size", type=int, default=16, help="images per detector call during evaluation")
    run.add_argument(
        "--precise-bn-batches",
        type=int,
        default=0,
        help="before each evaluation/checkpoint, recompute BatchNorm statistics over this many training batches "
        "(PreciseBN; matters for ssdlite320 on short runs, no-op for ssd300_vgg16)",
    )
    run.add_argument("--log-every", type=int, default=20, help="write the loss to train_log.csv every N")
    run.add_argument("--no-progress", action="store_true", help="no tqdm progress bar (e.g. in batch jobs)")
    run.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def usage_error(message: str) -> NoReturn:
    """Exit with status 2 and one line: for mistakes in a --config file the long usage text would bury."""
    print(f"train.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options from ``--config`` (if given) overridden by the command line."""
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        try:
            config = yaml.safe_load(known.config.read_text()) or {}
        except OSError as error:
            usage_error(f"cannot read --config {known.config}: {error.strerror or error}")
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)  # line/column of the YAML mistake, when known
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            usage_error(f"--config {known.config}{where}: not valid YAML ({getattr(error, 'problem', None) or error})")
        if not isinstance(config, dict):
            usage_error(f"--config {known.config}: expected a mapping of option names to values")
        destinations = {action.dest for action in parser._actions}
        defaults = {}
        for key, value in config.items():
            dest = str(key).replace("-", "_")
            if dest not in destinations or dest in ("help", "config"):
                usage_error(f"--config {known.config}: unknown option {key!r}")
            defaults[dest] = value
        parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    for name in ("data_root", "output_dir", "resume", "val_folder"):
        if getattr(args, name) is not None:
            setattr(args, name, Path(getattr(args, name)).expanduser())
    if args.train_folder is not None:
        args.train_folder = [Path(p).expanduser() for p in args.train_folder]
    if args.train_folder is None and args.data_root is None:
        parser.error("give --data-root (a VOCdevkit) or --train-folder (VOC-format folders)")
    if args.train_image_set is not None and args.train_folder is None:
        parser.error("--train-image-set applies to --train-folder (use --train-sets with --data-root)")
    if args.val_image_set is not None and args.val_folder is None:
        parser.error("--val-image-set applies to --val-folder (use --val-set with --data-root)")
    for name in POSITIVE_OPTIONS:
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive (got {getattr(args, name)})")
    for name in NON_NEGATIVE_OPTIONS:
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 or more (got {getattr(args, name)})")
    if args.overwrite and args.resume is not None:
        parser.error("--overwrite starts a new run, --resume continues one: give one of them")
    return args


def build_splits(args: argparse.Namespace) -> tuple[VocSplit, VocSplit | None, tuple[str, ...]]:
    """Training split, validation split (or None) and the class list."""
    if args.train_folder:
        train = VocSplit.concat(VocSplit.from_folder(folder, args.train_image_set) for folder in args.train_folder)
        val = VocSplit.from_folder(args.val_folder, args.val_image_set) if args.val_folder else None
        classes = tuple(args.classes) if args.classes else discover_classes(train)
    else:
        train = VocSplit.concat(VocSplit.from_devkit(args.data_root, s) for s in args.train_sets)
        val = None
        if args.val_folder:
            val = VocSplit.from_folder(args.val_folder, args.val_image_set)
        elif args.val_set and str(args.val_set).lower() != "none":
            val = VocSplit.from_devkit(args.data_root, args.val_set)
        classes = tuple(args.classes) if args.classes else VOC_CLASSES
    if val is not None:
        overlap = {item.image_path.resolve() for item in train} & {item.image_path.resolve() for item in val}
        if overlap:
            raise VocFormatError(
                f"validation split {val.name} shares {len(overlap)} images with the training data "
                f"(e.g. {sorted(overlap)[0]}): evaluation must not run on training images"
            )
    return train, val, classes


def evaluate(
    model: torch.nn.Module,
    dataset: VocDetectionDataset,
    device: torch.device,
    *,
    metric: str = "11point",
    batch_size: int = 16,
    max_images: int = 0,
):
    """VOC AP of ``model`` on ``dataset`` through the product's own Detector and metric (as evaluate.py).

    The Detector runs the SSD paper's evaluation setting (:data:`~ssd_ros.vision.detector.EVALUATION_SETTINGS`) on
    ``model``, which it hands back in the mode it came in (inference runs it in eval mode).
    Returns the :class:`~ssd_ros.evaluation.voc_metric.VocEvaluation`.
    """
    indices = list(range(len(dataset)))
    if 0 < max_images < len(indices):  # evenly spaced, first and last included
        step = (len(dataset) - 1) / max(max_images - 1, 1)
        indices = sorted({round(i * step) for i in range(max_images)})
    was_training = model.training
    try:  # inference needs eval mode; the trainer gets its model back as it gave it
        detector = Detector(model, dataset.class_names, device=device, warmup_runs=0, **EVALUATION_SETTINGS)
        # evaluate.py's loop: images decode in threads while the model runs.
        items = [dataset.split[i] for i in indices]
        detections = detect_split(detector, items, batch_size=batch_size, progress=False)
    finally:
        model.train(was_training)
    annotations = [dataset.annotations[i] for i in indices]
    return evaluate_detections(detections, annotations, dataset.class_names, metric=metric)


def metric_name(args: argparse.Namespace, val: VocSplit) -> str:
    """The key of the validation mAP in a checkpoint card's ``training["metric"]``."""
    return f"{val.name} mAP@0.5 ({args.val_metric})"


def model_card(args, class_names, train: VocSplit, val: VocSplit | None, iteration: int, val_map: float | None):
    """The card written into checkpoints: what the model is and how it was trained."""
    metric = None
    if val is not None and val_map is not None:
        metric = {metric_name(args, val): val_map}
    return ModelCard.for_architecture(
        args.architecture,
        class_names,
        dataset=train.name,
        iterations=iteration,
        metric=metric,
        val_dataset=None if val is None else val.name,
        train_images=len(train),
        pretrained_backbone=bool(args.pretrained),
        skip_difficult=bool(args.skip_difficult),
        recipe={
            "batch_size": args.batch_size,
            "lr": args.lr,
            "momentum": args.momentum,
            "weight_decay": args.weight_decay,
            "lr_steps": list(args.lr_steps),
            "lr_gamma": args.lr_gamma,
            "warmup_iterations": args.warmup_iterations,
            "iterations_planned": args.iterations,
            "amp": bool(args.amp),
            "seed": args.seed,
        },
    )


def _to_device(batch, device: torch.device):
    """A collated ``(images, targets)`` batch on ``device``."""
    images, targets = batch
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    return images, targets


def gather_rng_states(context: DistributedContext) -> list[dict[str, Any]]:
    """Every rank's RNG states (rank order), collected on all ranks."""
    state = engine.capture_rng_state()
    if not context.distributed:
        return [state]
    states: list[Any] = [None] * context.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run the training described by ``args``; returns a summary (final losses, best mAP, paths)."""
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _train(args)
    finally:
        torch.set_num_threads(threads)  # callers (tests, notebooks) keep their own setting


@dataclass
class _Run:
    """The parts of one training run: built by :func:`_build`, advanced by the loop, saved by :func:`_save_last`."""

    args: argparse.Namespace
    device: torch.device
    context: DistributedContext
    batch_per_rank: int
    train_split: VocSplit
    val_split: VocSplit | None
    class_names: tuple[str, ...]
    train_set: VocDetectionDataset
    val_set: VocDetectionDataset | None  # on the main process only
    model: torch.nn.Module  # wrapped in DistributedDataParallel under torchrun
    model_without_ddp: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    guard: engine.NonFiniteLossGuard
    amp_dtype: torch.dtype | None
    start_iteration: int = 0
    best_map: float = -math.inf
    last_val_map: float | None = None
    rng_states: list[dict[str, Any]] | None = None  # every rank's RNG states from --resume


@dataclass
class _Logs:
    """The main process's logs in ``--output-dir``."""

    train: engine.CsvLog
    val: engine.CsvLog


class _Throughput:
    """Training images per second, an exponential average; :meth:`restart` leaves evaluation and saving out."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.images_per_s = 0.0
        self.restart()

    def restart(self) -> None:
        self.tick = time.perf_counter()

    def step(self) -> float:
        now = time.perf_counter()
        rate = self.batch_size / max(now - self.tick, 1e-9)
        self.images_per_s = rate if self.images_per_s == 0.0 else 0.9 * self.images_per_s + 0.1 * rate
        self.tick = now
        return self.images_per_s


def _train(args: argparse.Namespace) -> dict[str, Any]:
    run = _build(args)
    if args.resume is not None:
        _resume(run, args.resume)
    if run.context.distributed:
        run.model = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None
        )
    batches = _training_batches(run)
    logs = _open_logs(run) if run.context.is_main else None
    progress = tqdm(
        total=args.iterations,
        initial=run.start_iteration,
        disable=not run.context.is_main or args.no_progress,
        dynamic_ncols=True,
        desc="train",
    )
    history: list[dict[str, float]] = []
    throughput = _Throughput(args.batch_size)
    for iteration in range(run.start_iteration, args.iterations):
        losses = _step_and_log(run, next(batches), iteration, throughput, logs, progress)
        if losses is not None:
            history.append({"iteration": iteration + 1, **losses})
        if _validate_and_save(run, iteration + 1, logs):
            throughput.restart()  # evaluation and saving are not training throughput
    progress.close()
    if logs is not None:
        engine.plot_training_curves(
            args.output_dir / "train_log.csv",
            args.output_dir / "val_log.csv",
            args.output_dir / "training_curves.png",
            title=f"{args.architecture} on {run.train_split.name}",
        )
    if run.context.distributed:
        torch.distributed.destroy_process_group()
    return {
        "history": history,
        "best_map": None if run.best_map == -math.inf else run.best_map,
        "skipped_steps": run.guard.total,
        "output_dir": args.output_dir,
        "class_names": run.class_names,
    }


class BatchSizeError(ValueError):
    """``--batch-size`` does not fit the processes or the network (a usage error, found once they are known)."""


def _build(args: argparse.Namespace) -> _Run:
    """Device, processes, data, model and optimisation of a fresh run (nothing written yet)."""
    device = resolve_device(args.device)  # the detector core's checks: a clear error for a device not here
    context = init_distributed(device.type)
    if device.type == "cuda" and context.distributed:  # one GPU per process under torchrun
        device = torch.device("cuda", context.local_rank)
    if args.batch_size % context.world_size:
        raise BatchSizeError(f"--batch-size {args.batch_size} is not divisible by {context.world_size} processes")
    torch.manual_seed(args.seed)

    train_split, val_split, class_names = build_splits(args)
    model = build_model(args.architecture, len(class_names) + 1, pretrained_backbone=args.pretrained)
    if args.batch_size // context.world_size < 2 and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
        # SSDlite's last feature maps are 1x1: with one image, training BatchNorm sees one value per channel and
        # torch raises mid-step; said before any work instead.
        raise BatchSizeError(
            f"--batch-size {args.batch_size} gives each of {context.world_size} process(es) 1 image: "
            f"{args.architecture}'s BatchNorm layers need at least 2 per process while training"
        )
    # Zoom-out canvas = the model's mean colour, so it normalises to zero as in Caffe's expand.
    fill = [255.0 * m for m in model.transform.image_mean]
    size = input_size(args.architecture)
    preset = SSDTrainPreset(
        size, fill=fill, hflip_prob=args.hflip_prob, zoom_out_prob=args.zoom_out_prob, zoom_out_max=args.zoom_out_max
    )
    if not args.augment:
        preset = SSDEvalPreset(size)
    train_set = VocDetectionDataset(train_split, class_names, transforms=preset, skip_difficult=args.skip_difficult)
    val_set = VocDetectionDataset(val_split, class_names) if val_split is not None and context.is_main else None

    # The whole network is trained (torchvision's builder freezes nothing here). Caffe SSD gives biases
    # twice the lr and no decay; one group for all, as ssd.pytorch and torchvision's references do.
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = engine.build_lr_scheduler(
        optimizer,
        warmup_iterations=args.warmup_iterations,
        warmup_factor=args.warmup_factor,
        milestones=args.lr_steps,
        gamma=args.lr_gamma,
    )
    amp_dtype = None
    if args.amp:
        amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return _Run(
        args=args,
        device=device,
        context=context,
        batch_per_rank=args.batch_size // context.world_size,
        train_split=train_split,
        val_split=val_split,
        class_names=class_names,
        train_set=train_set,
        val_set=val_set,
        model=model,
        model_without_ddp=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        guard=engine.NonFiniteLossGuard(args.max_nonfinite_consecutive, args.max_nonfinite_total),
        amp_dtype=amp_dtype,
    )


def _resume(run: _Run, path: Path) -> None:
    """Model, optimisation state, iteration, best mAP and RNG states from a ``last.pt`` of the same run."""
    payload = read_checkpoint_payload(path)
    state = (payload.extra or {}).get("training_state")
    if state is None:
        raise CheckpointError(path, "holds no training state (resume needs a last.pt written by train.py)")
    check_card(path, payload.card, run.args.architecture, run.class_names)
    run.model.load_state_dict(payload.state_dict)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler.is_enabled() and not state["scaler"]:
        # The run was saved without float16 AMP: a fresh scaler calibrates itself in a few steps.
        print("note: resuming a run without --amp with --amp: starting a fresh gradient scaler", file=sys.stderr)
    else:
        run.scaler.load_state_dict(state["scaler"])
    run.guard.load_state_dict(state["guard"])
    # last.pt holds the best as of its own save; best.pt may hold a better one found after it (or the last.pt
    # of a run that crashed during a later save): a resumed run must not replace that with a worse model.
    run.start_iteration = int(state["iteration"])
    run.best_map = max(float(state["best_map"]), _saved_best_map(run))
    run.rng_states = state["rng"]


def _saved_best_map(run: _Run) -> float:
    """The validation mAP recorded in ``--output-dir``'s ``best.pt`` for this run's metric, or -inf if none."""
    path = run.args.output_dir / "best.pt"
    if run.val_split is None or not path.is_file():
        return -math.inf
    try:
        metrics = read_checkpoint_payload(path).card.training.get("metric") or {}
    except CheckpointError:  # unreadable: nothing worth keeping, the next validation replaces it
        return -math.inf
    value = metrics.get(metric_name(run.args, run.val_split))
    return float(value) if isinstance(value, (int, float)) else -math.inf


def _training_batches(run: _Run):
    """This process's endless stream of training batches, continuing where a resumed run stopped."""
    args, context = run.args, run.context
    sampler = engine.InfiniteSampler(
        len(run.train_set),
        seed=args.seed,
        rank=context.rank,
        world_size=context.world_size,
        start=run.start_iteration * run.batch_per_rank,
    )
    loader = DataLoader(
        run.train_set,
        batch_size=run.batch_per_rank,
        sampler=sampler,
        num_workers=args.workers,
        collate_fn=collate_detection,
        pin_memory=run.device.type == "cuda",
        persistent_workers=args.workers > 0,
        prefetch_factor=4 if args.workers > 0 else None,
    )
    batches = iter(loader)
    # After the loader drew its worker base seed: the state continues exactly where the checkpoint was.
    if run.rng_states is not None:
        engine.restore_rng_state(run.rng_states[min(context.rank, len(run.rng_states) - 1)])
    return batches


def _open_logs(run: _Run) -> _Logs:
    """Create ``--output-dir`` and its logs (cut back to a resumed iteration), and say what is trained."""
    args, start = run.args, run.start_iteration
    # Only now: data, classes, weights and --resume are checked, so a mistake leaves no empty folder.
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if args.overwrite:  # no checkpoint of the old run may sit beside the new run's logs, nor be resumed by mistake
        for name in RUN_OUTPUTS:
            (args.output_dir / name).unlink(missing_ok=True)
    logs = _Logs(
        train=engine.CsvLog(args.output_dir / "train_log.csv", TRAIN_LOG_FIELDS),
        val=engine.CsvLog(args.output_dir / "val_log.csv", VAL_LOG_FIELDS),
    )
    logs.train.truncate_after(start)
    logs.val.truncate_after(start)
    print(
        f"training {args.architecture} on {run.train_split.name}: {len(run.train_set)} images, "
        f"{run.train_set.num_objects()} objects, {len(run.class_names)} classes; "
        f"validation: {run.val_split.name if run.val_split is not None else 'none'}; "
        f"{run.context.world_size} process(es) x {run.batch_per_rank} images on {run.device}",
        flush=True,
    )
    return logs


def _step_and_log(run: _Run, batch, iteration: int, throughput: _Throughput, logs: _Logs | None, progress):
    """One optimisation step, shown and logged every ``--log-every`` by the main process; its losses or None.

    None: a non-finite step the guard skipped.
    """
    args = run.args
    images, targets = _to_device(batch, run.device)
    lr = run.optimizer.param_groups[0]["lr"]
    losses = engine.train_step(
        run.model, images, targets, run.optimizer, run.scaler, run.guard, iteration, amp_dtype=run.amp_dtype
    )
    run.scheduler.step()
    done = iteration + 1
    images_per_s = throughput.step()
    if logs is None:
        return losses
    progress.update(1)
    if losses is not None:
        progress.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}")
    if done % args.log_every == 0 or done == args.iterations:
        row = {"iteration": done, "lr": lr, "images_per_s": images_per_s, "skipped": run.guard.total}
        if losses is not None:
            row.update(losses)
        logs.train.write(row)
    return losses


def _validate_and_save(run: _Run, done: int, logs: _Logs | None) -> bool:
    """After iteration ``done``: evaluate (main process) and write ``last.pt`` when due. True if anything ran."""
    args = run.args
    validate = run.val_split is not None and (done % args.val_every == 0 or done == args.iterations)
    checkpoint = done % args.checkpoint_every == 0 or done == args.iterations
    if (validate or checkpoint) and args.precise_bn_batches > 0:
        _recompute_bn(run, done)
    validate = validate and logs is not None
    rng = None
    if checkpoint:  # before validating: a validation that fails (a broken image, out of memory) keeps the training
        rng = _save_last(run, done)
        barrier()
    if validate:
        _validate(run, done, logs)
        if rng is not None:  # again, so that last.pt's card and best mAP include this validation (RNG untouched)
            _save_last(run, done, rng)
    return validate or checkpoint


def _recompute_bn(run: _Run, done: int) -> None:
    """PreciseBN over ``--precise-bn-batches`` training batches.

    A separate seeded stream: the training stream and the global RNG are left untouched.
    """
    context, train_set = run.context, run.train_set
    bn_keys = iter(
        engine.InfiniteSampler(
            len(train_set), seed=run.args.seed + done, rank=context.rank, world_size=context.world_size
        )
    )
    bn_batches = (
        _to_device(collate_detection([train_set[next(bn_keys)] for _ in range(run.batch_per_rank)]), run.device)
        for _ in range(run.args.precise_bn_batches)
    )
    engine.recompute_bn_statistics(run.model_without_ddp, bn_batches)


def _validate(run: _Run, done: int, logs: _Logs) -> None:
    """VOC mAP on the validation split: logged, ``val_ap.md``, ``best.pt`` when it is the best so far, curves."""
    args, output_dir = run.args, run.args.output_dir
    started = time.perf_counter()
    result = evaluate(
        run.model_without_ddp,
        run.val_set,
        run.device,
        metric=args.val_metric,
        batch_size=args.val_batch_size,
        max_images=args.val_max_images,
    )
    run.last_val_map = result.map
    seconds = time.perf_counter() - started
    logs.val.write(
        {"iteration": done, "map": result.map, "metric": args.val_metric, "images": result.num_images}
        | {"seconds": round(seconds, 1)}
    )
    (output_dir / "val_ap.md").write_text(f"Iteration {done}\n\n{format_ap_table(result)}\n")
    tqdm.write(f"iteration {done}: {run.val_split.name} mAP {100 * result.map:.2f} % ({seconds:.0f} s)")
    if result.map > run.best_map:
        run.best_map = result.map
        card = model_card(args, run.class_names, run.train_split, run.val_split, done, result.map)
        save_checkpoint(output_dir / "best.pt", run.model_without_ddp, card)
    engine.plot_training_curves(
        output_dir / "train_log.csv", output_dir / "val_log.csv", output_dir / "training_curves.png"
    )


def _save_last(run: _Run, iteration: int, rng: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """``last.pt``: weights, card and the full training state, every rank's RNG states included.

    ``rng``: the states gathered by an earlier save of the same iteration (no collective call then). Returns the
    RNG states saved.
    """
    if rng is None:
        rng = gather_rng_states(run.context)
    if not run.context.is_main:
        return rng
    args = run.args
    state = {
        "iteration": iteration,
        "best_map": run.best_map,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "guard": run.guard.state_dict(),
        "rng": rng,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "train_folder"},
    }
    card = model_card(args, run.class_names, run.train_split, run.val_split, iteration, run.last_val_map)
    save_checkpoint(args.output_dir / "last.pt", run.model_without_ddp, card, extra={"training_state": state})
    return rng


def train_folders(args: argparse.Namespace) -> list[Path]:
    """The VOC-format folders the command line names (training and validation)."""
    return [*(args.train_folder or []), *([args.val_folder] if args.val_folder else [])]


def output_dir_problem(args: argparse.Namespace) -> str | None:
    """Why ``--output-dir`` cannot take this run (a file; a run's checkpoints, unless resumed or overwritten)."""
    out = args.output_dir
    if out.exists() and not out.is_dir():
        return f"--output-dir {out} is a file, not a folder"
    held = [name for name in ("last.pt", "best.pt") if (out / name).exists()]
    if held and args.resume is not None and args.resume.resolve().parent != out.resolve():
        # Continuing run A in run B's folder would replace B's last.pt and weigh A's validations against B's best.pt.
        return (
            f"--output-dir {out} holds another run ({', '.join(held)}) than --resume {args.resume}: "
            "give an empty --output-dir to continue that run there"
        )
    if not held or args.resume is not None or args.overwrite:
        return None
    way = f"continue it with --resume {out / 'last.pt'}" if "last.pt" in held else "give another --output-dir"
    return (
        f"--output-dir {out} already holds a run ({', '.join(held)}): {way}, "
        "or start over there with --overwrite (replaces its checkpoints and logs)"
    )


def resume_hint(args: argparse.Namespace) -> str:
    """Where a stopped run can be continued from: the newest checkpoint there is, or that there is none."""
    last = args.output_dir / "last.pt"
    if last.is_file():
        return f"resume with --resume {last}"
    if args.resume is not None:
        return f"no newer checkpoint was written: resume with --resume {args.resume}"
    return f"stopped before the first checkpoint ({last} not written): nothing to resume"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; exit status 0, 2 for usage and data errors, 1 for a failed run."""
    args = parse_args(argv)
    try:
        resolve_device(args.device)  # before any data is read: "cuda" on a machine without it, a typo
    except ValueError as error:
        print(f"error: --device: {error}", file=sys.stderr)
        return 2
    problem = output_dir_problem(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        summary = train(args)
    except (VocFormatError, ImageDecodeError, CheckpointError) as error:  # the data, classes or --resume checkpoint
        if isinstance(error, VocFormatError):
            hint = mixup_hint("--data-root", args.data_root, "--train-folder", train_folders(args))
        elif isinstance(error, ImageDecodeError):  # found while training or validating: what is kept of the run
            hint = f" (fix or remove the image; {resume_hint(args)})"
        else:
            hint = ""
        print(f"error: {data_error_message(error)}{hint}", file=sys.stderr)
        return 2
    except BatchSizeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except engine.NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except WeightsUnavailableError as error:
        print(f"error: {error} Or train from scratch with --no-pretrained.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if is_main_process():
            print(f"interrupted: {resume_hint(args)}", file=sys.stderr)
        return 130
    if not is_main_process():  # under torchrun: rank 0 reports
        return 0
    if summary["best_map"] is not None:
        print(f"best validation mAP {100 * summary['best_map']:.2f} %; checkpoints in {summary['output_dir']}")
    else:
        print(f"done; checkpoints in {summary['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
