// A Splice client in Node (nats.js), written from the published documents only: subjects come
// from the AsyncAPI document (`splice asyncapi`), bodies are checked against the JSON Schema
// (`splice schema`) before they are sent, and every reply against the reply schema its
// operation names. Nothing here imports Splice.
//
//   SPLICE_CREDS=credentials.json node client.mjs NATS_URL schema.json asyncapi.json [tenant]
//
// It connects with the user and password of a Splice credentials file (the operator's, for
// `splice up`: <state dir>/credentials/admin-admin.json; it sends an admin command).
//
// It creates a service type (admin scope), a network and a load balancer with a pool of two
// members and a listener, reads the status tree (waiting for its own write with min_seq),
// updates a member, repeats that command (same command id: the same reply, nothing new), sends
// two malformed commands (refused: invalid, naming the field), and exits non-zero on any reply
// it did not expect.
import { readFileSync } from "node:fs";
import { randomUUID } from "node:crypto";
import { isDeepStrictEqual } from "node:util";
import { connect, JSONCodec } from "nats";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import { componentSchemas } from "./asyncapi_schemas.mjs";

const [url, schemaPath, asyncapiPath, tenantArg] = process.argv.slice(2);
if (!url || !schemaPath || !asyncapiPath) {
  console.error("usage: node client.mjs NATS_URL schema.json asyncapi.json [tenant]");
  process.exit(2);
}
const tenant = tenantArg ?? "nodeclient";
const schema = JSON.parse(readFileSync(schemaPath, "utf8"));
const api = JSON.parse(readFileSync(asyncapiPath, "utf8"));

const ajv = new Ajv2020({ allErrors: true });
addFormats(ajv);
ajv.addSchema(schema);
const components = componentSchemas(api);

class Unexpected extends Error {}

function check(condition, what, value) {
  if (!condition) throw new Unexpected(`${what}: ${JSON.stringify(value)}`);
  console.log(`ok   ${what}`);
}

function bodyValidator(command) {
  const v = ajv.getSchema(`${schema.$id}#/$defs/commands/$defs/${command}`);
  if (!v) throw new Unexpected(`the JSON Schema has no command ${command}`);
  return v;
}

// The subject of an operation: its channel's address, parameters filled in.
function subjectOf(operationId, params) {
  const op = api.operations[operationId];
  if (!op) throw new Unexpected(`the AsyncAPI document has no operation ${operationId}`);
  const channel = api.channels[op.channel.$ref.split("/").pop()];
  return channel.address.replace(/\{(\w+)\}/g, (_, name) => {
    const p = api.components.parameters[name === "tenant" ? tenantParameter(channel) : name];
    const value = params[name];
    if (value === undefined) throw new Unexpected(`${operationId} needs ${name}`);
    if (p?.["x-pattern"] && !new RegExp(p["x-pattern"], "u").test(value)) {
      throw new Unexpected(`${name} ${value} does not match ${p["x-pattern"]}`);
    }
    return value;
  });
}

function tenantParameter(channel) {
  return channel.parameters.tenant.$ref.split("/").pop();
}

// The reply schemas an operation names: message -> its payload's component.
function replyValidators(operationId) {
  const op = api.operations[operationId];
  return op.reply.messages.map((ref) => {
    const [, , channel, , message] = ref.$ref.split("/");
    const msgRef = api.channels[channel].messages[message].$ref.split("/").pop();
    const payload = api.components.messages[msgRef].payload.$ref.split("/").pop();
    return { message: msgRef, validate: components.validator(payload) };
  });
}

const jc = JSONCodec();

async function request(nc, operationId, params, body) {
  const subject = subjectOf(operationId, params);
  const msg = await nc.request(subject, jc.encode(body), { timeout: 10000 });
  const reply = jc.decode(msg.data);
  const matching = replyValidators(operationId).filter((r) => r.validate(reply));
  if (matching.length !== 1) {
    throw new Unexpected(`${subject}: the reply matches ${matching.length} reply schemas: ${JSON.stringify(reply)}`);
  }
  return { reply, message: matching[0].message };
}

// A command: the body must be valid by the JSON Schema, the reply Ok.
async function command(nc, name, params, body) {
  const validate = bodyValidator(name);
  if (!validate(body)) throw new Unexpected(`${name} body refused by the schema: ${ajv.errorsText(validate.errors)}`);
  const [agg, verb] = name.split(".");
  const { reply } = await request(nc, `send_${agg}_${verb}`, params, body);
  check(reply.ok === true, `${name} ok`, reply);
  return reply;
}

async function query(nc, view, body) {
  const { reply, message } = await request(nc, `query_${view}`, { tenant }, body);
  check(reply.ok === true && message === `page.${view}`, `query ${view} answers a page`, reply);
  return reply;
}

async function main() {
  const creds = process.env.SPLICE_CREDS ? JSON.parse(readFileSync(process.env.SPLICE_CREDS, "utf8")) : {};
  const nc = await connect({
    servers: url, name: "splice-node-example", user: creds.user, pass: creds.password,
  });
  try {
    const run = randomUUID().slice(0, 8);
    const actor = "node-example";

    // 1. a service type, admin scope (its channel's address is splice.cmd._admin.…)
    const st = await command(nc, "servicetype.create", {}, {
      command_id: `st-${run}`, actor, name: `node-${run}`, providers: { loadbalancer: "haproxy" },
    });

    // 2. a network and a load balancer tree: a pool with two members, a listener
    const net = await command(nc, "network.create", { tenant }, {
      actor, name: "web", cidr: "10.66.0.0/24",
    });
    const lb = await command(nc, "loadbalancer.create", { tenant }, {
      actor,
      name: `lb-${run}`,
      vip_network_id: net.id,
      vip_address: "10.66.0.100",
      service_type_id: st.id,
      pools: [{
        name: "web", protocol: "HTTP", lb_algorithm: "ROUND_ROBIN",
        members: [
          { name: "m1", address: "10.66.0.11", protocol_port: 8080 },
          { name: "m2", address: "10.66.0.12", protocol_port: 8080 },
        ],
      }],
      listeners: [{ name: "http", protocol: "HTTP", protocol_port: 80, default_pool: "web" }],
    });
    check(lb.version >= 1 && Number.isInteger(lb.seq), "loadbalancer.create says version and seq", lb);

    // 3. the status tree, once the read model has applied our write (min_seq)
    const page = await query(nc, "loadbalancers", { id: lb.id, min_seq: lb.seq });
    check(page.items.length === 1 && page.items[0].id === lb.id, "the load balancer is listed", page);
    const tree = page.items[0].status_tree.loadbalancer;
    check(tree.listeners.length === 1 && tree.listeners[0].name === "http", "the tree has the listener", tree);
    const pool = tree.listeners[0].pools[0];
    check(pool?.name === "web" && pool.members.length === 2, "the listener's pool has both members", tree);
    const m1 = pool.members.find((m) => m.name === "m1");
    check(m1?.address === "10.66.0.11" && m1.protocol_port === 8080, "member m1 as created", pool);

    // 4. update a member; the same command again: the same reply, nothing new
    const update = {
      command_id: `weight-${run}`, actor, loadbalancer_id: lb.id, pool_id: pool.id, id: m1.id, weight: 200,
    };
    const updated = await command(nc, "member.update", { tenant }, update);
    // a change of a child names the aggregate it changed: the load balancer, at its new version
    check(updated.id === lb.id && updated.version > lb.version, "member.update: the load balancer's newer version", updated);
    const again = await command(nc, "member.update", { tenant }, update);
    check(isDeepStrictEqual(again, updated), "the repeated command gets the same reply", { again, updated });
    const members = await query(nc, "members", { id: m1.id, min_seq: updated.seq });
    check(members.items.length === 1 && members.items[0].weight === 200, "the member's weight is 200", members);
    const audit = await query(nc, "audit", { command_id: update.command_id, min_seq: updated.seq });
    check(audit.items.length === 1 && audit.items[0].seq === updated.seq, "the command made one event, not two", audit);

    // 5. malformed commands: refused by the schema, and by the server naming the field
    const malformed = [
      [{ ...update, command_id: `bad-${run}`, weight: 999 }, "$.weight"],
      [{ ...update, command_id: `typo-${run}`, weight: undefined, wieght: 100 }, "$.wieght"],
    ];
    for (const [body, field] of malformed) {
      const clean = JSON.parse(JSON.stringify(body));
      check(!bodyValidator("member.update")(clean), `the schema refuses ${field}`, clean);
      const { reply, message } = await request(nc, "send_member_update", { tenant }, clean);
      check(message === "Failed" && reply.ok === false && reply.error.code === "invalid" && reply.error.field === field,
        `the server refuses ${field}: invalid, naming it`, reply);
    }
    const after = await query(nc, "members", { id: m1.id, min_seq: updated.seq });
    check(after.items[0].weight === 200, "the refused commands changed nothing", after);

    // 6. a query with a bad filter is refused naming it, too
    const { reply: badQuery } = await request(nc, "query_loadbalancers", { tenant }, { limit: 0 });
    check(badQuery.ok === false && badQuery.error.code === "invalid" && badQuery.error.field === "$.limit",
      "a query with limit 0 is refused naming $.limit", badQuery);
    console.log(JSON.stringify({ ok: true, tenant, servicetype: st.id, network: net.id, loadbalancer: lb.id }));
  } finally {
    await nc.close();
  }
}

main().catch((e) => {
  console.error(e instanceof Unexpected ? `FAIL ${e.message}` : e);
  process.exit(1);
});
