"""Calendar and rolling windows (windows.py) and budget keys (subjects.py): pure functions of now."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from litellm_budget_plugin import ConfigurationError, windows
from litellm_budget_plugin.subjects import MAX_TAGS, charged_subjects, check_subject, tag_keys, team_key


def local(zone: str, *args: int) -> float:
    return datetime(*args, tzinfo=ZoneInfo(zone)).timestamp()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("zone", "now", "days", "start", "end"),
    [
        # Paris springs forward on 2026-03-29: that day lasts 23 hours, 2026-10-25 lasts 25
        ("Europe/Paris", (2026, 3, 29, 12), 1, (2026, 3, 29), (2026, 3, 30)),
        ("Europe/Paris", (2026, 10, 25, 23, 59), 1, (2026, 10, 25), (2026, 10, 26)),
        ("Europe/Paris", (2026, 3, 29, 12), 7, (2026, 3, 23), (2026, 3, 30)),  # weeks start on Monday
        ("Europe/Paris", (2026, 3, 29, 12), 28, (2026, 3, 1), (2026, 4, 1)),
        ("Europe/Paris", (2026, 12, 31, 23, 59), 30, (2026, 12, 1), (2027, 1, 1)),
        ("Europe/Paris", (2026, 2, 14), 365, (2026, 1, 1), (2027, 1, 1)),
        ("Asia/Kolkata", (2026, 6, 1, 0, 0), 1, (2026, 6, 1), (2026, 6, 2)),  # +05:30
        ("UTC", (2028, 2, 29, 5), 28, (2028, 2, 1), (2028, 3, 1)),
    ],
)
def test_calendar_periods_start_and_end_at_local_midnights(
    zone: str, now: tuple[int, ...], days: int, start: tuple[int, ...], end: tuple[int, ...]
) -> None:
    first = windows.period_start(local(zone, *now), days, zone)

    assert first == local(zone, *start)
    assert windows.period_end(first, days, zone) == local(zone, *end)
    assert windows.period_end(local(zone, *now), days, zone) == local(zone, *end)


def test_dst_days_last_as_long_as_the_clock_says() -> None:
    spring = windows.period_start(local("Europe/Paris", 2026, 3, 29, 12), 1, "Europe/Paris")
    autumn = windows.period_start(local("Europe/Paris", 2026, 10, 25, 12), 1, "Europe/Paris")

    assert windows.period_end(spring, 1, "Europe/Paris") - spring == 23 * 3600
    assert windows.period_end(autumn, 1, "Europe/Paris") - autumn == 25 * 3600


def test_a_midnight_that_a_dst_jump_skips_starts_the_day_at_the_jump() -> None:
    # Santiago moved its clocks from 00:00 to 01:00 on 2022-09-11: that day began at 01:00
    start = windows.period_start(local("America/Santiago", 2022, 9, 11, 12), 1, "America/Santiago")

    shown = datetime.fromtimestamp(start, ZoneInfo("America/Santiago"))
    assert (shown.day, shown.hour, shown.minute) == (11, 1, 0)
    assert windows.period_end(start, 1, "America/Santiago") - start == 23 * 3600


def test_rolling_windows_move_by_whole_durations_whoever_looks_first() -> None:
    start = 1_000_000.0
    day = 86_400.0

    assert windows.rolled_start(start, 1, None, start + day - 1) == start
    assert windows.rolled_start(start, 1, None, start + 3.5 * day) == start + 3 * day
    assert windows.rolled_start(start, None, None, start + 1e9) == start  # never resets


def test_a_window_rolls_to_zero_spend_once_its_period_is_over() -> None:
    window: windows.Window = {"budget": 5.0, "spend": 4.0, "start": local("UTC", 2026, 1, 1), "duration": 1.0}
    window["timezone"] = "UTC"

    assert windows.roll(window, local("UTC", 2026, 1, 1, 23, 59)) is window
    rolled = windows.roll(window, local("UTC", 2026, 1, 3, 8))
    assert rolled["spend"] == 0 and rolled["start"] == local("UTC", 2026, 1, 3)


@pytest.mark.parametrize(
    "name",
    [
        "Mars/Olympus",
        "",
        "../../etc/passwd",
        "/etc/localtime",
        "localtime",
        "Factory",
        "right/UTC",
        "Europe/Paris\x00",
        5,
        "x" * 65,
    ],
)
def test_unknown_timezones_are_refused_by_name(name: object) -> None:
    with pytest.raises(ConfigurationError, match="timezone"):
        windows.check_timezone(name)


@pytest.mark.parametrize("days", [2, 10, 27, 32, 364, 0.5])
def test_calendar_windows_last_a_day_a_week_a_month_or_a_year(days: float) -> None:
    with pytest.raises(ConfigurationError, match="day, week, month or year"):
        windows.calendar_period(days)


def test_windows_describe_themselves_as_refusals_name_them() -> None:
    assert windows.describe(5, 1, None, None) == "$5 daily"
    assert windows.describe(100, 28, "Europe/Paris", None) == "$100 monthly (calendar, Europe/Paris)"
    assert windows.describe(1, 1, None, "gpt-4o") == "$1 daily on gpt-4o"
    assert windows.describe(2, 3, None, None) == "$2 per 3 days"
    assert windows.describe(2, None, None, "m") == "$2 on m"


# --- subjects ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["alice", "alice@acme.com", "acme/alice", "Org:7", "team:red", "tag:search"])
def test_user_ids_teams_and_tags_are_budget_keys(key: str) -> None:
    assert check_subject(key) == key


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("foo:bar", "unknown subject kind 'foo'"),
        ("taem:red", "unknown subject kind"),
        ("team:", "names no team"),
        ("tag:  ", "names no tag"),
        ("", "empty"),
        (None, "string"),
    ],
)
def test_unknown_kinds_and_empty_names_are_refused(key: object, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        check_subject(key)


def test_tags_become_keys_in_order_without_repeats() -> None:
    assert tag_keys(["b", "a", "b", "tag:c"]) == ("tag:b", "tag:a", "tag:c")
    assert team_key("red") == team_key("team:red") == "team:red"
    with pytest.raises(ConfigurationError, match="team must be a name"):
        team_key("team:team:red")


@pytest.mark.parametrize(
    ("tags", "problem"),
    [
        ("search", "list of strings"),
        ([1], "must be strings"),
        ([None], "must be strings"),
        (["x"] * (MAX_TAGS + 1), f"at most {MAX_TAGS}"),
        ([""], "empty"),
        ({"a": 1}, "list of strings"),
    ],
)
def test_bad_tags_are_refused(tags: object, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        tag_keys(tags)


def test_a_call_is_charged_to_its_user_then_the_users_team_then_its_own_subjects() -> None:
    record = {
        "total_budget": 1.0,
        "current_cost": 0.0,
        "model_cost": {},
        "created_at": 0.0,
        "last_updated_at": 0.0,
        "team": "red",
    }

    assert charged_subjects("alice", record, ["tag:x", "team:red", "tag:x"]) == ("alice", "team:red", "tag:x")  # type: ignore[arg-type]
    assert charged_subjects("bob", None, ()) == ("bob",)


# --- per-model windows -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cap", "model", "counted"),
    [
        ("gpt-4o", "gpt-4o", True),
        ("gpt-4o", "openai/gpt-4o", True),
        ("openai/gpt-4o", "gpt-4o-2024-08-06", True),  # providers answer with the dated name
        ("claude-3-5-sonnet", "anthropic/claude-3-5-sonnet-20241022", True),
        ("gpt-4o", "gpt-4o-mini", False),
        ("gpt-4o", "gpt-4", False),
        ("gpt-4o", "gpt-4o-2024", False),  # not a date
        ("gpt-4o", None, True),  # a call of unknown model counts in every cap
    ],
)
def test_a_model_cap_counts_its_model_under_any_provider_prefix_or_release_date(
    cap: str, model: str | None, counted: bool
) -> None:
    assert windows.same_model(cap, model) is counted


def test_two_caps_of_one_model_and_length_overlap_whatever_the_prefix_or_date() -> None:
    assert windows.overlap_key(1.0, "gpt-4o") == windows.overlap_key(1.0, "openai/gpt-4o-2024-08-06")
    assert windows.overlap_key(1.0, "gpt-4o") != windows.overlap_key(1.0, "gpt-4o-mini")
