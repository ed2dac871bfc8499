import assert from "node:assert/strict";
import { test } from "node:test";
import { generateConversation } from "../src/simulator/conversation.js";

const ordinal = (n: number) => {
  const tens = n % 100;
  if (tens >= 11 && tens <= 13) return `${n}th`;
  return `${n}${{ 1: "st", 2: "nd", 3: "rd" }[n % 10] ?? "th"}`;
};

test("generated transcripts write days of the month as English ordinals (1st, 2nd, 3rd, 11th, 22nd)", () => {
  const seen = new Set<string>();
  for (let seed = 1; seed <= 400; seed++) {
    const { transcript } = generateConversation({ seed, agentName: "Test Agent" });
    for (const m of transcript.matchAll(/\bthe (\d+)([a-z]+)\b/g)) {
      assert.equal(`${m[1]}${m[2]}`, ordinal(Number(m[1])), `seed ${seed}: "${m[0]}"`);
      seen.add(m[2]!);
    }
  }
  // The seeds cover every suffix, so a wrong one for any of them would have been seen.
  assert.deepEqual([...seen].sort(), ["nd", "rd", "st", "th"]);
});
