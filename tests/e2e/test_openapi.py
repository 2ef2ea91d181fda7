"""The OpenAPI document: generated from the models, valid, complete, and honoured by the running service."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from app import app
from chalicelib.api.http import EDGE_ROUTES
from chalicelib.api.openapi import build_document
from chalicelib.container import Container
from tests.conftest import FULL_KEY
from tests.e2e.localstack import DEPLOYED_CATALOG_CACHE, running_stack
from tests.support import in_memory_container

SCHEMATHESIS_CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.fixture
def container(monkeypatch: pytest.MonkeyPatch) -> Iterator[Container]:
    """The app over the in-memory stores (the emulator is for the stores' own tests)."""
    yield from in_memory_container(monkeypatch)


def test_document_is_valid_openapi_and_documents_every_route() -> None:
    document = build_document()
    validate(document)  # raises on an invalid document
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    routed = {
        (path, method.lower())
        for path, methods in app.routes.items()
        for method in methods
        if path != "/openapi.json" and (path, method) not in EDGE_ROUTES
    }
    assert routed == documented
    # what the edge answers (404 on unknown paths, 405 on other methods) is not an operation
    assert not any("{proxy+}" in path for path in document["paths"])
    assert ("/v1/meters", "DELETE") in EDGE_ROUTES and ("/v1/meters", "GET") not in EDGE_ROUTES


def test_429_documents_retry_after_and_every_success_the_rate_limit_headers() -> None:
    document = build_document()
    headers = document["components"]["headers"]
    assert {"Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} == set(headers)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            limited = operation["responses"]["429"]["headers"]
            assert limited["Retry-After"] == {"$ref": "#/components/headers/Retry-After"}, (path, method)
            assert "X-RateLimit-Reset" in limited
            for status, response in operation["responses"].items():
                if status.startswith("2"):
                    assert set(response["headers"]) == {
                        "X-RateLimit-Limit",
                        "X-RateLimit-Remaining",
                        "X-RateLimit-Reset",
                    }


def test_native_routes_document_their_models_and_error_envelope() -> None:
    document = build_document()
    ingest = document["paths"]["/v1/metering/events"]["post"]
    body = ingest["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/UsageEventCreate"}
    create = document["components"]["schemas"]["UsageEventCreate"]
    assert set(create["required"]) == {"service_line_id", "meter", "quantity"}
    assert create["additionalProperties"] is False
    assert {"201", "200", "400", "401", "403", "409", "429"} <= set(ingest["responses"])
    error = ingest["responses"]["409"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorPublic"}
    usage = document["paths"]["/v1/usage"]["get"]
    params = {p["name"]: p for p in usage["parameters"]}
    assert {
        "organization_id",
        "workspace_id",
        "service_line_id",
        "meter",
        "from",
        "to",
        "cursor",
        "limit",
        "hide_voided",
    } == set(params)
    assert params["limit"]["schema"]["maximum"] == 100 and params["limit"]["schema"]["minimum"] == 1
    report = document["paths"]["/v1/meter-usage"]["post"]
    assert report["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/MeterApiErrorPublic"
    }
    assert {"Idempotency-Key", "x-api-idempotency-key"} <= {p["name"] for p in report["parameters"]}


def test_running_service_serves_the_document_and_schemathesis_finds_no_failure(tmp_path: Path) -> None:
    """Schemathesis against the real local stack: no 5xx, no response that breaks the document.

    The stack's catalog cache is on, at its deployed TTL (no key is revoked here): without it, every one
    of the ~1,500 requests reads its API key from the emulated table, a quarter of the stack's time.
    """
    with running_stack(env=DEPLOYED_CATALOG_CACHE) as base_url:
        with urllib.request.urlopen(f"{base_url}/openapi.json", timeout=10) as response:
            served: dict[str, Any] = json.loads(response.read())
        assert served == json.loads(json.dumps(build_document(), default=str))
        schemathesis = str(Path(sys.executable).parent / "schemathesis")
        run = subprocess.run(
            [
                schemathesis,
                "run",
                f"{base_url}/openapi.json",
                "--url",
                base_url,
                "-H",
                f"Authorization: Bearer {FULL_KEY}",
                "--checks",
                SCHEMATHESIS_CHECKS,
                "--max-examples",
                "12",
                "--seed",
                "20261122",
                "--phases",
                "examples,coverage,fuzzing",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert "No issues found" in output or " passed" in output, output[-3000:]
