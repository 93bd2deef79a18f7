"""The site's input-size policy: the cap, its overrides, and free space, all before any transfer."""

from __future__ import annotations

from pathlib import Path

import pytest

from pilot.config import QueueConfig
from pilot.errors import ErrorCode, PilotError
from pilot.inputpolicy import check_free_space, check_input_size, check_inputs, input_limit
from pilot.job import parse_job

MB = 2**20


def job(job_dict, sizes=(10 * MB, 6 * MB), **fields):
    return parse_job(job_dict(fsize=",".join(str(s) for s in sizes), checksum="NULL", **fields))


def refusal(action) -> PilotError:
    with pytest.raises(PilotError) as caught:
        action()
    return caught.value


def test_inputs_over_the_cap_fail_with_1168_saying_by_how_much(job_dict):
    error = refusal(lambda: check_input_size(job(job_dict), QueueConfig(maxinputsize=12)))
    assert error.code == ErrorCode.SIZE_TOO_LARGE
    assert "16.0 MB" in error.diag and "12 MB" in error.diag and "by 4.0 MB" in error.diag


def test_inputs_within_the_cap_or_without_one_pass(job_dict):
    check_input_size(job(job_dict), QueueConfig(maxinputsize=16))
    check_input_size(job(job_dict, sizes=(50_000 * MB, 1)), QueueConfig(maxinputsize=0))


@pytest.mark.parametrize("override, fields", [
    ({"taskID": 777, "maxinputsize": 20}, {"taskID": "777"}),
    ({"processingType": "reprocessing"}, {"processingType": "reprocessing"}),
    ({"dataset": "data09_*.RAW"}, {"realDatasetsIn": "data09_900GeV.RAW,data09_900GeV.RAW"}),
    ({"taskID": "777", "processingType": "reprocessing"}, {"taskID": "777", "processingType": "reprocessing"}),
])
def test_an_override_lets_chosen_work_bring_more(job_dict, override, fields):
    queue = QueueConfig(maxinputsize=12, maxinputsize_overrides=[{"taskID": 1, "maxinputsize": 1}, override])
    check_input_size(job(job_dict, **fields), queue)
    assert input_limit(job(job_dict, **fields), queue)[0] == override.get("maxinputsize", 0)


@pytest.mark.parametrize("fields", [
    {"taskID": "778"},
    {"taskID": "777", "processingType": "simul"},  # every key the entry gives must match
    {"realDatasetsIn": "mc16_13TeV.EVNT,mc16_13TeV.EVNT"},
])
def test_work_the_override_does_not_name_keeps_the_cap(job_dict, fields):
    queue = QueueConfig(maxinputsize=12, maxinputsize_overrides=[
        {"taskID": 777, "processingType": "reprocessing"}, {"dataset": "data09_*"}])
    assert refusal(lambda: check_input_size(job(job_dict, **fields), queue)).code == ErrorCode.SIZE_TOO_LARGE


def test_an_override_with_its_own_cap_still_caps(job_dict):
    queue = QueueConfig(maxinputsize=12, maxinputsize_overrides=[{"taskID": 777, "maxinputsize": 14}])
    error = refusal(lambda: check_input_size(job(job_dict, taskID="777"), queue))
    assert error.code == ErrorCode.SIZE_TOO_LARGE and "override for taskID=777" in error.diag


@pytest.mark.parametrize("entry", [{"maxinputsize": 5}, {"taskId": 1}, "task 1", {"taskID": "x"}])
def test_a_broken_override_is_a_clear_error(job_dict, entry):
    queue = QueueConfig(maxinputsize=12, maxinputsize_overrides=[entry])
    assert refusal(lambda: check_input_size(job(job_dict), queue)).code == ErrorCode.GENERAL


def test_overrides_load_from_the_queue_yaml(tmp_path: Path):
    config = tmp_path / "queue.yaml"
    config.write_text("maxinputsize: 15000\nmaxinputsize_overrides:\n  - {taskID: 1, maxinputsize: 50000}\n"
                      "  - processingType: reprocessing\n")
    queue = QueueConfig.load("Q", config)
    assert queue.maxinputsize_overrides == [{"taskID": 1, "maxinputsize": 50000}, {"processingType": "reprocessing"}]


def test_free_space_must_hold_the_inputs_to_come_plus_max_disk_count(job_dict, work):
    big = job(job_dict, maxDiskCount="100")
    error = refusal(lambda: check_free_space(big, work, big.inputs, free=lambda path: 110))
    assert error.code == ErrorCode.NO_LOCAL_SPACE and "needs 116 MB" in error.diag and "110 MB free" in error.diag
    check_free_space(big, work, big.inputs, free=lambda path: 116)
    check_free_space(big, work, big.inputs[1:], free=lambda path: 110)  # the first one is already here


def test_check_inputs_counts_only_what_is_still_to_come(job_dict, work):
    too_big = job(job_dict, sizes=(2**49, 2**49))
    assert refusal(lambda: check_inputs(too_big, QueueConfig(), work, lambda lfn: False)).code == \
        ErrorCode.NO_LOCAL_SPACE
    check_inputs(too_big, QueueConfig(), work, lambda lfn: True)
