"""Which scheduler replica collects the node signals (load scrapes and health probes).

Every replica shares one registry, so one collector is enough: more would scrape every node once
per replica, and would count each health failure once per replica, making the breaker trip
sooner the more replicas run. The collector holds a small Redis key (``SET NX PX``) and renews
it on each round; when it stops or dies, another replica takes the key over within its TTL.
"""

from __future__ import annotations

import logging
import uuid

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cic_scheduler.metrics import SchedulerMetrics

log = logging.getLogger(__name__)

# Renews the key when this holder has it, else takes it when free: 1 when held afterwards.
_HOLD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""
_GIVE_UP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class SignalsLeadership:
    """``await hold()`` before each round: True while this replica is the collector."""

    def __init__(
        self, redis: Redis, key_prefix: str, ttl_s: float, holder: str | None = None
    ) -> None:
        self.key = f"{key_prefix}signals:collector"
        # Who holds the key: a new id unless given (a replica's signals processes share its id,
        # so that one started after another died renews the key instead of waiting it out).
        self.holder = holder or uuid.uuid4().hex
        self._ttl_ms = max(int(ttl_s * 1000), 1)
        self._hold = redis.register_script(_HOLD)
        self._give_up = redis.register_script(_GIVE_UP)
        self._held = False

    @property
    def held(self) -> bool:
        """Whether the last ``hold()`` found this replica the collector."""
        return self._held

    async def hold(self) -> bool:
        try:
            held = bool(await self._hold(keys=[self.key], args=[self.holder, self._ttl_ms]))
        except RedisError as err:
            log.warning("cannot reach Redis to hold the signals collector key: %s", err)
            held = False
        if held != self._held:
            log.info("this replica %s collecting node signals", "is now" if held else "stopped")
        self._held = held
        return held

    async def give_up(self) -> None:
        """Frees the key (when held) so that another replica takes over at once."""
        if not self._held:
            return
        self._held = False
        try:
            await self._give_up(keys=[self.key], args=[self.holder])
        except RedisError as err:
            log.warning("cannot free the signals collector key: %s", err)


async def holds_collector(leadership: SignalsLeadership | None, metrics: SchedulerMetrics) -> bool:
    """Whether this replica collects the node signals this round (always, with no leadership),
    shown in the ``cic_scheduler_signals_collector`` gauge."""
    held = leadership is None or await leadership.hold()
    metrics.signals_collector.set(1 if held else 0)
    return held
