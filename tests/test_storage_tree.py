"""The data folder as an administrator's treemap (`GET /api/admin/storage/datadir`): sizes of
what is on disk, folders below the shown depth counted in their parent, and a walk that stops at
its limit says so instead of passing a part for the whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.gateway.faces.native import storage_admin
from services.gateway.faces.native.storage_admin import folder_tree


def _tree(root: Path) -> None:
    (root / "blobs" / "ab" / "cd").mkdir(parents=True)
    (root / "blobs" / "ab" / "cd" / "out.mp4").write_bytes(b"x" * 1000)
    (root / "blobs" / "ab" / "small.mp4").write_bytes(b"x" * 10)
    (root / "jwt-secret").write_bytes(b"s" * 64)


def test_the_tree_counts_every_byte_and_file_under_each_folder(tmp_path: Path) -> None:
    _tree(tmp_path)
    tree = folder_tree(tmp_path)
    assert (tree.size, tree.files, tree.truncated) == (1074, 3, False)
    blobs = next(child for child in tree.children if child.name == "blobs")
    assert (blobs.size, blobs.files) == (1010, 2)
    assert [child.name for child in tree.children] == ["blobs", "jwt-secret"]  # largest first


def test_a_walk_cut_short_by_its_limit_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(tmp_path)
    monkeypatch.setattr(storage_admin, "DATADIR_MAX_ENTRIES", 2)
    tree = folder_tree(tmp_path)
    assert tree.truncated and tree.files < 3
