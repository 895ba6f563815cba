"""The seed notebook's stored predictions with the real released weights (1.1 GB, downloaded from the authors'
store). Opt-in: deselected unless asked for with ``python -m pytest -m real_weights`` (conftest.py), since CI
cannot download them; asked for without the weights in the cache, they fail and say how to get them."""

from __future__ import annotations

import numpy as np
import pytest

import synchlib
from synchlib import checkpoints

from .conftest import RELEASED_ID, SAMPLE_A, SAMPLE_B

PUBLISHED_MD5_PREFIX = checkpoints.RELEASED[RELEASED_ID].md5_prefix  # read before any test patches the registry

pytestmark = [pytest.mark.real_weights, pytest.mark.slow]


def _real_weights():
    path = checkpoints.cache_dir() / RELEASED_ID / f"{RELEASED_ID}.pt"
    if not path.is_file():
        pytest.fail(
            f"the real {RELEASED_ID} weights are not in the cache ({path}): run `synchlib fetch {RELEASED_ID}` "
            "(downloads 1.1 GB from the authors' store and verifies its md5), or set SYNCHLIB_CACHE to the folder "
            "that holds them",
            pytrace=False,
        )
    if not checkpoints.file_md5(path).startswith(PUBLISHED_MD5_PREFIX):
        pytest.fail(f"{path} is not the released {RELEASED_ID} checkpoint (md5 differs): delete it and run "
                    f"`synchlib fetch {RELEASED_ID}`", pytrace=False)  # fmt: skip
    return path


@pytest.mark.parametrize("video,offset,start,expected", [(SAMPLE_A, 1.6, 0.0, 18), (SAMPLE_B, -2.0, 4.0, 0)])
def test_seed_predictions_with_real_weights(video, offset, start, expected):
    """The seed notebook's stored predictions (24-01-04T16-39-21; 3qesirWAGt4 +1.6 s -> class 18,
    ZYc410CE4Rg -2.0 s from 4.0 s -> class 0)."""
    path = _real_weights()
    model = synchlib.load_model(path, device="auto", config=RELEASED_ID)
    pred = synchlib.predict(model, video, offset_sec=offset, start_sec=start)
    assert pred.class_index == expected == pred.target_class
    assert np.isclose(pred.offset_sec, model.cfg.grid[expected])
