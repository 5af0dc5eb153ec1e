"""Opening a file store: many processes at once over a long journal, a fold racing the open,
and the JSON file that exists from the first write on.

Children are forked (an interpreter importing the package takes seconds here); they report
through their exit code and leave with ``os._exit``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_file_store_processes import _exit_code, _start_child

from litellm_budget_plugin import FileStore, StoreCorruptError, StoreLockTimeout
from litellm_budget_plugin.stores import _journal as journal_module

PAIRS = 3000  # reserve + settle: about 1.7 MB of journal, as in the field report
OPENERS = 8


def _journal_of_pairs(path: Path, pairs: int, users: int = 50) -> dict[str, object]:
    """A store whose journal holds ``pairs`` reserve+settle pairs, never folded; returns its records."""
    store = FileStore(path)
    for i in range(pairs):
        user = f"user-{i % users}"
        store.reserve(user, f"call-{i}", 0.01, 600.0, default={"total_budget": 1e9, "duration": None})
        store.settle(f"call-{i}", 0.005, "gpt-4o-mini")
    records = store.all()
    store.close()
    return dict(records)


@pytest.mark.slow
def test_eight_processes_open_a_long_journal_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each opener used to replay the whole journal under the lock, one after the other: the
    last ones timed out. A lock timeout shorter than the eight replays (0.2-0.3 s each here)
    makes that certain; an open that holds the lock only to catch up (well under a
    millisecond) never waits that long."""
    monkeypatch.setattr(journal_module, "MIN_JOURNAL_BYTES", 1 << 40)  # a journal from before folds were sooner
    path = tmp_path / "user_cost.json"
    expected = _journal_of_pairs(path, PAIRS)
    journal = path.with_name(path.name + ".journal")
    assert journal.stat().st_size > 1_000_000, "the journal was folded: the test would prove nothing"

    start_read, start_write = os.pipe()

    def open_and_check() -> int:
        os.close(start_write)
        os.read(start_read, 1)  # all start when the parent closes the pipe
        try:
            store = FileStore(path, lock_timeout=1.0)
        except StoreLockTimeout:
            return 3
        same = store.all() == expected
        store.close()
        return 0 if same else 4

    pids = [_start_child(open_and_check) for _ in range(OPENERS)]
    os.close(start_read)
    os.close(start_write)
    codes = [_exit_code(pid) for pid in pids]
    assert codes == [0] * OPENERS, "3: StoreLockTimeout, 4: opened different records"


def test_the_json_file_exists_from_the_first_write_and_is_not_rewritten_after(tmp_path: Path) -> None:
    path = tmp_path / "user_cost.json"
    store = FileStore(path)
    assert not path.exists()  # opening writes nothing
    store.set_budget("alice", 10)
    assert json.loads(path.read_bytes())["alice"]["total_budget"] == 10
    written = path.stat()
    store.charge("alice", 0.5, "gpt-4o-mini")
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns), (
        "a later write rewrote the snapshot: only the first one may"
    )
    assert FileStore(path).get("alice") == store.get("alice")
    store.close()


def test_opens_racing_a_writer_that_folds_often_see_whole_states(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opens read without the lock while another process appends and folds every few writes:
    each sees a state that was on disk at some moment, never one mixed from two folds. The
    writer charges four users in turn, so a whole state has each user's count at most one
    below the previous user's, and never fewer charges in all than an earlier open saw."""
    monkeypatch.setattr(journal_module, "MIN_JOURNAL_BYTES", 2048)  # inherited by the forked writer
    path = tmp_path / "user_cost.json"
    cost = 0.125  # exact in binary: spend / cost counts the charges
    users = ["u0", "u1", "u2", "u3"]
    setup = FileStore(path)
    for user in users:
        setup.set_budget(user, 1e12)
    setup.close()
    stop_read, stop_write = os.pipe()
    count_read, count_write = os.pipe()

    def charge_until_stopped() -> int:
        os.close(stop_write)
        os.set_blocking(stop_read, False)
        store = FileStore(path)
        charges = 0
        while True:
            try:
                if os.read(stop_read, 1) == b"":  # the parent closed it: stop
                    break
            except BlockingIOError:
                pass
            store.charge(users[charges % len(users)], cost, "gpt-4o-mini", call_id=f"c{charges}")
            charges += 1
        store.close()
        os.write(count_write, str(charges).encode())
        return 0

    pid = _start_child(charge_until_stopped)
    os.close(stop_read)
    os.close(count_write)
    seen, opens, folds, snapshot = 0.0, 0, 0, None
    try:
        while opens < 30 or folds < 5:  # until the opens have overlapped several folds
            store = FileStore(path)
            records = store.all()
            store.close()
            counts = [records[user]["current_cost"] / cost for user in users]
            assert counts == sorted(counts, reverse=True) and counts[0] - counts[-1] <= 1, f"mixed: {counts}"
            assert sum(counts) >= seen, "an open saw an older state than an earlier one"
            seen, opens = sum(counts), opens + 1
            folds += snapshot is not None and snapshot != path.stat().st_ino
            snapshot = path.stat().st_ino
            assert os.waitpid(pid, os.WNOHANG) == (0, 0), "the writer ended by itself"
    finally:
        os.close(stop_write)
    assert _exit_code(pid) == 0
    charges = int(os.read(count_read, 64))
    os.close(count_read)
    final = FileStore(path)
    assert sum(record["current_cost"] for record in final.all().values()) == charges * cost
    final.close()


def test_a_line_read_without_the_lock_then_cut_off_is_not_kept(tmp_path: Path) -> None:
    """A failed write is cut off under the lock; a process that read its line meanwhile, without
    the lock, finds the line gone when it takes the lock, and reads the journal again."""
    path = tmp_path / "user_cost.json"
    store = FileStore(path)
    store.set_budget("alice", 10)
    store.charge("alice", 1.0, "m")
    committed = store.journal_path.read_bytes()
    store.close()
    failed_write = b'{"u":"alice","r":{"total_budget":10,"current_cost":5.0}}\n'
    store.journal_path.write_bytes(committed + failed_write)

    journal = journal_module.Journal(path, fsync=False)
    journal.load_unlocked()
    assert journal.records["alice"]["current_cost"] == 5.0  # read, not yet checked
    # under the lock, the writer cuts its line off, and a next writer appends another
    later_write = b'{"u":"alice","r":{"total_budget":10,"current_cost":2.0}}\n'
    store.journal_path.write_bytes(committed + later_write)
    assert journal.catch_up()
    assert journal.records["alice"]["current_cost"] == 2.0
    journal.close()


def test_a_bad_call_id_time_appended_by_a_journal_line_is_refused(tmp_path: Path) -> None:
    """Replay checks the ids a line appends (the ones it keeps were checked before)."""
    path = tmp_path / "user_cost.json"
    store = FileStore(path)
    store.set_budget("alice", 10)
    store.charge("alice", 1.0, "m", call_id="first")
    store.charge("alice", 1.0, "m", call_id="second")
    store.close()
    lines = store.journal_path.read_bytes().splitlines()
    last = json.loads(lines[-1])
    assert list(last["a"]) == ["second"]  # a line that appends to the ids kept
    last["a"]["third"] = "soon"
    content = b"\n".join([*lines[:-1], json.dumps(last).encode()]) + b"\n"
    store.journal_path.write_bytes(content)
    reopened = FileStore(path)  # the bad record is refused for its user only
    with pytest.raises(StoreCorruptError, match="applied time"):
        reopened.get("alice")
    with pytest.raises(StoreCorruptError, match="applied time"):
        reopened.charge("alice", 1.0, "m")
    assert reopened.all() == {}
    reopened.close()
    assert store.journal_path.read_bytes() == content
