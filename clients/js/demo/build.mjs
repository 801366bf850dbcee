// Build clients/js/dist/:
//   dist/presence-client.js     the module, unchanged but for a version header
//   dist/presence-client.d.ts   its declarations, same header
//   dist/demo/index.html        the demo page (served by the gateway at /demo)
//   dist/demo/demo.js           the page's script with Firebase bundled in, minified
//   dist/demo/demo.css
//   dist/demo/THIRD_PARTY_LICENSES.txt   the bundled packages, their versions and licenses
//
// Usage: node clients/js/demo/build.mjs   (after `npm install` in clients/js)
// The bundle must not load anything at run time beyond its own origin, the Auth emulator and
// the gateway: the build fails when the output contains a dynamic import or a script URL.

import { copyFile, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const root = dirname(here);
const dist = join(root, "dist");
const pkg = JSON.parse(await readFile(join(root, "package.json"), "utf8"));
const header = `/*! ${pkg.name} v${pkg.version} | presence gateway client | built from clients/js */\n`;

await rm(dist, { recursive: true, force: true });
await mkdir(join(dist, "demo"), { recursive: true });

const source = await readFile(join(root, "presence-client.js"), "utf8");
const versionLine = source.match(/export const VERSION = "([^"]+)";/);
if (!versionLine || versionLine[1] !== pkg.version) {
  throw new Error(
    `presence-client.js VERSION (${versionLine?.[1]}) differs from package.json (${pkg.version})`,
  );
}
await writeFile(join(dist, "presence-client.js"), header + source);
await writeFile(
  join(dist, "presence-client.d.ts"),
  header + (await readFile(join(root, "presence-client.d.ts"), "utf8")),
);

function firebaseVersion() {
  return pkg.devDependencies.firebase;
}

/** The bundled npm packages (from esbuild's metafile) with their licenses. */
async function notices(metafile) {
  const names = new Set();
  for (const input of Object.keys(metafile.inputs)) {
    const match = input.match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//);
    if (match) names.add(match[1]);
  }
  const lines = [
    `Third-party code bundled in demo.js (${pkg.name} ${pkg.version} demo page)`,
    "",
  ];
  const texts = [];
  for (const name of [...names].sort()) {
    const dir = join(root, "node_modules", name);
    const meta = JSON.parse(await readFile(join(dir, "package.json"), "utf8"));
    lines.push(`${meta.name} ${meta.version}  ${meta.license}`);
    for (const file of ["LICENSE", "LICENSE.txt", "LICENSE.md"]) {
      const text = await readFile(join(dir, file), "utf8").catch(() => null);
      if (text) {
        texts.push(`--- ${meta.name} ${meta.version} (${file}) ---\n\n${text.trim()}\n`);
        break;
      }
    }
  }
  lines.push(
    "",
    "The Firebase packages carry this notice in their sources:",
    "",
    "  Copyright Google LLC",
    '  Licensed under the Apache License, Version 2.0 (the "License"); you may not use',
    "  these files except in compliance with the License. You may obtain a copy of the",
    "  License at http://www.apache.org/licenses/LICENSE-2.0",
    "  Unless required by applicable law or agreed to in writing, software distributed",
    '  under the License is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR',
    "  CONDITIONS OF ANY KIND, either express or implied. See the License for the specific",
    "  language governing permissions and limitations under the License.",
    "",
  );
  return [lines.join("\n"), ...texts].join("\n");
}

const result = await build({
  entryPoints: [join(here, "demo.js")],
  outfile: join(dist, "demo", "demo.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2022", "chrome100", "firefox100", "safari15.4"],
  minify: true,
  banner: {
    js: `/*! presence demo | ${pkg.name} v${pkg.version} | bundles Firebase JS SDK ${firebaseVersion()} (Apache-2.0): notices in THIRD_PARTY_LICENSES.txt */`,
  },
  // One notice file instead of the same Apache header repeated for every bundled module.
  legalComments: "none",
  metafile: true,
  logLevel: "warning",
});

await writeFile(join(dist, "demo", "THIRD_PARTY_LICENSES.txt"), await notices(result.metafile));
await copyFile(join(here, "index.html"), join(dist, "demo", "index.html"));
await copyFile(join(here, "demo.css"), join(dist, "demo", "demo.css"));

// Everything the page needs is in these files: no CDN, no font, no lazily loaded chunk.
const bundle = await readFile(join(dist, "demo", "demo.js"), "utf8");
const html = await readFile(join(dist, "demo", "index.html"), "utf8");
const css = await readFile(join(dist, "demo", "demo.css"), "utf8");
const problems = [];
if (/\bimport\s*\(/.test(bundle)) problems.push("demo.js contains a dynamic import()");
if (/^\s*import[\s{*]/m.test(bundle)) problems.push("demo.js imports another module");
if (/(src|href)\s*=\s*["']?(https?:)?\/\//i.test(html)) problems.push("index.html loads an external URL");
if (/url\(\s*["']?(https?:)?\/\//i.test(css) || /@import/i.test(css)) {
  problems.push("demo.css loads an external URL");
}
if (problems.length) throw new Error(`demo bundle is not self-contained:\n  ${problems.join("\n  ")}`);

const size = (file) => result.metafile.outputs[relative(process.cwd(), file)]?.bytes;
const bundleBytes = size(join(dist, "demo", "demo.js")) ?? Buffer.byteLength(bundle);
console.log(`built ${relative(process.cwd(), dist)}/ (${pkg.name} ${pkg.version})`);
console.log(`  presence-client.js, presence-client.d.ts`);
console.log(`  demo/index.html, demo/demo.css, demo/demo.js (${(bundleBytes / 1024).toFixed(0)} KiB)`);
console.log(`  demo/THIRD_PARTY_LICENSES.txt`);
