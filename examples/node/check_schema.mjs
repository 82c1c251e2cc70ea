// Compiles Splice's JSON Schema (`splice schema`) with ajv's strict defaults, draft 2020-12,
// and every command, reply and event definition in it by name. Exit 1 on any error.
//   node check_schema.mjs schema.json
import { readFileSync } from "node:fs";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";

const path = process.argv[2];
if (!path) {
  console.error("usage: node check_schema.mjs schema.json");
  process.exit(2);
}
const schema = JSON.parse(readFileSync(path, "utf8"));
const ajv = new Ajv2020(); // strict: true by default (unknown keywords, invalid patterns throw)
addFormats(ajv);
try {
  ajv.compile(schema);
} catch (e) {
  console.error(`schema does not compile: ${e.message}`);
  process.exit(1);
}
const counts = {};
let failed = 0;
for (const group of ["commands", "replies", "events"]) {
  const names = Object.keys(schema.$defs?.[group]?.$defs ?? {});
  counts[group] = names.length;
  if (names.length === 0) {
    console.error(`no ${group} in $defs/${group}/$defs`);
    failed++;
  }
  for (const name of names) {
    try {
      if (!ajv.getSchema(`${schema.$id}#/$defs/${group}/$defs/${name}`)) throw new Error("not found");
    } catch (e) {
      console.error(`${group}/${name}: ${e.message}`);
      failed++;
    }
  }
}
console.log(JSON.stringify({ compiled: failed === 0, ...counts, failed }));
process.exit(failed ? 1 : 0);
