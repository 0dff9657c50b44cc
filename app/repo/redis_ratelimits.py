"""The rate-limit store in Redis: the same GCRA as app/repo/ratelimits.py, one script call.

One key per limited key, holding its TAT in whole microseconds on Redis's
clock (TIME, read inside the script, so every worker and instance shares
one clock and one state). The script is the arithmetic of
`app.http.ratelimit.gcra`: Lua numbers are doubles, exact for integers
below 2^53 microseconds (year 2255). A key expires when its TAT passes,
which is the fresh state, so nothing needs purging.
"""

from __future__ import annotations

from app.platform.redis_link import LuaScript, RedisLink

# KEYS[1]: the key; ARGV: interval_us (T), tolerance_us (tau).
# Returns {admitted (1/0), TAT after the decision - now}.
_DECIDE = LuaScript("""
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local stored = redis.call('GET', KEYS[1])
local tat = now
if stored then tat = tonumber(stored) end
local base = tat
if base < now then base = now end
if base - now > tolerance then
  return {0, string.format('%.0f', tat - now)}
end
local after = base + interval
redis.call('SET', KEYS[1], string.format('%.0f', after),
           'PX', math.floor((after - now) / 1000) + 1)
return {1, string.format('%.0f', after - now)}
""")

KEY_PREFIX = "saypi:rl:"


class RedisRateLimitStore:
    """GCRA decisions in Redis; raises RedisDown when Redis fails (the limiter fails open)."""

    def __init__(self, link: RedisLink):
        self.link = link

    def decide(self, key: str, interval_us: int, tolerance_us: int) -> tuple[bool, int]:
        allowed, tat_after = self.link.run_script(_DECIDE, (KEY_PREFIX + key,),
                                                  (interval_us, tolerance_us))
        return allowed == 1, int(tat_after)

    def purge_expired(self) -> int:
        """Nothing to do: keys expire when their TAT passes."""
        return 0
