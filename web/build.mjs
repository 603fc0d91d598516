// Bundles the page into dist/ (git-ignored): the script and its CSS through esbuild,
// index.html as it is. `cargo build` embeds dist/ when it exists (see build.rs).
import { build } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";

const out = new URL("./dist/", import.meta.url);
await rm(out, { recursive: true, force: true });
await mkdir(new URL("./assets/", out), { recursive: true });
await build({
  entryPoints: ["src/main.js"],
  bundle: true,
  minify: true,
  sourcemap: false,
  format: "esm",
  target: ["chrome110", "firefox110", "safari16"],
  outfile: "dist/assets/app.js",
  // xterm's CSS is imported by the script; esbuild writes it beside as app.css.
  loader: { ".css": "css" },
  legalComments: "linked",
  logLevel: "warning",
});
await copyFile(new URL("./public/index.html", import.meta.url), new URL("./index.html", out));
console.log("cubbi page built into web/dist");
