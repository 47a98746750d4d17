"""Request parsing and API documentation for routes.

Bodies are validated by pydantic models; the same models feed /openapi.json (built by apispec),
so the document cannot drift from what the routes accept.
"""
from __future__ import annotations

import copy
import io
import json
import shutil
import tempfile
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

from flask import Flask, Request, g, jsonify, request
from pydantic import BaseModel

from .errors import ApiError

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Upload:
    """A file a route reads: a multipart part, or (where the route takes JSON) base64 or a data: URL."""

    description: str
    media_types: str  # the part's Content-Type(s), as OpenAPI's multipart `encoding` lists them
    required: bool = False
    instead: str | None = None  # a field that may name the file instead (e.g. one of the caller's job outputs)


def doc(*, summary: str, tags: list[str], body: type[BaseModel] | None = None, query: type[BaseModel] | None = None,
        form: type[BaseModel] | None = None, files: dict[str, Upload] | None = None,
        path: type[BaseModel] | None = None, response: type[BaseModel] | None = None,
        responses: dict[int, str] | None = None, content_type: str = "application/json"):
    """Attach OpenAPI metadata to a view function: `body` (JSON) and/or `form` (multipart) are the models
    the route validates, `files` its uploads, `query`/`path` the models of its query and path parameters."""

    def wrap(view):
        view.openapi = {"summary": summary, "tags": tags, "body": body, "query": query, "form": form,
                        "files": files or {}, "path": path, "response": response, "responses": responses or {},
                        "content_type": content_type}
        return view

    return wrap


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def json_object() -> dict:
    """The request's JSON body as an object (an empty body is `{}`), parsed once per request.

    Every route that reads JSON goes through here, so every malformed body is the same 400: bad
    UTF-8 or syntax, NaN/Infinity, nesting too deep for the parser (RecursionError) and integers
    over Python's 4,300-digit conversion limit (a ValueError that is not a JSONDecodeError). The body
    is spooled to disk first, so the parser holds the text of a large base64 upload once, not the
    raw bytes beside it.
    """
    if "enfoads_json" in g:
        return g.enfoads_json
    with tempfile.SpooledTemporaryFile(max_size=1024**2) as spool:
        shutil.copyfileobj(request.stream, spool, 1024**2)
        if spool.tell() == 0:
            data: Any = {}
        else:
            spool.seek(0)
            try:
                data = json.load(io.TextIOWrapper(spool, encoding="utf-8"), parse_constant=_refuse_constant)
            except RecursionError:
                raise ApiError(400, "malformed JSON body: nested too deeply", param="body",
                               code="invalid_json") from None
            except ValueError as exc:  # also UnicodeDecodeError, JSONDecodeError and the int digit limit
                raise ApiError(400, f"malformed JSON body: {exc}", param="body", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the JSON body must be an object", param="body", code="invalid_json")
    g.enfoads_json = data
    return data


def json_body(model: type[M]) -> M:
    """The request's JSON body validated by `model`; 400 naming the field, or the body when not JSON."""
    return model.model_validate(json_object())


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


class ApiRequest(Request):
    """Flask's request, with form bodies werkzeug cannot parse (a part header or a urlencoded body
    that is not UTF-8, a broken multipart framing) answered 400. Werkzeug's default is to drop such
    a body silently, which left routes saying "a file is required" about a file the client did send."""

    def make_form_data_parser(self):
        parser = super().make_form_data_parser()
        parser.silent = False
        return parser

    def _load_form_data(self) -> None:
        try:
            super()._load_form_data()
        except ValueError as exc:  # UnicodeDecodeError among them
            reason = "field names and urlencoded data must be UTF-8" if isinstance(exc, UnicodeDecodeError) else exc
            raise ApiError(400, f"malformed form body: {reason}", param="body", code="invalid_form") from None


def body_params(model: type[M]) -> M:
    """Routes that take JSON or a form: the body's parameters validated by `model`."""
    return json_body(model) if request.is_json else form_params(model)


def raw_json() -> dict | None:
    """The JSON body as an object when the request is JSON (for base64 file fields), else None."""
    return json_object() if request.is_json else None


def wants_async() -> bool:
    prefer = request.headers.get("Prefer", "")
    return "respond-async" in prefer.lower() or request.args.get("async", "").lower() in {"1", "true", "yes"}


def _schema_ref(spec, model: type[BaseModel]) -> dict:
    name = model.__name__
    if name not in spec.components.schemas:
        spec.components.schema(name, _model_schema(spec, model))
    return {"$ref": f"#/components/schemas/{name}"}


def _model_schema(spec, model: type[BaseModel]) -> dict:
    """The model's JSON schema, its nested definitions registered as components."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for def_name, def_schema in schema.pop("$defs", {}).items():
        if def_name not in spec.components.schemas:
            spec.components.schema(def_name, def_schema)
    return schema


def _without_null(schema: dict) -> dict:
    """A field as a form or query string carries it: there is no null, only a missing field."""
    schema = dict(schema)
    options = [s for s in schema.pop("anyOf", []) if s.get("type") != "null"]
    if len(options) == 1:
        schema.update(options[0])
    elif options:
        schema["anyOf"] = options
    if "enum" in schema:
        schema["enum"] = [v for v in schema["enum"] if v is not None]
    if schema.get("default", 0) is None:
        del schema["default"]
    return schema


def _one_of_required(schema: dict, files: dict[str, Upload]) -> None:
    """Each file that another field may replace: one of the two is required (and not null)."""
    rules = [{"anyOf": [{"required": [field]},
                        {"required": [upload.instead], "properties": {upload.instead: {"type": "string", "minLength": 1}}}]}
             for field, upload in files.items() if upload.instead]
    if rules:
        schema["allOf"] = rules


def _json_content(spec, model: type[BaseModel], files: dict[str, Upload]) -> dict:
    if not files:
        return {"schema": _schema_ref(spec, model)}
    name = f"{model.__name__}Json"
    if name not in spec.components.schemas:
        schema = copy.deepcopy(_model_schema(spec, model))
        for field, upload in files.items():
            schema.setdefault("properties", {})[field] = {
                "type": "string", "format": "byte", "minLength": 4,  # an empty file is refused
                "description": f"{upload.description}: base64 or a data: URL"}
            if upload.required and field not in schema.setdefault("required", []):
                schema["required"].append(field)
        _one_of_required(schema, files)
        spec.components.schema(name, schema)
    return {"schema": {"$ref": f"#/components/schemas/{name}"}}


def _form_content(spec, model: type[BaseModel], files: dict[str, Upload]) -> dict:
    name = f"{model.__name__}Form"
    if name not in spec.components.schemas:
        schema = copy.deepcopy(_model_schema(spec, model))
        props = {key: _without_null(value) for key, value in schema.get("properties", {}).items()}
        required = list(schema.get("required", []))
        for field, upload in files.items():
            props[field] = {"type": "string", "format": "binary", "minLength": 1, "description": upload.description}
            if upload.required and field not in required:
                required.append(field)
        schema["properties"] = props
        if required:
            schema["required"] = required
        _one_of_required(schema, files)
        spec.components.schema(name, schema)
    content: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{name}"}}
    if files:
        content["encoding"] = {field: {"contentType": upload.media_types} for field, upload in files.items()}
    return content


def _parameters(model: type[BaseModel] | None, where: str, names) -> list[dict]:
    props = model.model_json_schema()["properties"] if model is not None else {}
    out = []
    for name in names:
        field = model.model_fields.get(name) if model is not None else None
        schema = _without_null(props.get(name, {"type": "string"}))
        description = schema.pop("description", "")
        schema.pop("title", None)
        out.append({"name": name, "in": where, "required": where == "path" or bool(field and field.is_required()),
                    "description": description, "schema": schema})
    return out


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
            params = _parameters(meta["path"], "path", sorted(rule.arguments))
            if meta["query"] is not None:
                params += _parameters(meta["query"], "query", meta["query"].model_fields)
            if params:
                op["parameters"] = params
            content: dict[str, Any] = {}
            if meta["body"] is not None:
                content["application/json"] = _json_content(spec, meta["body"], meta["files"])
            if meta["form"] is not None:
                content["multipart/form-data"] = _form_content(spec, meta["form"], meta["files"])
            if content:
                op["requestBody"] = {"required": True, "content": content}
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
