"""One image of a batch run: read, segment, write the labels, measure, write the table.

:func:`process_image` never raises for a problem with the image: the failure is its result,
so that a run goes on with the other images (a full disk, no image's problem, is raised).
The table is written last and so marks an image complete; :func:`read_labels` and
:func:`read_table` read back what an earlier run wrote.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .files import ResultExistsError, disk_full
from .io import write_labels, write_table, write_text
from .jobs import BatchOptions, ImageJob, ImageResult
from .measure import (
    Table,
    join_frames,
    measure_cells,
    measure_planes,
    summarize,
    with_frame_interval,
)
from .preprocess import read_here
from .thread_warnings import thread_warnings

if TYPE_CHECKING:
    from .disagreement import Spot
    from .images import AxisImage
    from .models import ModelPair
    from .ome import PixelSize

__all__ = [
    "error_reason",
    "measure_image",
    "process_image",
    "read_labels",
    "read_table",
]


def read_table(path: str | os.PathLike) -> Table:
    """A table of numbers written by :func:`napari_mutualseg.io.write_table`."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path} is empty; it is not a cell table.")
    header, body = rows[0], rows[1:]
    if any(len(row) != len(header) for row in body):
        raise ValueError(f"{path} has rows of another length than its header.")
    return {name: _numbers([r[i] for r in body]) for i, name in enumerate(header)}


def _numbers(texts: list[str]) -> np.ndarray:
    """A column of a table: int64 when every value is a whole number as written, else float."""
    try:
        return np.asarray([int(t) for t in texts], np.int64)
    except ValueError:
        return np.asarray(texts, np.float64)


def measure_image(
    labels: Any,
    image: AxisImage,
    pixel_size: PixelSize | None,
    *,
    blocks: tuple[int, int] | None = None,
) -> Table:
    """Measure the cells of ``labels`` (``image.label_axes``) in every channel of ``image``.

    A time series is measured frame by frame, with the frame in a first column ``t``; the 3D
    cells of a z-stack a plane at a time (:func:`~napari_mutualseg.measure.measure_planes`). With
    ``blocks`` (block size, halo), a single plane is measured a block at a time
    (:func:`~napari_mutualseg.blockwise.measure_blockwise`): neither the labels nor the image
    are loaded whole.
    """
    data = image.data
    names = image.channel_names
    if "C" in image.axes and names is None:
        names = tuple("RGBA"[: image.n_channels]) if image.rgb else None
    axes = image.label_axes
    spacing = None
    unit = "um"
    if pixel_size is not None:
        spacing = [pixel_size.y, pixel_size.x]
        if "Z" in axes:
            spacing = None if pixel_size.z is None else [pixel_size.z, *spacing]
        unit = pixel_size.symbol
    if blocks is not None and axes == "YX":
        from .blockwise import measure_blockwise

        block_size, halo = blocks
        return measure_blockwise(
            labels,
            image.plane_array(0),
            block_size=block_size,
            halo=halo,
            channel_names=names,
            pixel_size=spacing,
            unit=unit,
        )
    frames = range(labels.shape[0]) if "T" in axes else [None]
    tables = []
    for t in frames:
        if "Z" in axes:
            # 3D cells, a plane at a time: OME-Zarr labels are read back a plane at a time
            n_z = image.sizes["Z"]
            planes = (
                (labels[z] if t is None else labels[t, z], image.plane(z + (t or 0) * n_z))
                for z in range(n_z)
            )
            table = measure_planes(planes, channel_names=names, pixel_size=spacing, unit=unit)
        else:
            frame_labels = labels if t is None else labels[t]
            frame = read_here(data if t is None else data[t])
            table = measure_cells(
                read_here(frame_labels), frame, channel_names=names, pixel_size=spacing, unit=unit
            )
        tables.append((t, table))
    table = join_frames(tables)
    if "T" in axes and image.frame_interval is not None:
        table = with_frame_interval(table, image.frame_interval)
    return table


def peak_memory() -> int | None:
    """Peak resident memory of this process.

    On Linux ``VmHWM``, which, unlike ``ru_maxrss``, does not carry over the parent's peak
    into a spawned worker or a child started by ``subprocess``; elsewhere ``ru_maxrss``.

    Returns
    -------
    int or None
        Bytes, or None where the system does not say (Windows).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def error_reason(err: BaseException) -> str:
    """The first line of ``err``'s message, for a report; the exception's name is added
    unless it is a ValueError or OSError, whose messages say themselves what went wrong."""
    if isinstance(err, ResultExistsError):  # a batch replaces with its own overwrite option
        return err.advice("segment again with overwrite")
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, (ValueError, OSError)) and text:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """The labels a run wrote: a TIFF, or level 0 of an OME-Zarr store."""
    return np.asarray(_open_labels(path))


def _open_labels(path: str | os.PathLike) -> Any:
    """The labels a run wrote, level 0 of an OME-Zarr store left on the disk (read a window
    at a time)."""
    path = Path(path)
    if path.suffix == ".zarr":
        import zarr

        return zarr.open_group(str(path), mode="r")["0"]
    from .io import read_image

    return np.asarray(read_image(path))


def results_pixel_size(given: PixelSize | None, image: AxisImage) -> PixelSize | None:
    """The pixel size an image's results get: ``given`` (``--pixel-size``), with the image's
    own z step in its unit where it names none and its own frame interval, else the image's
    own."""
    from .ome import PixelSize, convert_length

    own = PixelSize.of(image)
    if given is None:
        return own
    if given.z is None and own is not None and own.z is not None:
        given = replace(given, z=convert_length(own.z, own.unit, given.unit))
    return replace(given, t=image.frame_interval)


class _Stopped(Exception):
    """The run was stopped while an image was being segmented."""


def _stopper(stop: Callable[[], bool] | None) -> Callable[[int, int], None] | None:
    """A ``progress`` callback for :meth:`ModelPair.segment` that ends the segmentation
    between planes or blocks once ``stop()`` is true."""
    if stop is None:
        return None

    def check(done: int, total: int) -> None:
        if done < total and stop():
            raise _Stopped

    return check


def _blocks(pair: ModelPair, image: AxisImage, options: BatchOptions) -> tuple[int, int] | None:
    """Block size and halo when an image is segmented block by block, so also measured so."""
    from .blockwise import AUTO_BLOCKWISE_PIXELS, default_halo

    large = np.prod(image.plane_shape) > AUTO_BLOCKWISE_PIXELS
    if image.n_planes != 1 or not (options.by_blocks or large):
        return None
    halo = default_halo(pair.cell_size) if options.halo is None else options.halo
    return options.block_edge, halo


def _segment(
    pair: ModelPair,
    image: AxisImage,
    job: ImageJob,
    options: BatchOptions,
    pixel_size,
    overwrite,
    stop: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Segment one image and write its labels (and disagreement map); the labels. Raises
    :class:`_Stopped` between planes or blocks once ``stop()`` is true; nothing is written
    then (labels go to their file at the end, an OME-Zarr store is removed)."""
    notes: list[str] = []
    common = {
        "channels": options.channels,
        "rgb": options.rgb,
        "tile_size": options.tile_size,
        "overlap": options.overlap,
        "min_size": options.min_size,
        "name": job.name,
    }
    if job.disagreement is not None:
        labels, disagreement, spots = _predict_with_maps(pair, image, options, common, stop)
    else:
        more = {
            "halo": options.halo,
            "link": options.link,
            "track": options.track,
            "progress": _stopper(stop),
        }
        if options.by_blocks:
            more.update(blockwise=True, block_size=options.block_edge)
        if options.out_format == "zarr":
            from .ome import labels_zarr

            # a stack's planes are written as they are linked: never whole in memory
            with labels_zarr(
                job.labels,
                image.label_shape,
                axes=image.label_axes,
                pixel_size=pixel_size,
                frame_interval=image.frame_interval,
                overwrite=overwrite,
            ) as out:
                pair.segment(image, out=out, **common, **more)
            return _open_labels(job.labels), notes
        labels = pair.segment(image, **common, **more)
    write_labels(
        job.labels,
        labels,
        overwrite=overwrite,
        pixel_size=pixel_size,
        axes=image.label_axes,
        frame_interval=image.frame_interval,
    )
    if job.disagreement is not None:
        tif, table = job.disagreement
        write_labels(
            tif, disagreement, overwrite=overwrite, axes=image.label_axes, kind="disagreement"
        )
        write_table(table, spots, overwrite=overwrite)
        notes.append(f"{len(spots['rank'])} cells and regions to check")
    return labels, notes


def _predict_with_maps(
    pair: ModelPair,
    image: AxisImage,
    options: BatchOptions,
    common: dict[str, Any],
    stop: Callable[[], bool] | None,
) -> tuple[np.ndarray, np.ndarray, Table]:
    """The labels of ``image`` (linked and tracked as without maps), where the two networks
    disagree (uint8, 255 = opposite) and the table of the cells and regions to check, most
    disputed first over all planes; a stack's spots with their plane (``t``, ``z``) and
    their cells' linked labels. Raises :class:`_Stopped` between planes once ``stop()`` is
    true."""
    from .disagreement import spot_table
    from .linking import link_labels

    labels = np.zeros(image.label_shape, np.int32)
    disagreement = np.zeros(image.label_shape, np.uint8)
    maps = disagreement.reshape((-1, *image.plane_shape))
    found: list[tuple[int, Spot]] = []  # (plane, spot)
    # whole planes (disagreement maps need them), numbered from 1 each
    predictions = pair.predict_planes(image, **common, blockwise=False, out=labels)
    for index in range(image.n_planes):
        if index and stop is not None and stop():
            raise _Stopped
        prediction = next(predictions)
        maps[index] = np.round(prediction.disagreement.astype(np.float32) * 255)
        found += [(index, spot) for spot in prediction.spots]
    if image.n_planes == 1:
        return labels, disagreement, spot_table([spot for _, spot in found])
    linked = link_labels(labels, image.label_axes, link=options.link, track=options.track)
    lookup = []  # per plane: its own label -> the linked one
    for own, final in zip(labels.reshape(maps.shape), linked.reshape(maps.shape), strict=True):
        table = np.zeros(int(own.max()) + 1, linked.dtype)
        table[own.ravel()] = final.ravel()
        lookup.append(table)
    found = [(index, replace(spot, label=int(lookup[index][spot.label]))) for index, spot in found]
    found.sort(key=lambda item: (-item[1].score, item[1].kind, item[0], item[1].bbox))
    planes = {
        axis.lower(): [image.plane_position(index)[axis] for index, _ in found]
        for axis in image.plane_axes
    }
    return linked, disagreement, spot_table([spot for _, spot in found], planes)


def process_image(
    pair: ModelPair,
    job: ImageJob,
    options: BatchOptions,
    *,
    overwrite: bool = False,
    fingerprint: str | None = None,
    stop: Callable[[], bool] | None = None,
) -> ImageResult:
    """Segment, write, measure one image; never raises for a problem with the image.

    The record of what makes the results (:meth:`ImageJob.provenance`) is written first; with
    ``overwrite``, once the new labels have replaced the old ones (the old table is removed
    first, so that the image is incomplete until it is done).

    Labels that an earlier, interrupted run wrote (without ``overwrite``) are measured, not
    segmented again (unless their disagreement maps are missing, which need the
    segmentation): :class:`~napari_mutualseg.batch.BatchRun` checks first that they are
    this image's, by this model, with these options. An image complete already (dask runs a
    task again when its worker died before the result reached the scheduler) is measured
    again when its record says that these are its results, and is refused otherwise.

    Parameters
    ----------
    pair : ModelPair
        The trained networks.
    job : ImageJob
        The image and its outputs.
    options : BatchOptions
        How to read and segment it.
    overwrite : bool
        Replace existing outputs.
    fingerprint : str, optional
        ``pair.fingerprint()``, when the caller has it already.
    stop : callable, optional
        Asked between the planes or blocks of the segmentation; once it returns True the
        image is left: nothing of it is written (its record is removed again) and the
        result is ``"not done"``.

    Returns
    -------
    ImageResult
        ``status`` ``"done"``, ``"failed"`` with the reason, or ``"not done"`` when stopped.

    Raises
    ------
    OSError
        When the disk or the quota is full (:func:`disk_full`): each image after this one
        would be segmented only to fail the same way. Nothing of the image is left.
    """
    from .images import AxisImage

    t0 = time.perf_counter()
    maps = job.disagreement or ()
    if job.labels.exists() and not all(p.exists() for p in maps):
        # labels an earlier run wrote without their disagreement maps (stopped between the
        # two; maps asked into another folder): the maps need the segmentation again, which
        # replaces them and the table with the same results
        overwrite = True
    caught: list[warnings.WarningMessage] = []
    with thread_warnings(caught.append):  # this image's own, not another thread's
        try:
            image = AxisImage.from_file(job.source, axes=options.axes)
            pixel_size = results_pixel_size(options.pixel_size, image)
            provenance = job.provenance(fingerprint or pair.fingerprint(), options)
            record = json.dumps(provenance, indent=2)
            # complete already: done by an earlier try of this task (dask runs it again when
            # its worker died before the result reached the scheduler), or by a run beside
            # this one. Its own results are measured again; another model's stay untouched
            finished = not overwrite and job.complete()
            if finished and (why := job.conflict(provenance)) is not None:
                raise ResultExistsError(why, remedy="choose another output folder")
            if overwrite:
                # without the table the image is incomplete: a rerun does it again. The old
                # labels stay (as their record) until the new ones replace them, so that a
                # stop, a kill or a full disk leaves them as they were, never under a record
                # of this model (a rerun would skip them as its own)
                job.table.unlink(missing_ok=True)
            else:
                write_text(job.record, record, overwrite=True)
            if job.labels.exists() and not overwrite:
                labels, notes = _open_labels(job.labels), ["labels kept from an earlier run"]
            elif job.table.exists() and not overwrite:
                raise ResultExistsError(
                    f"{job.table} exists without the labels {job.labels.name}",
                    remedy="move it away",
                )
            else:
                labels, notes = _segment(pair, image, job, options, pixel_size, overwrite, stop)
            if overwrite:  # the labels are this model's now
                write_text(job.record, record, overwrite=True)
            blocks = _blocks(pair, image, options)
            table = measure_image(labels, image, pixel_size, blocks=blocks)
            # last: marks the image complete
            write_table(job.table, table, overwrite=overwrite or finished)
        except _Stopped:
            job.drop_lone_record()
            return ImageResult(job, "not done", seconds=time.perf_counter() - t0)
        except Exception as err:
            job.drop_lone_record()
            if disk_full(err):  # not this image's problem: every next one would meet it
                raise
            return ImageResult(
                job,
                "failed",
                seconds=time.perf_counter() - t0,
                reason=error_reason(err),
                peak_memory=peak_memory(),
            )
    notes += [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    summary = summarize(job.name, table, tracked=options.track)
    return ImageResult(
        job,
        "done",
        cells=int(summary["cells"]),
        seconds=time.perf_counter() - t0,
        reason="; ".join(notes),
        summary=summary,
        peak_memory=peak_memory(),
        shape=tuple(labels.shape),
        axes=image.label_axes,
        read=image.describe(notes=True),
        rgb=image.rgb,
    )
