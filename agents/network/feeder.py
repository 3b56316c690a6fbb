"""Homes and storage systems from a network (the coordinator's side of ``--network``).

Every load becomes a home at its bus with its own profile; every PV generator becomes the PV of the first home
(by load index) at its bus, or of a PV-only home where its bus has no load; every storage unit becomes a battery
agent on its own local policy. Other generators (wind, biomass, hydro) are left out and listed.

The profiles are prepared once, as profile arrays beside the run's scenario (see agents/common/data.py), so the
processes hosting the homes map one file instead of each reading SimBench again. A SimBench grid's profiles
come from ``simbench.get_absolute_values(net, profiles_instead_of_study_cases=True)`` (MW per element, converted
to kW); a network without profiles holds each element's own p_mw and q_mvar for a day. Storage systems take the
price and temperature of the shipped battery data, mapped onto the network's calendar by month, day and time
of day (SimBench's 2016 is a leap year: 29 February takes 28 February's values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from agents.common.data import BATTERY_COLUMNS, NETWORK_HOME_COLUMNS, load_timeseries, write_profile_array
from agents.common.scenario import BatterySpecEntry, HomeSpec, Scenario, TransformerSpec
from agents.common.settings import DATA_DIR, StartupError
from agents.network.load import EXTERNAL_GRID_ZONE, Network
from models.network import unique_ids

KW_PER_MW = 1e3
#: A network without profiles: its elements' own values, held for one day of 15-minute steps from this start.
STATIC_START = datetime(2016, 1, 1)
STATIC_STEP_S = 900.0
STATIC_STEPS = 96
#: The external grid has no rating: agents fed straight from it get this one (practically none).
UNLIMITED_KW = 1e9


@dataclass
class NetworkFeeder:
    """The scenario of a network's agents, where their data went, and what was left out."""

    scenario: Scenario
    homes_file: Path
    batteries_file: Path | None
    left_out: list[str] = field(default_factory=list)
    network_file: Path | None = None  # the network for the grid agent, when prepare_network_run wrote one


@dataclass(frozen=True)
class Profiles:
    """Per-element series (kW, kvar), one column per element index, over ``steps`` steps from ``start``."""

    start: datetime
    step_s: float
    load_kw: pd.DataFrame
    load_kvar: pd.DataFrame
    sgen_kw: pd.DataFrame

    @property
    def steps(self) -> int:
        return len(self.load_kw)


def network_profiles(network: Network) -> Profiles:
    """The network's load and generator profiles in kW and kvar (SimBench's, or its elements' static values)."""
    net = network.net
    profiles = getattr(net, "profiles", None)
    if isinstance(profiles, dict) and any(isinstance(v, pd.DataFrame) and not v.empty for v in profiles.values()):
        import simbench

        try:
            absolute = simbench.get_absolute_values(net, profiles_instead_of_study_cases=True)
        except (KeyError, ValueError) as exc:
            raise StartupError(f"--network {network.source}: its profiles cannot be read: {exc}") from exc
        times = next(v["time"] for v in profiles.values() if isinstance(v, pd.DataFrame) and "time" in v)
        stamps = pd.to_datetime(times.iloc[:2], format="%d.%m.%Y %H:%M")
        start, step_s = stamps.iloc[0].to_pydatetime(), (stamps.iloc[1] - stamps.iloc[0]).total_seconds()
        return Profiles(
            start=start,
            step_s=step_s,
            load_kw=absolute[("load", "p_mw")] * KW_PER_MW,
            load_kvar=absolute[("load", "q_mvar")] * KW_PER_MW,
            sgen_kw=absolute[("sgen", "p_mw")] * KW_PER_MW,
        )
    steps = pd.RangeIndex(STATIC_STEPS)

    def held(table: str, column: str) -> pd.DataFrame:
        frame = net[table]
        values = frame[column].fillna(0.0).to_numpy() * KW_PER_MW if column in frame else np.zeros(len(frame))
        return pd.DataFrame(np.tile(values, (STATIC_STEPS, 1)), index=steps, columns=frame.index)

    return Profiles(STATIC_START, STATIC_STEP_S, held("load", "p_mw"), held("load", "q_mvar"), held("sgen", "p_mw"))


def _is_pv(sgen: pd.DataFrame) -> pd.Series:
    """PV generators: SimBench's types PV and PV_MV; a network that gives no type is taken as all PV."""
    if "type" not in sgen:
        return pd.Series(True, index=sgen.index)
    kind = sgen["type"].astype(str)
    return sgen["type"].isna() | kind.str.upper().str.startswith("PV") | (kind.str.strip() == "")


def _in_service(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["in_service"].astype(bool)] if "in_service" in frame else frame


def _rating_kw(row: pd.Series, *columns: str) -> float:
    """The first finite, positive value of the columns (MW) in kW; 0 when there is none."""
    for column in columns:
        value = row.get(column)
        if value is not None and not pd.isna(value) and abs(float(value)) > 0:
            return abs(float(value)) * KW_PER_MW
    return 0.0


def network_feeder(network: Network, out_dir: Path) -> NetworkFeeder:
    """The homes and storage systems of ``network`` as a scenario; their profile arrays are written to ``out_dir``."""
    net = network.net
    profiles = network_profiles(network)
    loads = _in_service(net.load).sort_index()
    sgens = _in_service(net.sgen).sort_index()
    storages = _in_service(net.storage).sort_index() if "storage" in net else pd.DataFrame()
    pv = sgens[_is_pv(sgens)]
    left_out = [f"sgen {i} ({row.get('name')}, {row.get('type')})" for i, row in sgens[~_is_pv(sgens)].iterrows()]
    pv_only_buses = sorted(set(pv["bus"]) - set(loads["bus"]))
    load_ids, pv_only_ids, storage_ids = _agent_ids(loads, pv, pv_only_buses, storages)
    homes_file = (out_dir / "homes.npy").resolve()
    homes = _homes(network, profiles, loads, pv, pv_only_buses, load_ids + pv_only_ids, homes_file)
    batteries: list[BatterySpecEntry] = []
    batteries_file = None
    if not storages.empty:
        batteries_file = (out_dir / "batteries.npy").resolve()
        batteries = _batteries(network, profiles, storages, storage_ids, batteries_file, left_out)
    used = {h.transformer for h in homes} | {b.transformer for b in batteries}
    scenario = Scenario(
        name=f"network {network.name}", transformers=_transformers(network, used), homes=homes, batteries=batteries
    )
    return NetworkFeeder(scenario, homes_file, batteries_file, left_out)


def _agent_ids(
    loads: pd.DataFrame, pv: pd.DataFrame, pv_only_buses: list[int], storages: pd.DataFrame
) -> tuple[list[str], list[str], list[str]]:
    """Who is who: loads first, then PV-only sites, then storage units, so that ids are stable for a network."""
    first_pv_at = pv.reset_index().groupby("bus")["index"].first().to_dict()
    names = [*loads.get("name", pd.Series(None, index=loads.index)).tolist()]
    names += [pv.at[first_pv_at[bus], "name"] if "name" in pv else None for bus in pv_only_buses]
    names += storages.get("name", pd.Series(None, index=storages.index)).tolist() if not storages.empty else []
    fallbacks = [f"load_{i}" for i in loads.index] + [f"sgen_{first_pv_at[b]}" for b in pv_only_buses]
    fallbacks += [f"storage_{i}" for i in storages.index]
    ids = unique_ids(names, fallbacks)
    n_loads, n_homes = len(loads), len(loads) + len(pv_only_buses)
    return ids[:n_loads], ids[n_loads:n_homes], ids[n_homes:]


def _homes(
    network: Network,
    profiles: Profiles,
    loads: pd.DataFrame,
    pv: pd.DataFrame,
    pv_only_buses: list[int],
    ids: list[str],
    homes_file: Path,
) -> list[HomeSpec]:
    """A home per load (with the PV of its bus when it is that bus's first load), then a PV-only home per bus with
    PV and no load; their profiles, one row each, written to ``homes_file``."""
    first_load_at = loads.reset_index().groupby("bus")["index"].first().to_dict()
    pv_kw_at = {bus: profiles.sgen_kw[group.index].sum(axis=1).to_numpy() for bus, group in pv.groupby("bus")}
    pv_kwp_at = {
        bus: sum(_rating_kw(row, "sn_mva", "p_mw") for _, row in group.iterrows()) for bus, group in pv.groupby("bus")
    }
    values = np.zeros((len(ids), len(NETWORK_HOME_COLUMNS), profiles.steps), dtype=np.float32)
    homes: list[HomeSpec] = []
    step_h = profiles.step_s / 3600.0
    for row, (index, load) in enumerate(loads.iterrows()):
        bus = int(load["bus"])
        has_pv = first_load_at[bus] == index and bus in pv_kw_at
        values[row, 0] = pv_kw_at[bus] if has_pv else 0.0
        values[row, 1] = np.clip(profiles.load_kw[index].to_numpy(), 0.0, None)
        values[row, 2] = profiles.load_kvar[index].to_numpy()
        pv_kwp = pv_kwp_at[bus] if has_pv else 0.0
        homes.append(_home(ids[row], network, bus, pv_kwp, values[row, 1] * step_h, homes_file, row))
    for row, bus in enumerate(pv_only_buses, start=len(loads)):
        values[row, 0] = pv_kw_at[bus]
        homes.append(_home(ids[row], network, int(bus), pv_kwp_at[bus], values[row, 1] * step_h, homes_file, row))
    values[:, 0] = np.clip(values[:, 0], 0.0, None)
    columns = list(NETWORK_HOME_COLUMNS)
    write_profile_array(homes_file, values, profiles.start, profiles.step_s, columns, [h.id for h in homes])
    return homes


def _batteries(
    network: Network,
    profiles: Profiles,
    storages: pd.DataFrame,
    ids: list[str],
    batteries_file: Path,
    left_out: list[str],
) -> list[BatterySpecEntry]:
    """A battery agent per storage unit with a capacity and a power (the others go to ``left_out``); the price and
    temperature they share written to ``batteries_file``."""
    prices = _battery_data(profiles)
    columns = list(BATTERY_COLUMNS)
    write_profile_array(batteries_file, prices[np.newaxis], profiles.start, profiles.step_s, columns, ["all"])
    batteries = []
    for agent_id, (index, unit) in zip(ids, storages.iterrows(), strict=True):
        capacity_kwh = _rating_kw(unit, "max_e_mwh")
        power_kw = _rating_kw(unit, "sn_mva", "min_p_mw", "max_p_mw", "p_mw")
        if capacity_kwh <= 0 or power_kw <= 0:
            left_out.append(f"storage {index} ({unit.get('name')}): no capacity or power")
            continue
        bus = int(unit["bus"])
        batteries.append(
            BatterySpecEntry(
                id=agent_id,
                transformer=network.transformer_id_of_bus(bus),
                capacity_kwh=capacity_kwh,
                power_kw=power_kw,
                bus=bus,
                data_file=str(batteries_file),
                data_row=0,
            )
        )
    return batteries


def _transformers(network: Network, used: set[str]) -> list[TransformerSpec]:
    """The transformers that feed some agent, at their rated apparent power; the external grid, unlimited, when an
    agent sits above every transformer."""
    trafo = network.net.trafo
    transformers = [
        TransformerSpec(id=tid, rating_kw=_rating_kw(trafo.loc[i], "sn_mva") * _parallel(trafo.loc[i]))
        for i, tid in network.transformer_ids.items()
        if tid in used
    ]
    if EXTERNAL_GRID_ZONE in used:
        transformers.append(TransformerSpec(id=EXTERNAL_GRID_ZONE, rating_kw=UNLIMITED_KW))
    return transformers


def _parallel(trafo: pd.Series) -> int:
    value = trafo.get("parallel")
    return max(int(value), 1) if value is not None and not pd.isna(value) else 1


def _home(
    agent_id: str, network: Network, bus: int, pv_kwp: float, energy_kwh: np.ndarray, data_file: Path, row: int
) -> HomeSpec:
    """A home at ``bus``; its data is row ``row`` of ``data_file``; ``energy_kwh`` per step sums to its consumption."""
    return HomeSpec(
        id=agent_id,
        transformer=network.transformer_id_of_bus(bus),
        pv_kwp=round(pv_kwp, 4),
        annual_load_kwh=round(float(energy_kwh.sum()), 3),
        battery_kwh=0.0,
        battery_kw=0.0,
        bus=bus,
        data_file=str(data_file),
        data_row=row,
    )


def _battery_data(profiles: Profiles) -> np.ndarray:
    """The shipped battery data's price and temperature at the network's times: same month, day and time of day."""
    data = load_timeseries(DATA_DIR / "battery_historical_data.csv", BATTERY_COLUMNS)
    stamps = pd.date_range(profiles.start, periods=profiles.steps, freq=pd.Timedelta(seconds=profiles.step_s))
    leap_day = (stamps.month == 2) & (stamps.day == 29)
    same = pd.to_datetime(
        {
            "year": np.full(len(stamps), data.start.year),
            "month": stamps.month,
            "day": np.where(leap_day, 28, stamps.day),
            "hour": stamps.hour,
            "minute": stamps.minute,
        }
    )
    offset_s = (same - pd.Timestamp(data.start)).dt.total_seconds().to_numpy()
    rows = np.floor(offset_s / data.step_s).astype(np.int64) % len(data)
    return np.stack([data.columns[name][rows] for name in BATTERY_COLUMNS]).astype(np.float32)


def prepare_network_run(source: str, out_dir: Path) -> NetworkFeeder:
    """Everything a run on a network needs, in ``out_dir``: the agents' profile arrays, and ``network.json``
    (the checked network without its profiles) for the grid agent, which then loads in a second, not in ten."""
    from agents.network.load import load_network, save_network

    network = load_network(source)
    feeder = network_feeder(network, out_dir)
    feeder.network_file = save_network(network, out_dir / "network.json")
    return feeder
