"""Atomic writes, strict JSON and the user-error type shared by both CLIs."""

import json
import math
import os
import stat

import numpy as np
import pytest

from classic_rl.safe_io import atomic_write_json, atomic_write_text, dumps_strict, to_strict_json


def test_non_finite_numbers_become_null():
    data = {"a": math.nan, "b": [1.0, math.inf, -math.inf], "c": np.float32("nan"), "d": np.int64(3)}
    assert to_strict_json(data) == {"a": None, "b": [1.0, None, None], "c": None, "d": 3}
    assert json.loads(dumps_strict(data))["a"] is None


def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "summary.json"
    atomic_write_json(target, {"x": math.nan})
    assert json.loads(target.read_text()) == {"x": None}
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["summary.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_text(target, "old")
    with pytest.raises(TypeError):
        atomic_write_json(target, {"x": object()})
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_gives_the_umask_default_mode(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "summary.json", "{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == mode  # mkstemp alone gives 0600
