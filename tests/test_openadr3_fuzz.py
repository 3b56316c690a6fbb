"""Schemathesis against the OFFICIAL OpenADR 3.0.1 document (specs/openadr3-3.0.1.yaml), our VTN in process.

Every operation the document defines gets schema-valid (positive) and schema-invalid (negative) requests, as a
business-logic client and, for a smaller run, as a VEN, and every answer is held to the document: no server
error, a documented status code, content type and headers, and a body that matches the documented schema. A
share of the generated requests is pointed at objects that exist (a program, an event, a VEN and its resource,
recreated whenever a fuzzed DELETE removed them), so PUT, GET and DELETE answer real objects, not only 404s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.python import asgi as schemathesis_asgi

from agents import grid
from agents.openadr3.vtn import BASE_PATH
from models.openadr3 import NULL_AS_ABSENT
from tests.conftest import make_grid_settings
from tests.test_fuzz import describe, fuzz_settings, start
from tests.test_openadr3 import CLIENTS, PROGRAM, SECRETS, SPEC, Webhooks, event_for

#: The document's conformance checks: what the server answers, not what it accepts.
CONFORMANCE = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
)
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
#: Path parameters that may be pointed at a seeded object, and the seed's key for each.
SEEDED = {"programID": "program", "eventID": "event", "venID": "ven", "resourceID": "resource"}


def conformance_checks() -> list[Any]:
    load_all_checks()
    checks = [check for check in CHECKS.get_all() if check.__name__ in CONFORMANCE]
    assert {check.__name__ for check in checks} == set(CONFORMANCE)
    return [_null_as_absent(check) if check.__name__ == "negative_data_rejection" else check for check in checks]


def _nulls_at(body: Any) -> set[str]:
    """The keys anywhere in a JSON body whose value is null."""
    if isinstance(body, dict):
        return {k for k, v in body.items() if v is None}.union(*(_nulls_at(v) for v in body.values()))
    if isinstance(body, list):
        return set().union(*(_nulls_at(v) for v in body))
    return set()


def _null_as_absent(check: Any) -> Any:
    """negative_data_rejection, except for a null the VTN takes as absent on purpose (models.openadr3.NULL_AS_ABSENT:
    fields the document gives by $ref, which OpenAPI 3.0 cannot mark nullable, and libraries send as null)."""

    def negative_data_rejection(ctx: Any, response: Any, case: Any) -> Any:
        if response.status_code < 300 and _nulls_at(case.body) & set(NULL_AS_ABSENT):
            return None
        return check(ctx, response, case)

    negative_data_rejection.__name__ = check.__name__
    return negative_data_rejection


@pytest.fixture
def vtn_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("OPENADR3_CLIENTS", json.dumps(CLIENTS))
    # subscriptions' callback URLs are probed: fuzzed ones go to in-process webhooks, never to a real host
    app = grid.create_app(make_grid_settings(tmp_path, openadr3=True), transport=Webhooks().transport)
    start(app)
    try:
        yield app
    finally:
        schemathesis_asgi.shutdown_lifespans()


class Seed:
    """Objects that exist, owned by one VEN client, made again through the API whenever one is gone."""

    def __init__(self, app: Any, ven_client: str) -> None:
        self.app = app
        self.ven_client = ven_client
        self.headers = {client_id: self._bearer(client_id) for client_id in SECRETS}
        self.ids: dict[str, str] = {}

    def _bearer(self, client_id: str) -> dict[str, str]:
        form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": SECRETS[client_id]}
        with schemathesis_asgi.get_client(self.app) as client:
            response = client.post(f"{BASE_PATH}/auth/token", data=form)
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    def _exists(self, kind: str) -> bool:
        return kind in self.ids and self.app.state.openadr3.store.get(kind, self.ids[kind]) is not None

    def _create(self, client: Any, path: str, body: dict, client_id: str) -> str:
        response = client.post(BASE_PATH + path, json=body, headers=self.headers[client_id])
        if response.status_code == 409:  # a fuzzed object took the name: pick another
            body = {**body, **{k: f"{v}-{time.monotonic_ns()}" for k, v in body.items() if k.endswith("Name")}}
            response = client.post(BASE_PATH + path, json=body, headers=self.headers[client_id])
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def ensure(self) -> None:
        """Make the program, the event, the VEN and its resource exist."""
        ids = self.ids
        if all(self._exists(kind) for kind in ("program", "event", "ven", "resource")):
            return
        with schemathesis_asgi.get_client(self.app) as client:
            if not self._exists("program"):
                ids["program"] = self._create(client, "/programs", PROGRAM, "bl_client")
            if not self._exists("event"):
                ids["event"] = self._create(client, "/events", event_for(ids["program"]), "bl_client")
            if not self._exists("ven"):
                ids["ven"] = self._create(client, "/vens", {"venName": f"{self.ven_client}-ven"}, self.ven_client)
                ids.pop("resource", None)
            if not self._exists("resource"):
                path = f"/vens/{ids['ven']}/resources"
                ids["resource"] = self._create(client, path, {"resourceName": "battery"}, self.ven_client)


def fuzz_official(app: Any, client_id: str, examples: int, seed: Seed) -> tuple[list[str], dict[str, int]]:
    """Every operation of the official document, positive and negative; returns the failures and a tally."""
    schema = schemathesis.openapi.from_path(SPEC)
    schema.app = app
    checks = conformance_checks()
    failures: list[str] = []
    tally = {"operations": 0, "requests": 0}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 31
    for operation in operations:
        tally["operations"] += 1
        for mode in MODES:

            @fuzz_settings(examples)
            @given(case=operation.as_strategy(generation_mode=mode), use_seeded=st.booleans())
            def run(case: schemathesis.Case, use_seeded: bool) -> None:
                seed.ensure()
                if use_seeded and case.path_parameters:
                    case.path_parameters = {
                        name: seed.ids.get(SEEDED.get(name, ""), value) for name, value in case.path_parameters.items()
                    }
                if operation.path != "/auth/token":
                    case.headers = {**(case.headers or {}), **seed.headers[client_id]}
                tally["requests"] += 1
                case.call_and_validate(checks=checks)

            try:
                run()
            except Unsatisfiable:
                pass
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"{operation.label} [{mode.value}] as {client_id}:\n{describe(exc)}")
    return failures, tally


@pytest.mark.parametrize(("client_id", "examples"), [("bl_client", 6), ("ven_1", 3)])
def test_vtn_answers_conform_to_the_official_document(vtn_app, client_id, examples):
    seed = Seed(vtn_app, ven_client="ven_1")
    started = time.monotonic()
    failures, tally = fuzz_official(vtn_app, client_id, examples, seed)
    elapsed_s = time.monotonic() - started
    print(
        f"schemathesis as {client_id}: {tally['operations']} operations, {tally['requests']} requests, "
        f"{len(failures)} failing, {elapsed_s:.1f} s"
    )
    assert not failures, "\n\n".join(failures)
