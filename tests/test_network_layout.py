"""Where the dashboard draws a network's buses, and the feeders to its highest and lowest voltage."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pandapower", reason="--network needs pandapower: pip install -r requirements.txt")

import pandapower as pp

from agents.network.layout import GEODATA, TREE, extreme_feeders, network_layout
from tests.test_network import small_net


def branched_net() -> pp.pandapowerNet:
    """MV (0) -> transformer -> LV busbar (1) -> a (2) -> b (3), and busbar -> c (4); no geodata."""
    net = small_net()  # buses MV, LV busbar, House, Roof only
    c = pp.create_bus(net, 0.4, name="Shed")
    pp.create_line(net, 1, c, 0.05, std_type="NAYY 4x150 SE", name="Shed cable")
    pp.create_line(net, 2, pp.create_bus(net, 0.4, name="Far house"), 0.3, std_type="NAYY 4x150 SE")
    net.bus["geo"] = None
    return net


def test_network_layout_tree_from_the_external_grid_without_geodata():
    layout = network_layout(branched_net())
    assert layout.source == TREE
    np.testing.assert_array_equal(layout.x, [0, 1, 2, 2, 2, 3])  # hops from the external grid
    np.testing.assert_array_equal(layout.parent, [-1, 0, 1, 1, 1, 2])
    for k in (1, 2):  # a parent sits at the middle of its children
        children = np.flatnonzero(layout.parent == k)
        assert layout.y[k] == pytest.approx((layout.y[children].min() + layout.y[children].max()) / 2)
    assert len(set(layout.y[[3, 4, 5]])) == 3  # the leaves one apart


def test_network_layout_distance_restarts_behind_the_transformer():
    net = branched_net()
    layout = network_layout(net)
    assert layout.behind_transformer.tolist() == [False, True, False, False, False, False]
    assert layout.distance_ohm[0] == layout.distance_ohm[1] == 0
    cable = net.line.loc[0]  # busbar -> House, 0.2 km
    z_ohm = cable.length_km * np.hypot(cable.r_ohm_per_km, cable.x_ohm_per_km)
    assert layout.distance_ohm[2] == pytest.approx(z_ohm, rel=1e-9)
    assert layout.distance_ohm[5] > layout.distance_ohm[2]
    assert layout.feeder_path(5) == [1, 2, 5]  # from the LV busbar out
    np.testing.assert_array_equal(layout.line_ends[0], [1, 2])
    np.testing.assert_array_equal(layout.transformer_ends, [[0, 1]])


def test_network_layout_uses_bus_geodata_when_every_bus_has_some():
    net = small_net()
    net.bus["geo"] = [json.dumps({"type": "Point", "coordinates": [10.0 + k, 50.0 - k]}) for k in range(len(net.bus))]
    layout = network_layout(net)
    assert layout.source == GEODATA
    np.testing.assert_array_equal(layout.x, [10, 11, 12, 13])
    net.bus.loc[2, "geo"] = None  # one bus without: the tree for all
    assert network_layout(net).source == TREE


def test_extreme_feeders_look_behind_transformers_and_pass_over_dead_buses():
    layout = network_layout(branched_net())
    vm = np.array([1.08, 1.02, 1.03, np.nan, 0.99, 1.04])  # the MV bus is highest, but feeds no feeder
    assert extreme_feeders(layout, vm) == {"highest": [1, 2, 5], "lowest": [1, 4]}
    assert extreme_feeders(layout, np.full(6, np.nan)) == {}
