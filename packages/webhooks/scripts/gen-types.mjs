// Generates src/events.ts (the TypeScript types of the six call events) from the JSON Schemas
// in src/schemas.ts, so the types cannot drift from what the server validates and sends.
//
//   npx tsc -b packages/webhooks && node packages/webhooks/scripts/gen-types.mjs
//
// It reads the *compiled* schemas (dist/src/schemas.js) because Node 20 cannot import .ts.
// The output is already in Biome's format; test/events-fresh.test.ts fails when the committed
// file differs from what this script would write.
import { writeFileSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";

const LINE_WIDTH = 110;

/** "call.transcript" → "CallTranscript" */
function pascal(text) {
  return text
    .split(/[^A-Za-z0-9]+/)
    .filter(Boolean)
    .map((w) => w[0].toUpperCase() + w.slice(1))
    .join("");
}

function comment(text, indent) {
  return text ? [`${indent}/** ${text.replace(/\*\//g, "*\\/")} */`] : [];
}

/** `export type Name = A | B;` on one line when it fits, else one member per line. */
function unionAlias(name, members, doc) {
  const one = `export type ${name} = ${members.join(" | ")};`;
  const lines = comment(doc, "");
  if (one.length <= LINE_WIDTH) return [...lines, one];
  return [
    ...lines,
    `export type ${name} =`,
    ...members.map((m, i) => `  | ${m}${i === members.length - 1 ? ";" : ""}`),
  ];
}

function propertyKey(name) {
  return /^[A-Za-z_$][A-Za-z0-9_$]*$/.test(name) ? name : JSON.stringify(name);
}

function createGenerator(s) {
  // Named types are found by identity: the event schemas embed these very objects.
  const namedSchemas = new Map([[s.contactSchema, "Contact"]]);
  const namedEnums = new Map([
    [s.CALL_STATUSES, "CallStatus"],
    [s.CALL_TYPES, "CallType"],
    [s.FAILURE_REASONS, "FailureReason"],
  ]);

  function tsType(schema, where) {
    const named = namedSchemas.get(schema);
    if (named) return named;
    if (schema.const !== undefined) return JSON.stringify(schema.const);
    if (schema.enum)
      return namedEnums.get(schema.enum) ?? schema.enum.map((e) => JSON.stringify(e)).join(" | ");
    const types = Array.isArray(schema.type) ? schema.type : [schema.type];
    return types
      .map((t) => {
        switch (t) {
          case "string":
            return "string";
          case "integer":
          case "number":
            return "number";
          case "boolean":
            return "boolean";
          case "null":
            return "null";
          default:
            throw new Error(`gen-types: no TypeScript mapping for ${JSON.stringify(schema)} at ${where}`);
        }
      })
      .join(" | ");
  }

  function members(schema, skip, where) {
    const required = new Set(schema.required ?? []);
    const out = [];
    for (const [name, prop] of Object.entries(schema.properties ?? {})) {
      if (skip.has(name)) continue;
      out.push(...comment(prop.description, "  "));
      out.push(
        `  ${propertyKey(name)}${required.has(name) ? "" : "?"}: ${tsType(prop, `${where}.${name}`)};`,
      );
    }
    return out;
  }

  function objectInterface(name, schema, doc, where) {
    return [...comment(doc, ""), `export interface ${name} {`, ...members(schema, new Set(), where), "}"];
  }

  /**
   * The `call` object; a `oneOf` of `required` lists becomes a union of variant interfaces, and so
   * does a `not` of one `required` list (at most one of those fields: one variant each, and one
   * with none of them).
   */
  function callTypes(name, schema, doc, where) {
    const atMostOne = !schema.oneOf && schema.not?.required ? schema.not.required : undefined;
    if (!schema.oneOf && !atMostOne) return objectInterface(name, schema, `${doc}.`, where);
    const branches = atMostOne
      ? [...atMostOne.map((k) => [k]), []]
      : schema.oneOf.map((b) => b.required ?? []);
    const exclusive = new Set(branches.flat());
    const base = `${name}Base`;
    const out = [
      ...comment(`Fields of ${doc.replace(/^The /, "the ")} common to all its variants.`, ""),
      `export interface ${base} {`,
      ...members(schema, exclusive, where),
      "}",
    ];
    const variants = [];
    for (const present of branches) {
      const variant =
        present.length > 0
          ? `${name}With${present.map(pascal).join("And")}`
          : `${name}Without${[...exclusive].map(pascal).join("Or")}`;
      variants.push(variant);
      out.push("");
      out.push(
        ...comment(
          present.length > 0
            ? `${doc} with ${present.map((p) => `\`${p}\``).join(", ")}.`
            : `${doc} with none of ${[...exclusive].map((p) => `\`${p}\``).join(", ")}.`,
          "",
        ),
      );
      out.push(`export interface ${variant} extends ${base} {`);
      for (const key of exclusive) {
        const prop = schema.properties[key];
        if (present.includes(key)) {
          out.push(...comment(prop.description, "  "));
          out.push(`  ${propertyKey(key)}: ${tsType(prop, `${where}.${key}`)};`);
        } else {
          out.push(`  ${propertyKey(key)}?: never;`);
        }
      }
      out.push("}");
    }
    out.push("");
    const keys = [...exclusive].map((k) => `\`${k}\``);
    out.push(
      ...unionAlias(
        name,
        variants,
        atMostOne
          ? `${doc}: at most one of ${keys.join(" or ")}.`
          : `${doc}: exactly one of ${keys.join(" or ")}.`,
      ),
    );
    return out;
  }

  return function generate() {
    const out = [
      "// GENERATED FILE - do not edit by hand.",
      "// Generated by packages/webhooks/scripts/gen-types.mjs from the JSON Schemas in src/schemas.ts:",
      "// change the schemas, rebuild, run the script and commit both. A test fails when this is stale.",
      "",
      ...unionAlias(
        "CallStatus",
        s.CALL_STATUSES.map((v) => JSON.stringify(v)),
        "The call's status when the event was generated.",
      ),
      "",
      ...unionAlias(
        "CallType",
        s.CALL_TYPES.map((v) => JSON.stringify(v)),
        "Whether Klen answered or placed the call.",
      ),
      "",
      ...unionAlias(
        "FailureReason",
        s.FAILURE_REASONS.map((v) => JSON.stringify(v)),
        "Why a call failed (`call.failed`).",
      ),
      "",
      ...objectInterface("Contact", s.contactSchema, s.contactSchema.description, "contact"),
    ];
    const eventNames = [];
    for (const type of s.EVENT_TYPES) {
      const schema = s.eventSchemas[type];
      const stem = pascal(type);
      const callName = `${stem}Call`;
      const eventName = `${stem}Event`;
      eventNames.push([type, eventName]);
      out.push("");
      out.push(
        ...callTypes(callName, schema.properties.call, `The \`call\` object of a \`${type}\` event`, type),
      );
      out.push("");
      out.push(...comment(`A \`${type}\` webhook body.`, ""));
      out.push(`export interface ${eventName} {`);
      for (const [name, prop] of Object.entries(schema.properties)) {
        out.push(...comment(prop.description, "  "));
        const t = name === "call" ? callName : tsType(prop, `${type}.${name}`);
        out.push(`  ${propertyKey(name)}${schema.required.includes(name) ? "" : "?"}: ${t};`);
      }
      out.push("}");
    }
    out.push("");
    out.push(
      ...unionAlias(
        "CallEvent",
        eventNames.map(([, n]) => n),
        "Any call event; narrow it with `switch (event.event_type)`.",
      ),
    );
    out.push("");
    out.push(...comment("The event type names.", ""));
    out.push('export type CallEventType = CallEvent["event_type"];');
    out.push("");
    out.push(...comment('Each event type\'s body, by name: `CallEventMap["call.ended"]`.', ""));
    out.push("export interface CallEventMap {");
    for (const [type, name] of eventNames) out.push(`  ${propertyKey(type)}: ${name};`);
    out.push("}");
    return `${out.join("\n")}\n`;
  };
}

/** The text of src/events.ts for the given compiled schemas module. */
export function generateEventTypes(schemasModule) {
  return createGenerator(schemasModule)();
}

const isMain = process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href;
if (isMain) {
  const schemas = await import(new URL("../dist/src/schemas.js", import.meta.url).href);
  const target = fileURLToPath(new URL("../src/events.ts", import.meta.url));
  writeFileSync(target, generateEventTypes(schemas));
  console.log(`wrote ${target}`);
}
