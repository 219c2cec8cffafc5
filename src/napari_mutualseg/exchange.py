"""How boxes become training labels, and how one network's prediction becomes its peer's labels.

Two exchange rules are available (``ExchangeSettings.rule``):

``"confident"`` (default)
    Only what the peer is sure of *and* the box agrees with is passed on; everything else
    inside the boxes stays ignored. A box's object is the peer's foreground component that
    covers the ellipse core, clipped to the box; the ellipse core is trusted cell, the lines
    where two boxes' objects touch are boundary, and the peer's own confident boundary pixels
    are kept. Round 1 learns from the core of each ellipse with the rest of the box ignored.
    This follows cross pseudo supervision and co-teaching: hard labels in the uncertain band and
    boundaries recomputed from every object edge pass each network's mistakes to its peer, and
    rounds then lose quality instead of gaining.
``"literal"``
    The rule of the method as first written: the object (or the ellipse when the object is
    empty, tiny or leaks) united with the core, every object edge as boundary, background in
    the rest of the box, and only unconfident pixels outside cores ignored. Round 1 learns the
    ellipse label itself. Kept for comparison in the benchmark.

User edits of the supervision layer (pixels that differ from the generated ellipse label) and
the trusted pixels of a corrected segmentation (:attr:`Supervision.trusted`, whole cells a
person drew or fixed) are taken as certain in every round under both rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy import ndimage as ndi

from .boxes import inside_box
from .config import EXCHANGE_RULES, ExchangeSettings
from .inference import _CROSS, box_objects
from .supervision import (
    BACKGROUND,
    BOUNDARY,
    CELL,
    IGNORE,
    Supervision,
    _inner_boundaries,
    check_class_map,
)


def touching_lines(labels: np.ndarray) -> np.ndarray:
    """Pixels of an object that have a 4-neighbour belonging to another (non-zero) object."""
    return _inner_boundaries(labels, background=False)


def top_class(proba: np.ndarray) -> np.ndarray:
    """The most probable class of each pixel: ``proba.argmax(0)`` as uint8.

    Equal probabilities go to the first class and a NaN counts as the largest, as with
    ``argmax``, whose int64 map is eight times the size (290 MB at 6000²) and takes three to
    four times as long.

    Parameters
    ----------
    proba : numpy.ndarray
        ``(C, H, W)`` class probabilities, at most 256 classes.

    Returns
    -------
    numpy.ndarray
        uint8 ``(H, W)`` class indices.
    """
    top = np.zeros(proba.shape[1:], np.uint8)
    best = proba[0].copy()
    for k in range(1, len(proba)):
        np.copyto(top, np.uint8(k), where=proba[k] > best)
        np.maximum(best, proba[k], out=best)  # a NaN stays: the running maximum of its pixel
    nan = np.isnan(best)
    if nan.any():
        top[nan] = np.isnan(proba[:, nan]).argmax(0)
    return top


@dataclass
class ExchangeContext:
    """Per-image quantities that stay fixed across rounds.

    Attributes
    ----------
    supervision : Supervision
        Boxes and the generated ellipse label.
    initial : numpy.ndarray
        The round-1 training label (uint8).
    in_box : numpy.ndarray
        Pixels inside any box.
    core : numpy.ndarray
        Pixels inside any ellipse core (trusted cell).
    edited : numpy.ndarray
        Pixels the user changed in the supervision layer, and the supervision's trusted
        pixels (taken as certain).
    rule : str
        The exchange rule.
    core_scale : float
        Size of the trusted core relative to each ellipse.
    box_windows : list of tuple
        Per box, its bounding slices on the image (:meth:`Box.slices`) and the bool mask of
        the pixels there inside the box: found once, read in every round.
    """

    supervision: Supervision
    initial: np.ndarray
    in_box: np.ndarray
    core: np.ndarray
    edited: np.ndarray
    rule: str
    core_scale: float
    box_windows: list[tuple[tuple[slice, slice], np.ndarray]] = field(repr=False)

    @classmethod
    def build(
        cls,
        supervision: Supervision,
        labels: np.ndarray | None = None,
        *,
        rule: str = "confident",
        core_scale: float = 0.5,
    ) -> ExchangeContext:
        """Precompute the context of one image.

        Parameters
        ----------
        supervision : Supervision
            The image's boxes and generated ellipse label.
        labels : numpy.ndarray, optional
            The supervision as the user left it (possibly painted over); pixels that differ
            from ``supervision.classes`` are user edits.
        rule : {"confident", "literal"}
            The exchange rule (see the module docs).
        core_scale : float
            Size of the trusted core relative to each ellipse.
        """
        if rule not in EXCHANGE_RULES:
            raise ValueError(f"exchange rule must be one of {EXCHANGE_RULES}, got {rule!r}")
        generated = supervision.classes
        shape = generated.shape
        labels = check_class_map(
            generated if labels is None else labels, shape, "The edited supervision"
        )
        edited = labels != generated
        if supervision.trusted is not None:
            edited |= supervision.trusted
        # one pass over the boxes for everything of theirs the rounds read (at 4096², 16,384
        # boxes: each pass costs about half a second)
        in_box = np.zeros(shape, bool)
        core = np.zeros(shape, bool)
        box_windows = []
        for box in supervision.boxes:
            slices, u, v = box.local_coords(shape)
            inside = inside_box(u, v)
            in_box[slices] |= inside
            core[slices] |= u**2 + v**2 <= core_scale**2
            box_windows.append((slices, inside))
        if rule == "literal":
            initial = labels.copy()
        else:
            initial = generated.copy()
            initial[in_box] = IGNORE
            initial[core] = CELL
            initial[touching_lines(supervision.instances)] = BOUNDARY
            initial[edited] = labels[edited]
        return cls(supervision, initial, in_box, core, edited, rule, core_scale, box_windows)

    def combine(self, proba: np.ndarray, settings: ExchangeSettings) -> np.ndarray:
        """The peer's next training label from this model's probabilities.

        Parameters
        ----------
        proba : numpy.ndarray
            ``(3, H, W)`` softmax of the model whose prediction is passed on.
        settings : ExchangeSettings
            The thresholds: foreground (``fg_threshold``), the least top probability passed
            on (``confidence``), when a box falls back to its round-1 label
            (``min_core_fraction``, ``leak_fraction``) and whether confident background inside
            an ellipse is passed on (``ellipse_background``).

        Returns
        -------
        numpy.ndarray
            uint8 label map (0, 1, 2, 255).
        """
        sup = self.supervision
        objects, ratio = self.objects(proba, settings)
        fallback = self._fallback_boxes(
            objects, ratio, settings.min_core_fraction, settings.leak_fraction
        )
        confident = proba.max(axis=0) >= settings.confidence
        target = self.initial.copy()
        if self.rule == "literal":
            ids = np.flatnonzero(fallback) + 1
            objects[np.isin(objects, ids)] = 0
            use_ellipse = np.isin(sup.instances, ids) | (self.core & (objects == 0))
            objects[use_ellipse] = sup.instances[use_ellipse]
            box = self.in_box & ~self.edited
            target[box] = BACKGROUND
            target[box & (objects > 0)] = CELL
            target[box & _inner_boundaries(objects)] = BOUNDARY
            target[box & ~confident & ~self.core] = IGNORE
            return target
        keep = self.in_box & ~self.edited & ~self._box_mask(fallback)
        objects[~keep] = 0  # box_objects' map is this call's own
        label = np.full(target.shape, IGNORE, np.uint8)
        obj = objects > 0
        top = top_class(proba)
        background = ~obj & confident & (top == BACKGROUND)
        if not settings.ellipse_background:
            background &= sup.instances == 0
        label[background] = BACKGROUND
        label[obj & confident & (top != BACKGROUND)] = CELL
        label[obj & confident & (top == BOUNDARY)] = BOUNDARY
        label[self.core] = CELL
        label[touching_lines(objects)] = BOUNDARY
        target[keep] = label[keep]
        return target

    def objects(
        self, proba: np.ndarray, settings: ExchangeSettings
    ) -> tuple[np.ndarray, np.ndarray]:
        """The object of each box in a prediction as the exchange reads it.

        Parameters
        ----------
        proba : numpy.ndarray
            ``(3, H, W)`` probabilities.
        settings : ExchangeSettings
            The foreground threshold (``fg_threshold``).

        Returns
        -------
        tuple of numpy.ndarray
            :func:`~napari_mutualseg.inference.box_objects` with this context's core size.
        """
        return box_objects(
            proba, self.supervision, fg_threshold=settings.fg_threshold, core_scale=self.core_scale
        )

    def _fallback_boxes(
        self, objects: np.ndarray, ratio: np.ndarray, min_core: float, leak: float
    ) -> np.ndarray:
        """Which boxes keep their round-1 label: object too small for its core, or leaking
        (more than ``leak`` of :attr:`box_pixels`, or, in a group of boxes that overlap,
        more than ``leak`` of the group's pixels outside every ellipse)."""
        areas = np.bincount(objects.ravel(), minlength=len(ratio) + 1)[1:]
        # Overlapping boxes share their pixels out among their objects: a prediction that
        # calls a whole group of them cell leaks in no box alone. Their cells leave the
        # pixels outside the ellipses partly background (at most 79% filled on 4 BBBC039
        # images, exact or jittered boxes, touching nuclei included), so a group whose
        # objects fill those has found none of its cells.
        box_group, corners, corner_group, pixels = self._box_groups
        filled = np.bincount(corner_group[objects.ravel()[corners] > 0], minlength=len(pixels))
        flooded = (filled > leak * pixels)[box_group]
        return (ratio < min_core) | (areas > leak * self.box_pixels) | flooded

    @cached_property
    def box_pixels(self) -> np.ndarray:
        """Each box's pixels on the image (float64), against which a leak is measured: a box
        that reaches past the border has fewer, and an object filling all of them leaks as
        much as in a whole box. Fixed across rounds, so counted once."""
        return np.array(
            [np.count_nonzero(inside) for _, inside in self.box_windows], dtype=np.float64
        )

    @cached_property
    def _box_groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Groups of two or more boxes that overlap or touch: each box's group (0 for a box
        alone), the flat indices of the groups' pixels outside every ellipse, their group,
        and each group's count of them (infinite for group 0: a box alone leaks by its box).
        Fixed across rounds, so found once."""
        groups, n = ndi.label(self.in_box, structure=_CROSS)
        box_group = np.array(
            [groups[slices][inside].max(initial=0) for slices, inside in self.box_windows],
            dtype=np.intp,
        )
        alone = np.bincount(box_group, minlength=n + 1) < 2
        groups[alone[groups]] = 0
        box_group[alone[box_group]] = 0
        corners = np.flatnonzero((groups > 0) & (self.supervision.instances == 0))
        corner_group = groups.ravel()[corners]
        pixels = np.bincount(corner_group, minlength=n + 1).astype(np.float64)
        pixels[0] = np.inf
        return box_group, corners, corner_group, pixels

    def _box_mask(self, which: np.ndarray) -> np.ndarray:
        """The pixels inside the boxes ``which`` (bool per box)."""
        mask = np.zeros(self.initial.shape, bool)
        for k in np.flatnonzero(which):
            slices, inside = self.box_windows[k]
            mask[slices] |= inside
        return mask


def changed_fraction(
    previous: np.ndarray | Sequence[np.ndarray], current: np.ndarray | Sequence[np.ndarray]
) -> float:
    """Fraction of labelled pixels (in either map) whose class differs between two label maps.

    Parameters
    ----------
    previous, current : numpy.ndarray or sequence of numpy.ndarray
        Two label maps, or the label maps of several images in the same order: their pixels
        are counted together, so that each image weighs by its labelled pixels (a corrected
        image with a few trusted cells does not count as much as a boxed one).

    Returns
    -------
    float
        Changed over labelled pixels (0 when no pixel is labelled).
    """
    if isinstance(previous, np.ndarray):
        previous, current = [previous], [current]
    changed = labelled = 0
    for before, after in zip(previous, current, strict=True):
        labelled += int(np.count_nonzero((before != IGNORE) | (after != IGNORE)))
        # a pixel that changed is labelled in one map at least: counted without copying
        changed += int(np.count_nonzero(before != after))
    return changed / labelled if labelled else 0.0


def exchange_labels(
    contexts: Sequence[ExchangeContext],
    probas: Sequence[Sequence[np.ndarray]],
    settings: ExchangeSettings,
    *,
    check: Callable[[], None] | None = None,
) -> list[list[np.ndarray]]:
    """The next training labels of A and B: A learns from B's prediction and B from A's.

    Each prediction is combined with the box labels (:meth:`ExchangeContext.combine`). With
    ``teacher="self"`` each network learns from its own prediction instead; with
    ``agreement`` the pixels where A and B disagree, inside a box but outside its core and
    not edited, stay ignored for both.

    Parameters
    ----------
    contexts : sequence of ExchangeContext
        One per training image.
    probas : sequence of two sequences of numpy.ndarray
        A's and B's ``(3, H, W)`` probabilities of every image.
    settings : ExchangeSettings
        The exchange settings.
    check : callable, optional
        Called before each image is combined; whatever it raises stops the exchange (how a
        cancelled training stops).

    Returns
    -------
    list of two lists of numpy.ndarray
        A's labels and B's labels, one uint8 map per image.
    """

    def combined(ps: Sequence[np.ndarray]) -> list[np.ndarray]:
        labels = []
        for ctx, p in zip(contexts, ps, strict=True):
            if check is not None:
                check()
            labels.append(ctx.combine(p, settings))
        return labels

    from_b, from_a = combined(probas[1]), combined(probas[0])
    if settings.teacher == "self":
        return [from_a, from_b]
    if settings.agreement:
        for ctx, pa, pb, la, lb in zip(contexts, *probas, from_a, from_b, strict=True):
            differ = top_class(pa) != top_class(pb)
            unsure = differ & ctx.in_box & ~ctx.core & ~ctx.edited
            la[unsure] = IGNORE
            lb[unsure] = IGNORE
    return [from_b, from_a]


def found_fraction(
    probas: Sequence[np.ndarray],
    contexts: Sequence[ExchangeContext],
    settings: ExchangeSettings,
    *,
    objects: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
) -> float:
    """Fraction of all boxes whose object the prediction found (1 when there are no boxes).

    A box's object (:func:`~napari_mutualseg.inference.box_objects`) counts as found when the
    exchange would pass it on: its area is at least ``settings.min_core_fraction`` of the area
    of the box's core and at most ``settings.leak_fraction`` of the box, and where boxes
    overlap, their objects fill at most ``settings.leak_fraction`` of the group's pixels
    outside every ellipse. A prediction that calls a whole box, or a whole group of boxes,
    foreground has not found the cells in it (networks early in training do this
    everywhere, and their labels then stay those of round 1 without having settled).

    Parameters
    ----------
    probas : sequence of numpy.ndarray
        ``(3, H, W)`` probabilities of every image.
    contexts : sequence of ExchangeContext
        One per image.
    settings : ExchangeSettings
        The foreground threshold, least core fraction and leak fraction.
    objects : sequence of tuple of numpy.ndarray, optional
        Each image's :meth:`ExchangeContext.objects` of ``probas``, when already read (a loop
        over the boxes: seconds on a large image).

    Returns
    -------
    float
        Boxes found over all boxes.
    """
    if objects is None:
        objects = [ctx.objects(p, settings) for p, ctx in zip(probas, contexts, strict=True)]
    hits = total = 0
    for (labels, ratio), ctx in zip(objects, contexts, strict=True):
        fallback = ctx._fallback_boxes(
            labels, ratio, settings.min_core_fraction, settings.leak_fraction
        )
        hits += int((~fallback).sum())
        total += ratio.size
    return hits / total if total else 1.0
