"""The work directory shared by the pilots of a node: held while a pilot runs, removed only by its maker, empty
and unheld."""

from __future__ import annotations

import fcntl

import pytest

from pilot import workarea
from pilot.workarea import WorkArea


def test_the_pilot_that_made_an_empty_work_directory_removes_it(tmp_path):
    area = WorkArea.hold(tmp_path / "a" / "work")
    assert area.created
    area.release()
    assert not (tmp_path / "a" / "work").exists()


def test_a_work_directory_the_pilot_did_not_make_is_kept(tmp_path):
    (tmp_path / "work").mkdir()
    area = WorkArea.hold(tmp_path / "work")
    assert not area.created
    area.release()
    assert (tmp_path / "work").is_dir()


def test_job_dirs_left_behind_keep_the_work_directory(tmp_path):
    area = WorkArea.hold(tmp_path / "work")
    (tmp_path / "work" / "PanDA_Pilot-1-1").mkdir()
    area.release()
    assert (tmp_path / "work" / "PanDA_Pilot-1-1").is_dir()


def test_a_work_directory_another_pilot_holds_is_kept_by_its_maker(tmp_path):
    maker = WorkArea.hold(tmp_path / "work")
    other = WorkArea.hold(tmp_path / "work")  # its own open file: flock sees two holders
    maker.release()
    assert (tmp_path / "work").is_dir()
    (tmp_path / "work" / "PanDA_Pilot-2-1").mkdir()  # the other pilot still works there
    other.release()


def test_a_directory_removed_before_it_is_held_is_made_anew(tmp_path, monkeypatch):
    """The maker removes the directory between this pilot's mkdir and its lock: the pilot does not keep a
    directory that is gone, it makes it again and holds the new one."""
    path = tmp_path / "work"
    path.mkdir()
    real_flock = fcntl.flock
    removed = []

    def flock(fd, op):
        if not removed:
            path.rmdir()  # the other pilot's release, at the worst moment
            removed.append(True)
        return real_flock(fd, op)

    monkeypatch.setattr(workarea.fcntl, "flock", flock)
    area = WorkArea.hold(path)
    assert removed and path.is_dir() and area.created
    area.release()


def test_a_work_directory_that_cannot_be_made_is_an_oserror(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        WorkArea.hold(tmp_path / "file" / "work")
