"""The hub's OpenAPI 3.1 schema, built from the same option dataclasses the CLI reads (a new
CLI option appears here without an edit)."""

from __future__ import annotations

import dataclasses

from layerwise.base import __version__
from layerwise.hub.context import API
from layerwise.hub.jobspec import KINDS, accepted_fields

JSON_TYPES = {"bool": "boolean", "int": "integer", "float": "number", "str": "string"}


def _option_schema(kind: str) -> dict:
    props = {}
    for name, f in accepted_fields(kind).items():
        typ = str(f.type)
        base = JSON_TYPES.get(typ.replace(" | None", ""), "string")
        prop: dict = {"type": [base, "null"] if "None" in typ else base,
                      "description": f.metadata.get("help", "")}
        if f.default is not dataclasses.MISSING and f.default is not None:
            prop["default"] = f.default
        if "minimum" in f.metadata:
            prop["minimum"] = f.metadata["minimum"]
        props[name] = prop
    return {"type": "object", "additionalProperties": False, "properties": props}


def _op(summary: str, role: str, body: str | None = None, *, ok: int = 200,
        params: list[dict] | None = None, media: str = "application/json") -> dict:
    responses = {str(ok): {"description": "ok", "content": {media: {}}},
                 "4XX": {"description": "refused: {\"error\": one line}",
                         "content": {"application/json": {
                             "schema": {"$ref": "#/components/schemas/Error"}}}}}
    op = {"summary": summary, "description": f"role: {role}" if role else "no token needed",
          "responses": responses}
    if role:
        op["security"] = [{"bearer": []}]
    else:
        op["security"] = []
    if body:
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}}
    if params:
        op["parameters"] = params
    return op


def _path_param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, typ: str = "string", description: str = "") -> dict:
    return {"name": name, "in": "query", "required": False, "schema": {"type": typ},
            "description": description}


def schema() -> dict:
    """The OpenAPI document served at /api/v1/openapi.json."""
    job_id, limit = [_path_param("id")], _query("limit", "integer", "at most this many rows")
    job = {"type": "object", "additionalProperties": False, "required": ["kind"],
           "properties": {
               "kind": {"enum": list(KINDS)},
               "spec": {"type": "string", "description": "compile/analyze: timm:NAME, "
                        "torchvision:NAME, zoo:NAME, hf:NAME (the hub's --models-dir) or "
                        "upload:ID (a .pt2)"},
               "bundle": {"type": "string", "description": "profile: job:ID of a compile"},
               "agent": {"type": "string", "description": "fleet device to measure on"},
               "options": {"oneOf": [{"$ref": f"#/components/schemas/{k.title()}Options"}
                                     for k in KINDS]}}}
    paths = {
        f"{API}/openapi.json": {"get": _op("this schema", "")},
        f"{API}/whoami": {"get": _op("the caller's name and role", "viewer")},
        f"{API}/options": {"get": _op("options per job kind (the CLI's)", "viewer")},
        f"{API}/jobs": {
            "get": _op("jobs, newest first", "viewer", params=[
                _query("state", description="queued|running|done|failed|cancelled"), limit]),
            "post": _op("submit a compile, analyze or profile job", "engineer", "Job", ok=201)},
        f"{API}/jobs/{{id}}": {"get": _op("one job: state, result, error", "viewer",
                                          params=job_id)},
        f"{API}/jobs/{{id}}/cancel": {"post": _op("cancel a queued or running job",
                                                  "engineer", params=job_id)},
        f"{API}/jobs/{{id}}/log": {"get": _op("the job's log; follow=1 streams it to the end",
                                              "viewer", media="text/plain",
                                              params=[*job_id, _query("follow")])},
        f"{API}/jobs/{{id}}/bundle": {"get": _op("the bundle (or analysis) as tar.gz",
                                                 "viewer", media="application/gzip",
                                                 params=job_id)},
        f"{API}/jobs/{{id}}/files/{{path}}": {"get": _op(
            "one file of the job's folder (report.html, manifest.json...)", "viewer",
            media="application/octet-stream", params=[*job_id, _path_param("path")])},
        f"{API}/uploads": {"post": {
            **_op("upload a file (raw body): .pt2 model, --data, --eval, --weights",
                  "engineer", ok=201, params=[_query("name", description="file name")]),
            "requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string",
                                                        "format": "binary"}}}}}},
        f"{API}/runs": {"get": _op("the results history, newest first", "viewer", params=[
            _query("kind"), _query("model"), _query("target"), _query("device"), limit])},
        f"{API}/leaderboard": {"get": _op("best result per model, target and device",
                                          "viewer", params=[_query("metric"), _query("target"),
                                                            _query("device"), limit])},
        f"{API}/devices": {
            "get": _op("the device fleet with each agent's state", "viewer",
                       params=[_query("live", description="0: the last known state")]),
            "post": _op("add an agent by URL and token", "admin", "Device", ok=201)},
        f"{API}/devices/{{name}}": {"delete": _op("remove a device", "admin",
                                                  params=[_path_param("name")])},
        f"{API}/users": {"get": _op("users and roles", "admin"),
                         "post": _op("add a user; the reply holds the token, once", "admin",
                                     "User", ok=201)},
        f"{API}/users/{{name}}": {"delete": _op("disable a user", "admin",
                                                params=[_path_param("name")])},
        f"{API}/audit": {"get": _op("the append-only audit log, newest first", "admin",
                                    params=[limit])},
    }
    schemas = {f"{k.title()}Options": _option_schema(k) for k in KINDS}
    schemas.update({
        "Job": job,
        "Device": {"type": "object", "additionalProperties": False,
                   "required": ["name", "url", "token"],
                   "properties": {"name": {"type": "string"}, "url": {"type": "string"},
                                  "token": {"type": "string"}}},
        "User": {"type": "object", "additionalProperties": False, "required": ["name", "role"],
                 "properties": {"name": {"type": "string"},
                                "role": {"enum": ["viewer", "engineer", "admin"]}}},
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string"}}},
    })
    return {"openapi": "3.1.0",
            "info": {"title": "layerwise hub", "version": __version__,
                     "description": "Compile, analyze and profile jobs for a team; the "
                                    "dashboard is served at /."},
            "paths": paths,
            "components": {"schemas": schemas, "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}]}
