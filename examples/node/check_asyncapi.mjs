// Validates Splice's AsyncAPI document (`splice asyncapi`) with @asyncapi/parser and prints
// every diagnostic. Exit 1 if there is any of severity error or warning.
//   node check_asyncapi.mjs asyncapi.json
import { readFileSync } from "node:fs";
import { Parser, DiagnosticSeverity } from "@asyncapi/parser";
import { componentSchemas } from "./asyncapi_schemas.mjs";

const path = process.argv[2];
if (!path) {
  console.error("usage: node check_asyncapi.mjs asyncapi.json");
  process.exit(2);
}
const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(path, "utf8"), { source: path });
const severities = Object.fromEntries(Object.entries(DiagnosticSeverity).map(([k, v]) => [v, k]));
const count = { Error: 0, Warning: 0, Information: 0, Hint: 0 };
for (const d of diagnostics) {
  const severity = severities[d.severity] ?? String(d.severity);
  count[severity] = (count[severity] ?? 0) + 1;
  console.error(`${severity} ${d.code} ${d.path.join(".")}: ${d.message}`);
}
// Beyond the parser: every component schema compiles under ajv's strict mode (patterns as
// ECMA-262 `u` regexes), and every parameter's x-pattern is one.
const raw = JSON.parse(readFileSync(path, "utf8"));
let schemaErrors = 0;
const { names, validator } = componentSchemas(raw);
for (const name of names) {
  try {
    validator(name);
  } catch (e) {
    console.error(`Error schema ${name}: ${e.message}`);
    schemaErrors++;
  }
}
for (const [name, p] of Object.entries(raw.components.parameters ?? {})) {
  try {
    if (p["x-pattern"] !== undefined) new RegExp(p["x-pattern"], "u");
  } catch (e) {
    console.error(`Error parameter ${name}: ${e.message}`);
    schemaErrors++;
  }
}
count.Error += schemaErrors;
const summary = {
  parsed: document !== undefined,
  errors: count.Error,
  warnings: count.Warning,
  infos: count.Information,
  hints: count.Hint,
  schemas: names.length,
  channels: document ? document.channels().length : 0,
  operations: document ? document.operations().length : 0,
};
console.log(JSON.stringify(summary));
process.exit(summary.parsed && count.Error === 0 && count.Warning === 0 ? 0 : 1);
