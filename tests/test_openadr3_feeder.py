"""OpenADR 3 VENs on the feeder: a VEN's resource is an agent, its reports count, its commands become events."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agents.coordinator.run import CoordinatorSettings, plan_children
from agents.openadr3.feeder import FEEDER_PROGRAM_NAME, TELEMETRY_EVENT_NAME, duration_s
from agents.openadr3.vtn import BASE_PATH
from tests.test_openadr3 import CLIENTS, SECRETS, Vtn, Webhooks, assert_problem, clients_env, start_vtn  # noqa: F401

START = "2025-06-01T18:00:00Z"


def feeder_program(vtn: Vtn, client_id: str) -> tuple[str, str]:
    """(the feeder program's id, its telemetry event's id), found as a VEN would."""
    (program,) = [p for p in vtn.get("/programs", client_id) if p["programName"] == FEEDER_PROGRAM_NAME]
    events = vtn.get("/events", client_id, programID=program["id"])
    (telemetry,) = [e for e in events if e.get("eventName") == TELEMETRY_EVENT_NAME]
    return program["id"], telemetry["id"]


def join(vtn: Vtn, client_id: str, ven_name: str, resource: str = "site", transformer: str = "T1", bus: int = 3):
    """A VEN and a resource on ``transformer``; answers (ven, resource)."""
    ven = vtn.post("/vens", {"venName": ven_name}, client_id)
    attributes = [{"type": "TRANSFORMER_ID", "values": [transformer]}, {"type": "BUS", "values": [bus]}]
    body = {"resourceName": resource, "attributes": attributes}
    return ven, vtn.post(f"/vens/{ven['id']}/resources", body, client_id)


def usage(
    vtn: Vtn, client_id: str, net_kw: Any, lower_kw: float = 0.0, raise_kw: float = 0.0, start: str = START
) -> dict:
    """A report of one interval: net power (USAGE) and how far it could go down and up."""
    program_id, telemetry_id = feeder_program(vtn, client_id)
    payloads = [
        {"type": "USAGE", "values": [net_kw]},
        {"type": "UP_REGULATION_AVAILABLE", "values": [lower_kw]},
        {"type": "DOWN_REGULATION_AVAILABLE", "values": [raise_kw]},
    ]
    return {
        "programID": program_id,
        "eventID": telemetry_id,
        "clientName": client_id,
        "payloadDescriptors": [{"payloadType": "USAGE", "units": "KW"}],
        "resources": [
            {
                "resourceName": "site",
                "intervalPeriod": {"start": start, "duration": "PT15M"},
                "intervals": [{"id": 0, "payloads": payloads}],
            }
        ],
    }


@pytest.fixture
def webhooks() -> Webhooks:
    return Webhooks()


@pytest.fixture
def vtn(tmp_path, clients_env, webhooks) -> Vtn:
    with start_vtn(tmp_path, webhooks, ven_report_timeout_s=0.3, transformer_rating_kw=15.0) as client:
        yield Vtn(client)


def coordinate(vtn: Vtn) -> dict:
    response = vtn.client.post("/coordinate")
    assert response.status_code == 200, response.text
    return response.json()


def test_duration_s_reads_iso_8601_durations():
    assert duration_s("PT15M") == 900.0
    assert duration_s("P1DT1H") == 90000.0
    assert duration_s("PT0.5S") == 0.5
    assert duration_s("P1M") is None and duration_s(None) is None


def test_the_vtn_makes_one_feeder_program_with_a_telemetry_event(vtn):
    _, telemetry_id = feeder_program(vtn, "ven_1")
    event = vtn.get(f"/events/{telemetry_id}", "ven_1")
    assert {d["payloadType"] for d in event["reportDescriptors"]} == {
        "USAGE",
        "UP_REGULATION_AVAILABLE",
        "DOWN_REGULATION_AVAILABLE",
    }


def test_a_ven_resource_naming_its_transformer_is_an_agent_of_type_ven(vtn):
    ven, resource = join(vtn, "ven_1", "ven_a")
    vtn.post("/vens", {"venName": "no_resource"}, "ven_2")
    coordinate(vtn)  # VENs join at the next cycle
    agents = {a["agent_id"]: a for a in vtn.client.get("/agents").json()}
    assert set(agents) == {"ven_a.site"}
    assert agents["ven_a.site"]["agent_type"] == "ven"
    assert agents["ven_a.site"]["transformer_id"] == "T1" and agents["ven_a.site"]["bus"] == 3
    assert agents["ven_a.site"]["url"].endswith(f"{BASE_PATH}/vens/{ven['id']}/resources/{resource['id']}")


def test_a_ven_overload_is_counted_and_curtailed_by_an_event(vtn):
    join(vtn, "ven_1", "ven_a")
    join(vtn, "ven_2", "ven_b")
    vtn.post("/reports", usage(vtn, "ven_1", 20.0, lower_kw=8.0), "ven_1")
    vtn.post("/reports", usage(vtn, "ven_2", -1.0), "ven_2")
    result = coordinate(vtn)
    (t1,) = result["transformers"]
    assert t1["loading_before_kw"] == pytest.approx(19.0)
    assert t1["state_before"] == "overload"
    assert t1["loading_after_kw"] == pytest.approx(15.0, abs=1e-6) and t1["state_after"] == "normal"
    (action,) = result["actions"]
    assert action["agent_id"] == "ven_a.site" and action["status"] == "sent"
    assert action["action"] == "shed_load" and action["requested_kw"] == pytest.approx(4.0)
    program_id, telemetry_id = feeder_program(vtn, "ven_1")
    (event,) = [e for e in vtn.get("/events", "ven_1", programID=program_id) if e["id"] != telemetry_id]
    assert event["id"] in action["reason"]
    assert event["targets"] == [
        {"type": "VEN_NAME", "values": ["ven_a"]},
        {"type": "RESOURCE_NAME", "values": ["site"]},
    ]
    assert event["intervalPeriod"] == {"start": "2025-06-01T18:00:00Z", "duration": "PT900S"}
    payloads = {p["type"]: p["values"] for p in event["intervals"][0]["payloads"]}
    assert payloads["DISPATCH_SETPOINT_RELATIVE"] == [pytest.approx(-4.0)]
    assert payloads["IMPORT_CAPACITY_LIMIT"] == [pytest.approx(16.0)]
    assert {"payloadType": "DISPATCH_SETPOINT_RELATIVE", "units": "KW"} in event["payloadDescriptors"]
    # only ven_a may read it; it reports what it applied against it
    assert [e["id"] for e in vtn.get("/events", "ven_2", programID=program_id)] == [telemetry_id]
    assert_problem(vtn.client.get(f"{BASE_PATH}/events/{event['id']}", headers=vtn.as_("ven_2")), 403)
    applied = {
        "programID": program_id,
        "eventID": event["id"],
        "clientName": "ven_a",
        "resources": [
            {"resourceName": "site", "intervals": [{"id": 0, "payloads": [{"type": "DELTA_USAGE", "values": [-4.0]}]}]}
        ],
    }
    vtn.post("/reports", applied, "ven_1")


def test_a_ven_that_stops_reporting_is_unreachable_for_the_cycle(vtn):
    join(vtn, "ven_1", "ven_a")
    vtn.post("/reports", usage(vtn, "ven_1", 5.0), "ven_1")
    assert coordinate(vtn)["unreachable"] == []
    silent = coordinate(vtn)  # no report since the last cycle: waited 0.3 s, then without it
    assert silent["unreachable"] == ["ven_a.site"]
    assert silent["transformers"][0]["loading_before_kw"] == 0.0
    assert {a["agent_id"]: a for a in vtn.client.get("/agents").json()}["ven_a.site"]["healthy"] is False
    vtn.post("/reports", usage(vtn, "ven_1", 6.0), "ven_1")
    assert coordinate(vtn)["transformers"][0]["loading_before_kw"] == pytest.approx(6.0)


@pytest.mark.parametrize(
    ("value", "field"),
    [("12", "resources[0].intervals[0].payloads[0].values"), (True, "resources[0].intervals[0].payloads[0].values")],
)
def test_a_reading_that_is_not_a_number_is_a_400_naming_the_field(vtn, value, field):
    join(vtn, "ven_1", "ven_a")
    response = vtn.client.post(f"{BASE_PATH}/reports", json=usage(vtn, "ven_1", value), headers=vtn.as_("ven_1"))
    assert field in assert_problem(response, 400)["detail"]


def test_a_reading_in_unknown_units_is_a_400(vtn):
    join(vtn, "ven_1", "ven_a")
    report = usage(vtn, "ven_1", 5.0)
    report["payloadDescriptors"] = [{"payloadType": "USAGE", "units": "HP"}]
    response = vtn.client.post(f"{BASE_PATH}/reports", json=report, headers=vtn.as_("ven_1"))
    assert "units" in assert_problem(response, 400)["detail"]


def test_a_subscription_webhook_hears_of_the_events_it_may_see(vtn, webhooks):
    join(vtn, "ven_1", "ven_a")
    join(vtn, "ven_2", "ven_b")
    program_id, _ = feeder_program(vtn, "ven_1")
    for client_id, host in (("ven_1", "home-1.example"), ("ven_2", "aggregator.example")):
        operation = {"objects": ["EVENT"], "operations": ["CREATE"], "callbackUrl": f"https://{host}/oadr"}
        subscription = {"clientName": client_id, "programID": program_id, "objectOperations": [operation]}
        vtn.post(
            "/subscriptions", {**subscription, "objectOperations": [{**operation, "bearerToken": "t0k"}]}, client_id
        )
    vtn.post("/reports", usage(vtn, "ven_1", 20.0, lower_kw=8.0), "ven_1")
    action = coordinate(vtn)["actions"][0]
    assert action["status"] == "sent"
    (notified,) = webhooks.received  # ven_b may not see ven_a's event, so it hears nothing
    url, headers, body = notified
    assert url == "https://home-1.example/oadr" and headers["authorization"] == "Bearer t0k"
    assert body["objectType"] == "EVENT" and body["operation"] == "POST" and body["object"]["id"] in action["reason"]


def test_a_subscription_whose_callback_cannot_be_reached_is_a_400_naming_it(vtn):
    program_id, _ = feeder_program(vtn, "ven_1")
    operation = {"objects": ["EVENT"], "operations": ["CREATE"], "callbackUrl": "https://nowhere.example/oadr"}
    body = {"clientName": "ven_1", "programID": program_id, "objectOperations": [operation]}
    response = vtn.client.post(f"{BASE_PATH}/subscriptions", json=body, headers=vtn.as_("ven_1"))
    detail = assert_problem(response, 400)["detail"]
    assert "objectOperations[0].callbackUrl" in detail and "nowhere.example" in detail
    assert vtn.get("/subscriptions", "ven_1") == []


def test_the_feeder_program_comes_back_if_a_client_deletes_it(vtn):
    program_id, _ = feeder_program(vtn, "bl_client")
    vtn.client.delete(f"{BASE_PATH}/programs/{program_id}", headers=vtn.as_("bl_client"))
    join(vtn, "ven_1", "ven_a")
    coordinate(vtn)
    assert feeder_program(vtn, "ven_1")[0] != program_id


async def test_a_ven_beside_rest_agents_counts_in_their_transformer_and_gets_their_time(make_feeder, monkeypatch):
    monkeypatch.setenv("OPENADR3_CLIENTS", json.dumps(CLIENTS))
    feeder = await make_feeder(grid={"openadr3": True, "ven_report_timeout_s": 1.0})
    client = feeder.client

    async def as_(client_id: str) -> dict[str, str]:
        form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": SECRETS[client_id]}
        token = (await client.post(f"{BASE_PATH}/auth/token", data=form)).json()["access_token"]
        return {"Authorization": f"Bearer {token}"}

    ven_headers = await as_("ven_1")
    ven = (await client.post(f"{BASE_PATH}/vens", json={"venName": "ven_a"}, headers=ven_headers)).json()
    attributes = [{"type": "TRANSFORMER_ID", "values": ["T1"]}]
    resource = {"resourceName": "site", "attributes": attributes}
    await client.post(f"{BASE_PATH}/vens/{ven['id']}/resources", json=resource, headers=ven_headers)
    programs = (await client.get(f"{BASE_PATH}/programs", headers=ven_headers)).json()
    (program,) = [p for p in programs if p["programName"] == FEEDER_PROGRAM_NAME]
    events = (await client.get(f"{BASE_PATH}/events", params={"programID": program["id"]}, headers=ven_headers)).json()
    report = {
        "programID": program["id"],
        "eventID": events[0]["id"],
        "clientName": "ven_a",
        "resources": [
            {
                "resourceName": "site",
                "intervals": [
                    {
                        "id": 0,
                        "payloads": [
                            {"type": "USAGE", "values": [90.0]},
                            {"type": "UP_REGULATION_AVAILABLE", "values": [90.0]},
                        ],
                    }
                ],
            }
        ],
    }
    assert (await client.post(f"{BASE_PATH}/reports", json=report, headers=ven_headers)).status_code == 201
    result = await feeder.coordinate()
    (t1,) = result["transformers"]
    assert t1["agents_reporting"] == 3 and result["unreachable"] == []
    home = await feeder.device_status("home_1")
    battery = await feeder.device_status("battery_agent_1")
    rest_kw = sum(a["net_power_kw"] for a in (home, battery))
    assert t1["loading_before_kw"] == pytest.approx(
        90.0
        + rest_kw
        - sum(
            a["applied_kw"] * (1 if a["action"] in ("curtail_solar", "charge_battery") else -1)
            for a in result["actions"]
            if a["agent_id"] != "ven_a.site"
        ),
        abs=1e-6,
    )
    (sent,) = [a for a in result["actions"] if a["agent_id"] == "ven_a.site"]
    event_id = sent["reason"].split()[3].rstrip(";")
    event = (await client.get(f"{BASE_PATH}/events/{event_id}", headers=ven_headers)).json()
    assert event["intervalPeriod"]["start"].rstrip("Z") == result["timestamp"].rstrip("Z")
    assert t1["state_after"] == "normal"


def test_the_coordinator_hands_openadr3_to_the_grid_agent_only(tmp_path):
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps(CLIENTS))
    settings = CoordinatorSettings(base_port=9200, log_dir=tmp_path, openadr3=True, openadr3_clients=clients)
    grid_child, *devices = plan_children(settings)
    command = grid_child.command
    assert "--openadr3" in command and command[command.index("--openadr3-clients") + 1] == str(clients.resolve())
    assert all("--openadr3" not in device.command for device in devices)
    assert "--openadr3" not in plan_children(CoordinatorSettings(base_port=9200, log_dir=tmp_path))[0].command


async def test_a_ven_cannot_take_a_rest_agents_id(make_feeder, monkeypatch):
    """A VEN resource whose id would be a registered REST agent's (``home_1`` named twice) is left out: the
    REST agent keeps its place on the feeder."""
    monkeypatch.setenv("OPENADR3_CLIENTS", json.dumps(CLIENTS))
    feeder = await make_feeder(grid={"openadr3": True, "ven_report_timeout_s": 0.2})
    client = feeder.client
    form = {"grant_type": "client_credentials", "client_id": "ven_1", "client_secret": SECRETS["ven_1"]}
    token = (await client.post(f"{BASE_PATH}/auth/token", data=form)).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    ven = (await client.post(f"{BASE_PATH}/vens", json={"venName": "home_1"}, headers=headers)).json()
    resource = {"resourceName": "home_1", "attributes": [{"type": "TRANSFORMER_ID", "values": ["T1"]}]}
    assert (await client.post(f"{BASE_PATH}/vens/{ven['id']}/resources", json=resource, headers=headers)).is_success
    result = await feeder.coordinate()
    assert result["unreachable"] == [] and result["agents_stepped"] == 2
    assert (await feeder.agents())["home_1"]["agent_type"] == "home"
