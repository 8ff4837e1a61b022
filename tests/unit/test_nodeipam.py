"""The node IPAM block allocator."""

from __future__ import annotations

import pytest

from controllers.nodeipam import CidrSet


def test_allocates_lowest_free_block_and_reuses_released() -> None:
    s = CidrSet("10.244.0.0/16", 24)
    assert s.occupy("10.244.1.0/24")
    assert [s.allocate() for _ in range(3)] == ["10.244.0.0/24", "10.244.2.0/24", "10.244.3.0/24"]
    s.release("10.244.2.0/24")
    assert s.allocate() == "10.244.2.0/24"
    assert not s.occupy("10.99.0.0/24") and not s.occupy("10.244.5.0/25") and not s.occupy("garbage")


def test_full_range_and_bad_mask() -> None:
    s = CidrSet("10.0.0.0/23", 24)
    s.allocate()
    s.allocate()
    with pytest.raises(RuntimeError, match="full"):
        s.allocate()
    with pytest.raises(ValueError, match="node_cidr_mask_size"):
        CidrSet("10.0.0.0/16", 8)
