import { pick, seededRandom } from "./random.js";

interface Scenario {
  topic: string;
  brief: (name: string) => string;
  opening: (agent: string, name: string) => string[];
  /** Exchanges that can repeat (with different details) to make a transcript as long as asked. */
  middle: Array<(r: () => number) => string[]>;
  closing: (name: string) => string[];
}

const NAMES = ["Maria Lopez", "James Carter", "Aisha Khan", "Tom Becker", "Yuki Tanaka", "Sofia Rossi"];
const money = (r: () => number) =>
  `$${(20 + Math.floor(r() * 180)).toString()}.${String(Math.floor(r() * 100)).padStart(2, "0")}`;
const weekday = (r: () => number) => pick(r, ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]);
const hour = (r: () => number) =>
  pick(r, ["9:30 AM", "10:00 AM", "11:15 AM", "1:45 PM", "3:00 PM", "4:30 PM"]);
const digits = (r: () => number, n: number) => Array.from({ length: n }, () => Math.floor(r() * 10)).join("");
/** A day of the month as an ordinal: 1st, 2nd, 3rd, 4th … 11th … 21st, 22nd, 23rd … 27th. */
const dayOfMonth = (r: () => number) => {
  const d = 1 + Math.floor(r() * 27);
  const suffix =
    d % 10 === 1 && d !== 11
      ? "st"
      : d % 10 === 2 && d !== 12
        ? "nd"
        : d % 10 === 3 && d !== 13
          ? "rd"
          : "th";
  return `${d}${suffix}`;
};

const SCENARIOS: Scenario[] = [
  {
    topic: "billing",
    brief: (n) => `${n} asked about an unexpected charge; the agent explained it and issued a credit.`,
    opening: (agent, n) => [
      `Agent: Thank you for calling ${agent}, this is your virtual assistant. How can I help you today?`,
      `Customer: Hi, this is ${n}. I was charged twice on my last invoice and I would like to understand why.`,
      "Agent: I am sorry about that. I can look into the invoice for you. Could you confirm the account number?",
    ],
    middle: [
      (r) => [
        `Customer: Sure, the account number is ${digits(r, 8)}.`,
        `Agent: Thank you. I see two charges of ${money(r)} on the invoice dated the ${dayOfMonth(r)}.`,
        "Customer: Yes, that is exactly the duplicate charge I mean.",
        "Agent: The second charge came from a payment retry after a temporary bank error. The invoice was paid twice.",
      ],
      (r) => [
        "Customer: Can you refund the duplicate payment to my card?",
        `Agent: I can issue a credit of ${money(r)} to the card on file. It usually appears within five business days.`,
        "Customer: Five business days is fine. Will I get a confirmation email for the credit?",
        "Agent: Yes, a confirmation email with the credit reference will be sent today.",
      ],
      (r) => [
        "Customer: Could this duplicate charge happen again next month?",
        `Agent: I have turned off the automatic payment retry on your account, reference ${digits(r, 6)}, so it should not.`,
      ],
    ],
    closing: () => [
      "Agent: Is there anything else I can help you with today?",
      "Customer: No, that was everything. Thank you for sorting out the invoice.",
      "Agent: You are welcome. The credit confirmation is on its way. Have a great day!",
    ],
  },
  {
    topic: "appointment",
    brief: (n) => `${n} rescheduled a dental appointment to a new slot next week.`,
    opening: (agent, n) => [
      `Agent: Good morning, you have reached ${agent}. How may I help you?`,
      `Customer: Hello, it is ${n}. I need to reschedule my dental appointment this week.`,
      "Agent: Of course. Let me find your appointment. Could you confirm your date of birth?",
    ],
    middle: [
      (r) => [
        `Customer: It is the ${dayOfMonth(r)} of ${pick(r, ["March", "June", "October"])}, ${1960 + Math.floor(r() * 40)}.`,
        `Agent: Thank you. I see your appointment on ${weekday(r)} at ${hour(r)} for a cleaning.`,
        "Customer: Right, I cannot make it because of a work trip. Is there a slot next week?",
      ],
      (r) => [
        `Agent: The dentist has openings next ${weekday(r)} at ${hour(r)} or ${hour(r)}. Would either appointment work?`,
        "Customer: The later slot works better for me.",
        "Agent: Great, I have moved your appointment to the later slot and cancelled the old one.",
      ],
      (r) => [
        "Customer: Do I need to bring anything to the appointment?",
        `Agent: Please bring your insurance card; your plan number ends in ${digits(r, 4)}. Arrive ten minutes early.`,
      ],
    ],
    closing: () => [
      "Agent: You will receive a text reminder the day before your appointment. Anything else?",
      "Customer: No, that is all. Thanks for moving the appointment so quickly.",
      "Agent: My pleasure. See you next week!",
    ],
  },
  {
    topic: "delivery",
    brief: (n) => `${n} reported a late delivery; the agent traced the order and arranged redelivery.`,
    opening: (agent, n) => [
      `Agent: Hi, thanks for calling ${agent}. What can I do for you?`,
      `Customer: Hi, I am ${n}. My order was supposed to arrive yesterday and the delivery still has not come.`,
      "Agent: I am sorry for the delay. Can you give me the order number so I can trace the delivery?",
    ],
    middle: [
      (r) => [
        `Customer: The order number is ${digits(r, 3)}-${digits(r, 7)}.`,
        `Agent: Thanks. The courier scanned the order at the ${pick(r, ["north", "east", "central"])} depot but the delivery van was rerouted.`,
        "Customer: So where is my order now?",
        "Agent: The order is at the depot and is marked for the next delivery run.",
      ],
      (r) => [
        `Customer: Can the delivery come on ${weekday(r)} morning? I am home until noon.`,
        "Agent: I have booked a morning delivery slot and added a note for the courier to call ahead.",
        `Customer: Will I get a tracking link for the delivery? My phone ends in ${digits(r, 4)}.`,
        "Agent: Yes, the tracking link for the order will be texted to that phone.",
      ],
      (r) => [
        "Customer: Is there any compensation for the late delivery?",
        `Agent: I have refunded the shipping fee of ${money(r)} for the late order.`,
      ],
    ],
    closing: () => [
      "Agent: Is there anything else about the order I can help with?",
      "Customer: No, thank you. I hope the delivery arrives this time.",
      "Agent: I am confident it will. Thank you for your patience!",
    ],
  },
];

export interface Conversation {
  topic: string;
  customer: string;
  /** The brief summary of `call.ended`. */
  brief: string;
  transcript: string;
}

/**
 * A realistic conversation between an agent and a customer, a pure function of `seed` (the call
 * id) and the agent's name: an opening, middle exchanges, and a close. With `minBytes` the middle
 * repeats (with fresh details) until the transcript is at least that many UTF-8 bytes. A call
 * that was cut off (`disconnected`) stops mid-conversation.
 */
export function generateConversation(opts: {
  seed: number;
  agentName: string;
  minBytes?: number;
  cutOff?: boolean;
}): Conversation {
  const r = seededRandom(opts.seed);
  const scenario = pick(r, SCENARIOS);
  const customer = pick(r, NAMES);
  const lines = scenario.opening(opts.agentName, customer);
  for (const m of scenario.middle) lines.push(...m(r));
  if (opts.cutOff) {
    lines.push("Customer: Sorry, you are breaking up, I can barely hear—", "[call disconnected]");
  }
  const ending = opts.cutOff ? [] : scenario.closing(customer);
  const min = opts.minBytes ?? 0;
  let bytes = Buffer.byteLength([...lines, ...ending].join("\n"), "utf8");
  while (bytes < min) {
    const more = pick(r, scenario.middle)(r);
    // Insert before the cut-off marker, if any, so the call still ends where it ended.
    lines.splice(opts.cutOff ? lines.length - 2 : lines.length, 0, ...more);
    bytes += Buffer.byteLength(`\n${more.join("\n")}`, "utf8");
  }
  const brief = opts.cutOff
    ? `Call with ${customer} about ${scenario.topic} was cut off before it was resolved.`
    : scenario.brief(customer);
  return { topic: scenario.topic, customer, brief, transcript: [...lines, ...ending].join("\n") };
}
