"""The OpenAPI 3.1 document of the host's API, derived from routes.ROUTES and the messages
themselves: a route or a field added there is described here without an edit."""

from __future__ import annotations

from typing import Any

from hakuriver import __version__
from hakuriver import protocol as p
from hakuriver.host import routes
from hakuriver.codec import json_schemas

_REF = "#/components/schemas/{name}"
#: the errors any route may answer, each as an ErrorReply
_ERRORS = {"400": "bad input", "404": "no such task or batch", "409": "an ambiguous short ID, or nothing to do",
           "413": "body too large", "422": "the request can never be carried out", "507": "the database could not be written"}
#: the errors of a route that needs a credential
_AUTH_ERRORS = {"401": "no token, or one the host does not know", "403": "a valid token without the right"}
_SECURITY_SCHEMES = {"token": {"type": "http", "scheme": "bearer",
                               "description": "a user's token, or for the runner routes the cluster key"}}
_ACCESS = {routes.USER: "any user's token", routes.OWNER: "the token of the owner of the task or batch, or of an admin",
           routes.RUNNER: "the cluster key"}
_FILE_NAME = {"type": "string", "pattern": "^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"}
_ID = {"type": "string", "pattern": "^[0-9a-fA-F][0-9a-fA-F-]{7,35}$"}


def document() -> dict[str, Any]:
    kinds = [r.request for r in routes.ROUTES if _is_message(r.request)]
    kinds += [r.reply for r in routes.ROUTES if _is_message(r.reply)] + [p.ErrorReply]
    schemas, components = json_schemas(kinds, _REF)
    by_kind = {id(k): s for k, s in zip(kinds, schemas, strict=True)}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes.ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, by_kind)
    return {"openapi": "3.1.0", "info": {"title": "HakuRiver host API", "version": __version__},
            "paths": paths, "components": {"schemas": components, "securitySchemes": _SECURITY_SCHEMES}}


_NOT_JSON = {routes.RAW: "application/octet-stream", routes.HTML: "text/html", routes.FILE: "application/octet-stream",
             routes.EVENT_STREAM: "text/event-stream", routes.PROMETHEUS: "text/plain"}


def _is_message(kind: object) -> bool:
    return kind is not None and kind is not dict and kind not in _NOT_JSON


def _operation(route: routes.Route, by_kind: dict[int, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": route.summary, "operationId": f"{route.method.lower()}{_name(route.path)}"}
    if route.access == routes.PUBLIC:
        op["security"] = []
    elif route.access == routes.METRICS_ACCESS:
        op["security"] = [{"token": []}, {}]  # {}: none needed under [auth] metrics_public
        op["description"] = f"Needs {_ACCESS[routes.USER]}, unless [auth] metrics_public = true."
    else:
        op["security"] = [{"token": []}]
        op["description"] = f"Needs {_ACCESS[route.access]}."
    params = [{"name": name, "in": "path", "required": True, "schema": schema}
              for name, schema in (("task_id", _ID), ("batch_id", _ID), ("name", _FILE_NAME))
              if "{" + name + "}" in route.path]
    params += [{"name": name, "in": "query", "required": False, "schema": _query_schema(name, kind)}
               for name, kind in route.query]
    if params:
        op["parameters"] = params
    if _is_message(route.request):
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": by_kind[id(route.request)]}}}
    op["responses"] = {str(route.status): {"description": "success", "content": _content(route.reply, by_kind)}}
    error = {"application/json": {"schema": {"$ref": _REF.format(name="ErrorReply")}}}
    errors = {**_ERRORS, **_AUTH_ERRORS} if route.access != routes.PUBLIC or route.request is p.LoginRequest else _ERRORS
    op["responses"].update({code: {"description": why, "content": error} for code, why in errors.items()})
    return op


def _content(reply: object, by_kind: dict[int, Any]) -> dict[str, Any]:
    if reply in _NOT_JSON:
        return {_NOT_JSON[reply]: {"schema": {"type": "string", "format": "binary"}}}
    if reply is dict:
        return {"application/json": {"schema": {"type": "object"}}}
    return {"application/json": {"schema": by_kind[id(reply)]}}


_STATES = "|".join(p.STATES)
#: query parameters with more to say than their type
_QUERY = {"batch": _ID, "state": {"type": "string", "pattern": f"^({_STATES})(,({_STATES}))*$"},
          "timeout": {"type": "number", "minimum": 0, "maximum": p.MAX_WAIT_SECONDS},
          "wait": {"type": "number", "minimum": 0, "maximum": p.MAX_WAIT_SECONDS}}


def _query_schema(name: str, kind: object) -> dict[str, Any]:
    if name in _QUERY:
        return _QUERY[name]
    if isinstance(kind, tuple):
        return {"type": "string", "enum": list(kind)}
    if kind == "integer":
        return {"type": "integer", "minimum": 0}
    return {"type": kind, "minLength": 1}


def _name(path: str) -> str:
    return "".join(part.strip("{}").replace("-", "_").replace(".", "_").title() for part in path.split("/")[2:])
