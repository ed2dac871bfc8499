import type { SelectQueryBuilder } from "kysely";
import { badRequest } from "../errors.js";
import { idFloor } from "../util/ids.js";
import { parseIso } from "../util/time.js";
import { isoTimestamp } from "./routes/common.js";

/** Query-string schema shared by every list route. */
export const pageQuery = {
  limit: { type: "integer", minimum: 1, maximum: 100, default: 20 },
  cursor: { type: "string", maxLength: 200 },
} as const;

/**
 * Query-string schema of lists whose ids sort by creation time (events, deliveries): `before`
 * keeps what was created before that instant, `after` what was created at it or later.
 */
export const timeQuery = {
  // Empty means no bound, as for the lists' other filters (`?before=` from an unset variable).
  before: { type: "string", pattern: `^$|${isoTimestamp.pattern}` },
  after: { type: "string", pattern: `^$|${isoTimestamp.pattern}` },
} as const;

export interface TimeRange {
  before?: string | undefined;
  after?: string | undefined;
}

/**
 * The ids a page of such a list may hold: below `below` (the cursor's id, or the lowest id made at
 * `before`, whichever is lower) and from `from` (the lowest id made at `after`). Ids begin with
 * their creation time in milliseconds (`newId`), so both are ranges on the primary key.
 */
export function idRange(
  prefix: string,
  q: TimeRange & { cursor?: string | undefined },
): { below?: string; from?: string } {
  const at = (name: "before" | "after") => {
    const text = q[name];
    if (text === undefined || text === "") return undefined;
    const ms = parseIso(text);
    if (ms === undefined) throw badRequest(name, `"${name}" is not an ISO-8601 timestamp from 1970 to 9999`);
    return idFloor(prefix, ms);
  };
  const cursor = decodeCursor(q.cursor, "string", prefix);
  const before = at("before");
  const from = at("after");
  const below = cursor === undefined ? before : before === undefined || cursor < before ? cursor : before;
  return { ...(below === undefined ? {} : { below }), ...(from === undefined ? {} : { from }) };
}

/** Cursors are opaque to clients: the last id of the previous page, base64url-encoded. */
export function encodeCursor(id: string | number): string {
  return Buffer.from(String(id)).toString("base64url");
}

/**
 * The id a cursor stands for. Only a cursor as `encodeCursor` writes it is taken: base64url in its
 * one canonical spelling (no padding, white space or spare bits, so a cursor cut short by a
 * character is refused rather than read as another position), of an id of this list's form (a
 * string list's own prefix and length: a cursor of another list used to restart or empty the page).
 */
export function decodeCursor<T extends "int" | "string">(
  cursor: string | undefined,
  kind: T,
  prefix?: string,
): (T extends "int" ? number : string) | undefined {
  if (cursor === undefined || cursor === "") return undefined;
  const text = Buffer.from(cursor, "base64url").toString();
  const invalid = () =>
    badRequest("cursor", "cursor is not valid: pass back the next_cursor of the same list, unchanged");
  if (encodeCursor(text) !== cursor) throw invalid();
  if (kind === "int") {
    const n = /^(0|[1-9]\d{0,15})$/.test(text) ? Number(text) : Number.NaN;
    if (!Number.isSafeInteger(n)) throw invalid();
    return n as never;
  }
  const form = prefix === undefined ? /^[a-z]+_[0-9a-z]{26}$/ : new RegExp(`^${prefix}_[0-9a-z]{26}$`);
  if (!form.test(text)) throw invalid();
  return text as never;
}

/** `{data, next_cursor}` from `limit + 1` fetched rows: the extra row says another page exists. */
export function page<R, O>(rows: R[], limit: number, idOf: (r: R) => string | number, map: (r: R) => O) {
  const more = rows.length > limit;
  const data = (more ? rows.slice(0, limit) : rows).map(map);
  const last = more ? rows[limit - 1] : undefined;
  return { data, next_cursor: last === undefined ? null : encodeCursor(idOf(last)) };
}

/**
 * One page of a list, newest first: the rows below the cursor's id, `limit + 1` of them, as
 * `{data, next_cursor}`. `sel` is the list's query with its own filters already applied; `range`
 * (`idRange`), when given, stands for the cursor.
 */
export async function listPage<R extends { id: number | string }, O>(
  sel: SelectQueryBuilder<any, any, R>,
  q: { limit: number; cursor?: string | undefined },
  kind: "int" | "string",
  map: (r: R) => O,
  range?: { below?: string; from?: string },
  prefix?: string,
) {
  const below = range ? range.below : decodeCursor(q.cursor, kind, prefix);
  let filtered = below === undefined ? sel : sel.where("id" as never, "<", below as never);
  if (range?.from !== undefined) filtered = filtered.where("id" as never, ">=", range.from as never);
  const rows = (await filtered
    .orderBy("id" as never, "desc")
    .limit(q.limit + 1)
    .execute()) as R[];
  return page(rows, q.limit, (r) => (kind === "int" ? Number(r.id) : r.id), map);
}
