"""Where to draw a network's buses, and how far each lies electrically from the transformer that feeds it.

The dashboard draws the feeder as a graph and the voltage along its worst feeder. Both come from one spanning
tree of the network, grown breadth-first from the external grid over what is in service (lines, transformers and
closed switches, through pandapower's own graph): a bus's ``parent`` is the bus before it on the way to the
external grid. Positions are the network's bus geodata (GeoJSON points, as SimBench and pandapower 3 keep them)
where every bus has some, else a tree layout: x is the number of hops from the external grid, y spreads the
leaves evenly and puts each bus at the middle of its children.

A bus's electrical distance is the sum of the series impedance magnitudes ``|R + jX|`` (ohm) of the lines between
it and the transformer feeding its grid; it restarts at zero behind each transformer, so that ohms of one
voltage level are never added to another's. Buses of the external grid's own grid count from the external grid.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass

import numpy as np
import pandapower as pp
import pandapower.topology as top

#: Where a bus's position came from.
GEODATA, TREE = "geodata", "tree"


@dataclass(frozen=True)
class Layout:
    """A network's buses in index order: position, place in the tree, and electrical distance.

    ``parent`` holds positions (into ``buses``), -1 at the external grid and at buses the tree does not reach
    (whose coordinates and distance are NaN); ``behind_transformer`` is True where the edge to the parent is a
    transformer, which is where a feeder starts; ``fed`` is True at buses with a transformer on their way to the
    external grid. ``line_ends`` and ``transformer_ends`` are the positions of each
    line's from and to bus and each transformer's high- and low-voltage bus, in the tables' index order.
    """

    buses: np.ndarray
    x: np.ndarray
    y: np.ndarray
    source: str
    parent: np.ndarray
    behind_transformer: np.ndarray
    distance_ohm: np.ndarray
    fed: np.ndarray
    line_ends: np.ndarray
    transformer_ends: np.ndarray

    def feeder_path(self, position: int) -> list[int]:
        """The buses (positions) from the start of ``position``'s feeder (its transformer's LV busbar) to it."""
        path = [position]
        while self.parent[path[-1]] >= 0 and not self.behind_transformer[path[-1]]:
            path.append(int(self.parent[path[-1]]))
        return path[::-1]


def network_layout(net: pp.pandapowerNet) -> Layout:
    """The spanning tree from the external grid, positions from geodata (else a tree layout), and distances."""
    buses = net.bus.index.to_numpy()
    position = {int(b): k for k, b in enumerate(buses)}
    graph = top.create_nxgraph(net, calc_branch_impedances=True, branch_impedance_unit="ohm")
    slack = [int(b) for b in net.ext_grid.loc[net.ext_grid["in_service"].astype(bool), "bus"]]
    parent = np.full(len(buses), -1, dtype=np.int64)
    behind = np.zeros(len(buses), dtype=bool)
    fed = np.zeros(len(buses), dtype=bool)
    distance = np.full(len(buses), np.nan)
    depth = np.full(len(buses), -1, dtype=np.int64)
    order: list[int] = []
    queue: deque[int] = deque()
    for bus in slack:
        if bus in position and depth[position[bus]] < 0:
            depth[position[bus]], distance[position[bus]] = 0, 0.0
            queue.append(bus)
    while queue:  # breadth first, so that depth is the number of hops from the external grid
        bus = queue.popleft()
        k = position[bus]
        order.append(k)
        for neighbour, edges in graph.adj[bus].items():
            j = position.get(int(neighbour))
            if j is None or depth[j] >= 0:
                continue
            # parallel elements between two buses: a transformer among them starts a feeder; else the least impedance
            z_ohm = min(float(data.get("z_ohm", 0.0) or 0.0) for data in edges.values())
            parent[j], depth[j] = k, depth[k] + 1
            behind[j] = any(key[0] in ("trafo", "trafo3w") for key in edges)
            fed[j] = behind[j] or fed[k]
            distance[j] = 0.0 if behind[j] else distance[k] + (z_ohm if np.isfinite(z_ohm) else 0.0)
            queue.append(int(neighbour))
    geo = _geodata(net)
    if geo is not None:
        x, y = geo
        source = GEODATA
    else:
        x, y = _tree_positions(parent, depth, order)
        source = TREE
    line_ends = np.array([[position[int(b)] for b in pair] for pair in net.line[["from_bus", "to_bus"]].to_numpy()])
    trafo_ends = np.array([[position[int(b)] for b in pair] for pair in net.trafo[["hv_bus", "lv_bus"]].to_numpy()])
    return Layout(
        buses,
        x,
        y,
        source,
        parent,
        behind,
        distance,
        fed,
        line_ends.reshape(-1, 2).astype(np.int64),
        trafo_ends.reshape(-1, 2).astype(np.int64),
    )


def extreme_feeders(layout: Layout, vm_pu: np.ndarray) -> dict[str, list[int]]:
    """The feeder paths (bus positions, from the transformer out) to the buses of highest and lowest voltage.

    Only buses behind a transformer are looked at, where the network has any.

    ``vm_pu`` is aligned with ``layout.buses``; NaN (not energised) is passed over. Empty when no bus has a voltage.
    """
    vm = np.asarray(vm_pu, dtype=float)
    if layout.fed.any():  # the feeders behind transformers: the external grid's own bus is no feeder's end
        vm = np.where(layout.fed, vm, np.nan)
    if not np.isfinite(vm).any():
        return {}
    return {
        "highest": layout.feeder_path(int(np.nanargmax(vm))),
        "lowest": layout.feeder_path(int(np.nanargmin(vm))),
    }


def _geodata(net: pp.pandapowerNet) -> tuple[np.ndarray, np.ndarray] | None:
    """x and y of every bus from its GeoJSON point (``net.bus.geo``), or None when any bus lacks one."""
    if "geo" not in net.bus:
        return None
    x, y = np.empty(len(net.bus)), np.empty(len(net.bus))
    for k, text in enumerate(net.bus["geo"].tolist()):
        try:
            point = json.loads(text) if isinstance(text, str) else text
            x[k], y[k] = (float(c) for c in point["coordinates"][:2])
        except (TypeError, ValueError, KeyError, IndexError):
            return None
    if not (np.isfinite(x).all() and np.isfinite(y).all()) or np.ptp(x) + np.ptp(y) == 0:
        return None  # all on one point draws nothing useful
    return x, y


def _tree_positions(parent: np.ndarray, depth: np.ndarray, order: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """x = hops from the external grid; leaves one apart on y, each parent at the middle of its children."""
    children: dict[int, list[int]] = {}
    for k in order:
        if parent[k] >= 0:
            children.setdefault(int(parent[k]), []).append(k)
    x = np.where(depth >= 0, depth, np.nan).astype(float)
    y = np.full(len(parent), np.nan)
    leaves = 0
    for k in _post_order(children, [k for k in order if parent[k] < 0]):
        below = children.get(k)
        if below:
            y[k] = (y[below[0]] + y[below[-1]]) / 2
        else:
            y[k] = -leaves  # top to bottom
            leaves += 1
    return x, y


def _post_order(children: dict[int, list[int]], roots: list[int]) -> list[int]:
    """Every bus after its children, depth first, without recursion (feeders can be thousands of buses deep)."""
    seen: list[int] = []
    stack = [(root, False) for root in reversed(roots)]
    while stack:
        k, expanded = stack.pop()
        if expanded:
            seen.append(k)
            continue
        stack.append((k, True))
        stack.extend((child, False) for child in reversed(children.get(k, [])))
    return seen
