"""The OpenAPI document against a live hub: schemathesis generates valid
and invalid requests for every operation the document lets it fuzz (those
marked ``x-fuzz-excluded`` say why not) and sends them, over real TLS
(verified against the hub's own certificate), as an admin and as an
ordinary user. No answer may be a 5xx, every status must be documented for
its operation, and every answer must match its documented content type,
headers and schema.

Left out, as the document marks them: ``POST /v1/logout`` (it would end
the login the run goes on with) and the channels that carry binary frames
(``/v1/control``, ``/v1/attach/http…``, driven by their own tests). The
rest runs, changes included: disabling the admin itself is refused (409),
wrong current passwords only lock further password logins out (the run's
two logins are made first), and names generated at random do not reach
the run's own accounts.

Bounded: a fixed number of examples per operation and mode, derandomized
(the same requests every run), no shrinking, a timeout on every request
and a deadline on every example."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.test_logins import agent_login, enrol
from tests.support import ADMIN_PASSWORD, Hub

pytestmark = pytest.mark.timeout(240)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
REQUEST_TIMEOUT = 10.0  # seconds, every request
USER = "fuzzed-user"
USER_PASSWORD = "an ordinary password"
AGENT = "fuzzed-agent"


@dataclass
class Api:
    hub: Hub
    cert: str  # the hub's certificate, which every request verifies
    schema: Any
    admin: str = ""  # tokens, logged in before any fuzzing (which may lock logins out)
    user: str = ""
    agent: str = ""


def login(url: str, cert: str, user: str, password: str) -> str:
    resp = requests.post(
        f"{url}/v1/login",
        json={"user": user, "password": password},
        verify=cert,
        timeout=REQUEST_TIMEOUT,
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["token"])


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    hub = Hub(tmp_path_factory.mktemp("openapi") / "hub").start()
    try:
        cert = str(hub.data / "tls" / "cert.pem")
        schema = schemathesis.openapi.from_url(
            f"{hub.url}/v1/openapi.json", verify=cert, timeout=REQUEST_TIMEOUT
        )
        admin = login(hub.url, cert, "admin", ADMIN_PASSWORD)
        resp = requests.post(
            f"{hub.url}/v1/users",
            json={"name": USER, "password": USER_PASSWORD},
            headers={"Authorization": f"Bearer {admin}"},
            verify=cert,
            timeout=REQUEST_TIMEOUT,
        )
        assert resp.status_code == 201, resp.text
        user = login(hub.url, cert, USER, USER_PASSWORD)
        status, agent = agent_login(hub, AGENT, enrol(hub, admin, AGENT))
        assert status == 200, agent
        yield Api(hub, cert, schema, admin, user, agent["token"])
    finally:
        hub.stop()


def fuzzable(schema: Any) -> list[Any]:
    ops = [result.ok() for result in schema.get_all_operations()]
    return [op for op in ops if "x-fuzz-excluded" not in op.definition.raw]


def fuzz(api: Api, token: str, examples: int, tags: set[str] | None = None) -> list[str]:
    """Every fuzzable operation (of ``tags``), valid and invalid requests;
    the failures."""
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    for operation in fuzzable(api.schema):
        if tags is not None and not tags & set(operation.definition.raw["tags"]):
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=examples,
                derandomize=True,
                database=None,
                deadline=timedelta(seconds=REQUEST_TIMEOUT + 5),
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
                report_multiple_bugs=False,
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                case.call_and_validate(
                    headers=headers, checks=CHECKS, verify=api.cert, timeout=REQUEST_TIMEOUT
                )

            try:
                run()
            except Unsatisfiable:  # no parameter or body to make invalid
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis's FailureGroup
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    return failures


def test_the_document_is_served_without_a_login_and_covers_the_api(api: Api) -> None:
    resp = requests.get(f"{api.hub.url}/v1/openapi.json", verify=api.cert, timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    doc = resp.json()
    assert doc["openapi"] == "3.1.0"
    api.schema.validate()  # against the OpenAPI 3.1 meta-schema
    assert {"/v1/login", "/v1/users", "/v1/links/{token}", "/v1/control"} <= set(doc["paths"])
    every = {f"{m.upper()} {p}" for p, ops in doc["paths"].items() for m in ops}
    left_out = {
        f"{m.upper()} {p}"
        for p, ops in doc["paths"].items()
        for m, o in ops.items()
        if "x-fuzz-excluded" in o
    }
    assert left_out == {
        "POST /v1/logout",
        "GET /v1/control",
        "POST /v1/attach/http",
        "DELETE /v1/attach/http/{aid}",
        "GET /v1/attach/http/{aid}/down",
        "POST /v1/attach/http/{aid}/up",
        "POST /v1/admin/nodes/{name}/drain",  # it would drain the hub under test
    }
    # schemathesis leaves out the operation it loaded the document from;
    # this test fetched it above.
    itself = {"GET /v1/openapi.json"}
    assert {op.label for op in fuzzable(api.schema)} == every - left_out - itself


def test_errors_of_aiohttp_itself_are_the_hubs_json_errors(api: Api) -> None:
    """An unknown route, a wrong method and a body over 1 MiB: the same
    Error shape as every handler's error."""
    url, cert = api.hub.url, api.cert
    resp = requests.get(f"{url}/v1/no-such-thing", verify=cert, timeout=10)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"
    resp = requests.patch(f"{url}/v1/health", verify=cert, timeout=10)
    assert resp.status_code == 405
    assert resp.json()["error"]["code"] == "method_not_allowed"
    assert "GET" in resp.headers["Allow"]
    big = json.dumps({"user": "x" * (1 << 20), "password": "y"})
    resp = requests.post(
        f"{url}/v1/login",
        data=big,
        headers={"Content-Type": "application/json"},
        verify=cert,
        timeout=10,
    )
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "too_large"


def test_fuzzing_as_an_admin_finds_nothing(api: Api) -> None:
    failures = fuzz(api, api.admin, examples=8)
    assert not failures, f"{len(failures)} operations failed:\n\n" + "\n\n".join(failures)
    # The run's login survived it.
    resp = requests.get(
        f"{api.hub.url}/v1/users",
        headers={"Authorization": f"Bearer {api.admin}"},
        verify=api.cert,
        timeout=REQUEST_TIMEOUT,
    )
    assert resp.status_code == 200


def test_fuzzing_as_an_ordinary_user_finds_nothing(api: Api) -> None:
    """Every operation again, fewer examples: admin-only ones answer 403."""
    failures = fuzz(api, api.user, examples=4)
    assert not failures, f"{len(failures)} operations failed:\n\n" + "\n\n".join(failures)


def test_fuzzing_as_an_agent_finds_nothing(api: Api) -> None:
    """What agents call (offers, security reports, their policies), and the
    rest of the agents' and collection's operations, which refuse them."""
    failures = fuzz(api, api.agent, examples=8, tags={"agents", "collection"})
    assert not failures, f"{len(failures)} operations failed:\n\n" + "\n\n".join(failures)
