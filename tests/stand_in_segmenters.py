"""Stand-in models for the evaluation protocols: their predictions are known by construction, so a protocol's score
can be worked by hand."""

import numpy as np


class SquareSegmenter:
    """A stand-in model: every positive click predicts the 3×3 square centred on it, a negative click erases its
    square; logits live directly on the slice grid (no resizing)."""

    def decode(self, embeddings, coords, labels, hw, mask_input=None):
        out = np.full((len(coords),) + tuple(hw), -5.0, np.float32)
        for i in range(len(coords)):
            for (x, y), label in zip(coords[i], labels[i]):
                if label >= 0:
                    out[i, max(int(y) - 1, 0) : int(y) + 2, max(int(x) - 1, 0) : int(x) + 2] = 5.0 if label else -5.0
        return out

    def to_slice_grid(self, low_res, hw):
        return low_res


class ComponentSegmenter(SquareSegmenter):
    """Predicts, on slice k (its 'embedding' is k), the truth's 2-D component under the click: a perfect model."""

    def __init__(self, truth):
        from scipy import ndimage

        self.components = [ndimage.label(t)[0] for t in truth]

    def decode(self, embeddings, coords, labels, hw, mask_input=None):
        out = np.full((len(coords),) + tuple(hw), -5.0, np.float32)
        for i, k in enumerate(np.asarray(embeddings)):
            x, y = coords[i, 0]
            label = self.components[k][int(y), int(x)]
            if label:
                out[i][self.components[k] == label] = 5.0
        return out


class BoxSegmenter:
    """Predicts, on slice k (its 'embedding' is k), the truth inside the box (corners inclusive), or the whole box
    without a truth; takes boxes only. Logits live on the slice grid."""

    def __init__(self, truth=None):
        self.truth = truth

    def decode(self, embeddings, coords, labels, hw, mask_input=None, boxes=None):
        assert coords is None and labels is None and boxes is not None, "a box stand-in takes boxes alone"
        out = np.full((len(boxes),) + tuple(hw), -5.0, np.float32)
        for i, (k, (x0, y0, x1, y1)) in enumerate(zip(np.asarray(embeddings), np.asarray(boxes).astype(int))):
            inside = np.zeros(hw, bool)
            inside[y0 : y1 + 1, x0 : x1 + 1] = True
            out[i][inside if self.truth is None else inside & self.truth[k]] = 5.0
        return out

    def to_slice_grid(self, low_res, hw):
        return low_res
