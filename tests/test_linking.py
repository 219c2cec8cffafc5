"""3D objects from per-plane labels, and labels kept across the frames of a time series."""

import numpy as np
import pytest
from skimage.measure import label

from napari_mutualseg.linking import StackLinker, link_labels, link_slices
from napari_mutualseg.metrics import evaluate
from napari_mutualseg.synthetic import synthetic_volume


def test_a_cell_through_z_gets_one_label_and_neighbours_stay_apart():
    planes = np.zeros((3, 20, 30), np.int32)
    planes[0, 2:10, 2:10] = 5  # cell A, shrinking towards its top
    planes[1, 1:12, 1:12] = 1
    planes[2, 4:7, 4:7] = 9
    planes[0, 2:10, 14:22] = 7  # cell B beside it, in planes 0 and 1 only
    planes[1, 2:10, 13:22] = 3
    planes[2, 12:18, 24:29] = 4  # a new cell in the last plane
    out = link_slices(planes)
    a, b = out[1, 5, 5], out[1, 5, 16]
    assert a != b and (out[:, 5, 5] == a).all() and out[0, 5, 16] == b
    assert out.max() == 3 and out[2, 15, 26] == 3
    assert out.dtype == np.int32


def test_linking_the_true_cross_sections_recovers_the_3d_cells():
    _, truth = synthetic_volume((12, 64, 64), 6, seed=3)
    per_plane = np.stack([label(p > 0) for p in truth])  # ids restart in every plane
    assert evaluate(per_plane, truth)["map"] < 0.3
    assert evaluate(link_slices(per_plane), truth)["map"] == 1.0


def test_time_series_are_tracked_only_when_asked():
    frames = np.zeros((3, 2, 16, 16), np.int32)  # T, Z, Y, X
    frames[:, :, 3:9, 3:9] = 1  # a cell that stays, two planes thick
    frames[1:, :, 10:15, 10:15] = 2  # a cell that appears in frame 1
    frames[2, :, 3:9, 3:9] = 4  # the first cell, another id in the last frame
    linked = link_labels(frames, "TZYX")  # each frame on its own: labels 1 and 2 again
    assert linked[2, 0, 5, 5] == linked[2, 1, 5, 5] != linked[2, 0, 12, 12]
    assert linked[2].max() == 2
    tracked = link_labels(frames, "TZYX", track=True)
    assert (tracked[:, :, 5, 5] == tracked[0, 0, 5, 5]).all()
    assert tracked[1, 0, 12, 12] == tracked[2, 1, 12, 12] != tracked[0, 0, 5, 5]
    unlinked = link_labels(frames, "TZYX", link=False)  # planes apart within each frame
    np.testing.assert_array_equal(unlinked[:, 0], frames[:, 0])
    np.testing.assert_array_equal(
        unlinked[:, 1], np.where(frames[:, 1] > 0, frames[:, 1] + [[[1]], [[2]], [[4]]], 0)
    )
    with pytest.raises(ValueError, match="TZYX"):
        link_labels(frames, "CZYX")


def test_a_tracked_cell_missed_in_one_frame_keeps_its_label():
    frames = np.zeros((5, 24, 24), np.int32)
    frames[:, 2:8, 2:8] = 1  # a cell in every frame
    frames[[0, 1, 3, 4], 14:20, 14:20] = 2  # a cell the segmentation missed in frame 2
    frames[4, 14:20, 2:8] = 3  # a new cell in the last frame
    tracked = link_labels(frames, "TYX", track=True)
    assert (tracked[:, 16, 16][[0, 1, 3, 4]] == tracked[0, 16, 16]).all()
    assert tracked[4, 16, 4] not in (tracked[0, 4, 4], tracked[0, 16, 16])
    # a longer gap, or none allowed: a new label
    assert link_labels(frames, "TYX", track=True, max_gap=0)[3, 16, 16] != tracked[0, 16, 16]
    frames[3, 14:20, 14:20] = 0
    assert link_labels(frames, "TYX", track=True)[4, 16, 16] != tracked[0, 16, 16]
    with pytest.raises(ValueError, match="max_gap"):
        link_slices(frames, max_gap=-1)


@pytest.mark.parametrize(
    ("axes", "settings"),
    [
        ("ZYX", {}),
        ("ZYX", {"link": False}),
        ("TYX", {"track": True, "max_gap": 2}),
        ("TZYX", {"track": True}),
        ("TZYX", {"link": False}),
    ],
)
def test_planes_linked_one_at_a_time_are_the_stack_linked_whole(axes, settings):
    """The stack linker, fed a plane at a time, gives each plane the labels ``link_labels``
    gives the whole stack, the cells of a missed frame (max_gap) included."""
    _, truth = synthetic_volume((6, 48, 48), 8, seed=1)
    per_plane = np.stack([label(p > 0) for p in truth])
    per_plane[3][per_plane[3] == per_plane[3].max()] = 0  # a cell missed in one plane
    shape = (2, 3, 48, 48) if axes == "TZYX" else per_plane.shape
    stack = per_plane.reshape(shape)
    whole = link_labels(stack, axes, **settings)
    linker = StackLinker(axes, shape, **settings)
    streamed = np.zeros_like(per_plane)
    whole_frames = axes == "TZYX" and settings.get("track")  # tracking links 3-plane frames
    for k, plane in enumerate(per_plane):
        given = linker.add(plane)
        # every plane given back at once (the stack is never held), a tracked frame when whole
        wanted = ([*range(k - 2, k + 1)] if k % 3 == 2 else []) if whole_frames else [k]
        assert [index for index, _ in given] == wanted
        for index, final in given:
            streamed[index] = final
    np.testing.assert_array_equal(streamed.reshape(shape), whole)


@pytest.mark.parametrize("axes", ["ZYX", "TYX"])
def test_overlaps_counted_in_a_table_or_by_sorting_link_alike(monkeypatch, axes):
    """Linking counts overlaps with the rule scoring uses (metrics.overlap_counts), which
    counts in a table or by sorting, as the ids allow: the labels are the same either way."""
    from napari_mutualseg import metrics

    _, truth = synthetic_volume((6, 48, 48), 8, seed=4)
    per_plane = np.stack([label(p > 0) for p in truth])
    per_plane[3][per_plane[3] == 1] = 0  # a cell missed in one plane: a gap to bridge
    settings = {"track": True, "max_gap": 2} if axes == "TYX" else {}
    tabled = link_labels(per_plane, axes, **settings)
    monkeypatch.setattr(metrics, "_DENSE_TABLE_LIMIT", 0)
    np.testing.assert_array_equal(link_labels(per_plane, axes, **settings), tabled)
    assert 1 < tabled.max() < sum(int(p.max()) for p in per_plane)  # objects were linked


def test_a_tracked_time_series_of_z_stacks_holds_a_few_z_stacks_while_streamed():
    """Tracking keeps the z-stack in progress and the last frame, not max_gap + 1 whole
    frames, and compares frames a plane at a time (the peak was ten z-stacks)."""
    import tracemalloc

    _, truth = synthetic_volume((8, 128, 128), 12, seed=2)
    planes = [label(p > 0).astype(np.int32) for p in truth]
    z_stack = 8 * 128 * 128 * 4
    linker = StackLinker("TZYX", (4, 8, 128, 128), track=True, max_gap=1)
    tracemalloc.start()
    try:
        for t in range(4):
            for z, plane in enumerate(planes):
                linker.add(np.zeros_like(plane) if t == 2 and z % 2 else plane)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # beyond the z-stack in progress (made with the linker): the last frame and a gap's cells
    assert held < 1.6 * z_stack and peak < 4 * z_stack


def test_ids_far_apart_link_as_ids_close_together():
    # ids counted where they are no more than the pixels, sorted where they are far apart
    planes = np.zeros((3, 8, 8), np.int64)
    planes[:, 1:5, 1:5] = [[[1]], [[2]], [[1]]]
    planes[1:, 5:8, 5:8] = 3
    linked = link_slices(planes)
    assert linked.max() == 2 and (linked[:, 2, 2] == 1).all()
    np.testing.assert_array_equal(link_slices(planes * 10**6), linked)
    # beyond memory for a table up to the largest (MemoryError)
    np.testing.assert_array_equal(link_labels(planes * 10**12, "TYX", track=True), linked)
    np.testing.assert_array_equal(link_labels(planes * 10**12, "ZYX"), linked)


def test_a_cell_missed_or_merged_in_one_plane_stays_one_3d_object():
    stack = np.zeros((7, 20, 40), np.int32)
    stack[:, 5:15, 2:12] = 1  # cell A, merged with B in plane 3
    stack[:, 5:15, 16:26] = 2  # cell B
    stack[:, 5:15, 30:38] = 3  # cell C, missed in plane 3
    stack[3, 5:15, 2:26], stack[3, 5:15, 30:38] = 1, 0
    linked = link_labels(stack, "ZYX")
    a, b, c = linked[0, 10, 5], linked[0, 10, 20], linked[0, 10, 33]
    assert (linked[:, 10, 5] == a).all() and (linked[:, 10, 33][[0, 1, 2, 4, 5, 6]] == c).all()
    assert linked[:, 10, 20].tolist() == [b, b, b, a, b, b, b] and linked.max() == 3
    # each split in two without a gap
    assert link_labels(stack, "ZYX", max_gap=0).max() == 5
    linker = StackLinker("ZYX", stack.shape)
    streamed = np.stack([final for plane in stack for _, final in linker.add(plane)])
    np.testing.assert_array_equal(streamed, linked)
