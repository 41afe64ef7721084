"""LagTally: who lags, counted by principal (see grpcchat/core/lagtally.py)."""

from __future__ import annotations

from grpcchat.core.lagtally import LagTally


def test_a_principal_lags_when_most_of_its_sessions_do() -> None:
    tally = LagTally()
    for _ in range(3):
        tally.add("10.0.0.9", lagging=False)
    tally.lag_changed("10.0.0.9", True)
    assert (tally.lagging, tally.lagging_principals) == (1, 0)  # 1 of 3: not yet
    tally.lag_changed("10.0.0.9", True)
    assert (tally.lagging, tally.lagging_principals) == (2, 1)  # 2 of 3
    assert tally.majority_lags()
    tally.add("10.0.0.9", lagging=False)  # 2 of 4 is no majority
    assert (tally.sessions, tally.lagging_principals) == (4, 0)
    tally.remove("10.0.0.9", lagging=False)
    assert tally.lagging_principals == 1


def test_a_majority_is_one_of_principals_not_of_sessions() -> None:
    tally = LagTally()
    for _ in range(100):
        tally.add("attacker", lagging=True)
    tally.add("alice", lagging=False)
    tally.add("bob", lagging=False)
    assert (tally.sessions, tally.lagging, tally.principals) == (102, 100, 3)
    assert tally.lagging_principals == 1
    assert not tally.majority_lags()
    tally.lag_changed("alice", True)
    assert tally.majority_lags()


def test_everything_removed_leaves_nothing_counted() -> None:
    tally = LagTally()
    tally.add("a", lagging=True)
    tally.add("a", lagging=False)
    tally.add("b", lagging=False)
    tally.lag_changed("b", True)
    tally.lag_changed("a", False)  # a's first session caught up
    tally.remove("a", lagging=False)
    tally.remove("a", lagging=False)
    tally.remove("b", lagging=True)
    assert (tally.sessions, tally.lagging, tally.lagging_principals) == (0, 0, 0)
    assert tally.principals == 0
    assert not tally.majority_lags()
    assert tally._lagging == {}
