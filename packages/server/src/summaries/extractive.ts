/**
 * The built-in summarizer: extractive, deterministic and offline. It scores each sentence of a
 * transcript by how many of the conversation's frequent content words it carries (a classic
 * Luhn-style summarizer), favours the opening (where callers state why they call) and the close
 * (where outcomes are agreed), and returns the best sentences in their original order within a
 * length bound. Pure.
 */

const STOPWORDS = new Set(
  (
    "a about above after again against all am an and any are as at be because been before being below " +
    "between both but by can could did do does doing down during each few for from further had has have " +
    "having he her here hers herself him himself his how i if in into is it its itself just let me more " +
    "most my myself no nor not now of off on once only or other our ours ourselves out over own same she " +
    "should so some such than that the their theirs them themselves then there these they this those " +
    "through to too under until up very was we were what when where which while who whom why will with " +
    "would you your yours yourself yourselves yes yeah okay ok oh um uh hello hi thanks thank please sure " +
    "great right well got get go going know like really also one see today day help sounds good im youre " +
    "ill thats dont ive calling"
  ).split(" "),
);

export interface Sentence {
  speaker: string | undefined;
  text: string;
  index: number;
}

/** Who speaks in a call transcript, besides the labels its lines start with. */
const ROLES = [
  "Agent",
  "Customer",
  "Caller",
  "User",
  "Assistant",
  "Bot",
  "AI",
  "Human",
  "Representative",
  "Operator",
];
const LABEL = /^([A-Z][\w .'-]{0,40}):\s+/;

/**
 * Splits "Speaker: text" lines into sentences, keeping who said each. A line holding several
 * turns ("Agent: Hello. Customer: I want to cancel.") is split where a sentence ends and a
 * speaker's label follows: one a line of the transcript starts with, or a usual role ("Note:" or
 * "Total:" inside a turn are not speakers).
 */
export function sentences(transcript: string): Sentence[] {
  const out: Sentence[] = [];
  const lines = transcript.split(/\r?\n/);
  const speakers = new Set(ROLES);
  for (const line of lines) {
    // A call has a few speakers; a transcript whose lines start with anything is not split inline.
    if (speakers.size >= ROLES.length + 20) break;
    const m = LABEL.exec(line.trim());
    if (m) speakers.add(m[1]!);
  }
  const turn = new RegExp(
    `(?<=[.!?])\\s+(?=(?:${[...speakers].map((n) => n.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|")}):\\s)`,
  );
  const turns = lines.flatMap((line) => line.split(turn));
  for (const rawLine of turns) {
    const line = rawLine.trim();
    if (!line) continue;
    const m = /^([A-Z][\w .'-]{0,40}):\s+(.*)$/.exec(line);
    const speaker = m ? m[1] : undefined;
    const body = m ? m[2]! : line;
    for (const s of body.split(/(?<=[.!?])\s+(?=[A-Z0-9"'(])/)) {
      const text = s.trim();
      if (text) out.push({ speaker, text, index: out.length });
    }
  }
  return out;
}

const words = (text: string) =>
  text
    .toLowerCase()
    .replace(/[’']/g, "")
    .split(/[^a-z0-9]+/)
    .filter((w) => w.length > 2 && !STOPWORDS.has(w));

/**
 * Summarizes `transcript` in at most `maxChars` characters (and at most `maxSentences`
 * sentences). Ties break on position, so the same input always gives the same summary.
 */
export function summarizeExtractive(
  transcript: string,
  opts: { maxChars?: number; maxSentences?: number } = {},
): string {
  const maxChars = opts.maxChars ?? 800;
  const maxSentences = opts.maxSentences ?? 5;
  const all = sentences(bounded(transcript));
  if (all.length === 0) return "";
  // Tokenised once: a 10 MB transcript has ~150,000 sentences.
  const tokens = all.map((s) => words(s.text));
  const distinct = tokens.map((t) => new Set(t));
  // The caller's first substantive sentence: usually why they call.
  const firstCustomer = all.find(
    (s) => s.speaker !== undefined && !isAgent(s.speaker) && tokens[s.index]!.length >= 3,
  )?.index;
  const freq = new Map<string, number>();
  for (const set of distinct) for (const w of set) freq.set(w, (freq.get(w) ?? 0) + 1);
  // Only words the conversation comes back to carry signal; one-offs are noise, except in a short
  // call, where hardly a word comes back ("cancel", then "cancelled") and every one counts.
  const minFreq = all.length < 20 ? 1 : 2;
  const score = (s: Sentence) => {
    const length = tokens[s.index]!.length;
    if (length < 3) return 0;
    let sum = 0;
    for (const w of distinct[s.index]!) {
      const f = freq.get(w) ?? 0;
      if (f >= minFreq) sum += Math.log(1 + f);
    }
    // The caller's first words say why they call; the last exchanges say how it ended.
    const position = s.index === firstCustomer ? 2 : s.index < 4 ? 1.4 : s.index >= all.length - 4 ? 1.2 : 1;
    // Long sentences win on sum alone; dividing by sqrt(length) keeps crisp ones competitive.
    return (sum / Math.sqrt(length)) * position;
  };
  const ranked = all
    .map((s) => ({ s, score: score(s) }))
    .filter((r) => r.score > 0)
    .sort((a, b) => b.score - a.score || a.s.index - b.s.index);
  const picked: Sentence[] = [];
  const pickedWords: Array<Set<string>> = [];
  let length = 0;
  for (const { s } of ranked) {
    if (picked.length >= maxSentences) break;
    // Redundancy check (as in MMR): a sentence that mostly repeats one already chosen adds
    // nothing; long conversations restate the same point with different numbers.
    const ws = new Set(words(s.text.replace(/[0-9]+/g, " ")));
    if (pickedWords.some((p) => overlap(p, ws) >= 0.5)) continue;
    const line = render(s);
    if (length + line.length + 1 > maxChars) continue;
    picked.push(s);
    pickedWords.push(ws);
    length += line.length + 1;
  }
  // Nothing scored (every sentence too short): the caller's first words that say anything, else
  // the transcript's first.
  if (picked.length === 0) {
    const caller = all.find(
      (s) => s.speaker !== undefined && !isAgent(s.speaker) && tokens[s.index]!.length > 0,
    );
    return clip(render(caller ?? all[0]!), maxChars);
  }
  return picked
    .sort((a, b) => a.index - b.index)
    .map(render)
    .join(" ");
}

const isAgent = (speaker: string) => /^(agent|assistant|bot)$/i.test(speaker);

/** Past this many characters only the start and the end of a transcript are read. */
export const MAX_INPUT_CHARS = 1_000_000;

/**
 * Bounds the work (about 0.3 s per million characters on the CI machine, against 3 s for a
 * 10 MB transcript read whole): the first 800,000 characters, where the purpose and the
 * discussion are, and the last 200,000, where the outcome is, cut at line boundaries.
 */
function bounded(transcript: string): string {
  if (transcript.length <= MAX_INPUT_CHARS) return transcript;
  // A transcript without line breaks is cut at the character positions instead.
  const cut = transcript.lastIndexOf("\n", 800_000);
  const head = transcript.slice(0, cut > 0 ? cut : 800_000);
  const from = transcript.indexOf("\n", transcript.length - 200_000);
  const tail = transcript.slice(from > 0 ? from + 1 : transcript.length - 200_000);
  return `${head}\n${tail}`;
}

/** Jaccard similarity of two word sets. */
function overlap(a: Set<string>, b: Set<string>): number {
  if (a.size === 0 || b.size === 0) return 0;
  let common = 0;
  for (const w of a) if (b.has(w)) common++;
  return common / (a.size + b.size - common);
}

function render(s: Sentence): string {
  const text = /[.!?]$/.test(s.text) ? s.text : `${s.text}.`;
  return s.speaker ? `${s.speaker}: ${text}` : text;
}

function clip(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, Math.max(0, max - 1)).trimEnd()}…`;
}
