from __future__ import annotations

import pytest

from rlhf_operator.api.checks import mesh_devices
from rlhf_operator.planner.cluster import Cluster, Mesh
from rlhf_operator.planner.profiles import load_profile


@pytest.mark.parametrize("nodes,per_node", [(1, 1), (1, 2), (1, 8), (2, 8), (3, 8), (8, 8), (4, 4)])
def test_meshes_are_valid_nested_or_disjoint_and_round_trip(nodes, per_node):
    cluster = Cluster(nodes, per_node, load_profile("H100"))
    meshes = cluster.meshes()
    assert cluster.full() in meshes
    assert len(set(meshes)) == len(meshes)
    for m in meshes:
        assert cluster.is_valid(m)
        text = cluster.to_string(m)
        pairs = mesh_devices(text, nodes, per_node)
        assert pairs == cluster.pairs(m), text  # the API's parser agrees
        assert cluster.from_pairs(cluster.pairs(m)) == m
    for a in meshes:
        for b in meshes:
            assert not a.overlaps(b) or a.contains(b) or b.contains(a)


def test_mesh_strings():
    cluster = Cluster(4, 8, load_profile("H100"))
    assert cluster.to_string(Mesh(0, 32)) == "0-3"
    assert cluster.to_string(Mesh(8, 8)) == "1"
    assert cluster.to_string(Mesh(12, 4)) == "1:4-7"
    assert cluster.to_string(Mesh(13, 1)) == "1:5"
    assert not cluster.is_valid(Mesh(2, 4))  # not aligned
    assert not cluster.is_valid(Mesh(4, 8))  # straddles two nodes
    assert cluster.pairs(Mesh(12, 2)) == [(1, 4), (1, 5)]


def test_large_cluster_mesh_count():
    cluster = Cluster(128, 8, load_profile("H100"))
    meshes = cluster.meshes()
    # 128 nodes x (8 + 4 + 2) sub-node blocks, then 128 + 64 + ... + 1 node ranges
    assert len(meshes) == 128 * 14 + 255
