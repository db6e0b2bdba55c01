"""The OpenAPI documents match behaviour: schemathesis sends generated requests to the live servers.

Every answer must be documented (status code, content type, body schema) and none may be a 5xx.
Schemathesis also generates tiny valid PNGs, so a few 1 x 1 tasks may be queued; the server
stops their pipelines when the test ends. The success paths are checked in the other tests.
"""

from __future__ import annotations

import shutil

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from .servers import running

EXAMPLES = 20
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def api_url(tmp_path_factory, tiny_model):
    base = tmp_path_factory.mktemp("openapi-api")
    with running(["am.api", "--data-dir", str(base / "data"), "--model", str(tiny_model), "--max-bytes", "100000"],
                 tmp=base, name="api") as server:
        yield server.url


@pytest.fixture(scope="module")
def serve_url(tmp_path_factory, tiny_model):
    base = tmp_path_factory.mktemp("openapi-serve")
    (base / "model").mkdir()
    shutil.copy(tiny_model, base / "model" / "model.pt")
    with running(["am.serve", "serve", "--model-dir", str(base / "model"), "--device", "cpu",
                  "--tile-size", "128", "--tile-overlap", "32"], tmp=base, name="serve") as server:
        yield server.url


# OpenAPI cannot say "rows and cols together or neither", so a schema-valid request with only one
# of them is rightly refused with 400; that one check is left out for POST /tasks. Nor can it say
# "an image at least 32 px on each side": the tiny PNGs schemathesis makes are rightly refused by
# POST /invocations with its documented 400, as the pipeline refuses them.
RELAXED = {"POST /tasks": [schemathesis.checks.positive_data_acceptance],
           "POST /invocations": [schemathesis.checks.positive_data_acceptance]}


def fuzz_every_operation(url: str) -> list[str]:
    """Run generated cases against each documented operation; returns the operations exercised."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    exercised = []
    for result in schema.get_all_operations():
        operation = result.ok()
        name = f"{operation.method.upper()} {operation.path}"
        excluded = RELAXED.get(name, [])

        @FUZZ
        @given(case=operation.as_strategy())
        def run(case) -> None:
            case.call_and_validate(excluded_checks=excluded)  # noqa: B023 (run is called at once, below)

        run()
        exercised.append(name)
    return exercised


def test_task_api_answers_only_as_documented(api_url):
    exercised = fuzz_every_operation(api_url)
    assert {"POST /tasks", "GET /tasks", "GET /tasks/{task_id}", "DELETE /tasks/{task_id}", "GET /masks/{task_id}",
            "GET /ams/{task_id}", "GET /ams/{task_id}.csv", "GET /overlays/{task_id}", "GET /health"} <= set(exercised)


def test_sagemaker_contract_answers_only_as_documented(serve_url):
    exercised = fuzz_every_operation(serve_url)
    assert {"GET /ping", "POST /invocations"} <= set(exercised)


def test_documented_routes_and_codes(api_url):
    import httpx

    document = httpx.get(f"{api_url}/openapi.json").json()
    paths = document["paths"]
    assert set(paths) == {"/tasks", "/tasks/{task_id}", "/masks/{task_id}", "/ams/{task_id}", "/ams/{task_id}.csv",
                          "/overlays/{task_id}", "/health"}
    assert set(paths["/tasks"]["post"]["responses"]) == {"201", "400", "413", "415", "503", "507"}
    assert set(paths["/health"]["get"]["responses"]) == {"200", "400", "503"}
    assert set(paths["/tasks"]["post"]["requestBody"]["content"]) == {"image/png", "image/tiff"}
    assert set(paths["/tasks"]["get"]["responses"]) == {"200", "400"}
    assert set(paths["/tasks/{task_id}"]["get"]["responses"]) == {"200", "400", "404"}
    assert set(paths["/tasks/{task_id}"]["delete"]["responses"]) == {"204", "400", "404"}
    assert set(paths["/masks/{task_id}"]["get"]["responses"]["200"]["content"]) == {"image/png"}
    assert set(paths["/overlays/{task_id}"]["get"]["responses"]["200"]["content"]) == {"image/png"}
    assert set(paths["/ams/{task_id}.csv"]["get"]["responses"]["200"]["content"]) == {"text/csv"}
    assert "422" not in str(document)


def test_every_operation_documents_the_400_it_answers_to_an_unknown_query_parameter(tmp_path):
    """Every task API route refuses a query parameter it does not take (``GET /health?verbose=1``) with 400,
    so every operation's document lists the 400."""
    import uuid

    from .test_runner import api

    with api(tmp_path) as server:
        document = server.client.get("/openapi.json").json()
        checked = []
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                url = path.replace("{task_id}", uuid.uuid4().hex)
                response = server.client.request(method.upper(), f"{url}?verbose=1")
                assert response.status_code == 400, (method, path, response.text)
                assert "unknown query parameter(s) verbose" in response.json()["detail"]
                assert "400" in operation["responses"], (method, path, sorted(operation["responses"]))
                checked.append(f"{method.upper()} {path}")
    assert "GET /health" in checked and len(checked) == 9
