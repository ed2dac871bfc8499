import { createCipheriv, createDecipheriv, createHmac, hkdfSync } from "node:crypto";
import {
  BinaryOperationNode,
  ColumnNode,
  type ColumnUpdateNode,
  type InsertQueryNode,
  type KyselyPlugin,
  OperationNodeTransformer,
  OperatorNode,
  type PluginTransformQueryArgs,
  type PluginTransformResultArgs,
  PrimitiveValueListNode,
  type QueryId,
  type QueryResult,
  type RootOperationNode,
  type UnknownRow,
  type UpdateQueryNode,
  ValueListNode,
  ValueNode,
  ValuesNode,
} from "kysely";

/** The columns encrypted at rest when KLEN_ENCRYPTION_KEY is set (PRODUCT.md §11). */
export const ENCRYPTED_COLUMNS: Record<string, readonly string[]> = {
  // Custom headers are where receivers' own credentials go (docs/api.md).
  endpoints: ["secret", "previous_secret", "previous_secrets", "headers"],
  // The event body holds transcripts, summaries and phone numbers.
  events: ["payload"],
  calls: ["phone_number", "brief_summary"],
  contacts: ["phone_number"],
  // A transcript waiting for its generated summary.
  summary_jobs: ["transcript"],
  // A stored answer replayed for an Idempotency-Key: a call's phone number, a new endpoint secret.
  idempotency_keys: ["response_body"],
};

const PREFIX = "enc1:";

/** True for text as `FieldCipher.seal` writes it (whatever the key; the key opens it or not). */
export const isSealed = (text: string): boolean => text.startsWith(PREFIX);
const SEALED_NAMES = new Set(Object.values(ENCRYPTED_COLUMNS).flat());

/**
 * AES-256-GCM for columns at rest, with the nonce derived from the plaintext (SIV-style: an HMAC of
 * the plaintext under a second key). Equal plaintexts give equal ciphertexts, which is what lets
 * `WHERE phone_number = ?` keep working; the only thing it reveals is equality. Values written
 * before encryption was turned on stay readable (no prefix, returned as they are).
 */
export class FieldCipher {
  private readonly encKey: Buffer;
  private readonly nonceKey: Buffer;
  private readonly macKey: Buffer;
  constructor(secret: string) {
    const ikm = Buffer.from(secret, "utf8");
    this.encKey = Buffer.from(hkdfSync("sha256", ikm, "klen", "field-encryption", 32));
    this.nonceKey = Buffer.from(hkdfSync("sha256", ikm, "klen", "field-nonce", 32));
    this.macKey = Buffer.from(hkdfSync("sha256", ikm, "klen", "field-mac", 32));
  }

  /**
   * A keyed fingerprint (HMAC-SHA256, hex) for values stored only to be compared, such as an
   * idempotent request's hash: a plain hash of a body holding a phone number can be matched by
   * guessing numbers offline.
   */
  mac(text: string): string {
    return createHmac("sha256", this.macKey).update(text).digest("hex");
  }

  /**
   * Always encrypts, even text that already starts with `enc1:`: a caller's text must never pass
   * into a sealed column as it is, or reading it back would decrypt someone else's ciphertext.
   */
  seal(plaintext: string): string {
    const iv = createHmac("sha256", this.nonceKey).update(plaintext).digest().subarray(0, 12);
    const c = createCipheriv("aes-256-gcm", this.encKey, iv);
    const body = Buffer.concat([c.update(plaintext, "utf8"), c.final()]);
    return PREFIX + Buffer.concat([iv, body, c.getAuthTag()]).toString("base64");
  }

  open(stored: string): string {
    if (!isSealed(stored)) return stored;
    const raw = Buffer.from(stored.slice(PREFIX.length), "base64");
    const d = createDecipheriv("aes-256-gcm", this.encKey, raw.subarray(0, 12));
    d.setAuthTag(raw.subarray(raw.length - 16));
    return Buffer.concat([d.update(raw.subarray(12, raw.length - 16)), d.final()]).toString("utf8");
  }
}

const tableName = (node: { into?: unknown; table?: unknown }): string | undefined => {
  const t = (node.into ?? node.table) as
    | { kind?: string; table?: { identifier?: { name?: string } } }
    | undefined;
  return t?.kind === "TableNode" ? t.table?.identifier?.name : undefined;
};
const columnName = (node: unknown): string | undefined =>
  ColumnNode.is(node as never) ? (node as ColumnNode).column.name : undefined;

class SealValues extends OperationNodeTransformer {
  constructor(private cipher: FieldCipher) {
    super();
  }
  private seal(v: unknown): unknown {
    return typeof v === "string" ? this.cipher.seal(v) : v;
  }

  protected override transformInsertQuery(node: InsertQueryNode): InsertQueryNode {
    const cols = ENCRYPTED_COLUMNS[tableName(node) ?? ""];
    if (!cols || !node.columns || !node.values || !ValuesNode.is(node.values))
      return super.transformInsertQuery(node);
    const idx = node.columns.map((c, i) => (cols.includes(c.column.name) ? i : -1)).filter((i) => i >= 0);
    if (idx.length === 0) return super.transformInsertQuery(node);
    const rows = node.values.values.map((row) => {
      if (PrimitiveValueListNode.is(row)) {
        return PrimitiveValueListNode.create(row.values.map((v, i) => (idx.includes(i) ? this.seal(v) : v)));
      }
      if (ValueListNode.is(row)) {
        return ValueListNode.create(
          row.values.map((v, i) =>
            idx.includes(i) && ValueNode.is(v) ? ValueNode.create(this.seal(v.value)) : v,
          ),
        );
      }
      return row;
    });
    return super.transformInsertQuery({ ...node, values: ValuesNode.create(rows) });
  }

  /**
   * `phone_number = ?` compares sealed values (equal plaintexts seal equally), and the value in
   * clear too: a row written before KLEN_ENCRYPTION_KEY was set stays in clear until the
   * background job seals it (reseal.ts), and must still be found meanwhile.
   */
  protected override transformBinaryOperation(node: BinaryOperationNode): BinaryOperationNode {
    const left = node.leftOperand as { kind?: string; column?: unknown };
    const op = node.operator as { kind?: string; operator?: string };
    const name = left.kind === "ReferenceNode" ? columnName(left.column) : columnName(left);
    if (name && SEALED_NAMES.has(name) && op.operator === "=" && ValueNode.is(node.rightOperand)) {
      const value = node.rightOperand.value;
      return BinaryOperationNode.create(
        node.leftOperand,
        OperatorNode.create("in"),
        PrimitiveValueListNode.create([this.seal(value), value]),
      );
    }
    return super.transformBinaryOperation(node);
  }

  protected override transformUpdateQuery(node: UpdateQueryNode): UpdateQueryNode {
    const cols = ENCRYPTED_COLUMNS[tableName(node) ?? ""];
    if (!cols || !node.updates) return super.transformUpdateQuery(node);
    const updates = node.updates.map((u): ColumnUpdateNode => {
      const name = columnName(u.column);
      if (name && cols.includes(name) && ValueNode.is(u.value)) {
        return { ...u, value: ValueNode.create(this.seal(u.value.value)) };
      }
      return u;
    });
    return super.transformUpdateQuery({ ...node, updates });
  }
}

/** The table a FROM, JOIN, INTO or UPDATE names, aliased or not. */
function tableOf(node: unknown): string | undefined {
  const n = node as { kind?: string; node?: unknown; table?: { identifier?: { name?: string } } } | undefined;
  if (n?.kind === "AliasNode") return tableOf(n.node);
  return n?.kind === "TableNode" ? n.table?.identifier?.name : undefined;
}

/**
 * The sealed columns a query can return: those of the tables its top level reads or writes (FROM,
 * JOIN, INSERT INTO, UPDATE, DELETE FROM). `undefined` for a raw `sql` statement, whose tables are
 * not known.
 */
function sealedColumnsOf(node: RootOperationNode): ReadonlySet<string> | undefined {
  const n = node as {
    kind: string;
    from?: { froms?: readonly unknown[] };
    joins?: ReadonlyArray<{ table?: unknown }>;
    into?: unknown;
    table?: unknown;
  };
  if (n.kind === "RawNode") return undefined;
  const tables = [
    ...(n.from?.froms ?? []).map(tableOf),
    ...(n.joins ?? []).map((j) => tableOf(j.table)),
    tableOf(n.into),
    tableOf(n.table),
  ];
  return new Set(tables.flatMap((t) => (t === undefined ? [] : (ENCRYPTED_COLUMNS[t] ?? []))));
}

/**
 * Kysely plugin: seals the encrypted columns on INSERT and UPDATE built with the query builder,
 * and opens the sealed values of those columns in results, so no query or route needs to know
 * about encryption. A result column is opened only when a table the query reads has a sealed
 * column of that name: `attempts.response_body` (a receiver's answer, the tenant's text) is never
 * opened as `idempotency_keys.response_body` would be, or a tenant whose receiver answered with a
 * sealed value copied out of the database would read it decrypted. A value a caller stored
 * elsewhere (an agent's name, say) that looks sealed is returned as written.
 * Raw `sql` statements are not rewritten (none of them writes an encrypted column), and their
 * results are opened by column name alone; none of them reads a column a tenant writes under a
 * sealed name.
 */
export class EncryptionPlugin implements KyselyPlugin {
  private readonly transformer: SealValues;
  /** What each query may return sealed, from its transformQuery to its transformResult. */
  private readonly sealedOf = new WeakMap<QueryId, ReadonlySet<string>>();
  constructor(readonly cipher: FieldCipher) {
    this.transformer = new SealValues(cipher);
  }

  transformQuery(args: PluginTransformQueryArgs): RootOperationNode {
    const sealed = sealedColumnsOf(args.node);
    if (sealed) this.sealedOf.set(args.queryId, sealed);
    return this.transformer.transformNode(args.node);
  }

  async transformResult(args: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
    const names = this.sealedOf.get(args.queryId) ?? SEALED_NAMES;
    if (names.size === 0) return args.result;
    for (const row of args.result.rows) {
      for (const key of Object.keys(row)) {
        const v = row[key];
        if (typeof v === "string" && isSealed(v) && names.has(key)) row[key] = this.cipher.open(v);
      }
    }
    return args.result;
  }
}
