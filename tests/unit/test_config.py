"""QueueConfig: YAML in both forms, unknown keys, type coercion, prefix rewrites and mover choice."""

from __future__ import annotations

import logging

import pytest

from pilot.config import QueueConfig


def write(tmp_path, text: str):
    path = tmp_path / "queues.yaml"
    path.write_text(text)
    return path


def test_no_file_gives_defaults():
    queue = QueueConfig.load("ANY", None)
    assert queue == QueueConfig(name="ANY")
    assert queue.copytool == "local" and queue.extra == {}


def test_flat_form(tmp_path):
    path = write(tmp_path, """
copytool: local
se: /data/se
stagein_retries: 5
transfer_retry_wait: 0.5
allowdirectaccess: true
timefloor: 30
""")
    queue = QueueConfig.load("SITE_A", path)
    assert queue.name == "SITE_A"
    assert queue.se == "/data/se"
    assert queue.stagein_retries == 5
    assert queue.transfer_retry_wait == 0.5
    assert queue.allowdirectaccess is True
    assert queue.timefloor == 30
    assert queue.stageout_retries == QueueConfig().stageout_retries  # untouched default


def test_queues_form_picks_the_named_queue(tmp_path):
    path = write(tmp_path, """
queues:
  SITE_A:
    se: /a
    maxrss: 2000
  SITE_B:
    se: /b
""")
    a = QueueConfig.load("SITE_A", path)
    b = QueueConfig.load("SITE_B", path)
    assert (a.name, a.se, a.maxrss) == ("SITE_A", "/a", 2000)
    assert (b.name, b.se, b.maxrss) == ("SITE_B", "/b", 0)


def test_queues_form_with_an_empty_queue(tmp_path):
    path = write(tmp_path, "queues:\n  EMPTY:\n")
    assert QueueConfig.load("EMPTY", path) == QueueConfig(name="EMPTY")


def test_unknown_queue_names_the_known_ones(tmp_path):
    path = write(tmp_path, "queues:\n  SITE_B: {}\n  SITE_A: {}\n")
    with pytest.raises(ValueError) as info:
        QueueConfig.load("SITE_C", path)
    message = str(info.value)
    assert "'SITE_C'" in message
    assert str(path) in message
    assert "SITE_A, SITE_B" in message


def test_empty_file_gives_defaults(tmp_path):
    assert QueueConfig.load("Q", write(tmp_path, "")) == QueueConfig(name="Q")


@pytest.mark.parametrize("text, fragment", [
    ("- a\n- b\n", "not a mapping"),
    ("se: [unclosed\n", "cannot read"),
])
def test_unreadable_file(tmp_path, text, fragment):
    with pytest.raises(ValueError, match=fragment):
        QueueConfig.load("Q", write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        QueueConfig.load("Q", tmp_path / "absent.yaml")


def test_unknown_keys_are_kept_in_extra_with_a_warning(tmp_path, caplog):
    path = write(tmp_path, "se: /a\nfuture_option: 7\nname: IGNORED\nextra: {x: 1}\n")
    with caplog.at_level(logging.WARNING, logger="pilot.config"):
        queue = QueueConfig.load("Q", path)
    assert queue.name == "Q"  # the name is the one asked for, not a key in the file
    assert queue.extra == {"future_option": 7, "name": "IGNORED", "extra": {"x": 1}}
    assert "future_option" in caplog.text


@pytest.mark.parametrize("raw, expected", [
    (True, True), (False, False), ("yes", True), ("True", True), ("1", True), (1, True),
    ("no", False), ("false", False), ("0", False), (0, False),
])
def test_bool_coercion(raw, expected):
    assert QueueConfig.from_mapping("Q", {"allowdirectaccess": raw}).allowdirectaccess is expected


def test_number_coercion():
    assert QueueConfig.from_mapping("Q", {"maxrss": 2000.0}).maxrss == 2000
    queue = QueueConfig.from_mapping("Q", {"stagein_retries": "4", "memory_grace": "1.5", "kill_grace": 3,
                                           "se": 42, "copysetup": None})
    assert queue.stagein_retries == 4 and isinstance(queue.stagein_retries, int)
    assert queue.memory_grace == 1.5
    assert queue.kill_grace == 3.0 and isinstance(queue.kill_grace, float)
    assert queue.se == "42"
    assert queue.copysetup == ""


@pytest.mark.parametrize("key, raw, kind", [
    ("stagein_retries", "three", "int"),
    ("stagein_retries", "2.5", "int"),
    ("stagein_retries", 2.5, "int"),
    ("allowdirectaccess", "maybe", "bool"),
    ("allowdirectaccess", 2, "bool"),
    ("maxrss", [1, 2], "int"),
    ("memory_grace", "double", "float"),
    ("heartbeat", None, "float"),
])
def test_coercion_errors_name_the_setting(key, raw, kind):
    with pytest.raises(ValueError) as info:
        QueueConfig.from_mapping("Q", {key: raw})
    assert key in str(info.value)
    assert kind in str(info.value)


def test_coercion_error_from_a_file(tmp_path):
    with pytest.raises(ValueError, match="timefloor"):
        QueueConfig.load("Q", write(tmp_path, "timefloor: soon\n"))


# --- rewrites and mover choice ----------------------------------------------------------------------
def test_copyprefix_rewrites():
    queue = QueueConfig(copyprefix="srm://se.example/^/data/, root://x//^file:///y/")
    assert queue.rewrites("out") == [("srm://se.example/", "/data/"), ("root://x//", "file:///y/")]
    assert queue.rewrites("in") == queue.rewrites("out")


def test_copyprefix_with_two_pairs():
    assert QueueConfig(copyprefix="a^b,c^d").rewrites("in") == [("a", "b"), ("c", "d")]


def test_copyprefixin_overrides_for_stage_in_only():
    queue = QueueConfig(copyprefix="a^b", copyprefixin="c^d")
    assert queue.rewrites("in") == [("c", "d")]
    assert queue.rewrites("out") == [("a", "b")]


@pytest.mark.parametrize("spec", ["", "no-caret", ","])
def test_no_rewrites(spec):
    assert QueueConfig(copyprefix=spec).rewrites("in") == []


def test_copytoolin_overrides_copytool_for_stage_in():
    assert QueueConfig(copytool="local").stagein_mover == "local"
    queue = QueueConfig(copytool="local", copytoolin="xrootd")
    assert queue.stagein_mover == "xrootd"
    assert queue.copytool == "local"
