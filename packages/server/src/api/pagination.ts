import type { SelectQueryBuilder } from "kysely";
import { badRequest } from "../errors.js";

/** Query-string schema shared by every list route. */
export const pageQuery = {
  limit: { type: "integer", minimum: 1, maximum: 100, default: 20 },
  cursor: { type: "string", maxLength: 200 },
} as const;

/** Cursors are opaque to clients: the last id of the previous page, base64url-encoded. */
export function encodeCursor(id: string | number): string {
  return Buffer.from(String(id)).toString("base64url");
}

export function decodeCursor<T extends "int" | "string">(
  cursor: string | undefined,
  kind: T,
): (T extends "int" ? number : string) | undefined {
  if (cursor === undefined || cursor === "") return undefined;
  const text = Buffer.from(cursor, "base64url").toString();
  if (kind === "int") {
    const n = /^\d{1,16}$/.test(text) ? Number(text) : Number.NaN;
    if (!Number.isSafeInteger(n)) throw badRequest("cursor", "cursor is not valid");
    return n as never;
  }
  if (!/^[a-z]+_[0-9a-z]+$/.test(text)) throw badRequest("cursor", "cursor is not valid");
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
 * `{data, next_cursor}`. `sel` is the list's query with its own filters already applied.
 */
export async function listPage<R extends { id: number | string }, O>(
  sel: SelectQueryBuilder<any, any, R>,
  q: { limit: number; cursor?: string | undefined },
  kind: "int" | "string",
  map: (r: R) => O,
) {
  const before = decodeCursor(q.cursor, kind);
  const filtered = before === undefined ? sel : sel.where("id" as never, "<", before as never);
  const rows = (await filtered
    .orderBy("id" as never, "desc")
    .limit(q.limit + 1)
    .execute()) as R[];
  return page(rows, q.limit, (r) => (kind === "int" ? Number(r.id) : r.id), map);
}
