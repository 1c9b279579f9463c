"""The viewer's library parts on stand-in models: slice embeddings computed once each, in full batches; mask editing
click by click (prompts accumulate, negative clicks, undo, clear) and by boxes (a box starts its slice anew, clicks
refine it), propagation equal to `eval.predict`'s from a click and from a box, edited slices kept, the Dice kept by
per-slice counts equal to `dice_3d` on the native grid."""

import types

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from sam_jax.data.boxes import PROPAGATION_MARGIN
from sam_jax.evaluation import ClickError, mask_editing
from sam_jax.evaluation.mask_editing import MaskEditor
from sam_jax.evaluation.propagation import UNREACHED, propagate
from sam_jax.evaluation.slice_embeddings import SliceEmbeddings
from sam_jax.evaluation.volume import CaseVolume
from sam_jax.metrics import dice_3d


class CountingEncoder:
    """Embeds slice k as the value k; records the slices of every call."""

    batch_size = 4

    def __init__(self):
        self.calls = []

    def encode(self, slices, which=None):
        self.calls.append(list(which))
        return jnp.asarray(np.asarray(which, np.float32)[:, None, None, None])


class ComponentSegmenter:
    """On slice k (its 'embedding' is k): a box gives the truth inside it, then each positive click adds the truth's
    2-D component under it (nothing outside the truth), each negative click removes the 3×3 square around it. Logits
    on the slice grid."""

    def __init__(self, truth):
        self.truth = truth
        self.components = [ndimage.label(t)[0] for t in truth]

    def decode(self, embeddings, coords, labels, hw, mask_input=None, boxes=None):
        n = len(embeddings)
        out = np.full((n,) + tuple(hw), -5.0, np.float32)
        for i, k in enumerate(np.asarray(embeddings).reshape(n, -1)[:, 0].astype(int)):
            if boxes is not None:
                x0, y0, x1, y1 = np.asarray(boxes[i]).astype(int)
                inside = np.zeros(hw, bool)
                inside[y0 : y1 + 1, x0 : x1 + 1] = True
                out[i][inside & self.truth[k]] = 5.0
            for (x, y), label in zip(coords[i] if coords is not None else (), labels[i] if coords is not None else ()):
                x, y = int(x), int(y)
                square = (slice(max(y - 1, 0), y + 2), slice(max(x - 1, 0), x + 2))
                if label == 0:
                    out[i][square] = -5.0
                elif component := self.components[k][y, x]:
                    out[i][self.components[k] == component] = 5.0
        return out

    def to_slice_grid(self, low_res, hw):
        return low_res


def test_each_slice_is_encoded_once_in_full_batches():
    encoder = CountingEncoder()
    embeddings = SliceEmbeddings(encoder, np.zeros((10, 4, 4, 1)))
    assert float(embeddings[7:8][0, 0, 0, 0]) == 7 and encoder.calls == [[7]]
    embeddings.precompute(first=5)
    assert embeddings.computed == 10 and all(len(call) == 4 for call in encoder.calls[1:])
    assert sorted(k for call in encoder.calls for k in call if k != 7).count(0) <= 2  # the last batch topped up
    calls = len(encoder.calls)
    assert np.array_equal(np.asarray(embeddings[0:10]).ravel(), np.arange(10)) and len(encoder.calls) == calls
    with pytest.raises(TypeError):
        embeddings[3]


@pytest.fixture
def case_volume():
    """A 12×10×8 native volume whose model slices are the crop x 2–10, y 1–8, z 1–6 (6 slices of 8×9 pixels), with a
    4×4 tumour section on native slices 2–6."""
    seg = np.zeros((12, 10, 8), np.int16)
    seg[4:8, 3:7, 2:7] = 2
    box = ((2, 11), (1, 9), (1, 7))
    cropped = seg[2:11, 1:9, 1:7].transpose(2, 1, 0) > 0  # (Z', H, W)
    case = types.SimpleNamespace(images={"t1n": np.zeros(seg.shape, np.float32)}, seg=seg, case_id="stand-in")
    return CaseVolume(case, np.zeros(cropped.shape + (1,), np.float32), cropped, box)


def _editor(segmenter, volume) -> MaskEditor:
    """An editor whose case is always at hand, each slice's 'embedding' its index."""
    return MaskEditor(segmenter, lambda: types.SimpleNamespace(volume=volume, embeddings=np.arange(6)))


def test_clicks_accumulate_edit_and_undo(case_volume):
    editor = _editor(ComponentSegmenter(case_volume.tumour), case_volume)
    assert editor.click(5, 4, 2).sum() == 16 and editor.voxels() == 16  # the slice's tumour section
    editor.click(5, 4, 3)
    assert editor.voxels() == 32
    editor.click(5, 4, 3, positive=False)  # added to the same slice's prompt: a 3×3 hole
    assert editor.voxels() == 23
    assert editor.clicks() == [
        dict(x=5, y=4, z=2, positive=True, by_user=True),
        dict(x=5, y=4, z=3, positive=True, by_user=True),
        dict(x=5, y=4, z=3, positive=False, by_user=True),
    ]
    assert editor.undo() and editor.voxels() == 32
    editor.clear_slice(3)
    assert editor.voxels() == 16 and editor.undo() and editor.voxels() == 32
    editor.clear()
    assert editor.voxels() == 0 and editor.dice() == 0.0 and editor.undo() and editor.voxels() == 32
    for bad in ((0, 4, 3), (5, 4, 0), (5, 4, 8)):
        with pytest.raises(ClickError, match="outside"):
            editor.click(*bad)
    while editor.undo():
        pass
    assert editor.voxels() == 0 and not editor.undo()


def test_undo_keeps_the_last_steps_only(case_volume):
    """A session of many changes keeps UNDO_STEPS states: undo walks back that far and no further."""
    editor = _editor(ComponentSegmenter(case_volume.tumour), case_volume)
    editor.click(5, 4, 2)
    for _ in range(mask_editing.UNDO_STEPS + 10):  # each a change: clear the slice, then click it again
        editor.clear_slice(2)
        editor.click(5, 4, 2)
    undone = 0
    while editor.undo():
        undone += 1
    assert undone == mask_editing.UNDO_STEPS and editor.voxels() == 16  # not back to the empty start


def test_propagation_is_eval_predicts_and_keeps_edited_slices(case_volume):
    segmenter = ComponentSegmenter(case_volume.tumour)
    editor = _editor(segmenter, case_volume)
    with pytest.raises(ClickError, match="click the tumour first"):
        editor.propagate(3)
    editor.click(5, 4, 3)
    assert editor.propagate(3) == [0, 1, 3, 4, 5]  # every other model slice: native z 1 (empty), 2, 4, 5, 6
    logits = propagate(segmenter, np.arange(6), (8, 9), [(3, 3, 2)])  # eval.predict's path, same click
    expected = case_volume.to_native(logits, fill=UNREACHED) > 0
    assert np.array_equal(editor.native_mask(), expected) and np.array_equal(expected, case_volume.case.seg > 0)
    assert editor.dice() == 1.0 == dice_3d(editor.native_mask(), case_volume.case.seg > 0)
    assert [c["by_user"] for c in editor.clicks()] == [False, False, True, False, False, False]

    editor.click(4, 3, 5, positive=False)  # the user edits a propagated slice: a hole in native slice 5
    editor.propagate(3)
    native = editor.native_mask()
    assert not native[4:6, 3:5, 5].any() and native[6:8, 3:7, 5].all() and native[4:6, 5:7, 5].all()  # kept
    assert native[4:8, 3:7, [2, 3, 4, 6]].all()  # and the walk went on past it
    assert editor.dice() == pytest.approx(dice_3d(native, case_volume.case.seg > 0))


def test_a_box_starts_its_slice_anew_and_propagates_by_boxes_as_eval_predict(case_volume):
    segmenter = ComponentSegmenter(case_volume.tumour)
    editor = _editor(segmenter, case_volume)
    editor.click(5, 4, 3, positive=False)
    assert editor.voxels() == 0
    assert editor.box(7, 6, 4, 3, 3).sum() == 16  # opposite corners in any order; the earlier click is gone
    assert editor.boxes() == [dict(x0=4, y0=3, x1=7, y1=6, z=3, by_user=True)] and editor.clicks() == []
    editor.click(5, 4, 3, positive=False)  # a click refines the boxed slice: a 3×3 hole in the box's mask
    assert editor.voxels() == 16 - 9 and editor.boxes()[0]["by_user"] and len(editor.clicks()) == 1
    editor.undo()
    assert editor.box(0, 0, 11, 9, 3).sum() == 16  # unclipped, the stand-in would see a box from (-2, -1)
    assert editor.boxes() == [dict(x0=2, y0=1, x1=10, y1=8, z=3, by_user=True)]  # the crop: native x 2–10, y 1–8
    editor.undo()

    assert editor.propagate(3) == [0, 1, 3, 4, 5]
    logits = propagate(segmenter, np.arange(6), (8, 9), [], [(2, 2, 5, 5, 2)])  # eval.predict --boxes's path
    expected = case_volume.to_native(logits, fill=UNREACHED) > 0
    assert np.array_equal(editor.native_mask(), expected) and np.array_equal(expected, case_volume.case.seg > 0)
    # Each next box: the previous mask's (slice x 2–5, y 2–5) widened by the margin, clipped to the 9×8 slice.
    assert PROPAGATION_MARGIN == 3
    assert editor.boxes()[0] == dict(x0=2, y0=1, x1=10, y1=8, z=1, by_user=False)
    assert [b["by_user"] for b in editor.boxes()] == [False, False, True, False, False, False]
    assert editor.dice() == 1.0 and editor.clicks() == []
    with pytest.raises(ClickError, match="outside the brain"):
        editor.box(0, 0, 1, 0, 3)
