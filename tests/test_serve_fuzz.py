"""Schemathesis over the serving app's own OpenAPI schema, in process (no socket): whatever the
generated request (schema-valid or not: bad query values, odd bodies, wrong media types), no
operation answers 5xx. Examples are bounded per operation so the run stays short on a busy 2-core
machine.

Each operation's cases come from ``operation.as_strategy`` under Hypothesis's ``@given``
(schemathesis' ``from_fixture`` loader reads a pytest-private attribute that pytest 9 removed)."""

from __future__ import annotations

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", minversion="4.0")
pytest.importorskip("fastapi")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402  (after the skips)
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "resnets" / "assets" / "weights" / "resnet20_cifar10.safetensors"
TOKEN = "fuzz-token"
EXAMPLES = 30  # per operation
# The contract's operations: the schema must describe each (so none escapes the fuzzing).
OPERATIONS = {"GET /healthz", "GET /readyz", "GET /v1/model", "POST /v1/predict", "POST /v1/explain", "GET /metrics",
              "GET /v2", "GET /v2/health/live", "GET /v2/health/ready", "GET /v2/models/{name}",
              "GET /v2/models/{name}/ready", "POST /v2/models/{name}/infer"}
# What --token guards (issue 17: the v2 model routes and /metrics as well as /v1); probes stay open.
GUARDED = ("/v1/", "/v2/models/", "/metrics")


def _schema(**app_kwargs):
    from resnets.serve import create_app

    # A small byte limit keeps each generated upload cheap to reject.
    app = create_app(WEIGHTS, max_bytes=256 * 1024, **app_kwargs)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _operations(schema):
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {f"{op.method.upper()} {op.path}" for op in operations}
    assert OPERATIONS <= labels, f"the OpenAPI schema lacks {sorted(OPERATIONS - labels)}"
    return operations


def _cases(operation):
    """Schema-valid and schema-violating requests for one operation."""
    strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
    try:
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
    except Exception:  # an operation with nothing to violate (no parameters, no body)
        pass
    return st.one_of(strategies)


def _fuzz(operation, call) -> None:
    # No shrinking: the first failing request is reported as it was sent (a curl line), at once.
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=_cases(operation))
    def run(case):
        try:
            call(case)
        except Exception as exc:
            raise AssertionError(f"{type(exc).__name__}: {exc}\nreproduce: {case.as_curl_command()}") from exc

    run()


def _failures(schema, call) -> list[str]:
    """Fuzz every operation; the failures of all of them, and a failure if no generated image ever
    got through to the model (a fuzz run rejected wholesale, e.g. by a broken decoder, proves nothing)."""
    failures, answered = [], {}

    def call_and_count(case):
        response = call(case)
        answered.setdefault(f"{case.method.upper()} {case.path}", set()).add(response.status_code)

    for operation in _operations(schema):
        try:
            _fuzz(operation, call_and_count)
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    for label in ("POST /v1/predict", "POST /v1/explain"):
        if 200 not in answered.get(label, ()):
            failures.append(f"{label}: no generated request was answered 200: {sorted(answered.get(label, ()))}")
    return failures


def test_no_server_errors():
    schema = _schema()

    def call(case):
        return case.call_and_validate(checks=[not_a_server_error])

    failures = _failures(schema, call)
    assert not failures, "\n\n".join(failures)


def test_no_server_errors_with_a_token():
    """Auth on: on /v1/* a request is refused with 401 ``unauthorized`` exactly when it does not
    carry the token (schemathesis' negative cases drop the header on purpose; a wrong token is
    tried as well), and nothing is ever a 5xx."""
    schema = _schema(token=TOKEN)

    def call(case):
        response = case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"},
                                          checks=[not_a_server_error])
        sent_token = response.request.headers.get("Authorization") == f"Bearer {TOKEN}"
        if case.path.startswith(GUARDED) and not sent_token:
            assert response.status_code == 401, response.text
        else:
            assert response.status_code != 401, response.text
        if case.path.startswith(GUARDED):
            refused = case.call(headers={"Authorization": "Bearer not-the-token"})
            assert refused.status_code == 401, refused.text
            error = refused.json()["error"]
            if case.path.startswith("/v2/"):  # the Open Inference Protocol's body: {"error": message}
                assert "token" in error, error
            else:
                assert error["code"] == "unauthorized"
        return response

    failures = _failures(schema, call)
    assert not failures, "\n\n".join(failures)
