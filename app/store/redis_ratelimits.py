"""The rate-limit store in Redis: GCRA in one script call, on Redis's clock.

One key per limited key holding its TAT in microseconds; the script is `gcra_take`'s
arithmetic, and a key expires when its TAT passes. See docs/rate-limits.md.
"""

from __future__ import annotations

from app.store.redis_link import LuaScript, RedisLink

# KEYS[1]: the key; ARGV: interval_us (T), tolerance_us (tau), want, give_back, keep.
# Returns {admissions granted (0: refused), TAT after the decision - now}.
_TAKE = LuaScript("""
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local give_back = tonumber(ARGV[4])
local keep = tonumber(ARGV[5])
local stored = redis.call('GET', KEYS[1])
local tat = nil
if stored then tat = tonumber(stored) - give_back * interval end
local base = now
if tat and tat > now then base = tat end
if base - now > tolerance then
  if give_back > 0 then
    redis.call('SET', KEYS[1], string.format('%.0f', tat),
               'PX', math.floor((tat - now) / 1000) + 1)
  end
  return {0, string.format('%.0f', tat - now)}
end
local granted = math.min(want, math.floor((tolerance - (base - now)) / interval) + 1 - keep)
if granted < 1 then granted = 1 end
local after = base + granted * interval
redis.call('SET', KEYS[1], string.format('%.0f', after),
           'PX', math.floor((after - now) / 1000) + 1)
return {granted, string.format('%.0f', after - now)}
""")

# KEYS: keys; ARGV[i]: microseconds to move KEYS[i]'s TAT back. Returns the key count.
_GIVE_BACK = LuaScript("""
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
for i, key in ipairs(KEYS) do
  local stored = redis.call('GET', key)
  if stored then
    local tat = tonumber(stored) - tonumber(ARGV[i])
    if tat > now then
      redis.call('SET', key, string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1)
    else
      redis.call('DEL', key)
    end
  end
end
return #KEYS
""")

# KEYS[1]: the key; ARGV[1]: microseconds to charge (count * T). `gcra_charge`:
# TAT := max(TAT, now) + charge. Returns TAT after - now.
_CHARGE = LuaScript("""
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local stored = redis.call('GET', KEYS[1])
local base = now
if stored and tonumber(stored) > now then base = tonumber(stored) end
local after = base + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.0f', after),
           'PX', math.floor((after - now) / 1000) + 1)
return string.format('%.0f', after - now)
""")

KEY_PREFIX = "saypi:rl:"


class RedisRateLimitStore:
    """GCRA decisions in Redis; raises RedisDown when Redis fails (the limiter fails open)."""

    def __init__(self, link: RedisLink):
        self.link = link

    def decide(self, key: str, interval_us: int, tolerance_us: int) -> tuple[bool, int]:
        granted, tat_after = self.take(key, interval_us, tolerance_us, 1, 0, 0)
        return granted == 1, tat_after

    def take(self, key: str, interval_us: int, tolerance_us: int, want: int, give_back: int,
             keep: int) -> tuple[int, int]:
        """`app.http.ratelimit.gcra_take` in one script call: (granted, TAT after - now)."""
        granted, tat_after = self.link.run_script(
            _TAKE, (KEY_PREFIX + key,), (interval_us, tolerance_us, want, give_back, keep))
        return int(granted), int(tat_after)

    def charge(self, key: str, interval_us: int, count: int) -> int:
        """`app.http.ratelimit.gcra_charge` in one script call: TAT after - now."""
        return int(self.link.run_script(_CHARGE, (KEY_PREFIX + key,), (count * interval_us,)))

    def give_back(self, returns: list[tuple[str, int, int]]) -> None:
        """Return unused admissions, (key, count, interval_us) each, in one script call."""
        self.link.run_script(_GIVE_BACK, tuple(KEY_PREFIX + key for key, _, _ in returns),
                             tuple(count * interval for _, count, interval in returns))

    def purge_expired(self) -> int:
        """Nothing to do: keys expire when their TAT passes."""
        return 0
