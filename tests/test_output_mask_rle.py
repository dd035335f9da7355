"""Instance masks in provenance: COCO RLE that pycocotools (and every COCO tool) reads back."""

from __future__ import annotations

import numpy as np
import pytest

from mtcolor_batch.output.mask_rle import RECORD_LONG_SIDE, decode_mask, encode_mask


def test_round_trip_and_pycocotools_compatible() -> None:
    from pycocotools import mask as coco_mask

    m = np.zeros((37, 53), dtype=bool)
    m[5:20, 10:40] = True
    m[25:30, 3:7] = True
    rle = encode_mask(m)
    assert rle["size"] == [37, 53] and isinstance(rle["counts"], str)
    assert np.array_equal(decode_mask(rle), m)
    coco = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    assert int(coco_mask.area(coco)) == int(m.sum())


def test_large_masks_are_recorded_downscaled_and_scaled_back() -> None:
    m = np.zeros((1500, 3000), dtype=bool)
    m[300:900, 600:2400] = True
    rle = encode_mask(m)
    assert max(rle["size"]) == RECORD_LONG_SIDE and len(rle["counts"]) < 4000
    back = decode_mask(rle, (1500, 3000))
    assert back.shape == m.shape and np.mean(back != m) < 0.01


def test_uncompressed_counts_and_bad_input() -> None:
    assert decode_mask({"size": [2, 2], "counts": [1, 2, 1]}).tolist() == [[False, True], [True, False]]
    with pytest.raises(ValueError, match="add up"):
        decode_mask({"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(ValueError, match="size"):
        decode_mask({"counts": "abc"})
