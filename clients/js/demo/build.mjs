// Build clients/js/dist/:
//   dist/presence-client.js     the module, unchanged but for a version header
//   dist/presence-client.d.ts   its declarations, same header
//   dist/demo/index.html        the demo page (served by the gateway at /demo)
//   dist/demo/demo.js           the page's script with Firebase bundled in, minified
//   dist/demo/demo.css
//   dist/demo/THIRD_PARTY_LICENSES.txt   the bundled packages, their versions and licenses
//
// Usage: node clients/js/demo/build.mjs   (after `npm install` in clients/js)
// Only those files and dist/demo/ are replaced (dist/console/ is the console's build). The
// bundle must not load anything at run time beyond its own origin, the Auth emulator and the
// gateway: the build fails when the output contains a dynamic import or a script URL.

import { copyFile, readFile, writeFile } from "node:fs/promises";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

import { bundle, checkSelfContained, freshDir, notices, pkg, root } from "../build/pages.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(root, "dist");
const header = `/*! ${pkg.name} v${pkg.version} | presence gateway client | built from clients/js */\n`;

const out = await freshDir("demo");

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

const result = await bundle(
  join(here, "demo.js"),
  join(out, "demo.js"),
  `/*! presence demo | ${pkg.name} v${pkg.version} | bundles Firebase JS SDK ${pkg.devDependencies.firebase} (Apache-2.0): notices in THIRD_PARTY_LICENSES.txt */`,
);

await writeFile(
  join(out, "THIRD_PARTY_LICENSES.txt"),
  await notices(result.metafile, `Third-party code bundled in demo.js (${pkg.name} ${pkg.version} demo page)`),
);
await copyFile(join(here, "index.html"), join(out, "index.html"));
await copyFile(join(here, "demo.css"), join(out, "demo.css"));

const script = await readFile(join(out, "demo.js"), "utf8");
checkSelfContained("demo", {
  script: { name: "demo.js", text: script },
  html: await readFile(join(out, "index.html"), "utf8"),
  css: { name: "demo.css", text: await readFile(join(out, "demo.css"), "utf8") },
});

const bundleBytes = result.metafile.outputs[relative(process.cwd(), join(out, "demo.js"))]?.bytes;
console.log(`built ${relative(process.cwd(), dist)}/ (${pkg.name} ${pkg.version})`);
console.log(`  presence-client.js, presence-client.d.ts`);
console.log(
  `  demo/index.html, demo/demo.css, demo/demo.js (${((bundleBytes ?? Buffer.byteLength(script)) / 1024).toFixed(0)} KiB)`,
);
console.log(`  demo/THIRD_PARTY_LICENSES.txt`);
