"""The model service: a real MLServer with mlferry's runtime, on loopback ports.

One server (four models) is shared by the module; every client mistake must get a
4xx with a JSON reason naming the field, and the server must stay ready after it.
"""

import numpy as np
import pandas as pd
import pytest
import requests
from conftest import free_port

from mlferry import registry, serving
from mlferry.client import ModelClient, ServiceError
from mlferry.scoring import load_model

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


def _settings(session_home, registry_server, scratch, model_uri, workers):
    from mlferry.settings import load_settings

    return load_settings(
        home=session_home,
        registry_port=registry_server.port,
        scratch_dir=scratch / model_uri.split("/")[-1].split("@")[0],
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        model_uri=model_uri,
        workers=workers,
    )


@pytest.fixture(scope="module")
def servers(
    registry_server,
    session_home,
    demo_version,
    tenure_model,
    int32_model,
    color_model,
    tmp_path_factory,
):
    """One MLServer per model (MLflow's /invocations serves one model per server).

    The demo model runs with one inference worker process, as deployed; the others
    run inline (0 workers), so both of MLServer's modes are covered. They start
    side by side to save time.
    """
    scratch = tmp_path_factory.mktemp("serve")
    started = {}
    try:
        for name, workers in (
            ("diabetes", 1),
            ("tenure", 0),
            ("int32", 0),
            ("color", 0),
        ):
            settings = _settings(
                session_home,
                registry_server,
                scratch,
                f"models:/{name}@champion",
                workers,
            )
            config = serving.prepare(settings)
            started[name] = serving.Server(config, log_file=scratch / f"{name}.log")
            started[name].launch()
        for running in started.values():
            running.wait_ready(180)
        yield started
    finally:
        for running in started.values():
            running.stop()


@pytest.fixture(scope="module")
def server(servers):
    return servers["diabetes"]


@pytest.fixture(scope="module")
def rows(history) -> pd.DataFrame:
    return pd.read_csv(history).head(20)


def post(server, path, **kwargs) -> requests.Response:
    return requests.post(f"{server.url}{path}", timeout=30, **kwargs)


def v2(server, model, inputs, **extra):
    return post(server, f"/v2/models/{model}/infer", json={"inputs": inputs, **extra})


def column(name, values, datatype="FP64", shape=None):
    return {
        "name": name,
        "datatype": datatype,
        "shape": shape or [len(values)],
        "data": values,
    }


def diabetes_inputs(frame, shape=None):
    return [
        column(n, frame[n].tolist(), shape=shape(len(frame)) if shape else None)
        for n in FEATURES
    ]


def assert_client_error(response, status, *fragments):
    assert response.status_code == status, response.text
    reason = response.json()["error"]
    for fragment in fragments:
        assert fragment in reason, reason
    assert "Traceback" not in reason


@pytest.fixture(autouse=True)
def _still_serving_afterwards(request):
    """After every test, each server is still ready: a bad request broke nothing."""
    yield
    if "servers" in request.fixturenames:
        for name, live in request.getfixturevalue("servers").items():
            assert requests.get(f"{live.url}/v2/health/ready", timeout=5).ok
            assert requests.get(f"{live.url}/v2/models/{name}/ready", timeout=5).ok


# -- what a correct request gets ------------------------------------------------------


def test_responses_carry_the_registry_version(server, demo_version, rows):
    client = ModelClient(server.url, "diabetes")
    result = client.infer(rows[FEATURES])
    assert result.model_version == demo_version
    metadata = client.metadata()
    assert metadata["name"] == "diabetes"
    assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [
        (name, "FP64") for name in FEATURES
    ]
    assert len(result.frame) == len(rows)


def test_parity_batch_v2_and_invocations(server, settings_for, demo_version, rows):
    settings = settings_for()
    in_process = load_model(settings).predict(rows)["prediction"].to_numpy()
    client = ModelClient(server.url, "diabetes")
    through_v2 = client.infer(rows).frame["prediction"].to_numpy()
    split = client.invocations(rows[FEATURES], "split")["prediction"].to_numpy()
    records = client.invocations(rows[FEATURES], "records")["prediction"].to_numpy()
    csv = client.invocations(rows[FEATURES], "csv")["prediction"].to_numpy()
    for other in (through_v2, split, records, csv):
        np.testing.assert_array_equal(other, in_process)


def test_client_sends_fp64_for_whole_number_values(server):
    frame = pd.DataFrame({n: [50] for n in FEATURES})  # int64 in pandas
    request = ModelClient(server.url, "diabetes").build_request(frame)
    assert {i["datatype"] for i in request["inputs"]} == {"FP64"}
    assert ModelClient(server.url, "diabetes").infer(frame).frame.shape == (1, 1)


def test_column_shapes_n_and_n_by_1_give_the_same_answer(server, rows):
    flat = v2(server, "diabetes", diabetes_inputs(rows.head(2)))
    nested = v2(
        server,
        "diabetes",
        diabetes_inputs(rows.head(2), shape=lambda n: [n, 1]),
        parameters={"content_type": "pd"},
    )
    assert flat.status_code == nested.status_code == 200, nested.text
    assert flat.json()["outputs"][0]["data"] == nested.json()["outputs"][0]["data"]
    assert flat.json()["outputs"][0]["shape"][0] == 2


def test_extra_input_is_ignored(server, rows):
    base = diabetes_inputs(rows.head(1))
    plain = v2(server, "diabetes", base)
    extra = v2(server, "diabetes", [*base, column("request_id", ["r-001"], "BYTES")])
    assert extra.status_code == 200, extra.text
    assert extra.json()["outputs"][0]["data"] == plain.json()["outputs"][0]["data"]
    invocation = post(
        server,
        "/invocations",
        json={
            "dataframe_split": {
                "columns": [*FEATURES, "request_id"],
                "data": [[*rows.head(1)[FEATURES].iloc[0].tolist(), "r-001"]],
            }
        },
    )
    assert invocation.status_code == 200
    assert invocation.json()["predictions"] == plain.json()["outputs"][0]["data"]


def test_strings_reach_the_model_as_text(servers, color_model):
    server = servers["color"]
    _, model = color_model
    expected = model.predict(
        pd.DataFrame({"color": ["red", "blue"], "size": [1.0, 2.0]})
    )
    answer = v2(
        server,
        "color",
        [column("color", ["red", "blue"], "BYTES"), column("size", [1.0, 2.0])],
        parameters={"content_type": "pd"},
    )
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["outputs"][0]["data"], expected)
    assert abs(expected[0] - expected[1]) > 5  # red and blue really differ
    invocation = post(
        server,
        "/invocations",
        json={
            "dataframe_split": {
                "columns": ["color", "size"],
                "data": [["red", 1.0], ["blue", 2.0]],
            }
        },
    )
    np.testing.assert_allclose(invocation.json()["predictions"], expected)


def test_csv_for_an_int32_column_matches_json(servers):
    server = servers["int32"]
    csv = post(
        server, "/invocations", data="x\n1\n-1\n", headers={"Content-Type": "text/csv"}
    )
    json_body = post(
        server,
        "/invocations",
        json={"dataframe_split": {"columns": ["x"], "data": [[1], [-1]]}},
    )
    assert csv.status_code == json_body.status_code == 200, csv.text
    assert csv.json() == json_body.json()
    too_big = post(
        server,
        "/invocations",
        data="x\n3000000000\n",
        headers={"Content-Type": "text/csv"},
    )
    assert_client_error(too_big, 400, "column 'x'", "does not fit")


# -- client mistakes: a 4xx naming the field -----------------------------------------


def test_missing_column_names_it_on_both_endpoints(server, rows):
    inputs = [i for i in diabetes_inputs(rows.head(1)) if i["name"] != "bmi"]
    assert_client_error(v2(server, "diabetes", inputs), 400, "'bmi'", "missing")
    body = {"dataframe_split": {"columns": ["age"], "data": [[1.0]]}}
    assert_client_error(
        post(server, "/invocations", json=body), 400, "'bmi'", "missing"
    )


def test_text_in_a_number_column_is_a_400(server, rows):
    inputs = diabetes_inputs(rows.head(2))
    inputs[2] = column("bmi", [30.0, "fat"], "BYTES")
    assert_client_error(v2(server, "diabetes", inputs), 400, "'bmi'", "row 2", "'fat'")
    inputs[2] = column("bmi", [30.0, "fat"], "FP64")
    assert_client_error(v2(server, "diabetes", inputs), 400, "'bmi'", "not a number")
    body = {"dataframe_records": [dict(zip(FEATURES, [1.0] * 9 + ["x"], strict=True))]}
    assert_client_error(post(server, "/invocations", json=body), 400, "'s6'")


def test_null_only_float_input_is_rejected_naming_it(server, rows):
    inputs = diabetes_inputs(rows.head(1))
    inputs[0] = column("age", [None], "FP32")
    assert_client_error(v2(server, "diabetes", inputs), 400, "'age'", "missing value")
    inputs = diabetes_inputs(rows.head(2))
    inputs[0] = column("age", [None, None], "FP32")
    assert_client_error(v2(server, "diabetes", inputs), 400, "'age'", "missing value")


def test_integer_column_with_a_gap_is_a_400_on_every_path(servers):
    server = servers["tenure"]
    body = {
        "dataframe_split": {
            "columns": ["tenure_months", "monthly_charges"],
            "data": [[12, 70.5], [None, 30.0]],
        }
    }
    assert_client_error(
        post(server, "/invocations", json=body),
        400,
        "'tenure_months'",
        "row 2",
        "missing value",
    )
    answer = v2(
        server,
        "tenure",
        [
            column("tenure_months", [12, None], "INT64"),
            column("monthly_charges", [70.5, 30.0]),
        ],
    )
    assert_client_error(answer, 400, "'tenure_months'", "row 2")
    one = {
        "dataframe_split": {
            "columns": ["tenure_months", "monthly_charges"],
            "data": [[12, 70.5]],
        }
    }
    assert post(server, "/invocations", json=one).status_code == 200


@pytest.mark.parametrize(
    ("body", "content_type", "status", "fragment"),
    [
        (
            '{"dataframe_split": {"columns": ["age"], "data": [[0.5]]}',
            "application/json",
            400,
            "malformed JSON",
        ),
        ('{"dataframe_split": 0.02]}', "application/json", 400, "malformed JSON"),
        ('{"rows": [[0.5, 1.0]]}', "application/json", 400, "found: rows"),
        (
            '{"columns": ["age"], "data": [[0.5]]}',
            "application/json; format=pandas-split",
            400,
            "format=pandas-split",
        ),
        ("0.5,1.0", "text/plain", 415, "'text/plain' is not supported"),
        (b"age,bmi\n0.5,caf\xe9\n", "text/csv", 400, "not valid UTF-8"),
        ("", "application/json", 400, "empty"),
        ("[1, 2]", "application/json", 400, "not an object"),
    ],
)
def test_malformed_invocations_get_a_4xx(server, body, content_type, status, fragment):
    answer = post(
        server, "/invocations", data=body, headers={"Content-Type": content_type}
    )
    assert_client_error(answer, status, fragment)


def test_shape_that_does_not_match_its_data_is_a_400(server):
    answer = v2(server, "diabetes", [column("age", [0.5], shape=[2])])
    assert_client_error(answer, 400, "'age'", "shape [2]")
    wide = v2(server, "diabetes", [column("age", [0.5, 1.0], shape=[1, 2])])
    assert_client_error(wide, 400, "'age'", "not a column")


def test_garbage_json_on_v2_is_a_4xx(server):
    answer = post(
        server,
        "/v2/models/diabetes/infer",
        data="{not json",
        headers={"Content-Type": "application/json"},
    )
    assert 400 <= answer.status_code < 500


def test_client_raises_service_error_with_the_reason(server):
    client = ModelClient(server.url, "diabetes")
    with pytest.raises(ServiceError, match=r"HTTP 400: .*'bmi'.*missing"):
        client.invocations(pd.DataFrame({"age": [1.0]}))


def test_metrics_are_served_on_their_own_port(server):
    text = requests.get(
        f"http://127.0.0.1:{server.config.metrics_port}/metrics", timeout=5
    ).text
    assert "rest_server_requests" in text or "model_infer_request" in text


# -- readiness ----------------------------------------------------------------------


def test_model_that_cannot_load_is_never_ready(tmp_path, session_home, demo_version):
    pinned = registry.PinnedModel("broken", "1", "models:/broken/1")
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    config = serving.ServeConfig(
        tmp_path / "srv",
        pinned,
        empty,
        "127.0.0.1",
        free_port(),
        free_port(),
        free_port(),
    )
    (config.folder).mkdir()
    import json

    (config.folder / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": config.http_port,
                "grpc_port": config.grpc_port,
                "metrics_port": config.metrics_port,
                "parallel_workers": 0,
                "debug": False,
                "metrics_dir": str(tmp_path / ".m"),
                "environments_dir": str(tmp_path / ".e"),
                "model_repository_root": str(config.folder / "models"),
            }
        )
    )
    serving.add_model(config.folder, pinned, empty)
    server = serving.Server(config, log_file=tmp_path / "log")
    with pytest.raises(serving.ServerError, match=r"broken"):
        server.start(timeout=25)
    server.stop()
    log = (tmp_path / "log").read_text()
    assert "not-a-model" in log or "MLmodel" in log


def test_serve_with_a_ghost_alias_fails_before_starting(settings_for, demo_version):
    from mlferry.errors import ModelNotFound

    with pytest.raises(ModelNotFound, match=r"no alias 'ghost'"):
        serving.prepare(settings_for(model_uri="models:/diabetes@ghost"))


def test_requests_with_no_rows_or_no_shape_are_400(server):
    empty = [column(n, [], shape=[0]) for n in FEATURES]
    assert_client_error(v2(server, "diabetes", empty), 400, "no rows")
    header_only = post(
        server,
        "/invocations",
        data=",".join(FEATURES) + "\n",
        headers={"Content-Type": "text/csv"},
    )
    assert_client_error(header_only, 400, "no rows")
    scalar = [{**column(n, [1.0]), "shape": []} for n in FEATURES]
    assert_client_error(v2(server, "diabetes", scalar), 400, "shape []")


def test_infinite_values_and_duplicate_columns_are_400(server, rows):
    body = ",".join(FEATURES) + "\n" + ",".join(["1"] * 9 + ["inf"]) + "\n"
    answer = post(
        server, "/invocations", data=body, headers={"Content-Type": "text/csv"}
    )
    assert_client_error(answer, 400, "'s6'", "not a finite number")
    twice = {"dataframe_split": {"columns": [*FEATURES, "bmi"], "data": [[1.0] * 11]}}
    assert_client_error(post(server, "/invocations", json=twice), 400, "'bmi' appears")
    inputs = diabetes_inputs(rows.head(1))
    assert_client_error(
        v2(server, "diabetes", [*inputs, inputs[0]]), 400, "more than once"
    )


def test_media_type_is_case_insensitive(server, rows):
    body = {"dataframe_split": {"columns": FEATURES, "data": [[1.0] * 10]}}
    answer = post(
        server,
        "/invocations",
        data=__import__("json").dumps(body),
        headers={"Content-Type": "Application/JSON; Charset=UTF-8"},
    )
    assert answer.status_code == 200, answer.text
