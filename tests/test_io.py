"""recstack.io readers: read_json (plain or gzip), read_bytes and their one-line errors."""

from __future__ import annotations

import gzip
import os

import pytest

from recstack.errors import DataError
from recstack.io import read_bytes, read_json


def test_reads_plain_and_gzip(tmp_path):
    (tmp_path / "a.json").write_text('{"x": [1, 2]}')
    (tmp_path / "a.json.gz").write_bytes(gzip.compress(b'{"x": [1, 2]}'))
    assert read_json(tmp_path / "a.json") == {"x": [1, 2]}
    assert read_json(tmp_path / "a.json.gz") == {"x": [1, 2]}


@pytest.mark.parametrize("name,content,needle", [
    ("bad.json", b'{\n  "x": 1,\n  oops\n}', "bad.json: line 3: invalid JSON"),
    ("cut.json.gz", gzip.compress(b'{"x": 1}' * 50, mtime=0)[:30], "cut.json.gz: truncated or corrupt gzip"),
    ("bin.json", bytes(range(128, 256)), "bin.json: cannot read capture settings (binary content, not JSON)"),
], ids=["bad-json", "cut-gzip", "binary"])
def test_malformed_files_are_one_line_errors(tmp_path, name, content, needle):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError) as e:
        read_json(tmp_path / name, "capture settings")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="nope.json: plan file not found"):
        read_json(tmp_path / "nope.json", "plan file")
    with pytest.raises(DataError, match="is a directory, expected a plan file"):
        read_json(tmp_path, "plan file")


def test_read_bytes_errors_name_the_file_and_what_it_is(tmp_path):
    (tmp_path / "t.et").write_bytes(b"\x00\x01")
    assert read_bytes(tmp_path / "t.et") == b"\x00\x01"
    with pytest.raises(DataError, match=r"^.*missing\.et: Chakra ET file not found$"):
        read_bytes(tmp_path / "missing.et", "Chakra ET file")
    with pytest.raises(DataError, match="is a directory, expected a Chakra ET file$"):
        read_bytes(tmp_path, "Chakra ET file")
    locked = tmp_path / "locked.et"
    locked.write_bytes(b"x")
    locked.chmod(0)
    try:
        if not os.access(locked, os.R_OK):  # root reads anything: only checked where permissions apply
            with pytest.raises(DataError, match=r"locked\.et: cannot read file \(Permission denied\)"):
                read_bytes(locked)
    finally:
        locked.chmod(0o600)


def test_keyed_cache_records(tmp_path):
    from recstack.io import read_keyed, write_keyed

    f = tmp_path / "c" / "rec.json"
    key = {"machine": {"cpu": "x", "cores": 2}, "torch": "2.13.0"}
    assert read_keyed(f, key) is None  # missing
    write_keyed(f, key, baseline_ms=1.5)
    rec = read_keyed(f, key)
    assert rec["baseline_ms"] == 1.5 and rec["key"] == key and len(rec["measured_at"]) == 19
    assert read_keyed(f, {**key, "torch": "2.14.0"}) is None  # measured under another key: stale
    f.write_text('{"key": ')  # damaged: re-measure, not an error
    assert read_keyed(f, key) is None
    f.write_text("[1, 2]")
    assert read_keyed(f, key) is None
