"""Criteo TSV: formatter, vectorised parser, preprocessor and `recstack data preprocess`.

Small files (thousands of lines); expected values are computed independently with plain Python/numpy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from recstack.data._criteo_parse import PAD, parse_block, parse_line
from recstack.data.criteo import format_criteo_lines, kaggle_splits, preprocess_criteo, terabyte_splits
from recstack.data.store import Store
from recstack.errors import ConfigError, DataError


def _data(n: int, seed: int = 0, d: int = 13, c: int = 26):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    dense = rng.integers(-4, 5000, (n, d))
    # few distinct hashes per feature with skewed frequencies, many of them >= 2^31
    pool = rng.integers(0, 2**32, (c, 40), dtype=np.uint64).astype(np.uint32)
    pool[:, 0] = 0xFFFFFFFF
    pool[:, 1] = 0x80000000
    pick = np.minimum(rng.zipf(1.5, (n, c)) - 1, 39)
    cats = pool[np.arange(c), pick]
    dm = rng.random((n, d)) < 0.15
    cm = rng.random((n, c)) < 0.1
    return labels, dense, cats, dm, cm


def _python_lines(labels, dense, cats, dm, cm) -> bytes:
    out = []
    for i in range(len(labels)):
        f = [str(int(labels[i]))]
        f += ["" if dm[i, j] else str(int(dense[i, j])) for j in range(dense.shape[1])]
        f += ["" if cm[i, j] else f"{int(cats[i, j]):08x}" for j in range(cats.shape[1])]
        out.append("\t".join(f) + "\n")
    return "".join(out).encode()


def _expected_dense(dense, dm) -> np.ndarray:
    return np.log1p(np.where(dm, 0, np.maximum(dense, 0)).astype(np.float64)).astype(np.float32)


def _frequency_ids(raw: np.ndarray) -> tuple[np.ndarray, int]:
    """Independent frequency remap of one column: most frequent -> 0, ties by smaller value."""
    counts: dict[int, int] = {}
    for v in raw.tolist():
        counts[v] = counts.get(v, 0) + 1
    order = sorted(counts, key=lambda v: (-counts[v], v))
    rank = {v: i for i, v in enumerate(order)}
    return np.array([rank[v] for v in raw.tolist()]), len(order)


# ---------------------------------------------------------------------------------------------
# formatter


def test_format_matches_python_text():
    labels, dense, cats, dm, cm = _data(500)
    dense[0, 0] = np.iinfo(np.int64).min
    dense[1, 1] = np.iinfo(np.int64).max
    dense[2, 2] = -1234567890123
    cats[3, 0] = 0
    got = format_criteo_lines(labels, dense, cats, dm, cm)
    assert got == _python_lines(labels, dense, cats, dm, cm)
    assert b"\tffffffff" in got and b"\t00000000" in got


def test_format_other_field_counts_and_no_masks():
    labels, dense, cats, dm, cm = _data(50, d=3, c=2)
    none = np.zeros_like(dm), np.zeros_like(cm)
    assert format_criteo_lines(labels, dense, cats) == _python_lines(labels, dense, cats, *none)
    assert format_criteo_lines(labels, dense[:, :0], cats[:, :0]) == b"".join(
        f"{int(x)}\n".encode() for x in labels)
    assert format_criteo_lines(labels[:0], dense[:0], cats[:0]) == b""


# ---------------------------------------------------------------------------------------------
# parser


def _parse(text: bytes):
    buf = np.zeros(len(text) + 2 * PAD, np.uint8)
    buf[PAD : PAD + len(text)] = np.frombuffer(text, np.uint8)
    return parse_block(buf, PAD, len(text))


def test_parser_fast_path_agrees_with_exact_parser_on_odd_lines():
    labels, dense, cats, dm, cm = _data(300, seed=3)
    dense[:20, 4] = np.arange(20) * 123456789012 - 10**12  # 9..16 digits, some negative
    lines = format_criteo_lines(labels, dense, cats, dm, cm).split(b"\n")[:-1]
    lines[5] = lines[5].upper()  # upper-case hex is fine
    lines[6] = lines[6] + b"\r"  # CRLF line ending
    lines[7] = b"\t".join([b"0", b"-"] + lines[7].split(b"\t")[2:])  # "-" alone: malformed
    lines[8] = b"\t".join(f if len(f) != 8 else f[2:] for f in lines[8].split(b"\t"))  # 6-digit hex
    lines[9] = lines[9].replace(b"\t", b"\t\x01", 1)  # control byte
    lines[10] = lines[10] + b"\t"  # 41 fields
    lines[11] = b"1" + b"\t" * 39  # all empty: fine
    lines[12] = b"\t".join(lines[12].split(b"\t")[:-1] + [b"123456789"])  # 9 hex digits
    lines[13] = b"0\t" + b"9" * 20 + lines[13][lines[13].index(b"\t", 2):]  # 20 digits: exact parser
    text = b"\n".join(lines) + b"\n"
    p = _parse(text)
    exp_l, exp_d, exp_c, exp_bad = [], [], [], []
    for i, line in enumerate(text.split(b"\n")[:-1]):
        r = parse_line(line, 13, 26)
        if isinstance(r, str):
            exp_bad.append((i, r))
        else:
            exp_l.append(r[0])
            exp_d.append(r[1])
            exp_c.append(r[2])
    assert p.lines == 300
    assert p.bad == exp_bad
    assert [i for i, _ in p.bad] == [7, 9, 10, 12]
    assert p.dense[13 - 4, 0] == np.float32(math.log1p(10**20 - 1))  # 20 digits: via the exact parser
    np.testing.assert_array_equal(p.labels, np.array(exp_l, np.float32))
    np.testing.assert_array_equal(p.dense, np.array(exp_d, np.float64).astype(np.float32))
    np.testing.assert_array_equal(p.cats, np.array(exp_c, np.uint32))
    assert p.dense[11 - 3].sum() == 0 and p.cats[11 - 3].sum() == 0  # the all-empty line


def test_parse_line_reasons():
    ok = "\t".join(["1"] + ["5"] * 13 + ["0a0b0c0d"] * 26).encode()
    assert parse_line(ok, 13, 26) == (1, [math.log1p(5)] * 13, [0x0A0B0C0D] * 26)
    assert parse_line(ok.rsplit(b"\t", 1)[0], 13, 26) == "expected 40 fields, found 39"
    assert parse_line(b"2" + ok[1:], 13, 26) == "label must be 0 or 1, found '2'"
    assert parse_line(ok.replace(b"5", b"x", 1), 13, 26) == "field I1: not an integer: 'x'"
    assert parse_line(ok.replace(b"0a0b0c0d", b"0a0b0c0g", 1), 13, 26) == "field C1: bad hex: '0a0b0c0g'"


# ---------------------------------------------------------------------------------------------
# preprocessing round trips


@pytest.fixture
def tsv(tmp_path):
    labels, dense, cats, dm, cm = _data(3000, seed=1)
    path = tmp_path / "train.txt"
    path.write_bytes(format_criteo_lines(labels, dense, cats, dm, cm))
    return path, labels, dense, cats, dm, cm


@pytest.mark.parametrize("workers,block_mb", [(1, 64), (2, 0.01)])
def test_roundtrip_frequency_remap(tmp_path, tsv, workers, block_mb):
    path, labels, dense, cats, dm, cm = tsv
    rep = preprocess_criteo([path], tmp_path / "store", workers=workers, block_mb=block_mb)
    s = Store(tmp_path / "store")
    assert rep.samples == s.num_samples == 3000 and rep.skipped == 0
    np.testing.assert_array_equal(s.labels[:, 0], labels.astype(np.float32))
    np.testing.assert_array_equal(s.dense, _expected_dense(dense, dm))  # exact, incl. negatives -> 0
    raw = np.where(cm, 0, cats).astype(np.int64)  # empty -> 0, hashes kept unsigned (>= 2^31)
    assert (raw >= 2**31).any()
    assert s.table_names == [f"cat_{j}" for j in range(26)]
    for j in range(26):
        want, card = _frequency_ids(raw[:, j])
        np.testing.assert_array_equal(s.ids[:, j], want)
        assert s.tables[j].rows == card == rep.table_rows[j]
        counts = np.bincount(s.ids[:, j])
        assert (np.diff(counts) <= 0).all()  # id 0 is the most frequent, counts never increase
    assert s.meta["preprocess"]["remap"] == "frequency"
    assert s.meta["preprocess"]["lines"] == 3000


def test_roundtrip_row_cap_without_remap(tmp_path, tsv):
    path, _labels, _dense, cats, _dm, cm = tsv
    cap = 1000
    rep = preprocess_criteo([path], tmp_path / "store", row_cap=cap, remap="none", block_mb=0.02)
    s = Store(tmp_path / "store")
    raw = np.where(cm, 0, cats).astype(np.int64) % cap
    np.testing.assert_array_equal(s.ids, raw)
    assert [t.rows for t in s.tables] == [int(raw[:, j].max()) + 1 for j in range(26)]
    assert s.meta["preprocess"]["row_cap"] == cap and rep.remap == "none"


def test_row_cap_then_frequency_and_min_count(tmp_path, tsv):
    path, _labels, _dense, cats, _dm, cm = tsv
    cap, min_count = 7, 50
    preprocess_criteo([path], tmp_path / "store", row_cap=cap, min_count=min_count)
    s = Store(tmp_path / "store")
    raw = np.where(cm, 0, cats).astype(np.int64) % cap
    for j in range(26):
        values, counts = np.unique(raw[:, j], return_counts=True)
        frequent = sorted(values[counts >= min_count].tolist(), key=lambda v: (-counts[values == v][0], v))
        rare_id = len(frequent)
        want = np.array([frequent.index(v) if v in frequent else rare_id for v in raw[:, j].tolist()])
        np.testing.assert_array_equal(s.ids[:, j], want)
        assert s.tables[j].rows == rare_id + int((counts < min_count).any())
        assert s.tables[j].rows <= cap


# ---------------------------------------------------------------------------------------------
# splits


def test_kaggle_day_split_boundaries():
    assert kaggle_splits(700) == {"train": (0, 600), "test": (600, 650), "val": (650, 700)}
    # 703 = 7*100 + 3: the first three days get one more line; the last day (100) is halved
    assert kaggle_splits(703) == {"train": (0, 603), "test": (603, 653), "val": (653, 703)}
    # 13 = 7*1 + 6: days 2,2,2,2,2,2,1 -> last day is [12, 13): test gets it, val is empty
    assert kaggle_splits(13) == {"train": (0, 12), "test": (12, 13), "val": (13, 13)}
    assert kaggle_splits(0) == {"train": (0, 0), "test": (0, 0), "val": (0, 0)}


def test_kaggle_split_written_to_store(tmp_path, tsv):
    path = tsv[0]
    preprocess_criteo([path], tmp_path / "store")
    # 3000 = 7*428 + 4: days 429*4 + 428*3; last day [2572, 3000) halved
    assert Store(tmp_path / "store").splits == {"train": (0, 2572), "test": (2572, 2786), "val": (2786, 3000)}


def test_terabyte_split_over_day_files(tmp_path):
    files = []
    for day, n in enumerate([100, 150, 41]):
        labels, dense, cats, dm, cm = _data(n, seed=10 + day)
        f = tmp_path / f"day_{day}"
        f.write_bytes(format_criteo_lines(labels, dense, cats, dm, cm))
        files.append(f)
    rep = preprocess_criteo(files, tmp_path / "store")
    assert rep.split == "terabyte"
    assert Store(tmp_path / "store").splits == {"train": (0, 250), "test": (250, 271), "val": (271, 291)}
    assert terabyte_splits([100, 150, 41]) == {"train": (0, 250), "test": (250, 271), "val": (271, 291)}
    assert [i.samples for i in rep.inputs] == [100, 150, 41]


def test_split_none(tmp_path, tsv):
    preprocess_criteo([tsv[0]], tmp_path / "store", split="none")
    assert Store(tmp_path / "store").splits == {"train": (0, 3000)}


# ---------------------------------------------------------------------------------------------
# malformed input, errors, atomicity


def _with_bad_lines(tmp_path) -> tuple[Path, dict[int, str], int]:
    labels, dense, cats, dm, cm = _data(2000, seed=2)
    lines = format_criteo_lines(labels, dense, cats, dm, cm).split(b"\n")[:-1]
    bad = {  # 1-based line number -> expected reason
        3: "expected 40 fields, found 39",
        500: "field C4: bad hex: 'zz'",
        1201: "field I2: not an integer: '1.5'",
        1999: "label must be 0 or 1, found '7'",
    }
    f = lines[2].split(b"\t")
    lines[2] = b"\t".join(f[:-1])
    f = lines[499].split(b"\t")
    f[13 + 4] = b"zz"
    lines[499] = b"\t".join(f)
    f = lines[1200].split(b"\t")
    f[2] = b"1.5"
    lines[1200] = b"\t".join(f)
    lines[1998] = b"7" + lines[1998][1:]
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"\n".join(lines))  # and no newline after the last line
    return path, bad, 2000


@pytest.mark.parametrize("block_mb", [64, 0.005])
def test_malformed_lines_skipped_and_counted(tmp_path, block_mb):
    path, bad, n = _with_bad_lines(tmp_path)
    rep = preprocess_criteo([path], tmp_path / "store", block_mb=block_mb, workers=2)
    assert rep.lines == n and rep.skipped == len(bad) and rep.samples == n - len(bad)
    assert rep.first_skipped == [f"{path}:{k}: {v}" for k, v in bad.items()]
    assert rep.first_skipped_lines == [3, 500, 1201, 1999]
    s = Store(tmp_path / "store")
    assert s.num_samples == n - len(bad)
    assert s.meta["preprocess"]["skipped"] == 4
    assert s.meta["preprocess"]["first_skipped"][0] == f"{path}:3: expected 40 fields, found 39"


def test_strict_raises_with_file_and_line(tmp_path):
    path, _bad, _ = _with_bad_lines(tmp_path)
    with pytest.raises(DataError, match=r"bad\.tsv:3: expected 40 fields, found 39$"):
        preprocess_criteo([path], tmp_path / "store", strict=True, block_mb=0.005)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tsv"]  # nothing half-written left


def _fail_on_call(monkeypatch, target: str, after: int) -> None:
    """Make `recstack.data.criteo.<target>` raise on its call number `after` + 1 (mid-stream)."""
    from recstack.data import criteo

    original, calls = getattr(criteo, target), []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            raise RuntimeError("injected failure")
        return original(*args, **kwargs)

    monkeypatch.setattr(criteo, target, failing)


@pytest.mark.parametrize("remap,cap", [("frequency", None), ("none", 100)])
def test_interrupted_parse_leaves_nothing(tmp_path, tsv, monkeypatch, remap, cap):
    _fail_on_call(monkeypatch, "_parse_task", after=3)
    with pytest.raises(RuntimeError, match="injected"):
        preprocess_criteo([tsv[0]], tmp_path / "store", remap=remap, row_cap=cap, block_mb=0.01)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.txt"]


def test_interrupted_remap_pass_leaves_nothing(tmp_path, tsv, monkeypatch):
    from recstack.data import criteo

    def broken(self, v):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(criteo._Remapper, "__call__", broken)
    with pytest.raises(RuntimeError, match="injected"):
        preprocess_criteo([tsv[0]], tmp_path / "store", block_mb=0.01)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.txt"]


def test_failed_rerun_keeps_previous_store(tmp_path, tsv, monkeypatch):
    path = tsv[0]
    preprocess_criteo([path], tmp_path / "store", split="none")
    _fail_on_call(monkeypatch, "_parse_task", after=2)
    with pytest.raises(RuntimeError):
        preprocess_criteo([path], tmp_path / "store", block_mb=0.01)
    assert Store(tmp_path / "store").splits == {"train": (0, 3000)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store", "train.txt"]


def test_refuses_to_replace_a_directory_that_is_not_a_store(tmp_path, tsv):
    precious = tmp_path / "mydata"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="mydata: exists and is not a recstack store"):
        preprocess_criteo([tsv[0]], precious)
    assert (precious / "notes.txt").read_text() == "keep me"
    with pytest.raises(DataError, match="exists and is not a recstack store"):
        preprocess_criteo([tsv[0]], tmp_path)  # the input's own folder
    (tmp_path / "empty").mkdir()
    preprocess_criteo([tsv[0]], tmp_path / "empty", split="none")  # an empty folder is fine
    preprocess_criteo([tsv[0]], tmp_path / "empty")  # and so is an earlier store
    assert Store(tmp_path / "empty").splits["train"] == (0, 2572)


def test_unusable_inputs(tmp_path):
    import gzip

    gz = tmp_path / "train.txt.gz"
    gz.write_bytes(gzip.compress(b"1\t2\n"))
    with pytest.raises(DataError, match="train.txt.gz: compressed file"):
        preprocess_criteo([gz], tmp_path / "store")
    junk = tmp_path / "junk.tsv"
    junk.write_bytes(b"a,b,c\n1,2,3\n")
    with pytest.raises(DataError, match=r"junk.tsv: no valid Criteo lines \(2 malformed; first: .*junk.tsv:1: "
                                        r"expected 40 fields, found 1\)"):
        preprocess_criteo([junk], tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_option_errors(tmp_path, tsv):
    path = tsv[0]
    with pytest.raises(ConfigError, match="--remap none needs --row-cap"):
        preprocess_criteo([path], tmp_path / "s", remap="none")
    with pytest.raises(ConfigError, match="--row-cap"):
        preprocess_criteo([path], tmp_path / "s", row_cap=2**31 + 1)
    with pytest.raises(DataError, match="missing.tsv: input file not found"):
        preprocess_criteo([path, tmp_path / "missing.tsv"], tmp_path / "s")
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_preprocess(run_cli, tmp_path, tsv):
    path = tsv[0]
    r = run_cli("data", "preprocess", path, "--out", tmp_path / "store", "--row-cap", "100000")
    assert r.code == 0, r.err
    assert "samples" in r.out and "3,000" in r.out and "split test" in r.out and "MiB/s" in r.out
    meta = json.loads((tmp_path / "store" / "meta.json").read_text())
    assert meta["num_samples"] == 3000 and meta["preprocess"]["row_cap"] == 100000
    assert meta["preprocess"]["inputs"][0]["bytes"] == path.stat().st_size


def test_cli_reports_skipped_lines(run_cli, tmp_path):
    path, _bad, _ = _with_bad_lines(tmp_path)
    r = run_cli("data", "preprocess", path, "--out", tmp_path / "store")
    assert r.code == 0, r.err
    assert f"{path}:500: field C4: bad hex: 'zz'" in r.out
    assert "4 (lines 3, 500, 1201, 1999)" in r.out


def test_cli_strict_exits_2_with_file_and_line(run_cli, tmp_path):
    path, _bad, _ = _with_bad_lines(tmp_path)
    r = run_cli("data", "preprocess", path, "--out", tmp_path / "store", "--strict")
    assert r.code == 2
    assert r.err.strip() == f"error: {path}:3: expected 40 fields, found 39"
    assert not (tmp_path / "store").exists()


def test_cli_missing_file_exits_2(run_cli, tmp_path):
    r = run_cli("data", "preprocess", tmp_path / "nope.tsv", "--out", tmp_path / "store")
    assert r.code == 2
    assert r.err.strip() == f"error: {tmp_path / 'nope.tsv'}: input file not found"


def test_cli_bad_option_exits_2(run_cli, tmp_path, tsv):
    r = run_cli("data", "preprocess", tsv[0], "--out", tmp_path / "store", "--remap", "none")
    assert r.code == 2 and "--row-cap" in r.err


def test_parser_fuzz_agrees_with_exact_parser():
    """Random byte edits (odd characters, merged or split lines, long numbers): the vectorised
    parser must accept and reject exactly what the per-line parser does, with the same values."""
    rng = np.random.default_rng(123)
    alphabet = b"0123456789abcdefABCDEF-+ \t\r\x00\x01\x0b\x80\xffxg."
    for _ in range(40):
        n = 30
        hi = 10 ** int(rng.integers(1, 18))
        labels, dense = rng.integers(0, 2, n), rng.integers(-hi, hi, (n, 13))
        cats = rng.integers(0, 2**32, (n, 26), dtype=np.uint64).astype(np.uint32)
        text = bytearray(format_criteo_lines(labels, dense, cats, rng.random((n, 13)) < 0.3,
                                             rng.random((n, 26)) < 0.3))
        for _ in range(int(rng.integers(0, 20))):
            pos, op = int(rng.integers(0, len(text))), int(rng.integers(0, 3))
            ch = alphabet[int(rng.integers(0, len(alphabet)))]
            if op == 0:
                text[pos] = ch
            elif op == 1:
                del text[pos]
            else:
                text.insert(pos, ch)
        text = bytes(text) if text.endswith(b"\n") else bytes(text) + b"\n"
        p = _parse(text)
        exp = [parse_line(line, 13, 26) for line in text.split(b"\n")[:-1]]
        assert p.lines == len(exp)
        assert p.bad == [(i, r) for i, r in enumerate(exp) if isinstance(r, str)]
        good = [r for r in exp if not isinstance(r, str)]
        np.testing.assert_array_equal(p.labels, np.array([r[0] for r in good], np.float32))
        np.testing.assert_array_equal(p.dense, np.array([r[1] for r in good], np.float64).reshape(-1, 13)
                                      .astype(np.float32))
        np.testing.assert_array_equal(p.cats, np.array([r[2] for r in good], np.uint32).reshape(-1, 26))


def test_line_numbers_are_per_file(tmp_path):
    """Several day files: a malformed line is named by its own file and its line in that file."""
    files = []
    for day in range(3):
        labels, dense, cats, dm, cm = _data(400, seed=20 + day)
        lines = format_criteo_lines(labels, dense, cats, dm, cm).split(b"\n")[:-1]
        if day == 2:
            lines[122] = b"x" + lines[122][1:]
        f = tmp_path / f"day_{day}"
        f.write_bytes(b"\n".join(lines) + b"\n")
        files.append(f)
    rep = preprocess_criteo(files, tmp_path / "store", block_mb=0.01)
    assert rep.first_skipped == [f"{files[2]}:123: label must be 0 or 1, found 'x'"]
    assert [i.lines for i in rep.inputs] == [400, 400, 400] and [i.skipped for i in rep.inputs] == [0, 0, 1]
    assert rep.splits == {"train": [0, 800], "test": [800, 1000], "val": [1000, 1199]}
    with pytest.raises(DataError, match=r"day_2:123: label must be 0 or 1, found 'x'$"):
        preprocess_criteo(files, tmp_path / "store2", strict=True, block_mb=0.01)
    assert not (tmp_path / "store2").exists()


def test_cli_options_min_count_and_split_none(run_cli, tmp_path, tsv):
    r = run_cli("data", "preprocess", tsv[0], "-o", tmp_path / "store", "--min-count", "20", "--split", "none",
                "--workers", "1", "--quiet")
    assert r.code == 0, r.err
    s = Store(tmp_path / "store")
    assert s.splits == {"train": (0, 3000)}
    raw = np.where(tsv[5], 0, tsv[3]).astype(np.int64)
    for j in range(26):
        _, counts = np.unique(raw[:, j], return_counts=True)
        assert s.tables[j].rows == int((counts >= 20).sum()) + int((counts < 20).any())
