// `npm run build`: bundle the page scripts (ESM + their npm dependencies) into IIFE files under
// build/, next to the HTML pages, so that one static directory serves the whole test site.
import { build } from "esbuild";
import { copyFile, mkdir, readdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "build");
await mkdir(out, { recursive: true });

const entries = ["cm4-ws", "cm3-rest"];
await build({
  entryPoints: Object.fromEntries(entries.map((name) => [name, join(here, "src", `${name}.js`)])),
  outdir: out,
  bundle: true,
  format: "iife",
  platform: "browser",
  target: "chrome120",
  sourcemap: "inline",
  logLevel: "warning",
  define: { "process.env.NODE_ENV": '"production"' },
});
for (const page of await readdir(join(here, "pages"))) {
  await copyFile(join(here, "pages", page), join(out, page));
}
await writeFile(join(out, ".stamp"), new Date().toISOString() + "\n");
console.log(`built ${entries.join(", ")} into ${out}`);
