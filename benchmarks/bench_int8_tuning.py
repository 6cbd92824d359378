"""Quantisation-aware bias tuning of an int8 SSDlite: the lever post-training schemes lack? Measured: no.

Post-training int8 keeps 92-98% of an SSDlite's fp32 detections; no single layer carries the error (see
``INT8_SCHEMES`` in ``ssd_ros/vision/export.py``). Tuning the convolutions' biases against fp32's outputs, with the
int8 arithmetic simulated in torch, is the lever the quantisers lack. This measures it, in the simulation itself
(what the tuning optimises), so no export scheme is built on it unless it pays:

* the simulation reproduces the export's "conv inputs, squeeze-excitation fp32" QDQ file: BatchNorm folded,
  weights symmetric int8 per output channel, each convolution's input one uint8 range (the calibration's min and
  max), biases int32, and a tensor quantised for every module that reads it (an inverted residual block adds its
  quantised input back, as the file does). The table's first two rows compare them; compared layer by layer while
  this was written, they were bit-identical through the first six convolutions; after that, sums that land on a
  rounding boundary round one way in torch and the other in ONNX Runtime, and such flips multiply with depth, so
  the two end as two draws of the same noise;
* the biases are tuned with Adam on the calibration frames, against fp32's class logits and box regressions
  (``logits``) or its class scores (``scores``);
* each configuration's detections are compared with torch fp32's (same class, IoU >= 0.5) on the held-out
  labelled frames and the lane footage, at the live threshold (0.3) and at 0.1 (many more pairs: a finer
  measure), beside the export's own int8 file in exact arithmetic.

Results: stdout and ``docs/benchmarks/int8_tuning.md``.

    # the SSDlite bench_inference.py trained (make bench runs it first), or any SSDlite checkpoints
    scripts/run.sh python benchmarks/bench_int8_tuning.py [--checkpoints a.pt] [--steps 200] [--lr 0.001]
"""

from __future__ import annotations

import copy
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_detector import write_report
from bench_inference import CALIBRATION, CALIBRATION_FRAMES, LANE_VIDEO, TEST_FRAMES, shown, split_frames
from bench_int8_weights import MODELS, checkpoint_parser, parsed
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ssd_ros.vision.backends import SSDNetwork

THRESHOLDS = (0.3, 0.1)  # the live threshold, and a lower one with many more pairs to compare
UNTUNED_SCHEME = "conv inputs, squeeze-excitation fp32"  # the export's scheme the simulation reproduces


_UINT8 = (0, 255)  # ONNX Runtime's activations: asymmetric uint8
_WEIGHTS = (-127, 127)  # its int8 weights: symmetric


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval copy of ``model`` with each BatchNorm2d that follows a Conv2d in a Sequential folded into it.

    As the ONNX exporter folds it: the int8 file quantises the folded weights. Every convolution gets a bias (a
    zero one where it had none) to tune. Raises ValueError for a BatchNorm that does not follow a convolution.
    """
    folded = copy.deepcopy(model).eval()
    for sequential in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        names = list(sequential._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = sequential._modules[first], sequential._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                sequential._modules[first] = fuse_conv_bn_eval(conv, norm)
                sequential._modules[second] = nn.Identity()
    left = [name for name, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if left:
        raise ValueError(f"BatchNorm layers that do not follow a convolution cannot be folded: {left[:3]}")
    for conv in folded.modules():
        if isinstance(conv, nn.Conv2d) and conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels))
    return folded


class _Int8Conv(nn.Module):
    """A convolution as the int8 file computes it: fake-quantised input, weights and bias (straight-through)."""

    def __init__(self, conv: nn.Conv2d, input_range: tuple[float, float]):
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError(f"cannot simulate a convolution with {conv.padding_mode!r} padding in int8")
        self.conv = conv
        low, high = input_range
        scale = (high - low) / (_UINT8[1] - _UINT8[0]) or 1.0  # ONNX Runtime's scale for an empty range
        self.input_scale, self.input_zero_point = scale, int(round(_UINT8[0] - low / scale))
        qmin, qmax = _WEIGHTS
        absmax = conv.weight.detach().abs().flatten(1).amax(dim=1)
        weight_scale = torch.where(absmax > 0, 2 * absmax / (qmax - qmin), torch.ones_like(absmax))
        zero = torch.zeros(conv.out_channels, dtype=torch.int32)
        self.register_buffer(
            "weight", torch.fake_quantize_per_channel_affine(conv.weight.detach(), weight_scale, zero, 0, qmin, qmax)
        )
        self.register_buffer("bias_scale", weight_scale * scale)
        self.bias = nn.Parameter(conv.bias.detach().clone())

    def quantise_input(self, _module: nn.Module, args: tuple) -> tuple:
        """A forward pre-hook for another module reading this convolution's input: the same quantised tensor."""
        return (self._quantised(args[0]), *args[1:])

    def _quantised(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(x, self.input_scale, self.input_zero_point, *_UINT8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._quantised(x)
        rounded = torch.round(self.bias / self.bias_scale) * self.bias_scale
        bias = self.bias + (rounded - self.bias).detach()  # int32 bias, straight-through
        conv = self.conv
        return F.conv2d(x, self.weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _run_hooked(network: nn.Module, modules: Sequence[nn.Module], hook: Callable, batches: Sequence[torch.Tensor]):
    """Run ``network`` on ``batches`` with ``hook`` a forward pre-hook of ``modules`` (removed after)."""
    hooks = [module.register_forward_pre_hook(hook) for module in modules]
    try:
        with torch.no_grad():
            for batch in batches:
                network(batch)
    finally:
        for handle in hooks:
            handle.remove()


def _called_convolutions(network: nn.Module, batch: torch.Tensor) -> list[nn.Conv2d]:
    """The network's Conv2d modules in the order one forward pass calls them."""
    called: list[nn.Conv2d] = []
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    _run_hooked(network, convs, lambda module, _: called.append(module), [batch])
    return list(dict.fromkeys(called))


def _sharing_modules(network: nn.Module, convs: list[nn.Conv2d], batch: torch.Tensor) -> dict[nn.Module, nn.Conv2d]:
    """The other modules whose input is the very tensor a quantised convolution takes, and that convolution.

    The QDQ file quantises a tensor for every node that reads it, not only for the convolution: an inverted
    residual block adds its quantised input back to its output. Quantising such a module's input as the
    convolution's reproduces that.
    """
    # The tensors are held, so their ids stay unique; the version tells a tensor before an in-place activation
    # (which returns the same tensor object) from after it.
    seen: list[tuple[nn.Module, torch.Tensor, tuple[int, int]]] = []

    def record(module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor):
            seen.append((module, args[0], (id(args[0]), args[0]._version)))

    _run_hooked(network, list(network.modules()), record, [batch])
    quantised = set(convs)
    taken_by = {key: module for module, _, key in seen if module in quantised}
    return {module: taken_by[key] for module, _, key in seen if module not in quantised and key in taken_by}


def _input_ranges(network: nn.Module, convs: list[nn.Conv2d], batches: list[torch.Tensor]) -> dict:
    """Min and max (zero included) of each convolution's input over ``batches``: ONNX Runtime's MinMax."""
    ranges = {conv: (0.0, 0.0) for conv in convs}

    def record(module: nn.Module, inputs: tuple) -> None:
        low, high = ranges[module]
        ranges[module] = (min(low, float(inputs[0].min())), max(high, float(inputs[0].max())))

    _run_hooked(network, convs, record, batches)
    return ranges


def _replace(root: nn.Module, replacements: dict[nn.Module, nn.Module]) -> None:
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if child in replacements:
                setattr(parent, name, replacements[child])


def _distance(outputs: tuple, targets: tuple, loss: str) -> torch.Tensor:
    """The tuning's loss against fp32: ``logits`` or ``scores`` (softmax, background left out), plus regressions.

    Mean squared errors; the scores' x100, to weigh about as the logits' do.
    """
    (regression, logits), (target_regression, target_logits) = outputs, targets
    if loss == "scores":
        scores, target_scores = (torch.softmax(x, dim=-1)[..., 1:] for x in (logits, target_logits))
        return 100 * F.mse_loss(scores, target_scores) + F.mse_loss(regression, target_regression)
    return F.mse_loss(logits, target_logits) + F.mse_loss(regression, target_regression)


def int8_simulation(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    *,
    keep_fp32: Callable[[str], bool],
    loss: str = "logits",
    steps: int = 0,
    lr: float = 1e-3,
) -> tuple[SSDNetwork, tuple[float, float]]:
    """``model``'s int8 arithmetic in torch, its biases tuned ``steps`` Adam steps; and the loss before and after.

    ``batches``: normalised image batches, the int8 calibration frames (ranges and tuning). ``keep_fp32(name)``:
    the convolutions (by module name) the file leaves fp32. One batch per step, in turn. ``model`` is not changed.
    """
    from tqdm import tqdm

    folded = fold_batchnorm(model.cpu())
    teacher = SSDNetwork(folded).eval()
    names = {module: name for name, module in teacher.named_modules()}
    convs = [c for c in _called_convolutions(teacher, batches[0]) if not keep_fp32(names[c])]
    ranges = _input_ranges(teacher, convs, list(batches))
    with torch.no_grad():
        targets = [teacher(batch) for batch in batches]

    student = copy.deepcopy(teacher)
    student_modules = dict(student.named_modules())
    quantised = {c: _Int8Conv(student_modules[names[c]], ranges[c]) for c in convs}
    for module, conv in _sharing_modules(teacher, convs, batches[0]).items():
        student_modules[names[module]].register_forward_pre_hook(quantised[conv].quantise_input)
    _replace(student, {student_modules[names[c]]: q for c, q in quantised.items()})
    student.requires_grad_(False)
    biases = [q.bias for q in quantised.values()]
    for bias in biases:
        bias.requires_grad_(True)
    optimiser = torch.optim.Adam(biases, lr=lr)

    def mean_loss() -> float:
        with torch.no_grad():
            return sum(float(_distance(student(b), t, loss)) for b, t in zip(batches, targets)) / len(batches)

    before = mean_loss()
    for step in tqdm(range(steps), desc=f"bias tuning ({loss})", unit="step", leave=False):
        optimiser.zero_grad()
        i = step % len(batches)
        _distance(student(batches[i]), targets[i], loss).backward()
        optimiser.step()
    return student.eval(), (before, mean_loss())


def parse_args():
    """Command line: ``--checkpoints`` (SSDlite), ``--steps``, ``--lr``, ``--out``."""
    parser = checkpoint_parser(__doc__, "int8_tuning.md")
    parser.set_defaults(checkpoints=sorted(MODELS.glob("ssdlite*/last.pt")))
    parser.add_argument("--steps", type=int, default=200, help="Adam steps per tuning (default 200)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default 0.001)")
    return parsed(parser)


def main() -> int:
    from ssd_ros.evaluation.voc import VocSplit
    from ssd_ros.tools.make_bag import video_frames
    from ssd_ros.vision.backends import cpu_summary
    from ssd_ros.vision.image_codec import read_image_file

    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench_int8_tuning_"))
    calibration = sorted(CALIBRATION.glob("*.jpg"))[CALIBRATION_FRAMES]
    _, held_out = split_frames(CALIBRATION, calibration, TEST_FRAMES, workdir)
    frames = {
        "labelled": [read_image_file(item.image_path) for item in VocSplit.from_folder(held_out)],
        "footage": list(video_frames(LANE_VIDEO)[0]),
        "calibration": [read_image_file(path) for path in calibration],
    }
    summary = cpu_summary()
    lines = [
        "# Quantisation-aware bias tuning of an int8 SSDlite, in its torch simulation",
        "",
        f"- CPU: {summary['model']}, {summary['cores']} cores; torch {torch.__version__}, Python "
        f"{platform.python_version()}; int8 ranges from, and tuning on, {len(calibration)} rover frames; "
        f"{len(frames['labelled'])} held-out labelled frames, {len(frames['footage'])} frames of "
        f"`{shown(LANE_VIDEO)}`",
        f"- {args.steps} Adam steps at lr {args.lr:g}, 8 frames per step",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M')}; command: `scripts/run.sh python benchmarks/"
        f"{Path(__file__).name} {' '.join(sys.argv[1:])}`",
        "",
    ]
    for checkpoint in args.checkpoints:
        lines += checkpoint_section(checkpoint, frames, args.steps, args.lr, workdir)
    write_report([*lines, ""], args.out)
    return 0


def checkpoint_section(checkpoint: Path, frames: dict, steps: int, lr: float, workdir: Path) -> list[str]:
    """The table for one checkpoint: the export's file and each simulation against torch fp32."""
    from ssd_ros.evaluation.voc_metric import matched_fraction
    from ssd_ros.vision.backends import OnnxRuntimeNetwork
    from ssd_ros.vision.checkpoint import load_checkpoint
    from ssd_ros.vision.detector import Detector
    from ssd_ros.vision.export import export_onnx_bytes, network_spec, quantize_int8
    from ssd_ros.vision.inference import preprocess

    model, card = load_checkpoint(checkpoint)
    fp32 = export_onnx_bytes(model, card)
    spec = network_spec(fp32)
    images = frames["calibration"]
    batches = [torch.from_numpy(preprocess(images[i : i + 8], spec)) for i in range(0, len(images), 8)]

    def detector(threshold: float, network=None) -> Detector:
        if network is None:  # torch fp32
            return Detector.from_checkpoint(checkpoint, device="cpu", warmup_runs=0, score_threshold=threshold)
        return Detector(network, card.class_names, card=card, label_map=card.label_map, warmup_runs=0,
                        score_threshold=threshold)  # fmt: skip

    def detections(make: Callable[[float], Detector]) -> dict:
        runs = {}
        for threshold in THRESHOLDS:
            run = make(threshold)
            runs[threshold] = (run.detect_batch(frames["labelled"]), [run(frame) for frame in frames["footage"]])
        return runs

    def simulated(network: SSDNetwork) -> Callable[[float], Detector]:
        def make(threshold: float) -> Detector:
            run = detector(threshold)
            run.network.network = network  # the torch backend's SSDNetwork, swapped for the simulation
            return run

        return make

    excitation = lambda name: name.rsplit(".", 1)[-1] in ("fc1", "fc2")  # noqa: E731 - torchvision's SE convs
    file = workdir / f"{checkpoint.parent.name}_int8.onnx"
    file.write_bytes(quantize_int8(fp32, images, schemes=[UNTUNED_SCHEME], progress=False))
    reference = detections(detector)
    configurations = {
        f"the export's file ('{UNTUNED_SCHEME}'), exact int8 arithmetic": (
            detections(lambda t: detector(t, OnnxRuntimeNetwork(file, spec, precision="int8", optimize=False)))
        )
    }
    for loss, tuning in (("logits", 0), ("logits", steps), ("scores", steps)):
        started = time.perf_counter()
        network, losses = int8_simulation(model, batches, keep_fp32=excitation, loss=loss, steps=tuning, lr=lr)
        name = "simulation, biases as they are" if tuning == 0 else f"simulation, biases tuned on {loss}"
        name += f" (loss {losses[0]:.5f} -> {losses[1]:.5f}, {time.perf_counter() - started:.0f} s)"
        configurations[name] = detections(simulated(network))
    counts = {t: (sum(map(len, reference[t][0])), sum(map(len, reference[t][1]))) for t in THRESHOLDS}
    lines = [
        f"## {card.architecture} (`{shown(checkpoint)}`)",
        "",
        "torch fp32's detections: "
        + "; ".join(
            f"score > {t}: {counts[t][0]} on the labelled frames, {counts[t][1]} on the footage" for t in THRESHOLDS
        )
        + ". Share of them kept (same class, IoU >= 0.5):",
        "",
        "| configuration | " + " | ".join(f"labelled, > {t} | footage, > {t}" for t in THRESHOLDS) + " |",
        "|---|" + "---:|" * (2 * len(THRESHOLDS)),
    ]
    for name, runs in configurations.items():
        cells = [
            f"{matched_fraction(reference[t][0], runs[t][0]):.1%} | {matched_fraction(reference[t][1], runs[t][1]):.1%}"
            for t in THRESHOLDS
        ]
        lines.append(f"| {name} | {' | '.join(cells)} |")
        print(lines[-1], flush=True)
    return [*lines, ""]


if __name__ == "__main__":
    sys.exit(main())
