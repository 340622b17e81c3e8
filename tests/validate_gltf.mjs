// Validate glTF files with the Khronos validator; print one JSON report per file.
// Usage: node tests/validate_gltf.mjs FILE...
import { readFile } from "node:fs/promises";
import validator from "gltf-validator";

const reports = [];
for (const path of process.argv.slice(2)) {
  const data = new Uint8Array(await readFile(path));
  const report = await validator.validateBytes(data, { maxIssues: 50 });
  reports.push({ path, issues: report.issues });
}
console.log(JSON.stringify(reports));
