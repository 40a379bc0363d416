"""Provenance hashes: the code hash sees every source file and its name; file and settings hashes
are SHA-256 of exactly the bytes and values they name."""

from __future__ import annotations

import hashlib
from pathlib import Path

from transfer_freezing import provenance


def test_the_code_hash_changes_with_a_source_edit_or_rename_not_with_other_files(tmp_path: Path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    monkeypatch.setattr(provenance, "PACKAGE", tmp_path)
    first = provenance.code_hash()
    (tmp_path / "sub" / "b.py").write_text("y = 3\n")
    edited = provenance.code_hash()
    (tmp_path / "sub" / "b.py").rename(tmp_path / "sub" / "c.py")
    renamed = provenance.code_hash()
    (tmp_path / "notes.txt").write_text("not code\n")
    assert provenance.code_hash() == renamed
    assert len({first, edited, renamed}) == 3 and len(first) == 12


def test_files_hash_is_the_sha256_of_the_files_bytes_in_order(tmp_path: Path):
    big = bytes(range(256)) * 5000  # over one read chunk (1 MiB)
    (tmp_path / "a").write_bytes(big)
    (tmp_path / "b").write_bytes(b"tail")
    paths = [tmp_path / "a", tmp_path / "b"]
    assert provenance.files_hash(paths) == hashlib.sha256(big + b"tail").hexdigest()[:16]
    assert provenance.files_hash(paths[::-1]) != provenance.files_hash(paths)
    assert provenance.file_sha256(paths[0]) == hashlib.sha256(big).hexdigest()


def test_json_hash_depends_on_values_not_on_key_order():
    assert provenance.json_hash({"a": 1, "b": [2, 3]}) == provenance.json_hash({"b": [2, 3], "a": 1})
    assert provenance.json_hash({"a": 1, "b": [2, 3]}) != provenance.json_hash({"a": 1, "b": [3, 2]})
    assert len(provenance.json_hash({}, 12)) == 12
