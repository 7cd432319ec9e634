"""The supervisor: restart only what failed, bound the restarts, never contain a fatal error."""

from __future__ import annotations

import asyncio
import random

import pytest

from agent.errors import OutboxFatalError
from agent.supervise import Supervisor
from tests.waiting import wait_for


def _fast(**kw: object) -> Supervisor:
    args: dict[str, object] = {"base_seconds": 0.001, "cap_seconds": 0.01, "rng": random.Random(7)}
    args.update(kw)
    return Supervisor(**args)  # type: ignore[arg-type]


async def test_a_failing_component_restarts_and_the_others_keep_running() -> None:
    restarted: list[str] = []
    sup = _fast(on_restart=restarted.append)
    runs = 0
    healthy_ticks = 0
    recovered = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError(f"boom {runs}")
        recovered.set()
        await asyncio.Event().wait()

    async def healthy() -> None:
        nonlocal healthy_ticks
        while True:
            healthy_ticks += 1
            await asyncio.sleep(0)

    async with asyncio.TaskGroup() as tg:
        a = sup.start(tg, "flaky", flaky)
        b = sup.start(tg, "healthy", healthy)
        await asyncio.wait_for(recovered.wait(), 5)
        states = {c.name: c for c in sup.components()}
        assert states["flaky"].state == "running"
        assert states["flaky"].restarts == 3 and restarted == ["flaky"] * 3
        assert states["flaky"].last_error == "RuntimeError: boom 3"
        assert [c.name for c in sup.degraded()] == ["flaky"]      # restarted recently
        assert not sup.gave_up()
        assert healthy_ticks > 0 and not b.done()
        a.cancel()
        b.cancel()
    assert {c.name: c.state for c in sup.components()} == {"flaky": "stopped", "healthy": "stopped"}


async def test_it_gives_up_after_max_restarts_and_says_so() -> None:
    sup = _fast(max_restarts=3)

    async def broken() -> None:
        raise ValueError("always")

    async with asyncio.TaskGroup() as tg:
        task = sup.start(tg, "broken", broken)
    assert task.done() and task.exception() is None       # gave up quietly: the group lives on
    (state,) = sup.gave_up()
    assert (state.name, state.state, state.restarts, state.consecutive) == ("broken", "failed", 3, 4)
    assert state.last_error == "ValueError: always"
    assert not sup.degraded()


async def test_a_stable_run_forgets_earlier_failures() -> None:
    sup = _fast(max_restarts=2, stable_seconds=0.05)
    runs = 0
    loop = asyncio.get_running_loop()

    async def sometimes() -> None:
        nonlocal runs
        runs += 1
        if runs % 2 == 0:
            # Runs long enough to count as stable before it fails again.
            done = loop.create_future()
            loop.call_later(0.06, done.set_result, None)
            await done
        raise RuntimeError("again")

    async with asyncio.TaskGroup() as tg:
        task = sup.start(tg, "sometimes", sometimes)
        await wait_for(lambda: runs >= 7, 10, "seven runs")
        assert not sup.gave_up(), "failures separated by stable runs must not add up"
        task.cancel()


async def test_fatal_errors_are_never_contained() -> None:
    sup = _fast(fatal=(OutboxFatalError,))

    async def disk_died() -> None:
        raise OutboxFatalError("disk I/O error")

    async def inner_group() -> None:
        async with asyncio.TaskGroup() as tg:      # a component with its own task group
            tg.create_task(disk_died())

    for body in (disk_died, inner_group):
        with pytest.raises(ExceptionGroup) as caught:
            async with asyncio.TaskGroup() as tg:
                sup.start(tg, f"fatal-{body.__name__}", body)
        assert caught.group_contains(OutboxFatalError)


async def test_restart_delay_grows_to_the_cap_with_jitter() -> None:
    sup = Supervisor(base_seconds=1.0, cap_seconds=60.0, rng=random.Random(1))
    for n, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (30, 60.0)):
        for _ in range(20):
            assert ceiling / 2 <= sup.delay_for(n) <= ceiling


async def test_a_component_that_returns_is_done_not_restarted() -> None:
    sup = _fast()
    runs = 0

    async def finishes() -> None:
        nonlocal runs
        runs += 1

    async with asyncio.TaskGroup() as tg:
        sup.start(tg, "finishes", finishes)
    assert runs == 1 and sup.components()[0].state == "stopped"
