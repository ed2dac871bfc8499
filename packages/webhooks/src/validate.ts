/**
 * A small JSON Schema validator for exactly the subset the event schemas use: `type` (also as
 * a list), `const`, `enum`, `pattern`, `minimum`, `minLength`, `required`, `properties`,
 * `additionalProperties: false`, `oneOf` and `not`.
 *
 * Why not Ajv: the SDK has no runtime dependencies and must run on edge runtimes where Ajv's
 * code generation (`new Function`) is forbidden. Why it throws on any other keyword: a schema
 * change that adds e.g. `maxLength` must not be silently ignored on the receiving side — the
 * test suite fails instead and this file grows by one case.
 */
import type { JsonSchema } from "./schemas.js";

/** One way a value departs from a schema; `path` is a JSON-path-like pointer (`$.call.id`). */
export interface SchemaIssue {
  readonly path: string;
  readonly message: string;
  /**
   * The JSON Schema keyword the value failed: `type`, `enum`, `required`, `pattern`… Always set
   * by this SDK; optional so that issues made elsewhere still type-check.
   */
  readonly keyword?: string;
}

// Keywords that only annotate; they never reject a value.
const ANNOTATIONS = new Set(["$id", "$schema", "title", "description", "examples", "default"]);
const KEYWORDS = new Set([
  "type",
  "const",
  "enum",
  "pattern",
  "minimum",
  "minLength",
  "required",
  "properties",
  "additionalProperties",
  "oneOf",
  "not",
]);

const patterns = new Map<string, RegExp>();
function regex(source: string): RegExp {
  let re = patterns.get(source);
  if (!re) {
    // JSON Schema patterns are ECMA-262 regexes, unanchored unless they anchor themselves.
    re = new RegExp(source, "u");
    patterns.set(source, re);
  }
  return re;
}

function typeOf(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  return typeof value;
}

function hasType(value: unknown, type: string): boolean {
  switch (type) {
    case "null":
      return value === null;
    case "boolean":
    case "string":
      return typeof value === type;
    case "number":
      return typeof value === "number" && Number.isFinite(value);
    case "integer":
      return typeof value === "number" && Number.isInteger(value);
    case "object":
      return typeOf(value) === "object";
    case "array":
      return Array.isArray(value);
    default:
      throw new Error(`Unsupported JSON Schema type "${type}"`);
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeOf(value) === "object";
}

/** Deep equality of JSON values, for `const` and `enum`. */
function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a) && Array.isArray(b))
    return a.length === b.length && a.every((v, i) => jsonEqual(v, b[i]));
  if (isObject(a) && isObject(b)) {
    const ka = Object.keys(a);
    return (
      ka.length === Object.keys(b).length && ka.every((k) => Object.hasOwn(b, k) && jsonEqual(a[k], b[k]))
    );
  }
  return false;
}

function childPath(path: string, key: string): string {
  return /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`;
}

/** How `validate` reads a schema. */
export interface ValidateOptions {
  /**
   * `"ignore"`: a property the schema does not list passes even where it says
   * `additionalProperties: false` (a tolerant reader: a newer producer may add fields). Default
   * `"reject"`, the schema as written.
   */
  unknownProperties?: "reject" | "ignore";
}

function check(
  schema: JsonSchema,
  value: unknown,
  path: string,
  issues: SchemaIssue[],
  opts: ValidateOptions,
): void {
  for (const key of Object.keys(schema)) {
    if (!KEYWORDS.has(key) && !ANNOTATIONS.has(key))
      throw new Error(`Unsupported JSON Schema keyword "${key}" at ${path}`);
  }
  if (schema.additionalProperties !== undefined && typeof schema.additionalProperties !== "boolean") {
    throw new Error(`Unsupported JSON Schema: additionalProperties as a schema at ${path}`);
  }
  const push = (keyword: string, message: string) => issues.push({ path, message, keyword });

  if (schema.type !== undefined) {
    const types = (Array.isArray(schema.type) ? schema.type : [schema.type]) as string[];
    if (!types.some((t) => hasType(value, t))) {
      push("type", `must be ${types.join(" or ")}, got ${typeOf(value)}`);
      return; // the other keywords would only repeat the same complaint
    }
  }
  if (schema.const !== undefined && !jsonEqual(value, schema.const))
    push("const", `must equal ${JSON.stringify(schema.const)}`);
  if (Array.isArray(schema.enum) && !schema.enum.some((e) => jsonEqual(value, e))) {
    push("enum", `must be one of ${schema.enum.map((e) => JSON.stringify(e)).join(", ")}`);
  }
  if (typeof value === "string") {
    if (typeof schema.pattern === "string" && !regex(schema.pattern).test(value))
      push("pattern", `must match ${schema.pattern}`);
    // Length in code points, as JSON Schema defines it, not UTF-16 units.
    if (typeof schema.minLength === "number" && [...value].length < schema.minLength) {
      push("minLength", `must be at least ${schema.minLength} characters`);
    }
  }
  if (typeof value === "number" && typeof schema.minimum === "number" && value < schema.minimum) {
    push("minimum", `must be >= ${schema.minimum}`);
  }
  if (isObject(value)) {
    const properties = (schema.properties ?? {}) as Record<string, JsonSchema>;
    for (const name of (schema.required ?? []) as string[]) {
      if (!Object.hasOwn(value, name))
        issues.push({ path: childPath(path, name), message: "is required", keyword: "required" });
    }
    for (const [name, child] of Object.entries(value)) {
      const sub = Object.hasOwn(properties, name) ? properties[name] : undefined;
      if (sub) check(sub, child, childPath(path, name), issues, opts);
      else if (schema.additionalProperties === false && opts.unknownProperties !== "ignore")
        issues.push({
          path: childPath(path, name),
          message: "is not allowed",
          keyword: "additionalProperties",
        });
    }
  }
  if (Array.isArray(schema.oneOf)) {
    const passing = (schema.oneOf as JsonSchema[]).filter(
      (branch) => validate(branch, value, path, opts).length === 0,
    ).length;
    if (passing !== 1)
      push("oneOf", `must match exactly one of ${schema.oneOf.length} alternatives, matched ${passing}`);
  }
  if (schema.not !== undefined && validate(schema.not as JsonSchema, value, path, opts).length === 0)
    push("not", `must not match ${JSON.stringify(schema.not)}`);
}

/**
 * Validates `value` against `schema`; returns the issues found, empty when valid.
 *
 * @example
 * ```ts
 * import { eventSchemas } from "@klen/webhooks/schemas";
 * validate(eventSchemas["call.ended"], JSON.parse(body)); // [] or [{ path: "$.call.id", message: "is required", keyword: "required" }]
 * ```
 */
export function validate(
  schema: JsonSchema,
  value: unknown,
  path = "$",
  opts: ValidateOptions = {},
): SchemaIssue[] {
  const issues: SchemaIssue[] = [];
  check(schema, value, path, issues, opts);
  return issues;
}
