import assert from "node:assert/strict";
import { test } from "node:test";
import { JITTER, nextAttempt, parseRetryAfter, pickupAllowance } from "../src/delivery/schedule.js";
import { parseDuration, parseSchedule, parseSize } from "../src/util/units.js";

const schedule = parseSchedule("5s,5m,30m,2h,5h,10h,10h");

test("the default schedule parses to the documented delays", () => {
  assert.deepEqual(schedule, [5e3, 3e5, 18e5, 72e5, 18e6, 36e6, 36e6]);
});

test("each delay is jittered within ±20 %, less at the top the time a retry takes to be sent, and the schedule ends after its last attempt", () => {
  for (let made = 1; made <= schedule.length; made++) {
    const delay = (r: number) => {
      const n = nextAttempt(schedule, made, () => r);
      assert.equal(n.final, false);
      return n.final ? { delayMs: Number.NaN } : n;
    };
    const low = delay(0);
    const high = delay(0.999999);
    const mid = delay(0.5);
    const base = schedule[made - 1]!;
    assert.equal(low.delayMs, Math.round(base * (1 - JITTER)));
    assert.ok(high.delayMs <= Math.round(base * (1 + JITTER) - pickupAllowance(base)) && high.delayMs > base);
    assert.equal(mid.delayMs, base);
  }
  // 1 immediate attempt + 7 retries = 8 attempts; after the 8th it is final.
  assert.deepEqual(nextAttempt(schedule, schedule.length + 1, Math.random), { final: true });
});

test("Retry-After can only push the next attempt later, and no later than the schedule's longest delay", () => {
  const after = (made: number, ms: number) => nextAttempt(schedule, made, () => 0.5, ms);
  assert.deepEqual(after(1, 60_000), { final: false, delayMs: 60_000 }); // 5 s scheduled: later, as asked
  assert.deepEqual(after(1, 10), { final: false, delayMs: 5_000 }); // never sooner than scheduled
  // A short Retry-After does not shrink a long scheduled delay: the schedule still spans its hours.
  assert.deepEqual(after(4, 1_000), { final: false, delayMs: 2 * 3_600_000 });
  assert.deepEqual(after(1, 100 * 3_600_000), { final: false, delayMs: 36_000_000 }); // never later than the longest
  assert.deepEqual(nextAttempt(schedule, schedule.length + 1, Math.random, 1_000), { final: true });
});

test("Retry-After is delay-seconds or an HTTP date; anything else is ignored", () => {
  assert.equal(parseRetryAfter("120", 0), 120_000);
  assert.equal(parseRetryAfter(" 0 ", 0), 0);
  assert.equal(parseRetryAfter(new Date(10_000).toUTCString(), 0), 10_000); // IMF-fixdate
  assert.equal(parseRetryAfter("Thursday, 01-Jan-70 00:00:10 GMT", 0), 10_000); // RFC 850
  assert.equal(parseRetryAfter("Thu Jan  1 00:00:10 1970", 0), 10_000); // asctime
  for (const junk of ["soon", "-5", "5.5", "5, 7", "1e3", "", undefined])
    assert.equal(parseRetryAfter(junk, 0), undefined, String(junk));
});

test("durations and sizes accept the documented units and reject anything else", () => {
  assert.equal(parseDuration("500ms"), 500);
  assert.equal(parseDuration("15s"), 15_000);
  assert.equal(parseDuration("7d"), 7 * 86_400_000);
  assert.equal(parseSize("64KiB"), 65_536);
  assert.equal(parseSize("1MiB"), 1_048_576);
  assert.equal(parseSize("200MiB"), 200 * 1_048_576);
  assert.throws(() => parseDuration("5 minutes"));
  // A bare number says both readings and what each comes to.
  assert.throws(() => parseDuration("15000"), {
    message: '"15000" needs a unit: ms, s, m, h or d (e.g. 15000ms = 15s or 15000s = 4h10m)',
  });
  assert.throws(() => parseDuration("30"), {
    message: '"30" needs a unit: ms, s, m, h or d (e.g. 30ms or 30s)',
  });
  assert.throws(() => parseSize("lots"));
});
