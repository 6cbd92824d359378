"""A :class:`~ssd_ros.vision.detector.Detector` over every image of a VOC split: evaluate.py's and train.py's loop.

Images are decoded in a small thread pool (OpenCV releases the GIL) while the model runs, at most a few
batches ahead, so memory stays bounded on VOC2007 test (4952 images).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ssd_ros.evaluation.voc import VocItem
from ssd_ros.vision.detections import Detections
from ssd_ros.vision.image_codec import read_image_file

__all__ = ["detect_split"]


def detect_split(
    detector,
    items: Sequence[VocItem],
    *,
    batch_size: int = 8,
    workers: int = 2,
    progress: bool = True,
    load: Callable[[VocItem], np.ndarray] | None = None,
) -> list[Detections]:
    """Run ``detector`` (a :class:`~ssd_ros.vision.detector.Detector`) on every item's image, in order.

    Images are decoded by ``load`` (default: :func:`~ssd_ros.vision.image_codec.read_image_file` of the image) in a
    small thread pool (OpenCV releases the GIL) while the model runs.
    """
    if load is None:
        load = _load_item
    from tqdm import tqdm

    detections: list[Detections] = []
    batch: list[np.ndarray] = []
    with tqdm(total=len(items), unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for image in _prefetched_images(items, load, workers, depth=2 * batch_size + workers):
            batch.append(image)
            if len(batch) == batch_size:
                detections += detector.detect_batch(batch)
                bar.update(len(batch))
                batch = []
        if batch:
            detections += detector.detect_batch(batch)
            bar.update(len(batch))
    return detections


def _prefetched_images(
    items: Sequence[VocItem], load: Callable[[VocItem], np.ndarray], workers: int, depth: int
) -> Iterator[np.ndarray]:
    """Images of ``items`` in order, decoded by ``workers`` threads at most ``depth`` ahead (bounded memory)."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="load") as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(load, item))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _load_item(item: VocItem) -> np.ndarray:
    return read_image_file(item.image_path)
