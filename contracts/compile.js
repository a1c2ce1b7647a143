#!/usr/bin/env node
// Compile every contracts/*.sol with the pinned npm solc into platform/ledger/artifacts/<Name>.json.
// The output is reproducible (pinned EVM version, no metadata hash), so `--check` can verify
// that the committed artifacts match the sources: it exits 1 naming each artifact that differs.
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const ROOT = path.resolve(__dirname, "..");
const SRC_DIR = __dirname;
const OUT_DIR = path.join(ROOT, "platform", "ledger", "artifacts");
const NODE_MODULES = path.join(ROOT, "node_modules");
const EVM_VERSION = "cancun";

function findImports(importPath) {
  const candidates = [path.join(SRC_DIR, importPath)];
  if (importPath.startsWith("@openzeppelin/")) candidates.unshift(path.join(NODE_MODULES, importPath));
  for (const file of candidates) {
    if (fs.existsSync(file)) return { contents: fs.readFileSync(file, "utf8") };
  }
  return { error: `import not found: ${importPath}` };
}

function compile() {
  const sources = {};
  for (const name of fs.readdirSync(SRC_DIR).filter((f) => f.endsWith(".sol")).sort()) {
    sources[name] = { content: fs.readFileSync(path.join(SRC_DIR, name), "utf8") };
  }
  const input = {
    language: "Solidity",
    sources,
    settings: {
      optimizer: { enabled: true, runs: 200 },
      evmVersion: EVM_VERSION,
      metadata: { bytecodeHash: "none" },
      outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  if (errors.length) {
    for (const e of errors) console.error(e.formattedMessage || e.message);
    process.exit(2);
  }
  const compiler = `solc-${solc.version()}`;
  const artifacts = {};
  for (const source of Object.keys(sources)) {
    for (const [contractName, c] of Object.entries(output.contracts[source] || {})) {
      // Only contracts declared in our own sources; imported OpenZeppelin ones are not artifacts.
      const artifact = {
        contractName,
        abi: c.abi,
        bytecode: "0x" + c.evm.bytecode.object,
        compiler,
        evmVersion: EVM_VERSION,
      };
      artifacts[`${contractName}.json`] = JSON.stringify(artifact, null, 2) + "\n";
    }
  }
  return artifacts;
}

function main() {
  const check = process.argv.includes("--check");
  const artifacts = compile();
  if (check) {
    let stale = 0;
    for (const [file, text] of Object.entries(artifacts)) {
      const target = path.join(OUT_DIR, file);
      const current = fs.existsSync(target) ? fs.readFileSync(target, "utf8") : null;
      if (current !== text) {
        console.error(`artifact differs from a fresh compile: ${path.relative(ROOT, target)}`);
        stale += 1;
      }
    }
    if (stale) {
      console.error("run `node contracts/compile.js` and commit the result");
      process.exit(1);
    }
    console.log(`ok: ${Object.keys(artifacts).length} artifact(s) up to date`);
    return;
  }
  fs.mkdirSync(OUT_DIR, { recursive: true });
  for (const [file, text] of Object.entries(artifacts)) {
    fs.writeFileSync(path.join(OUT_DIR, file), text);
    console.log(`wrote ${path.relative(ROOT, path.join(OUT_DIR, file))}`);
  }
}

main();
