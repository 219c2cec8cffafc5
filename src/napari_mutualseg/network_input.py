"""From images to the networks' input: the chosen channels, RGB as colours or gray, and the
normalised 2D planes training takes.

The channels are chosen by index or name (:func:`select_channels`, also
:meth:`AxisImage.select <napari_mutualseg.images.AxisImage.select>`); the choice and how RGB is
taken are stored in the model file, so prediction feeds the networks what they were trained on.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .images import GRAY_WEIGHTS, RGB_MODES, AxisImage, _take, as_images, parse_channels
from .preprocess import DEFAULT_PERCENTILES, apply_ranges, check_channels, read_here

__all__ = ["channel_index", "network_planes", "select_channels", "warn_if_labels"]


#: Edge of the window at the centre of a plane read from a lazy image (zarr, dask) to tell
#: labels from intensities: a chunk or a few, never the image.
LABEL_WINDOW = 256


def _label_sample(image: AxisImage) -> np.ndarray:
    """The first channel of ``image``'s middle plane (the middle z of the middle time point:
    the first planes of a stack often hold no cells): whole when in memory, a window of at
    most :data:`LABEL_WINDOW` pixels square at its centre when lazy."""
    sizes = image.sizes
    middle = sizes.get("T", 1) // 2 * sizes.get("Z", 1) + sizes.get("Z", 1) // 2
    plane = image.plane_array(middle)[0]
    if isinstance(plane, np.ndarray):
        return plane
    height, width = plane.shape
    y0, x0 = max(0, (height - LABEL_WINDOW) // 2), max(0, (width - LABEL_WINDOW) // 2)
    return read_here(plane[y0 : y0 + LABEL_WINDOW, x0 : x0 + LABEL_WINDOW])


def warn_if_labels(image: AxisImage, stacklevel: int = 2) -> bool:
    """Warn when ``image`` holds labels or a mask, not a microscope image's intensities.

    A label image given where the image belongs trains and segments without an error, into
    nonsense. Looked at: the first channel of the middle plane
    (:func:`napari_mutualseg.metrics.label_evidence`), of a lazy image only a window of
    :data:`LABEL_WINDOW` pixels square at its centre (it is not read whole for this). Labels
    are whole numbers: integer and boolean images are looked at, and floating-point ones
    whose sampled pixels are all whole numbers (labels saved as float32).

    Parameters
    ----------
    image : AxisImage
        The image as given.
    stacklevel : int
        Passed to :func:`warnings.warn`: the frame of the user's call.

    Returns
    -------
    bool
        Whether it warned.
    """
    from .metrics import label_evidence

    if np.dtype(image.dtype).kind not in "biuf":
        return False
    sample = _label_sample(image)
    if sample.dtype.kind == "f":
        # a strided look suffices: intensities have fractions nearly everywhere
        step = max(1, int(np.sqrt(sample.size / LABEL_WINDOW**2)))
        strided = sample[::step, ::step]
        if not np.array_equal(strided, np.round(strided)):  # NaN is no whole number either
            return False
    evidence = label_evidence(sample)
    if not evidence.labels:
        return False
    warnings.warn(
        f"{image.name} looks like labels or a mask, not a microscope image: "
        f"{evidence.describe()}. The networks learn from and segment intensities: give the "
        "image itself (if it is, ignore this warning).",
        UserWarning,
        stacklevel=stacklevel + 1,
    )
    return True


def select_channels(
    image: AxisImage, channels: Sequence[int | str] | None = None, rgb: str = "channels"
) -> AxisImage:
    """The network input of ``image``: the chosen channels, RGB as colours or gray.

    Parameters
    ----------
    image : AxisImage
        The image.
    channels : sequence of int or str, optional
        Channels by index or name, in order (``None``: every channel).
    rgb : {"channels", "gray"}
        How an RGB image is taken: its colours as channels, or one gray channel.

    Returns
    -------
    AxisImage
        The selection, always with a C axis; lazy for lazy data. See
        :meth:`napari_mutualseg.images.AxisImage.select`.

    Raises
    ------
    ValueError
        For a channel the image does not have, an unknown ``rgb``, or channels picked
        from a picture made gray.
    """
    if rgb not in RGB_MODES:
        raise ValueError(f"rgb must be one of {', '.join(RGB_MODES)}, got {rgb!r}.")
    channels = parse_channels(channels)
    if "C" not in image.axes:
        k = sum(a in image.axes for a in "T")
        data = image.data[(slice(None),) * k + (None,)]
        image = replace(image, data=data, axes=image.axes[:k] + "C" + image.axes[k:])
    if image.rgb and rgb == "gray":
        if channels is not None:
            raise ValueError(
                f"{image.name}: gray conversion makes one channel of the colours; leave the "
                "channels unset, or keep the colours as channels to pick some."
            )
        return _gray(image)
    return _pick_channels(image, channels)


#: Where the channels are chosen, as each face calls it: the message of a channel that is not
#: found reaches the command line, the napari panel and scripts. (A model's own channel, not
#: found in an image, was named there without saying where another one is picked.)
_SETTING = "--channel on the command line, channels= in Python"


def channel_index(image: AxisImage, channel: int | str) -> int:
    """Index of one channel given by index or by name (names ignore case).

    A number that is no index of the image but one of its channels' names (a wavelength,
    ``405``) is that channel.

    Parameters
    ----------
    image : AxisImage
        The image.
    channel : int or str
        An index (from 0) or a name.

    Returns
    -------
    int
        The channel's index.

    Raises
    ------
    ValueError
        For a channel the image does not have, or a name that several of its channels share.
    """
    n = image.n_channels
    lowered = [c.lower() for c in image.channel_names or ()]
    if isinstance(channel, str) and channel.strip().isdigit():
        channel = int(channel)
    if isinstance(channel, (int, np.integer)) and not isinstance(channel, bool):
        if not 0 <= channel < n and str(channel) in lowered:
            return lowered.index(str(channel))
        if not 0 <= channel < n:
            raise ValueError(
                f"{image.name} has {n} channel(s) (0 to {n - 1}); there is no channel {channel}."
            )
        return int(channel)
    if not image.channel_names:
        raise ValueError(
            f"{image.name} does not name its channels, so channel {channel!r} cannot be "
            f"found: give its index (0 to {n - 1}) instead ({_SETTING})."
        )
    if str(channel).lower() not in lowered:
        raise ValueError(
            f"{image.name} has no channel {channel!r}; its channels are "
            f"{', '.join(image.channel_names)}: pick one by name or by index, 0 to {n - 1} "
            f"({_SETTING})."
        )
    same = [i for i, name in enumerate(lowered) if name == str(channel).lower()]
    if len(same) > 1:
        # the first was taken without a word, whichever was meant
        raise ValueError(
            f"{image.name} has {len(same)} channels called {channel!r} (indices "
            f"{', '.join(map(str, same))}): pick one by its index ({_SETTING})."
        )
    return same[0]


def _gray(image: AxisImage) -> AxisImage:
    """An RGB image's colours as one gray channel (luma, :data:`GRAY_WEIGHTS`), lazily for
    lazy data."""
    c = image.axes.index("C")
    weights = np.asarray(GRAY_WEIGHTS, np.float32).reshape((3,) + (1,) * (image.data.ndim - c - 1))
    colours = _take(image.data, c, slice(0, 3))
    gray = (colours * weights).sum(axis=c, keepdims=True).astype(np.float32)
    note = "RGB converted to one gray channel"
    return replace(
        image,
        data=gray,
        channel_names=("gray",),
        rgb=False,
        notes=(*image.notes, note),
        source_channels=None,
    )


def _pick_channels(image: AxisImage, channels: tuple[int | str, ...] | None) -> AxisImage:
    """The chosen channels of an image with a C axis, and notes of what was chosen; every
    channel when none are chosen, except the alpha of an RGBA picture."""
    notes = list(image.notes)
    if channels is None:
        if not (image.rgb and image.n_channels == 4):
            return image
        indices = [0, 1, 2]
        notes.append("RGBA: the alpha channel is left out")
    else:
        indices = [channel_index(image, ch) for ch in channels]
        if len(set(indices)) != len(indices):
            raise ValueError(f"{image.name}: channels {list(channels)} name one channel twice.")
    if indices == list(range(image.n_channels)):
        return replace(image, notes=tuple(notes))
    names = tuple(image.channel_names[i] for i in indices) if image.channel_names else None
    sources = image.source_channels
    sources = tuple(sources[i] if sources else i for i in indices)
    chosen = ", ".join(names) if names else ", ".join(map(str, sources))
    if channels is not None:
        notes.append(f"network input: channel(s) {chosen}")
    return replace(
        image,
        data=_take(image.data, image.axes.index("C"), indices),
        channel_names=names,
        notes=tuple(notes),
        source_channels=sources,
    )


def network_planes(
    images: Any,
    *,
    channels: Sequence[int | str] | None = None,
    rgb: str = "channels",
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    keep: Sequence[bool] | None = None,
    name: str = "images",
) -> tuple[list[np.ndarray], tuple[str, ...] | None]:
    """The 2D planes of ``images`` as checked, normalised ``(C, H, W)`` network input.

    Parameters
    ----------
    images : array_like, AxisImage or sequence of them
        One 2D image; a ``(P, H, W)`` array (a stack of P planes); an 8-bit ``(H, W, 3|4)``
        RGB(A) image; an :class:`AxisImage` (each of its planes); or a list of 2D images,
        channels-first ``(C, H, W)`` images and :class:`AxisImage` s.
    channels : sequence of int or str, optional
        The channels to keep (see :meth:`AxisImage.select`); every channel when left out, in
        the first image's order in images that name the same channels in another order.
    rgb : {"channels", "gray"}
        How RGB images are taken.
    percentiles : tuple of float
        Mapped to 0 and 1 in every channel, over all planes of each image
        (:meth:`AxisImage.channel_ranges`), so a plane of a stack is normalised as it will be
        when the whole stack is segmented.
    keep : sequence of bool, optional
        One flag per plane of all images in order: only those planes are read (every plane
        when left out).
    name : str
        How the images are called in messages.

    Returns
    -------
    planes : list of numpy.ndarray
        ``(C, H, W)`` float32 of the kept planes, every one with the same number of channels.
    channel_names : tuple of str or None
        The names of the input channels (the first image's), when every image names them
        alike, ignoring case.

    Warns
    -----
    UserWarning
        When the images name the channels they give the networks otherwise (channel 0 is
        DAPI in one and GFP in another): they are taken by position.
    """
    items = as_images(images, name)
    total = sum(image.n_planes for image in items)
    keep = [True] * total if keep is None else [bool(k) for k in keep]
    if len(keep) != total:
        raise ValueError(f"{name} have {total} plane(s) but {len(keep)} were marked to keep.")
    chosen: list[tuple[AxisImage, list[int]]] = []
    start = 0
    for image in items:
        wanted = [j for j in range(image.n_planes) if keep[start + j]]
        start += image.n_planes
        if wanted:
            selected = image.select(channels, rgb)
            if channels is None and chosen:
                selected = _named_as(selected, chosen[0][0].channel_names)
            chosen.append((selected, wanted))
    _check_channel_counts([image for image, _ in chosen])
    _warn_if_named_otherwise([image for image, _ in chosen])
    planes: list[np.ndarray] = []
    for image, wanted in chosen:
        loaded = [
            check_channels(image.plane(j), f"{image.name} {image.plane_name(j)}".rstrip())
            for j in wanted
        ]
        ranges = image.channel_ranges(percentiles)
        planes += [apply_ranges(plane, ranges) for plane in loaded]
    first = chosen[0][0].channel_names if chosen else None
    alike = all(_lowered(image.channel_names) == _lowered(first) for image, _ in chosen)
    return planes, (first if alike else None)


def _warn_if_named_otherwise(images: Sequence[AxisImage]) -> None:
    """Warn when training images that name their channels give the networks channels of other
    names: taken by position (an index, or every channel), each input channel may be another
    stain from image to image."""
    first: dict[tuple[str, ...], AxisImage] = {}
    for image in images:
        if image.channel_names:
            first.setdefault(tuple(_lowered(image.channel_names)), image)
    if len(first) < 2:
        return
    said = "; ".join(f"{i.name}: {', '.join(i.channel_names)}" for i in list(first.values())[:3])
    warnings.warn(
        f"The images give the networks channels of other names ({said}), taken by their "
        "position: if they are not the same stains, pick the channels by name, which finds "
        f"each in every image ({_SETTING}).",
        UserWarning,
        stacklevel=4,  # the caller of MutualTrainer
    )


def _lowered(names: tuple[str, ...] | None) -> list[str] | None:
    """Channel names as they are compared: ignoring case."""
    return None if names is None else [n.lower() for n in names]


def _named_as(image: AxisImage, names: tuple[str, ...] | None) -> AxisImage:
    """``image`` with its channels in the order of ``names``, when it holds the channels of
    those names in another order (a file saved with its channels as another microscope orders
    them): taken by position, each network input channel would be another stain in each image.
    """
    own, wanted = _lowered(image.channel_names) or [], _lowered(names) or []
    if own == wanted or sorted(own) != sorted(wanted) or len(set(own)) != len(own):
        return image
    return image.select([own.index(n) for n in wanted])


def _check_channel_counts(images: Sequence[AxisImage]) -> None:
    """Refuse training images that give the networks different numbers of channels, naming
    which gives how many (one odd file among many is otherwise hard to find)."""
    counts: dict[int, list[str]] = {}
    for image in images:
        counts.setdefault(image.n_channels, []).append(image.name)
    if len(counts) < 2:
        return
    given = "; ".join(
        f"{n} channel{'s' if n > 1 else ''}: {', '.join(names[:3])}"
        + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        for n, names in sorted(counts.items())
    )
    fix = "pick the same channels in every image (--channel, or channels= in Python)"
    if any(image.rgb for image in images) and 1 in counts:
        fix = f"make the RGB images gray (--rgb gray, or rgb='gray' in Python), or {fix}"
    raise ValueError(
        f"The images give the networks different numbers of channels ({given}): {fix}."
    )
