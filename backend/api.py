"""Request parsing and API documentation for routes.

Bodies are validated by pydantic models; the same models feed /openapi.json (built by apispec),
so the document cannot drift from what the routes accept.
"""
from __future__ import annotations

import io
import json
import shutil
import tempfile
from functools import wraps
from typing import Any, TypeVar

from flask import Flask, g, jsonify, request
from pydantic import BaseModel

from .errors import ApiError

M = TypeVar("M", bound=BaseModel)


def doc(*, summary: str, tags: list[str], body: type[BaseModel] | None = None, query: type[BaseModel] | None = None,
        form: type[BaseModel] | None = None, response: type[BaseModel] | None = None,
        responses: dict[int, str] | None = None, content_type: str = "application/json"):
    """Attach OpenAPI metadata to a view function."""

    def wrap(view):
        view.openapi = {"summary": summary, "tags": tags, "body": body, "query": query, "form": form,
                        "response": response, "responses": responses or {}, "content_type": content_type}
        return view

    return wrap


def _parsed_json() -> Any:
    """The request's JSON body, parsed once per request. The body is spooled to disk first, so the
    parser holds the text of a large base64 upload once, not the raw bytes beside it."""
    if "enfoads_json" not in g:
        with tempfile.SpooledTemporaryFile(max_size=1024**2) as spool:
            shutil.copyfileobj(request.stream, spool, 1024**2)
            if spool.tell() == 0:
                data: Any = {}
            else:
                spool.seek(0)
                try:
                    data = json.load(io.TextIOWrapper(spool, encoding="utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise ApiError(400, f"malformed JSON body: {exc}", param="body", code="invalid_json") from None
        g.enfoads_json = data
    return g.enfoads_json


def json_body(model: type[M]) -> M:
    """The request's JSON body validated by `model`; 400 naming the field, or the body when not JSON."""
    data = _parsed_json()
    if not isinstance(data, dict):
        raise ApiError(400, "the JSON body must be an object", param="body", code="invalid_json")
    return model.model_validate(data)


def raw_json() -> dict | None:
    """The JSON body as a dict (after `json_body` validated it), or None for other bodies."""
    if request.mimetype != "application/json":
        return None
    data = _parsed_json()
    return data if isinstance(data, dict) else None


def query_params(model: type[M]) -> M:
    return model.model_validate(request.args.to_dict())


def form_params(model: type[M]) -> M:
    """Multipart/urlencoded fields validated by `model`; list fields accept repeated keys (`a[]`)."""
    data: dict[str, Any] = {}
    for key in request.form.keys():
        values = request.form.getlist(key)
        name = key[:-2] if key.endswith("[]") else key
        data[name] = values if key.endswith("[]") or len(values) > 1 else values[0]
    return model.model_validate(data)


def wants_async() -> bool:
    prefer = request.headers.get("Prefer", "")
    return "respond-async" in prefer.lower() or request.args.get("async", "").lower() in {"1", "true", "yes"}


def _schema_ref(spec, model: type[BaseModel]) -> dict:
    name = model.__name__
    if name not in spec.components.schemas:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for def_name, def_schema in schema.pop("$defs", {}).items():
            if def_name not in spec.components.schemas:
                spec.components.schema(def_name, def_schema)
        spec.components.schema(name, schema)
    return {"$ref": f"#/components/schemas/{name}"}


def build_openapi(app: Flask, *, title: str, version: str) -> dict:
    from apispec import APISpec

    spec = APISpec(title=title, version=version, openapi_version="3.0.3",
                   info={"description": "EnfoadsIA self-hosted AI backend"})
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("apiKey", {"type": "apiKey", "in": "header", "name": "X-API-Key"})
    error_ref = _schema_ref(spec, ErrorEnvelope)
    paths: dict[str, dict] = {}
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        meta = getattr(view, "openapi", None)
        if meta is None:
            continue
        path = rule.rule.replace("<path:", "{").replace("<int:", "{").replace("<", "{").replace(">", "}")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            op: dict[str, Any] = {"summary": meta["summary"], "tags": meta["tags"], "responses": {}}
            if not getattr(view, "public", False):
                op["security"] = [{"bearer": []}, {"apiKey": []}]
            params = [{"name": a, "in": "path", "required": True, "schema": {"type": "string"}} for a in rule.arguments]
            if meta["query"] is not None:
                for name, field in meta["query"].model_fields.items():
                    params.append({"name": name, "in": "query", "required": field.is_required(),
                                   "description": field.description or "", "schema": {"type": "string"}})
            if params:
                op["parameters"] = params
            if meta["body"] is not None:
                op["requestBody"] = {"required": True,
                                     "content": {"application/json": {"schema": _schema_ref(spec, meta["body"])}}}
            if meta["form"] is not None:
                op["requestBody"] = {"required": True,
                                     "content": {"multipart/form-data": {"schema": _schema_ref(spec, meta["form"])}}}
            ok: dict[str, Any] = {"description": "success"}
            if meta["response"] is not None:
                ok["content"] = {"application/json": {"schema": _schema_ref(spec, meta["response"])}}
            elif meta["content_type"] != "application/json":
                ok["content"] = {meta["content_type"]: {"schema": {"type": "string", "format": "binary"}}}
            op["responses"]["200"] = ok
            for status, text in meta["responses"].items():
                op["responses"][str(status)] = {"description": text,
                                                "content": {"application/json": {"schema": error_ref}}}
            paths.setdefault(path, {})[method.lower()] = op
    for path, ops in sorted(paths.items()):
        spec.path(path=path, operations=ops)
    return spec.to_dict()


class ErrorDetail(BaseModel):
    type: str
    code: str | None = None
    message: str
    param: str | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorDetail
    status: str = "error"
    message: str = ""


def seed_shape(view):
    """Mark a route the original backend had: its frontend checks `status == "success"` on 200 JSON
    answers, so `ok()` adds that field there (OpenAI routes keep OpenAI's schema exactly)."""

    @wraps(view)
    def wrapped(*args, **kwargs):
        g.seed_shape = True
        return view(*args, **kwargs)

    return wrapped


def ok(payload: dict | list, status: int = 200, headers: dict | None = None):
    if status == 200 and isinstance(payload, dict) and g.get("seed_shape"):
        payload = {"status": "success", **payload}
    resp = jsonify(payload)
    resp.status_code = status
    if headers:
        resp.headers.update(headers)
    return resp
