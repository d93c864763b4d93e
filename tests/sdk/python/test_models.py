"""Model listing and retrieval, including an id that contains `/` (raw and percent-encoded)."""

from __future__ import annotations

import openai
import pytest

from helpers import raw_json
from openai_spec import validate


def test_list_models(client, model_id):
    raw = client.models.with_raw_response.list()
    body = raw_json(raw)
    validate("ListModelsResponse", body)
    assert model_id in [m["id"] for m in body["data"]]
    assert [m.id for m in client.models.list()] == [m["id"] for m in body["data"]]


def test_retrieve_id_with_slash_through_sdk(client, model_id):
    assert "/" in model_id
    raw = client.models.with_raw_response.retrieve(model_id)
    body = raw_json(raw)
    validate("Model", body)
    assert body["id"] == model_id and body["object"] == "model"


@pytest.mark.parametrize("encode", [False, True], ids=["raw-slash", "percent-encoded"])
def test_retrieve_both_path_forms(http, model_id, encode):
    path_id = model_id.replace("/", "%2F") if encode else model_id
    response = http.get(f"/v1/models/{path_id}")
    assert response.status_code == 200, response.text
    validate("Model", response.json())
    assert response.json()["id"] == model_id


def test_retrieve_unknown_model_is_not_found(client, http):
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such/model")
    response = http.get("/v1/models/no-such-model")
    assert response.status_code == 404
    validate("ErrorResponse", response.json())
