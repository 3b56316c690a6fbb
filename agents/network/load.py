"""A network from a SimBench code or a pandapower JSON file: loaded once, checked, and made ready for power flow.

Bad input is a StartupError that names it: an unknown SimBench code (with the closest valid codes), a file that
is not a pandapower network, a network without an external grid or a transformer, an element on a bus the
network lacks, or a bus that nothing connects to the external grid.

Two traps of SimBench under pandapower 3 are fixed here for every network, so that pandapower and
power-grid-model see the same transformers: SimBench leaves ``vector_group`` empty (it is set from
``shift_degree``, 150 degrees = Dyn5), and leaves ``tap_changer_type`` empty where its data describes a ratio
tap changer (pandapower 3 would then ignore the tap position, power-grid-model would not; SimBench's own
``tap_phase_shifter = False`` means a ratio tap changer).
"""

from __future__ import annotations

import copy
import difflib
import functools
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np
import pandapower as pp
import pandapower.topology as top
import pandas as pd

from agents.common.settings import StartupError
from models.network import unique_ids, vector_group_for_shift

logger = logging.getLogger(__name__)

#: Element tables whose bus columns must name buses of the network.
BUS_COLUMNS = {
    "load": ("bus",),
    "sgen": ("bus",),
    "storage": ("bus",),
    "gen": ("bus",),
    "shunt": ("bus",),
    "ext_grid": ("bus",),
    "line": ("from_bus", "to_bus"),
    "trafo": ("hv_bus", "lv_bus"),
    "switch": ("bus",),
}
#: How many offending elements an error names before "and N more".
NAMED_IN_ERRORS = 5
#: The id of the zone fed straight from the external grid (agents there sit behind no transformer).
EXTERNAL_GRID_ZONE = "external_grid"


@dataclass
class Network:
    """A checked network: the pandapower net, where it came from, and what its transformers are called."""

    net: pp.pandapowerNet
    source: str
    name: str

    @functools.cached_property
    def transformer_ids(self) -> dict[int, str]:
        """Each transformer's id for agents and reports, from its name: ``MV1.101-LV1.101-Trafo 1`` ->
        ``mv1_101_lv1_101_trafo_1``."""
        return transformer_ids(self.net)

    @functools.cached_property
    def feeding_transformer(self) -> dict[int, int | None]:
        """Bus -> the transformer feeding its grid (None for buses fed straight from the external grid)."""
        return feeding_transformers(self.net)

    def transformer_id_of_bus(self, bus: int) -> str:
        """The transformer_id of the agents at ``bus``."""
        trafo = self.feeding_transformer.get(bus)
        return EXTERNAL_GRID_ZONE if trafo is None else self.transformer_ids[trafo]


def load_network(source: str | Path) -> Network:
    """The network a ``--network`` value names: a pandapower JSON file, or else a SimBench code."""
    text = str(source).strip()
    path = Path(text).expanduser()
    if path.is_file():
        stat = path.stat()
        net = copy.deepcopy(_read_json(path.resolve(), stat.st_mtime_ns, stat.st_size))
    elif path.suffix.lower() == ".json" or "/" in text or "\\" in text:
        raise StartupError(f"--network {text}: no such file (give a pandapower JSON file or a SimBench code)")
    else:
        net = copy.deepcopy(_read_simbench(text))
    check_network(net, text)
    prepare_transformers(net)
    name = str(net.name) if isinstance(getattr(net, "name", None), str) and net.name else Path(text).stem or text
    return Network(net=net, source=text, name=name)


def save_network(network: Network, path: Path) -> Path:
    """Write the checked network as pandapower JSON, without its profiles (the grid agent needs none)."""
    net = copy.copy(network.net)  # shallow: the tables are shared, only the profiles entry is left out
    net.pop("profiles", None)
    net.name = network.name
    path.parent.mkdir(parents=True, exist_ok=True)
    pp.to_json(net, str(path))
    return path.resolve()


@functools.lru_cache(maxsize=4)
def _read_simbench(code: str) -> pp.pandapowerNet:
    """A SimBench grid with its profiles, from the data in the simbench wheel (several seconds; cached)."""
    import simbench

    codes = simbench.collect_all_simbench_codes()
    if code not in codes:
        close = difflib.get_close_matches(code, codes, n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else "; codes look like 1-LV-rural1--2-sw"
        raise StartupError(f"--network {code}: neither a file nor a known SimBench code{hint}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        net = simbench.get_simbench_net(code)
    net.name = code
    return net


@functools.lru_cache(maxsize=4)
def _read_json(path: Path, mtime_ns: int, size: int) -> pp.pandapowerNet:
    try:
        net = pp.from_json(str(path))
    # pandapower raises UserWarning (an exception) for text that is not JSON
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, UserWarning) as exc:
        raise StartupError(f"--network {path}: not a pandapower network ({type(exc).__name__}: {exc})") from exc
    if not isinstance(net, pp.pandapowerNet) or "bus" not in net:
        raise StartupError(f"--network {path}: not a pandapower network (pandapower.to_json writes one)")
    return net


def _named(table: pd.DataFrame, indices: list[int]) -> str:
    """``3 (LV1.101 Bus 3), 7 (...)`` for the first few indices, and how many more."""
    names = table["name"] if "name" in table else pd.Series(dtype=object)
    shown = [f"{i} ({names.get(i)})" if isinstance(names.get(i), str) else str(i) for i in indices[:NAMED_IN_ERRORS]]
    more = f" and {len(indices) - NAMED_IN_ERRORS} more" if len(indices) > NAMED_IN_ERRORS else ""
    return ", ".join(shown) + more


def check_network(net: pp.pandapowerNet, source: str) -> None:
    """Refuse a network that no power flow can serve; the message names the first offending elements."""
    if net.bus.empty:
        raise StartupError(f"--network {source}: the network has no buses")
    buses = set(net.bus.index)
    for table, columns in BUS_COLUMNS.items():
        frame = net[table] if table in net else pd.DataFrame()
        for column in columns:
            if frame.empty or column not in frame:
                continue
            missing = frame.index[~frame[column].isin(buses)].tolist()
            if missing:
                wrong = sorted(set(frame.loc[missing, column].tolist()))[:NAMED_IN_ERRORS]
                raise StartupError(
                    f"--network {source}: {table} {_named(frame, missing)} on missing bus(es) "
                    f"{', '.join(map(str, wrong))} ({column})"
                )
    if not net.ext_grid["in_service"].any():
        raise StartupError(f"--network {source}: the network has no external grid (slack) in service")
    if not net.trafo["in_service"].any():
        raise StartupError(f"--network {source}: the network has no transformer in service")
    isolated = sorted(top.unsupplied_buses(net))
    if isolated:
        raise StartupError(
            f"--network {source}: isolated bus(es) {_named(net.bus, isolated)}: "
            "no line, transformer or closed switch connects them to the external grid"
        )


def prepare_transformers(net: pp.pandapowerNet) -> None:
    """Fill what SimBench leaves empty: the vector group (from the phase shift) and a ratio tap changer type."""
    trafo = net.trafo
    if trafo.empty:
        return
    groups = trafo["vector_group"] if "vector_group" in trafo else pd.Series(None, index=trafo.index, dtype=object)
    empty = groups.isna() | (groups.astype(str).str.strip() == "")
    shift = trafo["shift_degree"].fillna(0.0) if "shift_degree" in trafo else pd.Series(0.0, index=trafo.index)
    trafo["vector_group"] = groups.astype(object)
    trafo.loc[empty, "vector_group"] = [vector_group_for_shift(s) for s in shift[empty]]
    if "tap_changer_type" in trafo and "tap_pos" in trafo and "tap_step_percent" in trafo:
        no_type = trafo["tap_changer_type"].isna() | (trafo["tap_changer_type"].astype(str).str.strip() == "")
        has_tap = np.isfinite(trafo["tap_pos"].astype(float)) & np.isfinite(trafo["tap_step_percent"].astype(float))
        trafo["tap_changer_type"] = trafo["tap_changer_type"].astype(object)
        trafo.loc[no_type & has_tap, "tap_changer_type"] = "Ratio"


def transformer_ids(net: pp.pandapowerNet) -> dict[int, str]:
    """Transformer index -> a readable unique id from its name (``trafo_<index>`` where it has none)."""
    index = net.trafo.index.tolist()
    names = net.trafo["name"].tolist() if "name" in net.trafo else [None] * len(index)
    return dict(zip(index, unique_ids(names, [f"trafo_{i}" for i in index]), strict=True))


def feeding_transformers(net: pp.pandapowerNet) -> dict[int, int | None]:
    """Bus -> the in-service transformer whose low-voltage side lies in the bus's galvanic zone.

    A zone is what lines and closed switches connect; where several transformers feed one zone, the first by
    index is taken. Buses of a zone no transformer feeds (the external grid's own) map to None.
    """
    graph = top.create_nxgraph(net, include_trafos=False, include_trafo3ws=False, respect_switches=True)
    in_service = net.trafo[net.trafo["in_service"].astype(bool)].sort_index()
    feeding: dict[int, int | None] = {}
    for zone in nx.connected_components(graph):
        feeders = in_service.index[in_service["lv_bus"].isin(zone)]
        trafo = int(feeders[0]) if len(feeders) else None
        feeding.update({int(bus): trafo for bus in zone})
    for bus in net.bus.index:
        feeding.setdefault(int(bus), None)
    return feeding
