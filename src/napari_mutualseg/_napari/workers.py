"""What runs in the worker threads: the engine's rounds and prediction, with their layer data.

The generators here run off the main thread and touch no Qt object and no layer: they drive
the core and lay its results out as the arrays the layers will show, so that the main thread
only swaps them in. Failures come back as values (:class:`WorkerFailure`), never as raised
exceptions.
"""

from __future__ import annotations

import gc
import re
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..blockwise import AUTO_BLOCKWISE_PIXELS
from ..disagreement import Spot
from ..image_task import measure_image
from ..images import AxisImage
from ..linking import link_labels
from ..measure import (
    Table,
    join_frames,
    measure_cells,
    with_frame_interval,
    with_pixel_size,
)
from ..preprocess import read_here
from ..supervision import IGNORE
from .axes import LayerAxes

if TYPE_CHECKING:
    from ..batch import BatchRun
    from ..jobs import ImageResult
    from ..models import ModelPair
    from ..training import RoundReport

#: Result layers of a training round: role -> (report attribute, layer kind). Kinds:
#: "labels" (instances), "classes" (a class map), "image" (a map of values in [0, 1]).
RESULT_LAYERS = {
    "cells": ("instances", "labels"),
    "disagreement": ("disagreement", "image"),
    "model A": ("classes_a", "classes"),
    "model B": ("classes_b", "classes"),
    "A learns from": ("labels_a", "classes"),
    "B learns from": ("labels_b", "classes"),
}
#: The roles shown only when the user asks what the networks learn from.
LEARNING_ROLES = ("A learns from", "B learns from")
#: Roles with a layer per training image; the others show the first training image.
PER_IMAGE = ("cells", "disagreement")
#: Longest wait of the training thread for the viewer to show a round.
SHOW_WAIT_S = 1.0


class WorkerFailure:
    """An exception raised in a worker, handed back as the worker's return value.

    Workers never raise: superqt treats a ``RuntimeError`` escaping a generator worker (CUDA
    out of memory and NaN losses are ``RuntimeError`` subclasses) as "the worker was deleted"
    and drops it without a signal, and napari 0.9's task-status slot for ``errored`` takes the
    wrong number of arguments. A returned failure reaches the main thread reliably.
    """

    def __init__(self, original: BaseException) -> None:
        self.original = original

    def __repr__(self) -> str:
        return f"WorkerFailure({self.original!r})"


@dataclass
class Layout:
    """Where per-plane results go in an array shaped like the image layer's data (without
    its channels)."""

    shape: tuple[int, ...]
    planes: list[int] | None  # counted over time and z, or None for one plane
    axes: LayerAxes | None = None  # None: a 2D image of one channel

    @property
    def count(self) -> int:
        """Planes trained (entries of a report's lists)."""
        return 1 if self.planes is None else len(self.planes)

    def place(self, arrays: list[np.ndarray], fill: int) -> np.ndarray:
        """One array for the layer: ``arrays`` on their planes, ``fill`` elsewhere."""
        if self.planes is None:
            return arrays[0]
        # zeros are left to the system to supply: a stack's untrained planes cost nothing
        # until they are shown
        dtype = arrays[0].dtype
        out = np.zeros(self.shape, dtype) if fill == 0 else np.full(self.shape, fill, dtype)
        flat = out.reshape((-1, *self.shape[-2:]))
        for p, array in zip(self.planes, arrays, strict=True):
            flat[p] = array
        return out


@dataclass
class RoundUpdate:
    """A round's report and the layer data made from it: (role, training image, array), and
    the measurements of each training image's cells."""

    report: RoundReport
    layers: list[tuple[str, int, np.ndarray]] = field(default_factory=list)
    tables: dict[int, Table] = field(default_factory=dict)


class TrainingJob:
    """What the main thread and the training thread share: the trainer and a cancel flag.

    Parameters
    ----------
    make_trainer : callable
        Builds the :class:`~napari_mutualseg.training.MutualTrainer` (in the worker thread).
    layouts : list of Layout
        Where each training image's results go (its planes are consecutive in a report).
    images : list of array_like
        Each training image's pixels, to measure its cells in.
    show_learning : bool
        Also make the layers of what A and B learn from (the main thread may change it).
    """

    def __init__(
        self,
        make_trainer: Callable[[], Any],
        layouts: list[Layout],
        images: list[Any],
        show_learning: bool = False,
    ) -> None:
        self.make_trainer = make_trainer
        self.layouts = layouts
        self.images = images
        self.show_learning = show_learning
        self.trainer: Any = None
        self.device_name: str = ""
        self.last_good: ModelPair | None = None
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self.shown = threading.Event()  # the main thread has drawn the last round

    def cancel(self) -> None:
        """Ask the trainer to stop before its next step (thread-safe)."""
        self.cancelled.set()
        trainer = self.trainer
        if trainer is not None:
            trainer.cancel()

    def progress(self) -> tuple[int, int]:
        """Steps done and planned (both networks together)."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        return int(trainer.step), int(trainer.total_steps)

    def update(self, report: RoundReport) -> RoundUpdate:
        """The layer data of one round, laid out like each training image."""
        update = RoundUpdate(report)
        start = 0
        for part, layout in enumerate(self.layouts):
            for role, (attribute, kind) in RESULT_LAYERS.items():
                if (role in LEARNING_ROLES and not self.show_learning) or (
                    part and role not in PER_IMAGE
                ):
                    continue
                arrays = getattr(report, attribute)[start : start + layout.count]
                if kind == "labels":
                    arrays = small_labels(distinct_cells(arrays))
                fill = IGNORE if kind == "classes" else 0
                update.layers.append((role, part, layout.place(arrays, fill)))
                if role == "cells":
                    update.tables[part] = measure_planes(arrays, self.images[part], layout)
            start += layout.count
        return update


def measure_planes(planes: list[np.ndarray], data: Any, layout: Layout) -> Table:
    """The cells of a training image's trained planes, as :func:`measure` measures them laid
    out on the whole image (no cells elsewhere), reading only those planes of ``data``.

    Each round measures its cells: measured on the whole image, a lazy stack of many planes
    was read whole every round, however few of its planes were trained.

    Parameters
    ----------
    planes : list of numpy.ndarray
        The cells of each trained plane, numbered across planes (:func:`distinct_cells`), in
        the order of ``layout.planes``.
    data : array_like
        The image layer's pixels (numpy or dask).
    layout : Layout
        Where the planes lie in the image.

    Returns
    -------
    Table
        The rows of the cells, in label order; a stack's z and time columns are those of the
        whole image.
    """
    axes = layout.axes
    if layout.planes is None or axes is None or not axes.stacked:
        return measure(layout.place(planes, 0), data, axes)
    frames: dict[int | None, list[tuple[int, int, np.ndarray]]] = {}  # (z, plane, cells)
    for p, cells in zip(layout.planes, planes, strict=True):
        where = np.unravel_index(p, axes.label_shape[:-2])
        position = dict(zip(axes.plane_axes, where, strict=True))
        frames.setdefault(position.get("T"), []).append((int(position.get("Z", 0)), p, cells))
    in_z = "Z" in axes.plane_axes  # a stack's cells are 3D: measured on a stack of its planes
    tables = []
    for t, members in sorted(frames.items(), key=lambda item: item[0] or 0):
        members.sort(key=lambda member: member[0])
        images = [axes.plane(data, p) for _, p, _ in members]  # (C)YX each, colours first
        image, labels = images[0], members[0][2]
        if in_z:
            colours = "C" in image.axes
            pixels = np.stack([read_here(im.data) for im in images], axis=int(colours))
            image = replace(image, data=pixels, axes="C" * colours + "ZYX")
            labels = np.stack([cells for _, _, cells in members])
        table = measure_image(labels, image, None)
        if in_z:  # each cell lies on one plane: the k-th measured is the image's z-plane z[k]
            z = np.array([member[0] for member in members])[table["bbox_z0_px"]]
            table["centroid_z_px"] = z.astype(table["centroid_z_px"].dtype)
            table["bbox_z0_px"], table["bbox_z1_px"] = z, z + 1
        tables.append((t, table))
    return in_units(join_frames(tables), axes)


def distinct_cells(planes: list[np.ndarray]) -> list[np.ndarray]:
    """The cells of a stack's trained planes, each plane's numbered on from the plane before.

    The trainer numbers every plane's cells from 1: laid out on the stack as they are, a cell
    of one trained plane and a cell of another would be one object (one colour, one row of
    the table, its centre on a plane between them).
    """
    if len(planes) < 2:
        return planes
    out, offset = [], 0
    for labels in planes:
        numbered = labels.astype(np.int64)
        numbered[numbered > 0] += offset
        out.append(numbered)
        offset = max(offset, int(numbered.max(initial=0)))
    return out


def small_labels(planes: list[np.ndarray]) -> list[np.ndarray]:
    """The labels of a layer's planes as uint16 when they all fit: napari shows uint8 and
    uint16 labels as they are, but recasts wider ones for its texture on the main thread at
    every write (at 2048², 130-200 ms against 30). Cast plane by plane, before they are laid
    out on a stack, so that a stack's untrained planes are neither cast nor searched."""
    if max(int(labels.max(initial=0)) for labels in planes) >= np.iinfo(np.uint16).max:
        return planes
    return [labels.astype(np.uint16) for labels in planes]


def run_training(job: TrainingJob) -> Generator[RoundUpdate, None, WorkerFailure | None]:
    """The worker: one :class:`RoundUpdate` per round, the failure (if any) as return value."""
    try:
        trainer = job.make_trainer()
        job.device_name = getattr(trainer, "device_name", str(trainer.device))
        job.trainer = trainer
        if job.cancelled.is_set():
            trainer.cancel()
        for report in trainer:
            # The trainer is paused at its own yield: the copy is consistent.
            job.last_good = trainer.pair.copy()
            job.shown.clear()
            yield job.update(report)
            # The next round waits (at most a second) while the viewer draws this one: a
            # redraw that competes with training for the CPU takes several times as long.
            job.shown.wait(SHOW_WAIT_S)
    except Exception as exc:
        return WorkerFailure(exc)
    finally:
        job.trainer = None
        release_device_memory()
        job.done.set()
    return None


@dataclass
class PredictionResult:
    """A prediction laid out like the image: cells, disagreement and the spots to check."""

    labels: np.ndarray
    disagreement: np.ndarray
    spots: list[tuple[int | None, Spot]]  # (plane of a stack or None, spot)
    table: Table = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # for the user, e.g. planes left empty


def run_prediction(
    pair: ModelPair,
    data: Any,
    axes: LayerAxes,
    tile_size: int,
    name: str,
    track: bool = False,
    stop: threading.Event | None = None,
) -> Generator[tuple[int, int], None, PredictionResult | WorkerFailure | None]:
    """The worker: segment every plane of an image layer's data (read one plane at a time, with
    the channels the networks take, each normalised with the whole image's percentiles as
    :meth:`~napari_mutualseg.models.ModelPair.segment` does), a time series' cells tracked
    with ``track``; yields (done, total). ``stop`` ends it before the next plane, with
    ``None``."""
    try:
        axes = replace(axes, name=name)  # the messages call the planes after the layer
        shape, n = axes.label_shape, axes.n_planes
        result = PredictionResult(np.zeros(shape, np.int32), np.zeros(shape, np.float16), [])
        disagreement = result.disagreement.reshape((-1, *shape[-2:]))
        # with its pixel size: the pair warns when it was trained on other pixels
        image = axes.image(data)
        # a plane larger than 4096² (a slide scan) goes block by block, read a block at a
        # time, without disagreement
        planes = pair.predict_planes(image, tile_size=tile_size, out=result.labels)
        taken: AxisImage | None = None  # the networks' channels, for planes without cells
        offset = 0
        blank: list[int] = []  # constant planes of a stack, left without cells
        for p in range(n):
            yield p, n
            if stop is not None and stop.is_set():
                return None
            prediction = next(planes)
            found = prediction.labels  # the plane of result.labels
            if not found.any() and axes.stacked:
                # chosen once, not for each plane: its warnings are those predict_planes
                # gave, in the same words, which the panel says once
                taken = taken if taken is not None else pair.network_input(image)
                if _constant(taken.plane_array(p)):
                    # a blank plane (padding, a frame the microscope skipped) has nothing to
                    # segment; it must not cost the whole stack
                    blank.append(p)
                    continue
            if prediction.disagreement is not None:
                disagreement[p] = prediction.disagreement
            if offset:  # distinct ids across planes: each cell of a stack has its own colour
                found[found > 0] += offset
            plane = p if axes.stacked else None
            result.spots += [
                (plane, replace(s, label=s.label + offset if s.label else 0))
                for s in prediction.spots
            ]
            offset = max(offset, int(found.max()))
        for _ in planes:  # none left: the core then warns of the whole image (cells cut off)
            pass
        if len(blank) == n > 1:
            raise ValueError(
                f"Every plane of '{name}' is constant (every pixel the same): there is nothing "
                "to segment. Check that the right image was picked."
            )
        result.spots.sort(key=lambda ps: -ps[1].score)
        if blank:
            result.notes.append(_blank_note(name, axes, blank))
        tracked = track and "T" in axes.plane_axes
        if "Z" in axes.plane_axes or tracked:  # a stack's planes are one 3D image: 3D cells
            result = _linked(result, axes, tracked)
        result.table = measure(result.labels, data, axes)
        # measured as found; shown as uint16 where the ids fit, which napari draws as it is
        # (an int32 layer of 4096² took the main thread 1.4 s to add, recast for its texture)
        (labels,) = small_labels([result.labels])
        return replace(result, labels=labels)
    except Exception as exc:
        return WorkerFailure(exc)
    finally:
        release_device_memory()


def _constant(plane: Any) -> bool:
    """Whether a channel of a ``(C, Y, X)`` plane has one value only."""
    low = read_here(plane.min(axis=(-2, -1)))  # a dask plane is read here, chunk by chunk
    high = read_here(plane.max(axis=(-2, -1)))
    return bool(np.any(low == high))  # NaN is never equal: that error is not this one


def _blank_note(name: str, axes: LayerAxes, blank: list[int]) -> str:
    """What the user is told about the constant planes of a stack left without cells."""
    shown = [axes.where(p) for p in blank[:5]]
    more = f" and {len(blank) - 5} more" if len(blank) > 5 else ""
    return (
        f"'{name}': {', '.join(shown)}{more} {'is' if len(blank) == 1 else 'are'} constant "
        "(every pixel the same, e.g. blank padding): nothing to segment there, so "
        f"{'it has' if len(blank) == 1 else 'they have'} no cells."
    )


def run_batch(
    make_run: Callable[[], BatchRun], stop: threading.Event
) -> Generator[tuple[BatchRun, ImageResult | None], None, BatchRun | WorkerFailure]:
    """The worker: a folder batch (:mod:`napari_mutualseg.batch`) in this process; yields
    (run, None) once the images are found, then (run, result) per image. ``stop`` ends it
    between images; the images finished are kept."""
    try:
        run = make_run()
        yield run, None
        for result in run:
            if stop.is_set():
                run.cancel()
            yield run, result
        return run
    except Exception as exc:
        return WorkerFailure(exc)
    finally:
        release_device_memory()


def measure(labels: np.ndarray, data: Any, axes: LayerAxes | None = None) -> Table:
    """The cells' measurements in the image's intensities, every channel, a time series frame
    by frame (:func:`napari_mutualseg.image_task.measure_image`), and in physical units where
    the image's pixel size is known. A plane larger than 4096² (a slide scan) gets shapes and
    positions only: its pixels are not read again."""
    if axes is None:
        axes = LayerAxes("YX", tuple(labels.shape))
    if labels.ndim == 2 and labels.size > AUTO_BLOCKWISE_PIXELS:
        table = measure_cells(labels)
    else:
        table = measure_image(labels, axes.image(data), None)
    return in_units(table, axes)


def in_units(table: Table, axes: LayerAxes) -> Table:
    """A cell table in the image's physical units too, where they are known: sizes and
    positions in its length unit, a time series' frames in seconds (``time_s``)."""
    if axes.pixel_size is not None:
        table = with_pixel_size(table, *axes.pixel_size)
    if axes.frame_interval is not None and "t" in table:
        table = with_frame_interval(table, axes.frame_interval)
    return table


def _linked(result: PredictionResult, axes: LayerAxes, track: bool = False) -> PredictionResult:
    """The planes' cells linked into 3D objects (per time point) and, with ``track``, from
    frame to frame; the spots relabelled."""
    linked = link_labels(result.labels, axes.label_axes, track=track)
    new = np.zeros(int(result.labels.max()) + 1, linked.dtype)
    new[result.labels.ravel()] = linked.ravel()  # each plane's cell is in one linked cell
    spots = [(p, replace(s, label=int(new[s.label]) if s.label else 0)) for p, s in result.spots]
    return replace(result, labels=linked, spots=spots)


def release_device_memory() -> None:
    """Give cached GPU memory back (else it stays reserved until napari closes)."""
    try:
        from ..devices import release_cached_memory

        release_cached_memory()
    except Exception:  # freeing memory must never raise
        pass


_gc_frozen = 0


def freeze_gc() -> None:
    """Keep the objects that exist now out of Python's full garbage collections.

    A full collection scans every object of napari, Qt and torch (0.2-0.3 s) while holding
    the GIL; triggered in the worker thread, it freezes the viewer. Objects made during the
    job are still collected; everything is scanned again after :func:`unfreeze_gc`.
    """
    global _gc_frozen
    if _gc_frozen == 0:
        gc.freeze()
    _gc_frozen += 1


def unfreeze_gc() -> None:
    """Undo one :func:`freeze_gc`."""
    global _gc_frozen
    if _gc_frozen > 0:
        _gc_frozen -= 1
        if _gc_frozen == 0:
            gc.unfreeze()


def describe_error(exc: BaseException, device: str = "") -> str:
    """A user-facing message with advice for an exception raised while training or predicting."""
    original = getattr(exc, "original", exc)
    text = str(original)
    where = f" on {device}" if device else ""
    # also a TrainingError that says so (stepping.guard_memory's), which the core's
    # out_of_memory leaves out
    oom = type(original).__name__ == "OutOfMemoryError" or "out of memory" in text.lower()
    if oom:
        return (
            f"Out of memory{where}. Lower 'patch size' or 'batch size' (Advanced) or the tile "
            "size, close other programs using the GPU, or choose device 'cpu'. The models of the "
            "last completed round are kept."
        )
    if "nan" in text.lower() and type(original).__name__ == "TrainingError":
        return f"{text} The models of the last completed round are kept."
    if isinstance(original, (ValueError, OSError)):
        return in_panel_words(text)
    return f"Failed{where}: {type(original).__name__}: {text}"


#: The core's advice names command-line options and Python arguments; in the panel the same
#: choices are settings, and a model takes the channels it was trained on (Predict has no
#: channel choice of its own). Pairs of (pattern, the panel's words).
_PANEL_ADVICE = (
    (
        r"(gives the networks \d+ channels? but they were trained on [^:]+): .*",
        r"\1. Segment images with those channels, or train models for this kind of image: "
        "press 'Reset models', give them the channels you want with the Channels setting (or "
        "'RGB images as' gray, under Advanced, for an RGB image) and press Train.",
    ),
    (r"\(--channel, or channels= in Python\)", "(the Channels setting)"),
    # channels named otherwise than in training: Predict takes the networks' own
    (
        r"pick the channels with --channel \(channels= in Python\)",
        "segment images of the channels they were trained on, or train models for this kind "
        "of image (press 'Reset models', set Channels and press Train)",
    ),
    (r"\(--channel on the command line, channels= in Python\)", "(the Channels setting)"),
    # pixels to replace: with Fiji, for a person at the panel
    (r"; in Python, numpy\.nan_to_num\(image\)", ""),
    # an image's result made meanwhile by another program: the panel asks on the next run
    (r"segment again with overwrite", "segment the folder again and answer Replace"),
)


def in_panel_words(text: str) -> str:
    """A core message with its command-line advice said as the panel's settings."""
    for pattern, words in _PANEL_ADVICE:
        text = re.sub(pattern, words, text, flags=re.DOTALL)
    return text
