// The schemas of an AsyncAPI document's components as an ajv instance (draft-07, strict):
// AsyncAPI 3.0's default schema format is a superset of JSON Schema draft-07.
import Ajv from "ajv";
import addFormats from "ajv-formats";

const ID = "urn:splice:asyncapi";

export function componentSchemas(doc) {
  // refs point at #/components/schemas/<name>; as a standalone schema they live in definitions
  const text = JSON.stringify(doc.components.schemas).replaceAll('"#/components/schemas/', '"#/definitions/');
  const ajv = new Ajv({ allErrors: true });
  addFormats(ajv);
  ajv.addSchema({ $id: ID, definitions: JSON.parse(text) });
  return {
    ajv,
    names: Object.keys(doc.components.schemas),
    validator: (name) => ajv.getSchema(`${ID}#/definitions/${name}`),
  };
}
