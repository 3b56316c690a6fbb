"""The OpenADR 3 VTN of the grid agent (--openadr3): tokens, roles, objects, problems, durability, its OpenAPI."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from agents import grid
from agents.common.settings import StartupError
from agents.openadr3.clients import ClientsError, load_clients
from agents.openadr3.vtn import BASE_PATH
from tests.conftest import make_grid_settings

SPEC = Path(__file__).resolve().parents[1] / "specs" / "openadr3-3.0.1.yaml"
CLIENTS = [
    {"client_id": "bl_client", "client_secret": "bl-s3cret", "role": "bl"},
    {"client_id": "ven_1", "client_secret": "ven-1-s3cret", "role": "ven"},
    {"client_id": "ven_2", "client_secret": "ven-2-s3cret", "role": "ven"},
]
SECRETS = {client["client_id"]: client["client_secret"] for client in CLIENTS}
PROBLEM_FIELDS = {"type", "title", "status", "detail", "instance"}

PROGRAM = {
    "programName": "feeder-T1-flex",
    "programLongName": "Transformer T1 flexibility",
    "retailerName": "grid_agent",
    "programType": "DYNAMIC_PRICING",
    "country": "DE",
    "timeZoneOffset": "PT1H",
    "intervalPeriod": {"start": "2025-06-01T00:00:00Z", "duration": "P1D"},
    "payloadDescriptors": [
        {"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": "IMPORT_CAPACITY_LIMIT", "units": "KW"}
    ],
}


def event_for(program_id: str, targets: list[dict[str, Any]] | None = None, name: str = "evening peak") -> dict:
    """An event of one 15-minute interval that limits import to 3.5 kW."""
    event = {
        "programID": program_id,
        "eventName": name,
        "priority": 0,
        "payloadDescriptors": [{"payloadType": "IMPORT_CAPACITY_LIMIT", "units": "KW"}],
        "reportDescriptors": [{"payloadType": "USAGE", "readingType": "DIRECT_READ", "units": "KW"}],
        "intervalPeriod": {"start": "2025-06-01T18:00:00+02:00", "duration": "PT15M"},
        "intervals": [{"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [3.5]}]}],
    }
    if targets is not None:
        event["targets"] = targets
    return event


class Vtn:
    """A grid agent with --openadr3 running in a TestClient, and the bearer headers of each client."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self._headers: dict[str, dict[str, str]] = {}

    def token(self, client_id: str) -> str:
        response = self.client.post(
            f"{BASE_PATH}/auth/token",
            data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": SECRETS[client_id]},
        )
        assert response.status_code == 200, response.text
        return response.json()["access_token"]

    def as_(self, client_id: str) -> dict[str, str]:
        if client_id not in self._headers:
            self._headers[client_id] = {"Authorization": f"Bearer {self.token(client_id)}"}
        return self._headers[client_id]

    def post(self, path: str, body: dict, client_id: str, status: int = 201) -> dict:
        response = self.client.post(BASE_PATH + path, json=body, headers=self.as_(client_id))
        assert response.status_code == status, response.text
        return response.json()

    def get(self, path: str, client_id: str, status: int = 200, **params: Any) -> Any:
        response = self.client.get(BASE_PATH + path, headers=self.as_(client_id), params=params)
        assert response.status_code == status, response.text
        return response.json()


@pytest.fixture
def clients_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENADR3_CLIENTS", json.dumps(CLIENTS))


#: Hosts whose webhooks answer (any other host cannot be reached), and the notifications they were sent.
WEBHOOK_HOSTS = {"home-1.example", "aggregator.example"}


class Webhooks:
    """Webhook receivers in process: the grid agent's outbound transport, so no test calls a real host."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], Any]] = []
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.host not in WEBHOOK_HOSTS:
            raise httpx.ConnectError(f"no route to {request.url.host}", request=request)
        if request.method == "POST":
            self.received.append((str(request.url), dict(request.headers), json.loads(request.content)))
        return httpx.Response(204 if request.method == "POST" else 405)


def start_vtn(tmp_path: Path, webhooks: Webhooks | None = None, **overrides: Any) -> TestClient:
    transport = (webhooks or Webhooks()).transport
    return TestClient(grid.create_app(make_grid_settings(tmp_path, openadr3=True, **overrides), transport=transport))


@pytest.fixture
def vtn(tmp_path: Path, clients_env: None) -> Iterator[Vtn]:
    with start_vtn(tmp_path) as client:
        yield Vtn(client)


def assert_problem(response: Any, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == PROBLEM_FIELDS, body
    assert body["status"] == status and body["type"] == "about:blank"
    assert body["instance"].startswith("http") and BASE_PATH in body["instance"]
    return body


# --- turning it on ------------------------------------------------------------------------------------------------
def test_openadr3_is_off_by_default(tmp_path, clients_env):
    with TestClient(grid.create_app(make_grid_settings(tmp_path))) as client:
        response = client.get(f"{BASE_PATH}/programs")
    assert response.status_code == 404
    assert "error" in response.json()  # the project's own error shape, not a problem


def test_openadr3_without_clients_refuses_to_start(tmp_path):
    with pytest.raises(StartupError, match="OPENADR3_CLIENTS"):
        grid.create_app(make_grid_settings(tmp_path, openadr3=True))


def test_openadr3_clients_from_a_file(tmp_path):
    clients_file = tmp_path / "clients.json"
    clients_file.write_text(json.dumps(CLIENTS), encoding="utf-8")
    with start_vtn(tmp_path, openadr3_clients=clients_file) as client:
        assert Vtn(client).token("ven_2")


def test_load_clients_never_shows_a_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENADR3_CLIENTS", json.dumps(CLIENTS))
    assert "bl-s3cret" not in repr(load_clients(None))
    monkeypatch.setenv("OPENADR3_CLIENTS", json.dumps([{**CLIENTS[0], "role": "admin"}]))
    with pytest.raises(ClientsError) as caught:
        load_clients(None)
    assert "bl-s3cret" not in str(caught.value) and "role" in str(caught.value)


def test_the_rest_of_the_grid_api_keeps_its_error_shape(vtn):
    response = vtn.client.get("/runs/nope")
    assert response.status_code == 404 and "error" in response.json()


# --- tokens -------------------------------------------------------------------------------------------------------
def test_token_with_form_credentials(vtn):
    response = vtn.client.post(
        f"{BASE_PATH}/auth/token",
        data={"grant_type": "client_credentials", "client_id": "ven_1", "client_secret": "ven-1-s3cret"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and len(body["access_token"]) >= 32
    assert response.headers["cache-control"] == "no-store"


def test_token_with_basic_credentials(vtn):
    basic = base64.b64encode(b"bl_client:bl-s3cret").decode()
    response = vtn.client.post(
        f"{BASE_PATH}/auth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert response.status_code == 200, response.text
    headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
    assert vtn.client.get(f"{BASE_PATH}/programs", headers=headers).status_code == 200


def test_token_with_a_wrong_secret_is_a_403_problem(vtn):
    response = vtn.client.post(
        f"{BASE_PATH}/auth/token",
        data={"grant_type": "client_credentials", "client_id": "ven_1", "client_secret": "ven-2-s3cret"},
    )
    assert_problem(response, 403)
    assert "s3cret" not in response.text


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"client_id": "ven_1", "client_secret": "ven-1-s3cret"}, "invalid_request"),
        ({"grant_type": "password", "client_id": "ven_1", "client_secret": "ven-1-s3cret"}, "unsupported_grant_type"),
        ({"grant_type": "client_credentials", "client_id": "ven_1"}, "invalid_request"),
    ],
)
def test_token_request_missing_a_part_is_a_400_auth_error(vtn, form, error):
    response = vtn.client.post(f"{BASE_PATH}/auth/token", data=form)
    assert response.status_code == 400
    assert response.json()["error"] == error


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic Ymxfc2VjcmV0"])
def test_requests_without_a_valid_token_are_403_problems(vtn, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    assert_problem(vtn.client.get(f"{BASE_PATH}/events", headers=headers), 403)


def test_an_expired_token_is_refused(vtn):
    tokens = vtn.client.app.state.openadr3.tokens
    token = vtn.token("bl_client")
    tokens.clock = lambda: 1e12
    assert_problem(vtn.client.get(f"{BASE_PATH}/programs", headers={"Authorization": f"Bearer {token}"}), 403)


# --- programs and events ------------------------------------------------------------------------------------------
def test_bl_creates_a_program_and_an_event(vtn):
    program = vtn.post("/programs", PROGRAM, "bl_client")
    assert program["id"] and program["objectType"] == "PROGRAM" and program["programName"] == PROGRAM["programName"]
    assert program["createdDateTime"] == program["modificationDateTime"]
    assert program["createdDateTime"].endswith("Z")  # timezone-aware, as the client library requires
    event = vtn.post("/events", event_for(program["id"]), "bl_client")
    assert event["objectType"] == "EVENT" and event["programID"] == program["id"]
    assert event["intervals"][0]["payloads"][0] == {"type": "IMPORT_CAPACITY_LIMIT", "values": [3.5]}
    assert vtn.get(f"/events/{event['id']}", "bl_client") == event
    assert vtn.get("/events", "bl_client", programID=program["id"]) == [event]
    assert vtn.get("/events", "bl_client", programID="program-none") == []


def test_put_keeps_id_and_creation_time_and_moves_modification_time(vtn):
    program = vtn.post("/programs", PROGRAM, "bl_client")
    response = vtn.client.put(
        f"{BASE_PATH}/programs/{program['id']}",
        json={**PROGRAM, "id": "mine", "programLongName": "renamed"},
        headers=vtn.as_("bl_client"),
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["id"] == program["id"] and updated["createdDateTime"] == program["createdDateTime"]
    assert updated["modificationDateTime"] > program["modificationDateTime"]
    assert updated["programLongName"] == "renamed"


def test_delete_answers_the_object_and_then_404(vtn):
    program = vtn.post("/programs", PROGRAM, "bl_client")
    response = vtn.client.delete(f"{BASE_PATH}/programs/{program['id']}", headers=vtn.as_("bl_client"))
    assert response.status_code == 200 and response.json() == program
    assert_problem(vtn.client.get(f"{BASE_PATH}/programs/{program['id']}", headers=vtn.as_("bl_client")), 404)


def test_a_second_program_of_the_same_name_is_a_409_problem(vtn):
    vtn.post("/programs", PROGRAM, "bl_client")
    response = vtn.client.post(f"{BASE_PATH}/programs", json=PROGRAM, headers=vtn.as_("bl_client"))
    assert_problem(response, 409)


def test_an_event_of_an_unknown_program_is_a_400_problem(vtn):
    response = vtn.client.post(f"{BASE_PATH}/events", json=event_for("program-none"), headers=vtn.as_("bl_client"))
    assert_problem(response, 400)


def test_an_invalid_body_is_a_400_problem_naming_the_field(vtn):
    response = vtn.client.post(f"{BASE_PATH}/programs", json={"programName": ""}, headers=vtn.as_("bl_client"))
    assert "programName" in assert_problem(response, 400)["detail"]


def test_a_ven_may_not_write_programs_or_events(vtn):
    program = vtn.post("/programs", PROGRAM, "bl_client")
    assert_problem(vtn.client.post(f"{BASE_PATH}/programs", json=PROGRAM, headers=vtn.as_("ven_1")), 403)
    assert_problem(vtn.client.post(f"{BASE_PATH}/events", json=event_for(program["id"]), headers=vtn.as_("ven_1")), 403)
    assert program in vtn.get("/programs", "ven_1")  # but reads them


# --- VENs, resources, targeting, reports --------------------------------------------------------------------------
def test_a_ven_registers_a_ven_and_a_resource(vtn):
    ven = vtn.post("/vens", {"venName": "home_1", "targets": [{"type": "GROUP", "values": ["T1"]}]}, "ven_1")
    assert ven["objectType"] == "VEN" and ven["id"]
    resource = vtn.post(f"/vens/{ven['id']}/resources", {"resourceName": "home_1_battery"}, "ven_1")
    assert resource["objectType"] == "RESOURCE" and resource["venID"] == ven["id"]
    assert vtn.get(f"/vens/{ven['id']}/resources", "ven_1") == [resource]
    assert vtn.get(f"/vens/{ven['id']}/resources/{resource['id']}", "ven_1") == resource
    assert vtn.get(f"/vens/{ven['id']}", "ven_1")["resources"] == [resource]
    assert_problem(
        vtn.client.post(
            f"{BASE_PATH}/vens/{ven['id']}/resources", json={"resourceName": "home_1_battery"}, headers=vtn.as_("ven_1")
        ),
        409,
    )


def test_a_ven_reads_the_events_targeted_at_it_and_untargeted_ones(vtn):
    program = vtn.post("/programs", PROGRAM, "bl_client")
    ven = vtn.post("/vens", {"venName": "home_1", "targets": [{"type": "GROUP", "values": ["T1"]}]}, "ven_1")
    vtn.post(f"/vens/{ven['id']}/resources", {"resourceName": "home_1_battery"}, "ven_1")
    vtn.post("/vens", {"venName": "home_2"}, "ven_2")
    everyone = vtn.post("/events", event_for(program["id"], name="everyone"), "bl_client")

    def aimed(targets: list[dict], name: str) -> dict:
        return vtn.post("/events", event_for(program["id"], targets, name), "bl_client")

    by_name = aimed([{"type": "VEN_NAME", "values": ["home_1"]}], "n")
    by_group = vtn.post("/events", event_for(program["id"], [{"type": "GROUP", "values": ["T1"]}], "g"), "bl_client")
    by_resource = vtn.post(
        "/events", event_for(program["id"], [{"type": "RESOURCE_NAME", "values": ["home_1_battery"]}], "r"), "bl_client"
    )
    other = aimed([{"type": "VEN_NAME", "values": ["home_2"]}], "o")
    ours = {"programID": program["id"]}  # beside the feeder program's standing telemetry event
    seen = [event["id"] for event in vtn.get("/events", "ven_1", **ours)]
    assert seen == [everyone["id"], by_name["id"], by_group["id"], by_resource["id"]]
    assert [event["id"] for event in vtn.get("/events", "ven_2", **ours)] == [everyone["id"], other["id"]]
    assert_problem(vtn.client.get(f"{BASE_PATH}/events/{other['id']}", headers=vtn.as_("ven_1")), 403)
    assert len(vtn.get("/events", "bl_client", **ours)) == 5
    grouped = vtn.get("/events", "bl_client", targetType="GROUP", targetValues=["T1"])
    assert [e["id"] for e in grouped] == [by_group["id"]]
    paged = vtn.get("/events", "bl_client", skip=1, limit=2, **ours)
    assert [e["id"] for e in paged] == [by_name["id"], by_group["id"]]


def test_a_ven_posts_a_report_on_an_event(vtn):
    program = vtn.post("/programs", PROGRAM, "bl_client")
    event = vtn.post("/events", event_for(program["id"]), "bl_client")
    report = {
        "programID": program["id"],
        "eventID": event["id"],
        "clientName": "home_1",
        "reportName": "evening peak usage",
        "payloadDescriptors": [{"payloadType": "USAGE", "readingType": "DIRECT_READ", "units": "KW"}],
        "resources": [
            {
                "resourceName": "home_1_battery",
                "intervalPeriod": {"start": "2025-06-01T18:00:00+02:00", "duration": "PT15M"},
                "intervals": [{"id": 0, "payloads": [{"type": "USAGE", "values": [3.2]}]}],
            }
        ],
    }
    posted = vtn.post("/reports", report, "ven_1")
    assert posted["objectType"] == "REPORT" and posted["resources"] == report["resources"]
    assert vtn.get("/reports", "bl_client", eventID=event["id"]) == [posted]
    assert vtn.get("/reports", "ven_2") == []
    assert_problem(vtn.client.get(f"{BASE_PATH}/reports/{posted['id']}", headers=vtn.as_("ven_2")), 403)
    assert_problem(vtn.client.post(f"{BASE_PATH}/reports", json=report, headers=vtn.as_("bl_client")), 403)


def test_a_ven_cannot_see_another_vens_objects(vtn):
    mine = vtn.post("/vens", {"venName": "home_1"}, "ven_1")
    resource = vtn.post(f"/vens/{mine['id']}/resources", {"resourceName": "pv"}, "ven_1")
    theirs = vtn.post("/vens", {"venName": "home_2"}, "ven_2")
    headers = vtn.as_("ven_1")
    assert_problem(vtn.client.get(f"{BASE_PATH}/vens/{theirs['id']}", headers=headers), 403)
    assert_problem(vtn.client.put(f"{BASE_PATH}/vens/{theirs['id']}", json={"venName": "x"}, headers=headers), 403)
    assert_problem(vtn.client.delete(f"{BASE_PATH}/vens/{theirs['id']}", headers=headers), 403)
    assert_problem(vtn.client.get(f"{BASE_PATH}/vens/{theirs['id']}/resources", headers=headers), 403)
    assert_problem(
        vtn.client.get(f"{BASE_PATH}/vens/{mine['id']}/resources/{resource['id']}", headers=vtn.as_("ven_2")), 403
    )
    assert [ven["venName"] for ven in vtn.get("/vens", "ven_1")] == ["home_1"]
    assert [ven["venName"] for ven in vtn.get("/vens", "bl_client")] == ["home_1", "home_2"]
    assert_problem(vtn.client.post(f"{BASE_PATH}/vens", json={"venName": "home_2"}, headers=headers), 409)


def test_subscriptions_belong_to_their_client(vtn):
    program = vtn.post("/programs", PROGRAM, "bl_client")
    subscription = {
        "clientName": "home_1",
        "programID": program["id"],
        "objectOperations": [
            {"objects": ["EVENT"], "operations": ["CREATE", "UPDATE"], "callbackUrl": "https://home-1.example/callback"}
        ],
    }
    posted = vtn.post("/subscriptions", subscription, "ven_1")
    assert posted["objectType"] == "SUBSCRIPTION"
    assert vtn.get("/subscriptions", "ven_1", objects=["EVENT"]) == [posted]
    assert vtn.get("/subscriptions", "ven_1", objects=["REPORT"]) == []
    assert vtn.get("/subscriptions", "ven_2") == []
    assert_problem(vtn.client.get(f"{BASE_PATH}/subscriptions/{posted['id']}", headers=vtn.as_("ven_2")), 403)


# --- durability ---------------------------------------------------------------------------------------------------
def test_objects_survive_a_restart(tmp_path, clients_env):
    with start_vtn(tmp_path) as client:
        first = Vtn(client)
        program = first.post("/programs", PROGRAM, "bl_client")
        event = first.post("/events", event_for(program["id"]), "bl_client")
        ven = first.post("/vens", {"venName": "home_1"}, "ven_1")
        resource = first.post(f"/vens/{ven['id']}/resources", {"resourceName": "pv"}, "ven_1")
    assert (tmp_path / "state" / "openadr3.sqlite3").exists()
    with start_vtn(tmp_path) as client:
        again = Vtn(client)  # tokens are in memory: new ones after a restart
        assert again.get(f"/programs/{program['id']}", "bl_client") == program
        assert again.get("/events", "ven_1", programID=program["id"]) == [event]
        assert again.get(f"/vens/{ven['id']}", "ven_1") == {**ven, "resources": [resource]}
        assert_problem(again.client.get(f"{BASE_PATH}/vens/{ven['id']}", headers=again.as_("ven_2")), 403)
        assert again.post("/programs", {"programName": "second"}, "bl_client")["id"] != program["id"]


# --- the served OpenAPI -------------------------------------------------------------------------------------------
def _operations(paths: dict[str, Any]) -> dict[tuple[str, str], str]:
    methods = {"get", "post", "put", "delete", "patch"}
    return {
        (path, method): op.get("operationId")
        for path, item in paths.items()
        for method, op in item.items()
        if method in methods
    }


def test_served_openapi_has_the_official_paths_methods_and_operation_ids(vtn):
    official = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    served = vtn.client.get(f"{BASE_PATH}/openapi.json").json()
    assert _operations(served["paths"]) == _operations(official["paths"])


def test_served_openapi_declares_the_official_status_codes(vtn):
    official = yaml.safe_load(SPEC.read_text(encoding="utf-8"))["paths"]
    served = vtn.client.get(f"{BASE_PATH}/openapi.json").json()["paths"]
    for path, item in official.items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert set(served[path][method]["responses"]) == set(operation["responses"]), (method, path)


def test_null_is_refused_where_the_document_does_not_allow_it(vtn):
    """Schemathesis found ``"objectType": null`` accepted; the document makes only some fields nullable."""
    response = vtn.client.post(
        f"{BASE_PATH}/programs", json={**PROGRAM, "objectType": None}, headers=vtn.as_("bl_client")
    )
    assert "objectType" in assert_problem(response, 400)["detail"]
    nullable = vtn.post("/programs", {**PROGRAM, "programType": None, "country": None}, "bl_client")
    assert "programType" not in nullable


def test_null_for_a_field_the_document_gives_by_ref_is_taken_as_absent(vtn):
    """OpenAPI 3.0 cannot mark a $ref nullable, and openadr3-client sends null for every unset optional field."""
    period = {"start": "2025-06-01T00:00:00Z", "duration": None, "randomizeStart": None}
    program = {**PROGRAM, "programName": "nulls", "timeZoneOffset": None, "intervalPeriod": period}
    posted = vtn.post("/programs", program, "bl_client")
    assert "timeZoneOffset" not in posted and posted["intervalPeriod"] == {"start": "2025-06-01T00:00:00Z"}
    assert "intervalPeriod" not in vtn.post("/programs", {"programName": "none", "intervalPeriod": None}, "bl_client")
