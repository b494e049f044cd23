"""The cluster: nodes x devices per node, and the meshes calls may run on.

Devices are numbered globally node-major: device g of node n is n * per_node + g.
Every mesh the planner uses is a contiguous range of that numbering: an
aligned power-of-two block of devices inside one node (1, 2, 4, ... devices
starting at a multiple of the size), or whole consecutive nodes. The planner
only enumerates whole-node ranges that are aligned power-of-two blocks of
nodes, plus all nodes, so any two meshes it picks are disjoint or nested (the
rule manual placements follow too).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..contract.sharding import Layout
from .profiles import Profile


@dataclass(frozen=True, order=True)
class Mesh:
    """A contiguous range of global device indices: [start, start + size)."""

    start: int
    size: int

    @property
    def stop(self) -> int:
        return self.start + self.size

    def contains(self, other: Mesh) -> bool:
        return self.start <= other.start and other.stop <= self.stop

    def overlaps(self, other: Mesh) -> bool:
        return self.start < other.stop and other.start < self.stop

    def layout(self, dp: int, tp: int, pp: int) -> Layout:
        """A (dp, tp, pp) strategy on this mesh, as the layout its call runs under."""
        return Layout(tuple(range(self.start, self.stop)), pp=pp, dp=dp, tp=tp)


@dataclass(frozen=True)
class Cluster:
    nodes: int
    per_node: int
    profile: Profile

    @property
    def devices(self) -> int:
        return self.nodes * self.per_node

    def full(self) -> Mesh:
        return Mesh(0, self.devices)

    def node_of(self, device: int) -> int:
        return device // self.per_node

    def pairs(self, mesh: Mesh) -> list[tuple[int, int]]:
        """The (node, device) pairs of a mesh, in rank order."""
        return [divmod(g, self.per_node) for g in range(mesh.start, mesh.stop)]

    def nodes_of(self, mesh: Mesh) -> int:
        return self.node_of(mesh.stop - 1) - self.node_of(mesh.start) + 1

    def is_valid(self, mesh: Mesh) -> bool:
        if mesh.size < 1 or mesh.start < 0 or mesh.stop > self.devices:
            return False
        if mesh.size <= self.per_node and self.node_of(mesh.start) == self.node_of(mesh.stop - 1):
            if mesh.size == self.per_node:
                return mesh.start % self.per_node == 0
            local = mesh.start % self.per_node
            return mesh.size & (mesh.size - 1) == 0 and local % mesh.size == 0
        return mesh.start % self.per_node == 0 and mesh.size % self.per_node == 0

    def to_string(self, mesh: Mesh) -> str:
        """The mesh in the manifest's notation: N, N-M or N:A-B."""
        n0, g0 = divmod(mesh.start, self.per_node)
        if mesh.size >= self.per_node and g0 == 0 and mesh.size % self.per_node == 0:
            n1 = n0 + mesh.size // self.per_node - 1
            return f"{n0}" if n1 == n0 else f"{n0}-{n1}"
        g1 = g0 + mesh.size - 1
        return f"{n0}:{g0}" if g1 == g0 else f"{n0}:{g0}-{g1}"

    def from_pairs(self, pairs: list[tuple[int, int]]) -> Mesh | None:
        """The mesh of a list of (node, device) pairs, if they form one in rank order."""
        if not pairs:
            return None
        idx = [n * self.per_node + g for n, g in pairs]
        mesh = Mesh(idx[0], len(idx))
        if idx != list(range(mesh.start, mesh.stop)) or not self.is_valid(mesh):
            return None
        return mesh

    def meshes(self) -> list[Mesh]:
        """All meshes the search may use (see the module docstring), smallest first."""
        out: list[Mesh] = []
        size = 1
        while size < self.per_node:
            for node in range(self.nodes):
                for start in range(0, self.per_node - size + 1, size):
                    out.append(Mesh(node * self.per_node + start, size))
            size *= 2
        count = 1
        while count <= self.nodes:
            for first in range(0, self.nodes - count + 1, count):
                out.append(Mesh(first * self.per_node, count * self.per_node))
            count *= 2
        if self.nodes & (self.nodes - 1):
            out.append(self.full())
        return out
