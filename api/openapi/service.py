"""Paths of the probes and of the document itself."""

from __future__ import annotations

from api.openapi.common import Schema, response, schema_ref

PATHS: dict[str, Schema] = {
    "/healthz": {
        "get": {
            "operationId": "healthz",
            "tags": ["health"],
            "summary": "Liveness",
            "description": "The process is up; touches nothing else.",
            "responses": {"200": response("Alive.", schema_ref("Liveness"))},
        },
    },
    "/readyz": {
        "get": {
            "operationId": "readyz",
            "tags": ["health"],
            "summary": "Readiness",
            "description": "Ready when the database and broker answer and at least one worker "
            "has its models loaded.",
            "responses": {
                "200": response("Ready.", schema_ref("Readiness")),
                "503": response("Not ready; `checks` says why.", schema_ref("Readiness")),
            },
        },
    },
    "/openapi.json": {
        "get": {
            "operationId": "openapi_json",
            "tags": ["meta"],
            "summary": "This document",
            "responses": {"200": response("The OpenAPI 3.1 description.", {"type": "object"})},
        },
    },
}
