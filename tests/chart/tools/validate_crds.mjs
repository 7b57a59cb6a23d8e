// Validate custom resources against their CRD schemas, with the model classes of
// @kubernetes-models/keda and @kubernetes-models/prometheus-operator (kubernetes-validate
// does not know CRDs). Reads a JSON array of objects on stdin; prints one line per
// invalid object and exits 1 if there is any; exit 2 when a kind is unknown here.
//
//   node tests/chart/tools/validate_crds.mjs < objects.json
// Resolves the packages from ./.tools/node (scripts/chart-tools.sh installs them) or
// from NODE_TOOLS_DIR.
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const toolsDir = process.env.NODE_TOOLS_DIR
  ?? path.resolve(path.dirname(new URL(import.meta.url).pathname), "../../../.tools/node");

// By file path: the packages' "exports" maps differ (keda: require and import;
// prometheus-operator: import only), and a file URL works for both.
async function load(file) {
  const full = path.join(toolsDir, "node_modules", file);
  if (!existsSync(full)) {
    console.error(`${full} is missing: run scripts/chart-tools.sh`);
    process.exit(3);
  }
  return import(pathToFileURL(full).href);
}

const keda = await load("@kubernetes-models/keda/keda.sh/v1alpha1/index.mjs");
const monitoring = await load("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js");

const MODELS = {
  "keda.sh/v1alpha1/ScaledObject": keda.ScaledObject,
  "keda.sh/v1alpha1/TriggerAuthentication": keda.TriggerAuthentication,
  "monitoring.coreos.com/v1/ServiceMonitor": monitoring.ServiceMonitor,
  "monitoring.coreos.com/v1/PodMonitor": monitoring.PodMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": monitoring.PrometheusRule,
};

const objects = JSON.parse(readFileSync(0, "utf8"));
let invalid = 0;
let unknown = 0;
for (const obj of objects) {
  const key = `${obj.apiVersion}/${obj.kind}`;
  const name = `${key} ${obj.metadata?.name ?? "?"}`;
  const Model = MODELS[key];
  if (!Model) {
    console.log(`UNKNOWN ${name}: no model for this kind`);
    unknown += 1;
    continue;
  }
  try {
    new Model(obj).validate();
    console.log(`OK ${name}`);
  } catch (err) {
    invalid += 1;
    const details = (err.errors ?? []).map((e) => `${e.instancePath || "/"} ${e.message}`);
    console.log(`INVALID ${name}: ${details.length ? details.join("; ") : err.message}`);
  }
}
process.exit(invalid ? 1 : unknown ? 2 : 0);
