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

import { copyFile, readFile, writeFile } from "node:fs/promises";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

import { bundle, checkSelfContained, freshDir, notices, pkg, root } from "../build/pages.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const bundled = `Firebase JS SDK ${pkg.devDependencies.firebase} (Apache-2.0), uPlot ${pkg.devDependencies.uplot} (MIT)`;

const out = await freshDir("console");

const result = await bundle(
  join(here, "console.js"),
  join(out, "console.js"),
  `/*! presence console | ${pkg.name} v${pkg.version} | bundles ${bundled}: notices in THIRD_PARTY_LICENSES.txt */`,
);

// uPlot's stylesheet is part of the bundle: the notice file names it with the script.
const uplotCss = await readFile(join(root, "node_modules", "uplot", "dist", "uPlot.min.css"), "utf8");
await writeFile(
  join(out, "console.css"),
  `/*! uPlot ${pkg.devDependencies.uplot} (MIT): notice in THIRD_PARTY_LICENSES.txt */\n${uplotCss}\n` +
    (await readFile(join(here, "console.css"), "utf8")),
);
await writeFile(
  join(out, "THIRD_PARTY_LICENSES.txt"),
  await notices(
    result.metafile,
    `Third-party code bundled in console.js and console.css (presence console, ${pkg.name} ${pkg.version})`,
  ),
);
await copyFile(join(here, "index.html"), join(out, "index.html"));

const script = await readFile(join(out, "console.js"), "utf8");
const css = await readFile(join(out, "console.css"), "utf8");
checkSelfContained("console", {
  script: { name: "console.js", text: script },
  html: await readFile(join(out, "index.html"), "utf8"),
  css: { name: "console.css", text: css },
});

const kib = (text) => `${(Buffer.byteLength(text) / 1024).toFixed(0)} KiB`;
console.log(`built ${relative(process.cwd(), out)}/`);
console.log(`  index.html, console.css (${kib(css)}), console.js (${kib(script)})`);
console.log(`  THIRD_PARTY_LICENSES.txt`);
