import json

import pytest

from am.errors import MessageError
from am.messages import MAX_TILES_PER_MESSAGE, TileMessage, TileResult, tiles_key

REPLY = "http://127.0.0.1:4566/123456789012/am-segm-results-job-1"


def make(**changes):
    fields = dict(job="job-1", group="g1", tiles=(7, 8, 10), input=tiles_key("job-1", "g1", (7, 8, 10)),
                  output=tiles_key("job-1", "g1", (7, 8, 10)), model="s3://models/m.pt", reply=REPLY)
    fields.update(changes)
    return TileMessage(**fields)


def test_tile_message_round_trip_and_wire_format():
    message = make()
    data = json.loads(message.to_json())
    assert data == {"v": 2, "job": "job-1", "group": "g1", "tiles": [7, 8, 10], "input": "job-1/g1/0007.npy",
                    "output": "job-1/g1/0007.npy", "model": "s3://models/m.pt", "reply": REPLY}
    assert TileMessage.from_json(message.to_json()) == message
    assert message.names == ["g1/0007", "g1/0008", "g1/0010"]
    assert message.name == "g1/0007 (+2 more)"
    assert make(tiles=[3]).tiles == (3,) and make(tiles=[3]).name == "g1/0003"


def test_a_version_1_message_of_one_tile_is_refused_with_the_version_named():
    body = json.dumps({"v": 1, "job": "job-1", "group": "g1", "tile": 7, "input": "job-1/g1/0007.png",
                       "output": "job-1/g1/0007.png", "model": "s3://models/m.pt", "reply": REPLY})
    with pytest.raises(MessageError, match="version 1; this build reads version 2"):
        TileMessage.from_json(body)


@pytest.mark.parametrize("text", ["not json", "[1, 2]", "{}", '{"v": 2}', '{"v": 1}', "\x00"])
def test_unparseable_messages_are_rejected(text):
    with pytest.raises(MessageError):
        TileMessage.from_json(text)


def test_json_nested_past_the_parsers_stack_is_a_rejected_message():
    # 200 kB, under the SQS limit: json.loads raises RecursionError, which crashed every worker that
    # received it (and the dead-letter checks that read it later).
    body = "[" * 100_000 + "]" * 100_000
    with pytest.raises(MessageError, match="not JSON .*RecursionError"):
        TileMessage.from_json(body)
    with pytest.raises(MessageError, match="not JSON"):
        TileResult.from_json(body)


@pytest.mark.parametrize("field", ["input", "output", "model", "group", "job"])
def test_text_that_is_not_valid_utf8_is_a_rejected_message(field):
    # A lone surrogate passes json.loads and every pattern, then fails in botocore's key encoding.
    body = json.loads(make().to_json())
    body[field] = body[field] + "\ud800" if field != "job" else "job-1\ud800"
    text = json.dumps(body).replace("\\ud800", "\ud800")
    assert "\ud800" in text
    with pytest.raises(MessageError, match=f"field '{field}' is not valid UTF-8"):
        TileMessage.from_json(text)


@pytest.mark.parametrize("field", ["input", "output", "model"])
def test_a_message_no_worker_could_read_is_not_built(field):
    # A Latin-1 byte in a file name is a lone surrogate in Python: a message carrying it would be
    # sent, then rejected by every worker and by the orchestrator's own dead-letter check.
    text = {"input": "job-1/g1/0000-0001\udce8.npy", "output": "job-1/g1/0000-0001\udce8.npy",
            "model": "/data/mod\udce8le.pt"}[field]
    with pytest.raises(MessageError, match=f"field '{field}' is not valid UTF-8"):
        make(**{field: text})


def test_a_report_quoting_a_name_that_is_not_utf8_stays_readable():
    result = TileResult(job="job-1", group="g1", tiles=(0,), status="failed", attempt=1, worker="w\udce8",
                        error="cannot read /data/mod\udce8le.pt")
    back = TileResult.from_json(result.to_json())
    assert back.error == "cannot read /data/mod\\udce8le.pt" and back.worker == "w\\udce8"


@pytest.mark.parametrize("key", [
    "other-job/g1/0007.png",       # another job's prefix
    "job-1/../other/0007.png",     # climbs out
    "job-1/g1/../../etc/passwd",
    "/job-1/g1/0007.png",          # absolute
    "job-1//0007.png",             # empty segment
    "job-1/./0007.png",
    "job-1\\g1\\0007.png",
    "job-1",                       # no prefix at all
    "",
])
@pytest.mark.parametrize("field", ["input", "output"])
def test_keys_outside_the_job_prefix_are_rejected(key, field):
    with pytest.raises(MessageError, match="job-1|non-empty"):
        make(**{field: key})
    body = json.loads(make().to_json())
    body[field] = key
    with pytest.raises(MessageError):
        TileMessage.from_json(json.dumps(body))


@pytest.mark.parametrize("changes", [
    {"tiles": (-1,)}, {"tiles": ()}, {"tiles": (1, 1)}, {"tiles": (1, True)}, {"tiles": (1.5,)},
    {"tiles": tuple(range(MAX_TILES_PER_MESSAGE + 1))}, {"tiles": 3},
    {"job": "UPPER"}, {"job": "a/b"}, {"group": "../g"}, {"group": ""}, {"model": ""},
    {"reply": "http://127.0.0.1:1/123/am-segm-results-other-job"}, {"reply": "not a url"},
])
def test_invalid_fields_are_rejected(changes):
    with pytest.raises(MessageError):
        make(**changes)


def test_wrong_types_and_unknown_fields_are_rejected():
    body = json.loads(make().to_json())
    with pytest.raises(MessageError, match="integer"):
        TileMessage.from_json(json.dumps({**body, "tiles": ["7"]}))
    with pytest.raises(MessageError, match="list"):
        TileMessage.from_json(json.dumps({**body, "tiles": 7}))
    with pytest.raises(MessageError, match="unknown"):
        TileMessage.from_json(json.dumps({**body, "extra": 1}))
    del body["reply"]
    with pytest.raises(MessageError, match="lacks"):
        TileMessage.from_json(json.dumps(body))


def test_tile_result_round_trip_and_validation():
    result = TileResult(job="job-1", group="g1", tiles=(3, 4), status="failed", attempt=2, worker="w",
                        error="boom", compute_s=0.25)
    assert TileResult.from_json(result.to_json()) == result
    assert result.names == ["g1/0003", "g1/0004"]
    with pytest.raises(MessageError):
        TileResult(job="job-1", group="g1", tiles=(3,), status="lost", attempt=1, worker="w")
    with pytest.raises(MessageError, match="twice"):
        TileResult(job="job-1", group="g1", tiles=(3, 3), status="done", attempt=1, worker="w")
    body = json.loads(result.to_json())
    with pytest.raises(MessageError, match="compute_s"):
        TileResult.from_json(json.dumps({**body, "compute_s": -1}))


def test_tta_travels_in_the_message_and_off_leaves_the_wire_format_unchanged():
    plain = json.loads(make().to_json())
    assert "tta" not in plain and TileMessage.from_json(json.dumps(plain)).tta == "off"
    for mode in ("rot180", "flips", "d4"):
        message = make(tta=mode)
        assert json.loads(message.to_json())["tta"] == mode
        assert TileMessage.from_json(message.to_json()) == message


@pytest.mark.parametrize("tta", ["d8", "", "OFF", 1, None])
def test_an_unknown_tta_is_rejected(tta):
    body = {**json.loads(make().to_json()), "tta": tta}
    with pytest.raises(MessageError, match="tta"):
        TileMessage.from_json(json.dumps(body))
    if isinstance(tta, str):
        with pytest.raises(MessageError, match="off, rot180, flips, d4"):
            make(tta=tta)
