"""Atomic writes: whole file or old file, and the permissions a plain write would give."""

from __future__ import annotations

import os

import pytest

from bilaf_core.atomic import atomic_path, atomic_write_json, atomic_write_text


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_new_file_gets_the_umask_mode_not_mkstemps_0600(tmp_path):
    # An exported selection or a shared workspace must be readable by whoever a plain write allows.
    path = atomic_write_text(tmp_path / "picks.csv", "index\n1\n")
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert path.read_text() == "index\n1\n"


def test_replacing_a_file_keeps_its_mode(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text("{}")
    os.chmod(path, 0o640)
    atomic_write_json(path, {"a": 1})
    assert path.stat().st_mode & 0o777 == 0o640
    assert path.read_text() == '{"a": 1}\n'


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]
