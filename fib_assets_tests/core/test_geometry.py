import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fib_assets.core.geometry import (
    BlockPlan,
    RegionKeyError,
    Roi,
    VoxelSize,
    pyramid_shapes,
    validate_region_key,
)


@pytest.mark.parametrize("key", ["r001", "a", "hela-2_cell", "0" * 63], ids=str)
def test_valid_region_keys(key):
    assert validate_region_key(key) == key


@pytest.mark.parametrize(
    "key",
    ["", "R001", "../etc", "a/b", "_r1", "-r1", "r 1", "r1\n", "0" * 64, "région"],
    ids=[
        "empty",
        "upper",
        "dotdot",
        "slash",
        "underscore",
        "dash",
        "space",
        "newline",
        "long",
        "accent",
    ],
)
def test_invalid_region_keys_name_the_key(key):
    with pytest.raises(RegionKeyError, match="invalid region key"):
        validate_region_key(key)


def test_voxel_size_validates_and_round_trips():
    v = VoxelSize(8.0, 4.0, 4.0)
    assert VoxelSize.from_dict(v.to_dict()) == v
    assert v.scaled((2, 2, 2)) == VoxelSize(16.0, 8.0, 8.0)
    with pytest.raises(ValueError, match="voxel size y"):
        VoxelSize(8.0, -1.0, 8.0)
    with pytest.raises(ValueError, match="missing axes"):
        VoxelSize.from_dict({"z": 1, "y": 1})


def test_roi_intersect_grow_contains():
    a = Roi((0, 0, 0), (10, 10, 10))
    b = Roi((5, 8, -2), (10, 10, 4))
    assert a.intersect(b) == Roi((5, 8, 0), (5, 2, 2))
    assert a.contains(Roi((1, 1, 1), (2, 2, 2)))
    assert not a.contains(b)
    assert Roi((2, 2, 2), (1, 1, 1)).grow((1, 1, 1)) == Roi((1, 1, 1), (3, 3, 3))
    assert Roi.from_dict(b.to_dict()) == b


@settings(deadline=None, max_examples=60)
@given(
    shape=st.tuples(*[st.integers(1, 24)] * 3),
    block=st.tuples(*[st.integers(2, 12)] * 3),
    halo=st.tuples(*[st.integers(0, 3)] * 3),
)
def test_block_plan_covers_volume_exactly_once(shape, block, halo):
    plan = BlockPlan(shape, block, halo)
    cover = np.zeros(shape, dtype=np.int32)
    volume = Roi((0, 0, 0), shape)
    for b in plan.blocks():
        cover[b.write_roi.to_slices()] += 1
        assert volume.contains(b.read_roi)
        assert b.read_roi.contains(b.write_roi)
    assert (cover == 1).all()
    assert len(list(plan.blocks())) == len(plan)
    assert BlockPlan.from_dict(plan.to_dict()) == plan


def test_block_plan_rejects_bad_shapes():
    with pytest.raises(ValueError, match="block_shape"):
        BlockPlan((10, 10, 10), (0, 4, 4))
    with pytest.raises(ValueError, match="3 values"):
        BlockPlan((10, 10), (4, 4, 4))


def test_pyramid_shapes_stop_before_min_size():
    assert pyramid_shapes((128, 100, 70), min_size=16) == [
        (128, 100, 70),
        (64, 50, 35),
        (32, 25, 18),
    ]
