"""Version tag -> job label, pilotID, batch id: as the command line turns them into the pilot's config."""

from __future__ import annotations

import pytest

from pilot.cli import batch_id_from_env, config_from_args, parser
from pilot.versiontag import job_label, parse_tag, pilot_id_field


def config(*extra: str):
    return config_from_args(parser().parse_args(["run", "-q", "Q", "-d", "/tmp/jobs", "--pilot-id", "p1", *extra]))


@pytest.mark.parametrize(("argv", "label"), [
    ((), "managed"),
    (("--job-label", "user"), "user"),
    (("--version-tag", "RC"), "rc_test2"),
    (("--version-tag", "RC", "--job-label", "rc_test"), "rc_test"),
    (("--version-tag", "RC", "--job-label", "managed"), "rc_test2"),
    (("--version-tag", "rcm"), "rcm_test2"),
    (("--version-tag", "ALRB", "--job-label", "ptest"), "rc_alrb"),
    (("--version-tag", "PT"), "ptest"),
])  # fmt: skip
def test_the_tag_decides_the_job_label(argv: tuple[str, ...], label: str) -> None:
    assert config(*argv).job_label == label


def test_a_release_candidate_never_asks_for_production_jobs() -> None:
    for name in ("RC", "RCM", "ALRB", "PT"):
        assert job_label(parse_tag(name), "managed") != "managed"


def test_pilot_id_carries_tag_and_version() -> None:
    cfg = config("--version-tag", "RC")
    assert cfg.pilot_id == "p1|RC|0.1.0" and cfg.version_tag == "RC"
    long = pilot_id_field("x" * 300, parse_tag("PR"), "1.2.3")
    assert len(long) == 200 and long.endswith("x|PR|1.2.3")


def test_an_unknown_tag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        config("--version-tag", "BETA")
    assert stop.value.code == 2
    assert "unknown version tag 'BETA'" in capsys.readouterr().err


def test_batch_id_from_the_batch_system() -> None:
    assert batch_id_from_env({"SLURM_JOB_ID": "17"}) == "17"
    assert batch_id_from_env({"PANDA_BATCH_ID": "9.0", "SLURM_JOB_ID": "17"}) == "9.0"
    assert batch_id_from_env({"SLURM_JOB_ID": ""}) is None
    assert config("--batch-id", "123").batch_id == "123"
