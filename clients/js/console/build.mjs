// Build clients/js/dist/console/, the operator console the gateway serves at /console when
// CONSOLE_ENABLED is on:
//   index.html
//   console.js                   the page's modules with Firebase Auth and uPlot bundled in, minified
//   console.css                  uPlot's stylesheet, then the console's own
//   THIRD_PARTY_LICENSES.txt     the bundled packages, their versions and licenses
//
// Usage: node clients/js/console/build.mjs   (after `npm ci` in clients/js)
// Only dist/console/ is replaced (the demo's build owns the rest of dist/). Like the demo, the
// bundle must load nothing at run time beyond its own origin and the Auth emulator: the build
// fails when the output contains a dynamic import or an external URL.

import { copyFile, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const root = dirname(here);
const out = join(root, "dist", "console");
const pkg = JSON.parse(await readFile(join(root, "package.json"), "utf8"));
const bundled = `Firebase JS SDK ${pkg.devDependencies.firebase} (Apache-2.0), uPlot ${pkg.devDependencies.uplot} (MIT)`;

await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });

/** The bundled npm packages (from esbuild's metafile) with their licenses. */
async function notices(metafile) {
  const names = new Set();
  for (const input of Object.keys(metafile.inputs)) {
    const match = input.match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//);
    if (match) names.add(match[1]);
  }
  const lines = [`Third-party code bundled in console.js and console.css (presence console, ${pkg.name} ${pkg.version})`, ""];
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
  entryPoints: [join(here, "console.js")],
  outfile: join(out, "console.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2022", "chrome100", "firefox100", "safari15.4"],
  minify: true,
  banner: {
    js: `/*! presence console | ${pkg.name} v${pkg.version} | bundles ${bundled}: notices in THIRD_PARTY_LICENSES.txt */`,
  },
  // One notice file instead of the same license header repeated for every bundled module.
  legalComments: "none",
  metafile: true,
  logLevel: "warning",
});

// uPlot's stylesheet is part of the bundle: the notice file names it with the script.
const uplotCss = await readFile(join(root, "node_modules", "uplot", "dist", "uPlot.min.css"), "utf8");
await writeFile(
  join(out, "console.css"),
  `/*! uPlot ${pkg.devDependencies.uplot} (MIT): notice in THIRD_PARTY_LICENSES.txt */\n${uplotCss}\n` +
    (await readFile(join(here, "console.css"), "utf8")),
);
await writeFile(join(out, "THIRD_PARTY_LICENSES.txt"), await notices(result.metafile));
await copyFile(join(here, "index.html"), join(out, "index.html"));

// Everything the page needs is in these files: no CDN, no font, no lazily loaded chunk.
const bundle = await readFile(join(out, "console.js"), "utf8");
const html = await readFile(join(out, "index.html"), "utf8");
const css = await readFile(join(out, "console.css"), "utf8");
const problems = [];
if (/\bimport\s*\(/.test(bundle)) problems.push("console.js contains a dynamic import()");
if (/^\s*import[\s{*]/m.test(bundle)) problems.push("console.js imports another module");
if (/(src|href)\s*=\s*["']?(https?:)?\/\//i.test(html)) problems.push("index.html loads an external URL");
if (/url\(\s*["']?(https?:)?\/\//i.test(css) || /@import/i.test(css)) {
  problems.push("console.css loads an external URL");
}
if (problems.length) throw new Error(`console bundle is not self-contained:\n  ${problems.join("\n  ")}`);

const kib = (text) => `${(Buffer.byteLength(text) / 1024).toFixed(0)} KiB`;
console.log(`built ${relative(process.cwd(), out)}/`);
console.log(`  index.html, console.css (${kib(css)}), console.js (${kib(bundle)})`);
console.log(`  THIRD_PARTY_LICENSES.txt`);
