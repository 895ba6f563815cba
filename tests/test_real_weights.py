"""The seed notebook's stored predictions, checked only where the real released weights are in the cache."""

from __future__ import annotations

import numpy as np
import pytest

import synchlib
from synchlib import checkpoints

from .conftest import RELEASED_ID, SAMPLE_A, SAMPLE_B

PUBLISHED_MD5_PREFIX = checkpoints.RELEASED[RELEASED_ID].md5_prefix  # read before any test patches the registry


def _real_weights():
    path = checkpoints.cache_dir() / RELEASED_ID / f"{RELEASED_ID}.pt"
    if not path.is_file():
        pytest.skip(f"the real {RELEASED_ID} weights are not in the cache ({path}); run `synchlib fetch {RELEASED_ID}`")
    if not checkpoints.file_md5(path).startswith(PUBLISHED_MD5_PREFIX):
        pytest.skip(f"{path} is not the released {RELEASED_ID} checkpoint (md5 differs)")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("video,offset,start,expected", [(SAMPLE_A, 1.6, 0.0, 18), (SAMPLE_B, -2.0, 4.0, 0)])
def test_seed_predictions_with_real_weights(video, offset, start, expected):
    """The seed notebook's stored predictions (24-01-04T16-39-21; 3qesirWAGt4 +1.6 s -> class 18,
    ZYc410CE4Rg -2.0 s from 4.0 s -> class 0)."""
    path = _real_weights()
    model = synchlib.load_model(path, device="auto", config=RELEASED_ID)
    pred = synchlib.predict(model, video, offset_sec=offset, start_sec=start)
    assert pred.class_index == expected == pred.target_class
    assert np.isclose(pred.offset_sec, model.cfg.grid[expected])
