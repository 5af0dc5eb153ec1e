"""The file store never follows a link out of its folder, and never writes through one.

Each case puts a link (or something else that is not a store file of its own) where a store
file goes, pointing at a file outside the folder, and checks that the store refuses it with
a StoreError subclass naming the path and the problem, and that the outside file is unchanged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from server_thread import ServerThread

from litellm_budget_plugin import FileStore, StoreCorruptError, StoreError
from litellm_budget_plugin.server import ProjectStores

OUTSIDE = b'{"mallory": {"total_budget": 1000000, "current_cost": 0}}\n'


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    inside = tmp_path / "store"
    inside.mkdir()
    return inside


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    target = tmp_path / "outside.json"
    target.write_bytes(OUTSIDE)
    return target


def test_a_linked_snapshot_is_refused(folder: Path, outside: Path) -> None:
    (folder / "user_cost.json").symlink_to(outside)
    with pytest.raises(StoreCorruptError, match=r"user_cost\.json' is a symbolic link"):
        FileStore(folder / "user_cost.json")
    assert outside.read_bytes() == OUTSIDE
    assert not (folder / "user_cost.json.journal").exists()


@pytest.mark.parametrize("suffix", [".journal", ".lock"])
def test_a_linked_journal_or_lock_is_refused(folder: Path, outside: Path, suffix: str) -> None:
    (folder / f"user_cost.json{suffix}").symlink_to(outside)
    with pytest.raises(StoreCorruptError, match=rf"user_cost\.json\{suffix}' is a symbolic link"):
        FileStore(folder / "user_cost.json")
    assert outside.read_bytes() == OUTSIDE


@pytest.mark.parametrize("suffix", ["", ".journal", ".lock"])
def test_a_dangling_link_creates_nothing_outside(folder: Path, tmp_path: Path, suffix: str) -> None:
    target = tmp_path / "created-outside"
    (folder / f"user_cost.json{suffix}").symlink_to(target)
    with pytest.raises(StoreCorruptError, match="symbolic link"):
        FileStore(folder / "user_cost.json").set_budget("alice", 1)
    assert not target.exists()


def test_a_link_placed_after_opening_is_refused_at_the_next_reload(folder: Path, outside: Path) -> None:
    store = FileStore(folder / "user_cost.json")
    store.set_budget("alice", 1)
    snapshot = folder / "user_cost.json"
    snapshot.unlink()
    (folder / "user_cost.json.journal").unlink()  # tells the store to reload
    snapshot.symlink_to(outside)
    with pytest.raises(StoreCorruptError, match="symbolic link"):
        store.get("alice")
    assert outside.read_bytes() == OUTSIDE
    store.close()


def test_a_hard_linked_journal_is_refused(folder: Path, outside: Path) -> None:
    os.link(outside, folder / "user_cost.json.journal")
    with pytest.raises(StoreCorruptError, match="hard links"):
        FileStore(folder / "user_cost.json")
    assert outside.read_bytes() == OUTSIDE


def test_a_fifo_is_refused_without_blocking(folder: Path) -> None:
    os.mkfifo(folder / "user_cost.json")
    with pytest.raises(StoreCorruptError, match="not a regular file"):
        FileStore(folder / "user_cost.json")


def test_the_old_predictable_temp_name_cannot_redirect_a_fold(folder: Path, outside: Path) -> None:
    """Folds wrote ``.user_cost.json.<pid>.tmp``: a link there truncated its target."""
    for name in (f".user_cost.json.{os.getpid()}.tmp", f".user_cost.json.journal.{os.getpid()}.tmp"):
        (folder / name).symlink_to(outside)
    store = FileStore(folder / "user_cost.json")
    store.set_budget("alice", 1)
    store.compact()
    store.close()
    assert outside.read_bytes() == OUTSIDE
    assert FileStore(folder / "user_cost.json").get("alice") is not None


def test_a_lock_file_that_cannot_be_opened_is_a_store_error(folder: Path) -> None:
    """Was a raw PermissionError/IsADirectoryError, which on_store_error="open" did not catch."""
    (folder / "user_cost.json.lock").mkdir()
    with pytest.raises(StoreError, match=r"cannot open lock file .*user_cost\.json\.lock"):
        FileStore(folder / "user_cost.json")


@pytest.mark.parametrize(
    "place_link",
    [
        lambda folder, outside: (folder / "p.json").symlink_to(outside),
        lambda folder, outside: (folder / "p.json.journal").symlink_to(outside),
        lambda folder, outside: (folder / "p.json.lock").symlink_to(outside),
    ],
    ids=["snapshot", "journal", "lock"],
)
def test_the_server_refuses_a_project_whose_files_are_links(
    folder: Path, outside: Path, caplog: pytest.LogCaptureFixture, place_link: Callable[[Path, Path], None]
) -> None:
    (folder / "q.json").write_text('{"bob": {"total_budget": 2}}')
    place_link(folder, outside)
    with ServerThread(ProjectStores.from_target(str(folder))) as server, caplog.at_level(logging.ERROR):
        for path, body in [
            ("/get_budget", {"project_name": "p"}),
            ("/v1/all", {"project_name": "p"}),
            ("/v1/set_budget", {"project_name": "p", "user": "eve", "total_budget": 1}),
        ]:
            answer = httpx.post(server.url + path, json=body)
            assert answer.status_code == 500, answer.text
            assert answer.json()["error"] == "store_corrupt"
            assert "symbolic link" in answer.json()["message"]
        other = httpx.post(server.url + "/v1/get", json={"project_name": "q", "user": "bob"})
        assert other.json()["result"]["total_budget"] == 2  # other projects are served
    assert "symbolic link" in caplog.text
    assert outside.read_bytes() == OUTSIDE
