import { EventEmitter } from "node:events";
import type { ServerResponse } from "node:http";
import { EVENT_TYPES } from "@klen/webhooks/schemas";
import { ApiError, badRequest } from "../../errors.js";
import { httpRequests, streamsOpen } from "../../metrics.js";
import type { Db } from "../../storage/types.js";
import type { RouteModule } from "./index.js";

/** Sorts before every real event id: "from the beginning" for an account with no events yet. */
export const ORIGIN_EVENT_ID = `evt_${"0".repeat(26)}`;
const EVENT_ID = /^evt_[0-9a-z]{26}$/;

// Why these numbers: the in-process wake-up makes delivery immediate for events committed by this
// process; the slow poll is the safety net for events committed by other processes (split API
// processes, a worker's generated summaries) at the cost of one indexed query per connection per
// 500 ms. 15 s heartbeats stay under the usual 30–60 s idle timeouts of proxies.
const POLL_MS = 500;
const HEARTBEAT_MS = 15_000;
/** How often an open stream checks that its API key has not been revoked. */
const KEY_CHECK_MS = 5_000;
const REVOKED_FRAME = `event: error\ndata: ${JSON.stringify({
  error: { code: "unauthorized", message: "the API key of this stream was revoked" },
})}\n\n`;
const BATCH = 200;
// Payloads are read this many at a time: what one stream holds while its client reads slowly is
// at most this many bodies (inline ones are ≤ 64 KiB), not a whole batch of 200.
const PAYLOAD_BATCH = 16;
// A client that has read nothing for this long while its socket's buffer is full is cut off; it
// resumes after the last event it read (Last-Event-ID), so it misses nothing.
const DRAIN_TIMEOUT_MS = 60_000;
/** Open streams per account, in one server process: `listen` in a few terminals, not a leak. */
export const MAX_STREAMS_PER_ACCOUNT = 10;
// On PostgreSQL `seq` is handed out at insert but rows become visible at commit, so a lower seq
// can appear after a higher one. Holes are re-checked for this long before they are given up as
// rolled-back inserts; no transition transaction runs anywhere near this long.
const GAP_TTL_MS = 30_000;
/**
 * Holes tracked at most: those of the last MAX_GAPS seqs scanned. A transaction still open holds
 * one of the seqs handed out last; a replay over purged history meets long runs of holes that
 * will never fill, which (kept first-come) once took every place, so that an event committed late
 * in the next 30 s was skipped.
 */
const MAX_GAPS = 10_000;
/** Holes re-checked per statement; every hole is re-checked each turn. */
const GAP_CHECKS = 1_000;
/**
 * A stream resumed at seq C (`after`, `Last-Event-ID`) takes the seqs below C that are missing now
 * as holes, this far back: a transaction still open when the client's last stream sent C commits
 * one of them later, and the client never had it.
 */
const RESUME_LOOKBACK = 1_000;

interface Row {
  seq: number;
  id: string;
  event_type: string;
  payload: string;
}

/** Resolves true once `res` drains, false when it has not within `ms` (or it closed). */
export function drained(res: ServerResponse, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const done = (ok: boolean) => {
      clearTimeout(timer);
      res.off("drain", onDrain).off("close", onClose);
      resolve(ok);
    };
    const onDrain = () => done(true);
    const onClose = () => done(false);
    const timer = setTimeout(() => done(false), ms);
    res.once("drain", onDrain).once("close", onClose);
  });
}

/** The SSE frame of one event: the body is the stored payload byte for byte (it has no newlines). */
export function sseFrame(r: Pick<Row, "id" | "event_type" | "payload">): string {
  return `id: ${r.id}\nevent: ${r.event_type}\ndata: ${r.payload}\n\n`;
}

function parseTypes(raw: string | undefined): Set<string> | undefined {
  if (raw === undefined || raw.trim() === "") return undefined;
  const types = raw.split(",").map((t) => t.trim());
  for (const t of types) {
    if (!(EVENT_TYPES as readonly string[]).includes(t))
      throw badRequest(
        "event_types",
        `"event_types" has unknown event type "${t}"; use ${EVENT_TYPES.join(", ")}`,
      );
  }
  return new Set(types);
}

/** The seq after which to start: that of the cursor event, or (purged or origin id) the nearest older one. */
async function seqOf(db: Db, accountId: number, id: string): Promise<number> {
  const exact = await db
    .selectFrom("events")
    .select("seq")
    .where("account_id", "=", accountId)
    .where("id", "=", id)
    .executeTakeFirst();
  if (exact) return Number(exact.seq);
  const older = await db
    .selectFrom("events")
    .select((eb) => eb.fn.max("seq").as("seq"))
    .where("account_id", "=", accountId)
    .where("id", "<=", id)
    .executeTakeFirst();
  return Number(older?.seq ?? 0);
}

/**
 * `GET /v1/events/stream`: the account's events as Server-Sent Events, for `klen-webhooks listen`.
 * With a cursor (`after` or `Last-Event-ID`) it sends the events after it, then new ones as they
 * are committed; without one it starts at the tail, first sending a `ready` frame whose `id` is the
 * newest event so that a client reconnecting with it skips nothing. Order is the events table's
 * `seq` (commit order across processes), not the id.
 */
export const streamRoutes: RouteModule = (app, ctx, h) => {
  // One shared fan-out of wake-ups: store.onWork has no "off", so connections subscribe here.
  const bell = new EventEmitter().setMaxListeners(0);
  const ring = () => bell.emit("ring");
  ctx.work.on("work", ring);
  // Other processes' work wakes streams through the store (on PostgreSQL a LISTEN session of its
  // own), subscribed at the first stream: an API process nobody streams from holds no such session.
  let listening = false;
  const listenForWork = () => {
    if (listening) return;
    listening = true;
    ctx.store.onWork(ring);
  };
  const open = new Set<ServerResponse>();
  const perAccount = new Map<number, number>();
  // Streams never end by themselves; without this app.close() would wait for every listener.
  app.addHook("preClose", async () => {
    for (const res of open) res.end();
  });

  app.get(
    "/v1/events/stream",
    {
      schema: {
        summary: "Stream the account's events (Server-Sent Events)",
        description:
          "text/event-stream of the account's events in commit order: `id:` the event id, `event:` its type, `data:` the stored body. Without a cursor it starts at the tail with a `ready` frame; `after` or `Last-Event-ID` resumes after an event. Used by `klen-webhooks listen`.",
        querystring: {
          type: "object",
          additionalProperties: false,
          properties: {
            event_types: { type: "string", maxLength: 500 },
            after: { type: "string", pattern: EVENT_ID.source },
          },
        },
      },
    },
    async (req, reply) => {
      const q = req.query as { event_types?: string; after?: string };
      const types = parseTypes(q.event_types);
      const header = req.headers["last-event-id"];
      const lastId = (Array.isArray(header) ? header[0] : header)?.trim();
      if (lastId && !EVENT_ID.test(lastId))
        throw badRequest("Last-Event-ID", '"Last-Event-ID" must be an event id (evt_…)');
      const accountId = req.account.id;
      const db = ctx.store.db;
      const cursorId = q.after ?? lastId;
      if ((perAccount.get(accountId) ?? 0) >= MAX_STREAMS_PER_ACCOUNT)
        throw new ApiError(
          429,
          "too_many_streams",
          `${MAX_STREAMS_PER_ACCOUNT} event streams of this account are open on this server; close one first`,
          { retry_after: 5 },
        );
      // The slot is taken before the first await (so that concurrent opens cannot all pass the
      // check) and given back exactly once: when the stream closes, or when it fails to open.
      perAccount.set(accountId, (perAccount.get(accountId) ?? 0) + 1);
      let slotHeld = true;
      const releaseSlot = () => {
        if (!slotHeld) return;
        slotHeld = false;
        const n = (perAccount.get(accountId) ?? 1) - 1;
        if (n > 0) perAccount.set(accountId, n);
        else perAccount.delete(accountId);
      };

      let cursor: number;
      let ready: string | undefined;
      let gaps = new Map<number, number>(); // seq → when the hole was noticed (ms), lowest first
      const noteGap = (seq: number, at: number) => {
        if (!gaps.has(seq)) gaps.set(seq, at);
      };
      const holey = ctx.store.caps.name === "postgres";
      try {
        if (cursorId) {
          cursor = await seqOf(db, accountId, cursorId);
          if (holey && cursor > 1) {
            const present = new Set(
              (
                await db
                  .selectFrom("events")
                  .select("seq")
                  .where("seq", ">", Math.max(0, cursor - RESUME_LOOKBACK))
                  .where("seq", "<", cursor)
                  .execute()
              ).map((r) => Number(r.seq)),
            );
            const now = Date.now();
            for (let g = Math.max(1, cursor - RESUME_LOOKBACK + 1); g < cursor; g++)
              if (!present.has(g)) noteGap(g, now);
          }
        } else {
          const newest = await db
            .selectFrom("events")
            .select(["seq", "id"])
            .where("account_id", "=", accountId)
            .orderBy("seq", "desc")
            .limit(1)
            .executeTakeFirst();
          cursor = newest ? Number(newest.seq) : 0;
          const id = newest?.id ?? ORIGIN_EVENT_ID;
          ready = `id: ${id}\nevent: ready\ndata: ${JSON.stringify({ cursor: id })}\n\n`;
        }
      } catch (err) {
        releaseSlot();
        throw err;
      }

      listenForWork();
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache, no-transform",
        connection: "keep-alive",
        "x-accel-buffering": "no",
        "x-request-id": req.id,
      });
      res.write(`retry: 1000\n${ready ?? ": resumed\n\n"}`);
      open.add(res);
      // A taken-over reply has no onResponse: counted here, as answered with a 200.
      httpRequests.inc({ method: "GET", status: "2xx" });
      streamsOpen.inc();

      let closed = false;
      let wake: (() => void) | undefined;
      const ringHandler = () => wake?.();
      const heartbeat = setInterval(() => res.write(": ping\n\n"), HEARTBEAT_MS);
      const close = () => {
        if (closed) return;
        closed = true;
        clearInterval(heartbeat);
        bell.off("ring", ringHandler);
        open.delete(res);
        streamsOpen.dec();
        releaseSlot();
        wake?.();
      };
      res.on("close", close);
      // A client that left while the cursor was looked up: its "close" has been and gone.
      if (res.destroyed || req.raw.socket.destroyed) close();
      bell.on("ring", ringHandler);

      const send = async (r: Row) => {
        if (res.write(sseFrame(r)) || (await drained(res, DRAIN_TIMEOUT_MS))) return;
        if (!closed) {
          req.log.warn({ account_id: accountId }, "event stream client stopped reading; closing it");
          res.destroy();
        }
      };
      /** Sends the events of `seqs` (this account's, ascending), reading their bodies a few at a time. */
      const sendAll = async (seqs: number[]) => {
        for (let i = 0; i < seqs.length && !closed; i += PAYLOAD_BATCH) {
          const rows = await db
            .selectFrom("events")
            .select(["seq", "id", "event_type", "payload"])
            .where("account_id", "=", accountId)
            .where("seq", "in", seqs.slice(i, i + PAYLOAD_BATCH))
            .orderBy("seq", "asc")
            .execute();
          for (const r of rows) {
            if (closed) break;
            if (!types || types.has(r.event_type)) await send(r);
          }
        }
      };

      let keyCheckedAt = Date.now();
      let forgotten = h.keysForgotten();
      try {
        while (!closed) {
          // A revoked key stops the stream before it reads anything more: at once when the key was
          // revoked through this process, else within KEY_CHECK_MS and the key cache's lifetime.
          if (Date.now() - keyCheckedAt >= KEY_CHECK_MS || h.keysForgotten() !== forgotten) {
            keyCheckedAt = Date.now();
            forgotten = h.keysForgotten();
            if (!(await h.keyStillValid(req))) {
              res.end(REVOKED_FRAME);
              break;
            }
          }
          let rung = false;
          wake = () => {
            rung = true;
          };
          let mine: number[];
          let scanned: number;
          if (holey) {
            // Holes must be seen in the global sequence (seq is shared by all accounts), so scan the
            // narrow (seq, account_id) columns of every account, then read this account's rows.
            const heads = await db
              .selectFrom("events")
              .select(["seq", "account_id", "created_at"])
              .where("seq", ">", cursor)
              .orderBy("seq", "asc")
              .limit(BATCH)
              .execute();
            scanned = heads.length;
            const now = Date.now();
            mine = [];
            // Only the last MAX_GAPS seqs of this turn can hold a hole worth tracking, and only
            // below an event made within GAP_TTL_MS: a seq below an older one was handed out
            // longer ago than any transition transaction runs (purged history, a rollback).
            const floor = heads.length > 0 ? Number(heads[heads.length - 1]!.seq) - MAX_GAPS : cursor;
            for (const h of heads) {
              const s = Number(h.seq);
              if (Number(h.created_at) >= now - GAP_TTL_MS)
                for (let g = Math.max(cursor + 1, floor + 1); g < s; g++) noteGap(g, now);
              cursor = s;
              if (Number(h.account_id) === accountId) mine.push(s);
            }
            if (gaps.size > MAX_GAPS) gaps = new Map([...gaps].slice(-MAX_GAPS));
            if (gaps.size > 0) {
              const holes = [...gaps.keys()];
              for (let i = 0; i < holes.length; i += GAP_CHECKS) {
                const filled = await db
                  .selectFrom("events")
                  .select(["seq", "account_id"])
                  .where("seq", "in", holes.slice(i, i + GAP_CHECKS))
                  .execute();
                for (const f of filled) {
                  gaps.delete(Number(f.seq));
                  if (Number(f.account_id) === accountId) mine.push(Number(f.seq));
                }
              }
              for (const [g, at] of gaps) if (now - at > GAP_TTL_MS) gaps.delete(g);
            }
            mine.sort((a, b) => a - b);
          } else {
            // SQLite has one writer: rows become visible in seq order, there are no holes to wait for.
            const heads = await db
              .selectFrom("events")
              .select(["seq", "event_type"])
              .where("account_id", "=", accountId)
              .where("seq", ">", cursor)
              .orderBy("seq", "asc")
              .limit(BATCH)
              .execute();
            scanned = heads.length;
            const last = heads[heads.length - 1];
            if (last) cursor = Number(last.seq);
            mine = heads.filter((r) => !types || types.has(r.event_type)).map((r) => Number(r.seq));
          }
          await sendAll(mine);
          if (scanned === BATCH || rung || closed) continue;
          await new Promise<void>((resolve) => {
            const t = setTimeout(resolve, POLL_MS);
            wake = () => {
              clearTimeout(t);
              resolve();
            };
          });
        }
      } catch (err) {
        req.log.warn({ err }, "event stream stopped");
        res.destroy();
      } finally {
        close();
      }
    },
  );
};
