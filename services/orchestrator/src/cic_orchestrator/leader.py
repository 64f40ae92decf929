"""One active orchestrator among replicas: the one holding a Postgres advisory lock.

The lock is session-level, taken on a connection of its own (not from the pool), so it lasts
exactly as long as that connection: when the leader's process dies, Postgres ends its session
and the lock is free for a standby's next try. The leader checks its connection as often as
standbys try the lock; if the connection fails it has lost the lock and steps down.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging

import asyncpg

log = logging.getLogger(__name__)

# The advisory lock's key: the same for every replica of the orchestrator on one database.
LOCK_NAME = "cic-orchestrator-leader"


class Attempt(enum.Enum):
    TAKEN = "taken"
    HELD = "held"  # by another replica
    UNREACHABLE = "unreachable"  # Postgres did not answer


def lock_key(name: str = LOCK_NAME) -> int:
    """A stable signed 64-bit key for ``name`` (Postgres advisory locks take a bigint)."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class LeaderElection:
    def __init__(self, database_url: str, poll_interval_s: float, key: int | None = None) -> None:
        self._database_url = database_url
        self._poll_interval_s = poll_interval_s
        self._key = lock_key() if key is None else key
        self._connection: asyncpg.Connection | None = None
        # The check of the lock connection under way, shared by whoever asks meanwhile.
        self._check: asyncio.Task[bool] | None = None

    @property
    def leading(self) -> bool:
        return self._connection is not None

    async def acquire(self) -> None:
        """Returns once this replica holds the lock (tries every poll interval)."""
        waiting_logged = False
        while True:
            if await self.try_acquire():
                log.info("leader: this replica holds the lock and is active")
                return
            if not waiting_logged:
                log.info("leader: another replica is active; standing by")
                waiting_logged = True
            await asyncio.sleep(self._poll_interval_s)

    async def try_acquire(self) -> bool:
        return await self.attempt() is Attempt.TAKEN

    async def attempt(self) -> Attempt:
        """One try at the lock: taken, held by another replica, or Postgres out of reach."""
        connection = None
        try:
            connection = await asyncpg.connect(
                self._database_url, timeout=self._poll_interval_s + 5
            )
            taken = await connection.fetchval(
                "SELECT pg_try_advisory_lock($1)", self._key, timeout=self._poll_interval_s + 5
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as err:
            log.warning("leader: cannot reach Postgres to take the lock: %s", err)
            if connection is not None:
                await _close(connection)
            return Attempt.UNREACHABLE
        if taken:
            self._connection = connection
            return Attempt.TAKEN
        await _close(connection)
        return Attempt.HELD

    async def regain(self) -> bool:
        """After the lock connection failed: True once this replica holds the lock again,
        False as soon as another replica holds it. While Postgres cannot be reached it keeps
        trying, for as long as that lasts: no replica can take the lock meanwhile, and a
        leader that cannot reach its database should leave its nodes serving, not end them.
        It first waits two poll intervals, so that a standby (trying every interval) takes the
        lock first when there is one that reaches Postgres: this replica's own connection has
        just proved unreliable."""
        await asyncio.sleep(2 * self._poll_interval_s)
        while True:
            outcome = await self.attempt()
            if outcome is Attempt.TAKEN:
                log.info("leader: took the lock again after losing its connection")
                return True
            if outcome is Attempt.HELD:
                return False
            await asyncio.sleep(self._poll_interval_s)

    async def confirm(self) -> bool:
        """Whether this replica holds the lock now: its lock connection answers. Called every
        poll interval, and before an action only the leader may take (failing or replacing a
        node), so that a replica whose lock was lost between two polls does not act on it.
        Callers at the same moment share one check, which runs in a task of its own: a caller
        cancelled meanwhile (a node task when the lead pauses) cannot cut the query short and
        leave the connection in the middle of an operation."""
        connection = self._connection
        if connection is None:
            return False
        check = self._check
        if check is None or check.done():
            check = self._check = asyncio.create_task(self._answers(connection))
        return await asyncio.shield(check)

    async def _answers(self, connection: asyncpg.Connection) -> bool:
        try:
            await connection.fetchval("SELECT 1", timeout=self._poll_interval_s + 5)
            return True
        except Exception as err:  # whatever the connection says, it does not hold the lock
            if self._connection is connection:
                log.error("leader: lost the lock connection (%s); pausing the lead", err)
                self._connection = None
                await _close(connection)
            return False

    async def lost(self) -> None:
        """Returns when this replica no longer holds the lock (its connection failed)."""
        while self._connection is not None:
            await asyncio.sleep(self._poll_interval_s)
            await self.confirm()

    async def release(self) -> None:
        """Gives the lock up at once (a standby takes over at its next try)."""
        if self._check is not None:
            await asyncio.gather(asyncio.shield(self._check), return_exceptions=True)
        connection, self._connection = self._connection, None
        if connection is None:
            return
        with contextlib.suppress(Exception):
            await connection.execute("SELECT pg_advisory_unlock($1)", self._key, timeout=5)
        await _close(connection)
        log.info("leader: lock released")


async def _close(connection: asyncpg.Connection) -> None:
    try:
        async with asyncio.timeout(5):
            await connection.close()
    except Exception:  # a connection that cannot close cleanly is cut
        connection.terminate()
