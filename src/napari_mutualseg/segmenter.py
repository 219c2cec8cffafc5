"""What a trained pair of networks does with images: probabilities, cells and disagreement."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .blockwise import (
    AUTO_BLOCKWISE_PIXELS,
    DEFAULT_BLOCK_SIZE,
    Block,
    block_grid,
    default_halo,
    segment_blockwise,
)
from .config import TrainConfig
from .disagreement import Prediction, cell_disagreement, spots_to_check
from .images import AxisImage
from .inference import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE_SIZE,
    check_tiling,
    instances_from_proba,
    predict_disagreement,
    predict_proba,
)
from .linking import LINK_MIN_OVERLAP, StackLinker, link_labels
from .preprocess import apply_ranges, check_channels, read_here

#: What to try when a trained pair finds no cell in an image, for every face to say.
NO_CELLS_ADVICE = (
    "the networks may need more training (more rounds or steps per round, on images like "
    "these), or the images differ from those they were trained on: check their channels "
    "(which, in what order), pixel size and intensities (stain, magnification, contrast)"
)


class NoCellsWarning(RuntimeWarning):
    """The networks found no cell in an image (or in some planes of a stack), which is then
    all background: :meth:`Segmenter.segment` and :meth:`Segmenter.predict` say so, and
    :meth:`Segmenter.predict_planes` once its planes are all taken.

    A RuntimeWarning, as numpy's about what a computation gave, shown by default: a batch
    keeps an image's UserWarnings as its notes and leaves this one out, as the command line
    and the panel name the images without cells once, in their own words.
    ``warnings.filterwarnings("ignore", category=NoCellsWarning)`` silences it, e.g. in a
    loop over blank fields.
    """


def _label_key(image: AxisImage, index: int) -> tuple:
    """Where plane ``index`` of ``image`` lies in its labels (``image.label_axes``)."""
    position = image.plane_position(index)
    return tuple(int(position[a]) if a in position else slice(None) for a in image.label_axes)


class _PlaneOut:
    """Plane ``key`` (``_label_key``) of a labels-shaped ``out`` that slicing gives no view
    of (a zarr array): what is read from or written to it goes to that plane."""

    def __init__(self, out: Any, key: tuple) -> None:
        self._out, self._lead = out, key[:-2]
        self.shape = tuple(out.shape[-2:])

    def __getitem__(self, window: Any) -> np.ndarray:
        return self._out[(*self._lead, *np.index_exp[window])]

    def __setitem__(self, window: Any, value: Any) -> None:
        self._out[(*self._lead, *np.index_exp[window])] = value


def _plane_out(out: Any, image: AxisImage, index: int) -> Any:
    """Where plane ``index`` of ``image`` goes in ``out`` (None: nowhere): a numpy view, or
    the plane of a zarr array; ``out`` itself for the labels of a plane without T or Z."""
    if out is None or len(out.shape) == 2:
        return out
    key = _label_key(image, index)
    return out[key] if isinstance(out, np.ndarray) else _PlaneOut(out, key)


def _lazy(out: Any) -> Any:
    """A labels-shaped ``out`` that slicing gives no view of (a zarr array) as a dask array,
    whose planes are read only when asked for; None for a numpy ``out`` or none."""
    if out is None or isinstance(out, np.ndarray):
        return None
    import dask.array as da

    # name=False: a random name, not a hash of the whole array's contents
    return da.from_array(out, chunks=getattr(out, "chunks", None) or "auto", name=False)


def _checked_plane(image: AxisImage, index: int) -> np.ndarray:
    """Plane ``index`` of ``image`` as checked ``(C, H, W)`` float32, not yet normalised."""
    return check_channels(image.plane(index), f"{image.name} {image.plane_name(index)}".rstrip())


def _constant(plane: np.ndarray) -> bool:
    """Whether a channel of a ``(C, H, W)`` plane has one value only."""
    flat = plane.reshape(plane.shape[0], -1)
    return bool(np.any(flat.min(axis=1) == flat.max(axis=1)))


def _constant_by_blocks(plane: Any, grid: list[Block]) -> bool:
    """:func:`_constant` of a ``(C, H, W)`` plane read one block's core at a time, up to the
    first core that shows every channel varies: one core of a plane with cells in it."""
    low = high = None
    for block in grid:
        core = read_here(plane[(slice(None), *block.core)])
        core_low, core_high = core.min(axis=(1, 2)), core.max(axis=(1, 2))
        low = core_low if low is None else np.minimum(low, core_low)
        high = core_high if high is None else np.maximum(high, core_high)
        # NaN and infinite pixels are not a flat field: segment_blockwise says what they are
        if not np.any((low == high) & np.isfinite(low)):
            return False
    return True


def _warn_cut_off(name: str, cut_off: int) -> None:
    """Tell of the cells that reached the margin of their block (block by block)."""
    warnings.warn(
        f"{name}: {cut_off} cell(s) reached the edge of their block's margin and may be cut "
        "off; a larger halo keeps them whole (halo= in Python, --halo on the command line).",
        UserWarning,
        stacklevel=4,
    )


def _warn_no_cells(image: AxisImage, empty: list[int], segmented: int) -> None:
    """Tell, once per image, of the planes of ``image`` (``empty``, by index) in which the
    networks found no cell, of the ``segmented`` planes that had something to segment."""
    if not empty:
        return
    if len(empty) == segmented:
        planes = f" (in any of its {segmented} planes)" if segmented > 1 else ""
        said = f"No cells found in {image.name}{planes}: {NO_CELLS_ADVICE}."
    else:
        shown = ", ".join(image.plane_name(index) for index in empty[:5])
        more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        said = (
            f"No cells found in {len(empty)} of the {segmented} planes of {image.name} "
            f"({shown}{more}): if they hold cells, {NO_CELLS_ADVICE}."
        )
    warnings.warn(said, NoCellsWarning, stacklevel=4)  # the caller of segment, as cut-off


def _check_out(out: Any, image: AxisImage) -> None:
    """Refuse an ``out`` (None: none) that cannot hold ``image``'s labels: no array, another
    shape than ``image.label_shape``, or a type other than integers of 32 bits or more."""
    if out is None:
        return
    shape, axes = image.label_shape, image.label_axes
    make = (
        f"make it np.zeros({shape}, np.int32), or labels_zarr(path, {shape}, axes={axes!r}) "
        "for an OME-Zarr on disk"
    )
    if not hasattr(out, "shape") or not hasattr(out, "dtype"):
        raise TypeError(
            f"out must be an array shaped like the labels, got a {type(out).__name__}: {make}."
        )
    if tuple(out.shape) != shape:
        raise ValueError(
            f"out has shape {tuple(out.shape)}, but the labels of {image.name} have shape "
            f"{shape} (axes {axes}: the image's, less any channel axis): {make}."
        )
    dtype = np.dtype(out.dtype)
    if dtype.kind not in "iu" or dtype.itemsize < 4:
        # a smaller type wraps past its largest number (255 cells in uint8) without a word
        raise ValueError(
            f"out has dtype {dtype}; labels need integers of 32 bits or more (a smaller type "
            f"wraps past its largest number, 255 in uint8): {make}."
        )


def _one_plane(image: AxisImage, method: str) -> None:
    """Refuse a stack to ``method``, which takes one plane; stacks are for segment."""
    if image.n_planes != 1:
        # predict_planes gives what predict gives, for each plane of a stack
        planes = "predict_planes predicts each plane of a stack, " * (method == "predict")
        raise ValueError(
            f"{image.name} has {image.n_planes} planes; {method} takes one ({planes}segment "
            "takes stacks and time series)."
        )


class Segmenter:
    """The methods of :class:`~napari_mutualseg.models.ModelPair` that use its networks on images.

    A mixin: it reads the pair's ``models``, ``device``, ``percentiles``, ``settings`` and
    ``cell_size``, and takes images through its ``network_input``.
    """

    def predict_proba(
        self,
        image: Any,
        *,
        channels: Sequence[int | str] | None = None,
        rgb: str | None = None,
        axes: str | None = None,
        tile_size: int = DEFAULT_TILE_SIZE,
        overlap: int = DEFAULT_OVERLAP,
        name: str = "image",
    ) -> np.ndarray:
        """Ensemble class probabilities (background, cell, boundary) of one 2D plane.

        Parameters
        ----------
        image : array_like or AxisImage
            One plane: a 2D image, a channels-first ``(C, H, W)`` image, an 8-bit RGB(A)
            picture, or an :class:`AxisImage` of one plane. The networks run tile by tile,
            but the result is whole (12 bytes a pixel): :meth:`segment` goes block by block
            on large images.
        channels, rgb, axes
            See :meth:`network_input`.
        tile_size, overlap : int
            Sliding-window tile edge and overlap in pixels.
        name : str
            Name used in error messages.

        Returns
        -------
        numpy.ndarray
            ``(3, H, W)`` float32 mean softmax of both networks.
        """
        check_tiling(tile_size, overlap)
        # network_input from here: its warnings name the caller's line, as segment's do
        chosen = self.network_input(image, channels=channels, rgb=rgb, axes=axes, name=name)
        _one_plane(chosen, "predict_proba")
        ranges = chosen.channel_ranges(self.percentiles)
        return self._plane_proba(chosen, 0, ranges, tile_size, overlap)

    def _plane_proba(
        self, image: AxisImage, index: int, ranges: np.ndarray, tile_size: int, overlap: int
    ) -> np.ndarray:
        x = apply_ranges(_checked_plane(image, index), ranges)
        return predict_proba(self.models, x, self.device, tile_size=tile_size, overlap=overlap)

    def segment(
        self,
        image: Any,
        *,
        channels: Sequence[int | str] | None = None,
        rgb: str | None = None,
        axes: str | None = None,
        tile_size: int = DEFAULT_TILE_SIZE,
        overlap: int = DEFAULT_OVERLAP,
        min_size: int | None = None,
        link: bool = True,
        track: bool = False,
        min_overlap: float = LINK_MIN_OVERLAP,
        name: str = "image",
        blockwise: bool | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        halo: int | None = None,
        out: Any = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Any:
        """Instance segmentation: int32 labels, 0 background, 1..N cells.

        Every 2D plane (each z position of each time point) is segmented, normalised with the
        intensity percentiles of the whole image (:meth:`AxisImage.channel_ranges`); the
        planes of a z-stack are linked into 3D objects and, with ``track``, the frames of a
        time series keep their labels (:func:`napari_mutualseg.linking.link_labels`). A plane
        of a stack in which a channel is constant (blank padding, a frame the microscope
        skipped) has nothing to segment: it has no cells, whole or block by block.

        Images up to :data:`~napari_mutualseg.blockwise.AUTO_BLOCKWISE_PIXELS` (4096 x 4096)
        are segmented whole. Larger ones, or any image with ``blockwise=True`` or an ``out``
        array (unless ``blockwise=False``), go block by block
        (:mod:`napari_mutualseg.blockwise`): the memory then depends on ``block_size``, not
        on the image, and the cells are the same as the whole image's (BBBC039 test: mAP
        equal to the third decimal, no cell split at a block face).

        Parameters
        ----------
        image : array_like or AxisImage
            A 2D image; a channels-first ``(C, H, W)`` image; an 8-bit RGB(A) picture; a plain
            array with ``axes``; or an :class:`AxisImage` (any of ``TCZYX``), also a lazy one
            (zarr, dask), read a block at a time when segmented block by block.
        channels : sequence of int or str, optional
            The channels to use (default: the ones the networks were trained on).
        rgb : {"channels", "gray"}, optional
            How an RGB image is taken (default: as in training).
        axes : str, optional
            The axes of a plain array, e.g. ``"ZYX"`` or ``"TCYX"``.
        tile_size, overlap : int
            Sliding-window tile edge and overlap of the networks, in pixels.
        min_size : int, optional
            Objects smaller than this many pixels are dropped (default: the training setting).
        link : bool
            Link the planes of a z-stack into 3D objects (one label per cell through z).
        track : bool
            Keep a cell's label from frame to frame of a time series (by overlap).
        min_overlap : float
            Least overlap for linking and tracking, as a share of the smaller object
            (:func:`napari_mutualseg.linking.link_slices`).
        name : str
            Name used in error messages.
        blockwise : bool, optional
            Force (True) or forbid (False) block-by-block segmentation of every plane; by
            default it is chosen by the plane's size, and is block by block with ``out``. A
            stack's planes are then segmented one after another, block by block, and linked
            as a stack segmented whole.
        block_size : int
            Edge of a block's core in pixels.
        halo : int, optional
            Margin read around each block (default: from :attr:`cell_size`, see
            :func:`~napari_mutualseg.blockwise.default_halo`).
        out : array-like, optional
            int32 array shaped like the labels (``image.label_shape``) to write them into
            (what it held is replaced), e.g. from :func:`napari_mutualseg.ome.labels_zarr`
            (with ``axes=`` for a stack): one plane block by block; a stack plane after
            plane, each written as soon as it is linked to the planes before it (a time
            series of z-stacks: at the end of its time point), so that the memory holds a few
            planes, not the stack. The labels are those the stack would have in memory.
        progress : callable, optional
            ``progress(done, total)`` after each plane (block by block: after each block).

        Returns
        -------
        array-like
            Labels with the image's axes less C (``image.label_axes``): ``(H, W)`` for one
            plane, ``(Z, H, W)`` for a z-stack, ``(T, [Z,] H, W)`` for a time series (each
            frame's cells numbered from 1 on their own, unless ``track``); ``out`` when given.

        Warns
        -----
        NoCellsWarning
            When the networks find no cell in the image, or in some planes of a stack: one
            warning, naming them (a constant plane, which has nothing to segment, is not).
        """
        check_tiling(tile_size, overlap)
        chosen = self.network_input(image, channels=channels, rgb=rgb, axes=axes, name=name)
        min_size = self._min_size(min_size)
        if out is not None and blockwise is None:
            blockwise = True
        blocks = self._blocks(chosen, blockwise, block_size, halo, out)
        # a stack's planes are linked before they are written: out takes one plane's labels
        one = out if chosen.n_planes == 1 else None
        planes = self._planes(chosen, tile_size, overlap, min_size, blocks, one, progress)
        if out is not None and chosen.n_planes == 1:
            for _ in planes:  # to the end: cells cut off at a block's margin are warned of
                pass
            return out
        if out is not None:
            # each plane is written once linked to those before it: a few planes in memory
            linker = StackLinker(
                chosen.label_axes,
                chosen.label_shape,
                link=link,
                track=track,
                min_overlap=min_overlap,
            )
            for plane in planes:
                for index, final in linker.add(plane.labels):
                    out[_label_key(chosen, index)] = final
            return out
        labels = np.zeros(chosen.label_shape, np.int32)
        for index, plane in enumerate(planes):
            labels[_label_key(chosen, index)] = plane.labels
        return link_labels(
            labels, chosen.label_axes, link=link, track=track, min_overlap=min_overlap
        )

    def _blocks(
        self,
        image: AxisImage,
        blockwise: bool | None,
        block_size: int,
        halo: int | None,
        out: Any,
    ) -> tuple[int, int] | None:
        """Block size and halo when ``image``'s planes go block by block (by default those
        above :data:`AUTO_BLOCKWISE_PIXELS`), else None; ``out`` checked first
        (:func:`_check_out`)."""
        _check_out(out, image)
        if blockwise is None:
            blockwise = math.prod(image.plane_shape) > AUTO_BLOCKWISE_PIXELS
        if not blockwise:
            return None
        return block_size, default_halo(self.cell_size) if halo is None else halo

    def _planes(
        self,
        image: AxisImage,
        tile_size: int,
        overlap: int,
        min_size: int,
        blocks: tuple[int, int] | None,
        out: Any = None,
        progress: Callable[[int, int], None] | None = None,
        disagree: bool = False,
    ) -> Iterator[Prediction]:
        """The cells of every plane of ``image`` (the networks' channels) on its own, in
        order, each normalised with the whole image's percentiles: whole, or block by block
        with ``blocks`` (block size, halo) (:mod:`napari_mutualseg.blockwise`).

        ``out`` (labels-shaped, numpy or zarr) takes each plane's cells in their place
        (:func:`_plane_out`), which a prediction's ``labels`` then are: a numpy view, or the
        plane of a zarr ``out`` read lazily (:func:`_lazy`). With ``disagree``, a plane
        segmented whole also gets where the networks disagree, its cells' scores and the
        cells to check; otherwise its prediction holds the cells (and probabilities) only. A
        flat plane of a stack (a channel of one value: blank padding, a skipped frame) has
        nothing to segment and no cells.
        """

        def predict(block: np.ndarray) -> np.ndarray:
            return predict_proba(
                self.models, block, self.device, tile_size=tile_size, overlap=overlap
            )

        ranges = image.channel_ranges(self.percentiles)
        stored = _lazy(out)
        planes = image.n_planes
        grid = None if blocks is None else block_grid(image.plane_shape, *blocks)
        steps = 1 if grid is None else len(grid)
        cut_off = 0
        empty: list[int] = []  # planes with something to segment in which no cell was found
        flats = 0
        for index in range(planes):
            plane_progress = None
            if progress is not None:

                def plane_progress(done: int, total: int, index: int = index) -> None:
                    progress(index * steps + done, planes * steps)

            target = _plane_out(out, image, index)
            # what a prediction holds of the cells: their place in out when out is given
            place = target if stored is None else stored[_label_key(image, index)]
            x = None if grid is not None else _checked_plane(image, index)
            # a flat plane of a stack (blank padding, a skipped frame) has nothing to segment:
            # the networks would be asked about a flat field
            flat = planes > 1 and (
                _constant(x)
                if x is not None
                else _constant_by_blocks(image.plane_array(index), grid)
            )
            if grid is not None and not flat:
                result = segment_blockwise(
                    image.plane_array(index),
                    predict,
                    block_size=blocks[0],
                    halo=blocks[1],
                    min_size=min_size,
                    out=np.zeros(image.plane_shape, np.int32) if target is None else target,
                    progress=plane_progress,
                    name=image.name,
                    ranges=ranges,
                )
                cut_off += result.cut_off
                if not result.objects:
                    empty.append(index)
                yield Prediction(None, result.labels if place is None else place, None, None)
                continue
            proba = disagreement = None
            flats += flat
            if flat:
                labels = np.zeros(image.plane_shape, np.int32)
                if x is not None:  # segmented whole: its probabilities are background's
                    proba = np.zeros((3, *image.plane_shape), np.float32)
                    proba[0] = 1
                    if disagree:
                        disagreement = np.zeros(image.plane_shape, np.float16)
            else:
                x = apply_ranges(x, ranges)
                if disagree:
                    proba, disagreement = predict_disagreement(
                        self.models, x, self.device, tile_size=tile_size, overlap=overlap
                    )
                    disagreement = disagreement.astype(np.float16)
                else:
                    proba = predict(x)
                labels = instances_from_proba(proba, min_size=min_size)
                if not labels.any():
                    empty.append(index)
            if target is not None:
                target[...] = labels
            if plane_progress is not None:
                plane_progress(steps, steps)
            shown = labels if place is None else place
            if disagreement is None:
                yield Prediction(proba, shown, None, None)
                continue
            yield Prediction(
                probabilities=proba,
                labels=shown,
                disagreement=disagreement,
                cell_scores=cell_disagreement(labels, disagreement),
                spots=spots_to_check(labels, disagreement, min_size=min_size),
            )
        if cut_off:
            _warn_cut_off(image.name, cut_off)
        _warn_no_cells(image, empty, planes - flats)

    def predict(
        self,
        image: Any,
        *,
        channels: Sequence[int | str] | None = None,
        rgb: str | None = None,
        axes: str | None = None,
        tile_size: int = DEFAULT_TILE_SIZE,
        overlap: int = DEFAULT_OVERLAP,
        min_size: int | None = None,
        name: str = "image",
    ) -> Prediction:
        """Cells of ``image``, where the two networks disagree, and which cells to check first.

        The cells are those of :meth:`segment` and the probabilities those of
        :meth:`predict_proba`, from one pass over the image.

        Parameters
        ----------
        image : array_like or AxisImage
            One plane, as in :meth:`predict_proba`, predicted whole (:meth:`segment` goes
            block by block on images larger than memory).
        channels, rgb, axes
            See :meth:`network_input`.
        tile_size, overlap : int
            Sliding-window tile edge and overlap in pixels.
        min_size : int, optional
            Smallest cell and smallest region of disagreement kept, in pixels (default: the
            training setting).
        name : str
            Name used in error messages.

        Returns
        -------
        Prediction
            Probabilities, cells, the disagreement map (float16), each cell's score and the
            cells and regions to check, most disputed first.

        Warns
        -----
        NoCellsWarning
            When the networks find no cell in the image.

        Examples
        --------
        >>> from napari_mutualseg.io import read_image
        >>> from napari_mutualseg.models import ModelPair
        >>> pair = ModelPair.load("cells.pt")  # doctest: +SKIP
        >>> result = pair.predict(read_image("new.tif"))  # doctest: +SKIP
        >>> first = result.spots[0]  # the cell (or region) to check first  # doctest: +SKIP
        >>> first.kind, first.label, round(first.score, 2)  # doctest: +SKIP
        ('cell', 12, 0.18)
        """
        check_tiling(tile_size, overlap)
        min_size = self._min_size(min_size)
        chosen = self.network_input(image, channels=channels, rgb=rgb, axes=axes, name=name)
        _one_plane(chosen, "predict")
        # taken to the end, here, so that a plane without cells is warned of at the caller
        (prediction,) = self._planes(chosen, tile_size, overlap, min_size, None, disagree=True)
        return prediction

    def predict_planes(
        self,
        image: Any,
        *,
        channels: Sequence[int | str] | None = None,
        rgb: str | None = None,
        axes: str | None = None,
        tile_size: int = DEFAULT_TILE_SIZE,
        overlap: int = DEFAULT_OVERLAP,
        min_size: int | None = None,
        name: str = "image",
        blockwise: bool | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        halo: int | None = None,
        out: Any = None,
    ) -> Iterator[Prediction]:
        """:meth:`predict` of every plane of an image, one plane at a time.

        Every plane (each z position of each time point) is normalised with the intensity
        percentiles of the whole image, as :meth:`segment` does: each plane's cells are those
        :meth:`segment` finds in it before the planes are linked
        (:func:`napari_mutualseg.linking.link_labels` links them, and a spot's ``label``
        maps through the same relabelling). Planes are predicted only as they are asked for,
        so the caller may stop between any two; the image, the settings and ``out`` are
        checked at the call.

        Parameters
        ----------
        image : array_like or AxisImage
            Any image :meth:`segment` takes.
        channels, rgb, axes
            See :meth:`network_input`.
        tile_size, overlap : int
            Sliding-window tile edge and overlap in pixels.
        min_size : int, optional
            Smallest cell and smallest region of disagreement kept, in pixels (default: the
            training setting).
        name : str
            Name used in error messages.
        blockwise : bool, optional
            Segment every plane block by block (True) or whole (False); by default planes
            larger than :data:`~napari_mutualseg.blockwise.AUTO_BLOCKWISE_PIXELS` go block by
            block. A plane segmented block by block has cells only: its prediction's
            ``probabilities``, ``disagreement`` and ``cell_scores`` are None, its ``spots``
            empty.
        block_size : int
            Edge of a block's core in pixels.
        halo : int, optional
            Margin read around each block (default: from :attr:`cell_size`).
        out : array-like, optional
            int32 array shaped like the labels (``image.label_shape``), numpy or zarr
            (:func:`napari_mutualseg.ome.labels_zarr`): each plane's cells replace what its
            place in it held, and a prediction's ``labels`` are that place: a view of
            a numpy ``out``; of a zarr one, a dask array that reads the plane from it when
            asked (``np.asarray``, ``.compute()``), so that no plane stays in memory.

        Returns
        -------
        iterator of Prediction
            One per plane, in order (z within each time point), each plane's cells numbered
            from 1. A plane of a stack in which a channel is constant (blank padding, a frame
            the microscope skipped) has nothing to segment: no cells, no disagreement.

        Warns
        -----
        NoCellsWarning
            Once every plane is taken (as a ``for`` loop takes them), when the networks found
            no cell in some of them: one warning, as :meth:`segment`'s.

        Examples
        --------
        >>> from napari_mutualseg.io import read_image
        >>> planes = pair.predict_planes(read_image("stack.tif"))  # doctest: +SKIP
        >>> for z, result in enumerate(planes):  # doctest: +SKIP
        ...     print(z, result)
        """
        check_tiling(tile_size, overlap)
        min_size = self._min_size(min_size)
        chosen = self.network_input(image, channels=channels, rgb=rgb, axes=axes, name=name)
        blocks = self._blocks(chosen, blockwise, block_size, halo, out)
        planes = self._planes(chosen, tile_size, overlap, min_size, blocks, out, disagree=True)
        # not a generator itself, so that a wrong setting or out is refused here, not at the
        # first plane; a generator's frame between the caller and _planes, as segment's is,
        # so that _planes' warnings name the caller's line
        return (prediction for prediction in planes)

    def _min_size(self, min_size: int | None) -> int:
        """The smallest cell kept: as given, else the training setting."""
        if min_size is None:  # files from before the setting: the setting's default
            min_size = self.settings.get("min_size", TrainConfig.min_size)
        min_size = int(min_size)
        if min_size < 0:
            raise ValueError(f"min_size must be 0 or more pixels, got {min_size}.")
        return min_size
