"""The route table (routes.ROUTES) is what the host serves, and its OpenAPI document describes
every route, derived from the messages themselves; a live host is fuzzed against it by
tests/integration/test_api_fuzz.py."""

from __future__ import annotations

import pytest
from starlette.routing import Route as StarletteRoute

from hakuriver import protocol as p
from hakuriver.host import routes
from hakuriver.host.store import Store
from support import authed_client, in_process_app


@pytest.fixture
def app(tmp_path):  # noqa: ANN001, ANN201
    store = Store(str(tmp_path / "h.db"))
    yield in_process_app(store)
    store.close()


def test_the_host_serves_exactly_the_route_table(app):
    app, _ = app
    served = {(m, r.path) for r in app.routes if isinstance(r, StarletteRoute) for m in r.methods - {"HEAD"}}
    assert served == {(r.method, r.path) for r in routes.ROUTES}


def test_the_document_describes_every_route_with_its_messages(app):
    app, tokens = app
    with authed_client(app, tokens["ada"]) as client:
        doc = client.get(p.OPENAPI).json()
    assert doc["openapi"].startswith("3.1")
    described = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    assert described == {(r.method, r.path) for r in routes.ROUTES}
    schemas = doc["components"]["schemas"]
    assert set(schemas["TaskView"]["properties"]) == set(p.TaskView._fields)  # a new field shows up by itself
    assert set(schemas["TaskSpec"]["properties"]) == set(p.TaskSpec._fields)
    submit = doc["paths"][p.TASKS]["post"]
    assert submit["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/SubmitRequest"}
    assert "201" in submit["responses"] and "422" in submit["responses"]
    logs = doc["paths"][p.TASK_LOGS]["get"]
    assert {q["name"] for q in logs["parameters"]} == {"task_id", "stream", "offset", "tail", "wait"}
    assert "application/octet-stream" in logs["responses"]["200"]["content"]
