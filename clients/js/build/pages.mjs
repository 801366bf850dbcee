// What the demo's and the console's builds share: esbuild's options for a page bundle, the
// third-party notice file made from esbuild's metafile, and the check that a page loads
// nothing at run time beyond its own origin (and the Auth emulator, which the page is told of).
// Each page's build.mjs replaces only its own folder of dist/.

import { mkdir, readFile, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";

export const root = dirname(dirname(fileURLToPath(import.meta.url)));
export const pkg = JSON.parse(await readFile(join(root, "package.json"), "utf8"));

/** Empty ``dist/<name>`` (and make it), leaving the other pages' builds in place. */
export async function freshDir(name) {
  const out = join(root, "dist", name);
  await rm(out, { recursive: true, force: true });
  await mkdir(out, { recursive: true });
  return out;
}

/** Bundle ``entry`` (with every npm package it imports) into ``outfile``, minified. */
export function bundle(entry, outfile, banner) {
  return build({
    entryPoints: [entry],
    outfile,
    bundle: true,
    format: "esm",
    platform: "browser",
    target: ["es2022", "chrome100", "firefox100", "safari15.4"],
    minify: true,
    banner: { js: banner },
    // One notice file instead of the same license header repeated for every bundled module.
    legalComments: "none",
    metafile: true,
    logLevel: "warning",
  });
}

/** The bundled npm packages (from esbuild's metafile) with their licenses, under ``title``. */
export async function notices(metafile, title) {
  const names = new Set();
  for (const input of Object.keys(metafile.inputs)) {
    const match = input.match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//);
    if (match) names.add(match[1]);
  }
  const lines = [title, ""];
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

/** Throw unless the page's files load nothing else: no CDN, no font, no lazily loaded chunk. */
export function checkSelfContained(page, { script, html, css }) {
  const problems = [];
  if (/\bimport\s*\(/.test(script.text)) problems.push(`${script.name} contains a dynamic import()`);
  if (/^\s*import[\s{*]/m.test(script.text)) problems.push(`${script.name} imports another module`);
  if (/(src|href)\s*=\s*["']?(https?:)?\/\//i.test(html)) problems.push("index.html loads an external URL");
  if (/url\(\s*["']?(https?:)?\/\//i.test(css.text) || /@import/i.test(css.text)) {
    problems.push(`${css.name} loads an external URL`);
  }
  if (problems.length) throw new Error(`${page} bundle is not self-contained:\n  ${problems.join("\n  ")}`);
}
