"""The OpenAPI 3.1 document, generated from the routes' pydantic models (nothing hand-written).

Views register themselves with :func:`documented`; :func:`build_document` turns the registry and the
models' JSON schemas (``pydantic.json_schema.models_json_schema``) into the document served at
``/openapi.json``. Validation stays in the views (one ``model_validate`` each), so the request path
pays nothing for the documentation.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from service.schemas import MAX_FILTERS, ErrorResponse

REF = "#/components/schemas/{model}"
DESCRIPTION = (
    "Recommendations and rating predictions. Every error is JSON with the field and the reason. A query string "
    "must stay within about 32 KiB (uWSGI carries it twice in its 64 KiB buffer): a longer one is dropped before "
    "it reaches the service (which then answers 414, or the connection closes), so the id lists of a "
    "GET must stay within it (POST /recommend takes 10,000 ids). Bodies over the service's limit "
    "(RECSYS_MAX_BODY_BYTES, default 8 MiB) get 413; a chunked body gets 411 (send Content-Length)."
)


@dataclass(frozen=True)
class RouteDoc:
    method: str
    path: str
    summary: str
    query: type[BaseModel] | None = None
    body: Any = None  # a model or a union of models
    responses: dict[int, Any] = field(default_factory=dict)  # status -> model (or None for non-JSON)
    content_type: str = "application/json"


ROUTES: list[RouteDoc] = []


def documented(method: str, path: str, summary: str, **kwargs: Any):
    """Record a view's contract for the document; the view itself is returned unchanged."""

    def register(view):
        ROUTES.append(RouteDoc(method.lower(), path, summary, **kwargs))
        return view

    return register


def _query_parameters(model: type[BaseModel], defs: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    defs.update(schema.pop("$defs", {}))
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema["properties"].items():
        param = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if "description" in prop:
            param["description"] = prop["description"]
        if prop.get("type") == "array" or any(p.get("type") == "array" for p in prop.get("anyOf", [])):
            param.update(style="form", explode=True)
        params.append(param)
    return params


def build_document(title: str, version: str) -> dict[str, Any]:
    models = {ErrorResponse}
    for route in ROUTES:
        models.update(m for m in route.responses.values() if isinstance(m, type) and issubclass(m, BaseModel))
    _, top = models_json_schema(
        [(m, "serialization") for m in sorted(models, key=lambda m: m.__name__)], ref_template=REF
    )
    defs: dict[str, Any] = dict(top.get("$defs", {}))

    def schema_of(annotation: Any, mode: str) -> dict[str, Any]:
        """A $ref for a model, an inline schema (with its $defs hoisted) for a union or other type."""
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation.__name__ in defs:
            return {"$ref": REF.format(model=annotation.__name__)}
        schema = TypeAdapter(annotation).json_schema(ref_template=REF, mode=mode)
        defs.update(schema.pop("$defs", {}))
        return schema

    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        op: dict[str, Any] = {"summary": route.summary, "operationId": f"{route.method}_{route.path.strip('/')}"}
        if route.query is not None:
            op["parameters"] = _query_parameters(route.query, defs)
        if route.body is not None:
            body_schema = schema_of(route.body, "validation")
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body_schema}}}
        op["responses"] = {}
        for status, model in route.responses.items():
            entry: dict[str, Any] = {"description": "OK" if status < 400 else "error"}
            if model is not None:
                entry["content"] = {route.content_type: {"schema": schema_of(model, "serialization")}}
            elif route.content_type != "application/json":
                entry["content"] = {route.content_type: {"schema": {"type": "string"}}}
            op["responses"][str(status)] = entry
        op["responses"]["default"] = {
            "description": "error (JSON with the field and the reason)",
            "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}},
        }
        paths.setdefault(route.path, {})[route.method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": DESCRIPTION},
        "paths": paths,
        "components": {"schemas": defs},
    }


INTEGER = "[+-]?[0-9]+"


def with_filters(doc: dict[str, Any], kinds: Mapping[str, str], explains: bool = True) -> dict[str, Any]:
    """``doc`` (not modified) with the filters the served model answers: ``kinds`` maps each item attribute to
    its kind (``str``, ``int``, ``list``; empty for a model trained without ``--items``); ``explains``: whether
    the model's kind has explanations (not NeuMF: then ``explain`` may only be false).

    Which attributes exist is the model's, not the code's, so the generic document would call
    ``filter=colour:red`` valid and the service answers 422. Here the ``filter`` query parameters accept only
    ``name:value`` with a known name (an integer for int attributes), and the body's ``filter`` only those
    names: a schema-valid request is one the model answers.
    """
    doc = copy.deepcopy(doc)
    names = sorted(kinds)
    value = {"type": "string", "maxLength": 1024}
    integer = {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": f"^\\s*{INTEGER}\\s*$"}]}
    entries = "|".join(re.escape(n) + (f":\\s*{INTEGER}\\s*$" if kinds[n] == "int" else ":") for n in names)
    for path in ("/recommend", "/similar"):
        for param in doc["paths"].get(path, {}).get("get", {}).get("parameters", []):
            if param["name"] == "explain" and not explains:
                param["schema"] = {**param["schema"], "enum": [False]}
            if param["name"] == "filter":
                param["schema"] = {**param["schema"], "items": {"type": "string", "maxLength": 1100,
                                                                "pattern": f"^(?:{entries})"}}  # fmt: skip
                if not names:
                    param["schema"]["maxItems"] = 0
    body = doc["paths"].get("/recommend", {}).get("post", {}).get("requestBody", {})
    schema = body.get("content", {}).get("application/json", {}).get("schema", {})
    if "explain" in schema.get("properties", {}) and not explains:
        schema["properties"]["explain"] = {**schema["properties"]["explain"], "enum": [False]}
    if "filter" in schema.get("properties", {}):
        properties = {}
        for name in names:
            one = integer if kinds[name] == "int" else value
            properties[name] = {"anyOf": [one, {"type": "array", "items": one, "maxItems": MAX_FILTERS}]}
        described = {"type": "object", "properties": properties, "additionalProperties": False,
                     "maxProperties": MAX_FILTERS,
                     "description": schema["properties"]["filter"]["anyOf"][0].get("description", "")}  # fmt: skip
        schema["properties"]["filter"] = {"anyOf": [described, {"type": "null"}], "default": None}
    return doc


def docs_blueprint():
    """``GET /docs``: Swagger UI over ``/openapi.json``, every asset served by this service from the
    flask-swagger-ui wheel (Swagger UI 5, which reads OpenAPI 3.1), so the page works on a host without
    internet access. The validator badge is off: it would send the document to validator.swagger.io."""
    from flask_swagger_ui import get_swaggerui_blueprint

    config = {"app_name": "recsys API", "validatorUrl": None, "layout": "BaseLayout"}
    return get_swaggerui_blueprint("/docs", "/openapi.json", config=config)
