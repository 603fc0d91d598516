//! Embeds the web page (`web/dist`, made by `npm ci --prefix web && npm run build --prefix
//! web`) into the binary when it was built; without it (no Node on the machine) `cubbi`
//! still builds, and its service says at `/` how to build the page.

use std::path::{Path, PathBuf};
use std::{env, fs};

/// Files of the page, at most: a stray huge folder is not embedded.
const MAX_FILES: usize = 64;

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let dist = root.join("web").join("dist");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets it")).join("web_assets.rs");
    let mut files = Vec::new();
    if dist.join("index.html").is_file() {
        collect(&dist, &dist, &mut files);
        println!("cargo:rerun-if-changed=web/dist");
    } else {
        // Watch the folder the build writes into appearing (a missing path would rerun
        // this script on every build).
        println!("cargo:rerun-if-changed=web/public");
        println!("cargo:rerun-if-changed=web/package.json");
        println!("cargo:rerun-if-changed=web");
    }
    files.sort();
    files.truncate(MAX_FILES);
    let mut code = String::from("&[\n");
    for (name, path) in &files {
        code.push_str(&format!(
            "    ({name:?}, include_bytes!({path:?}) as &[u8]),\n"
        ));
    }
    code.push(']');
    fs::write(&out, code).expect("OUT_DIR is writable");
}

/// Every file under `dir`, named by its path from `dist` with `/`.
fn collect(dist: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(dist, &path, files);
        } else if let Ok(relative) = path.strip_prefix(dist) {
            let name = relative
                .components()
                .map(|part| part.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            files.push((name, path.display().to_string()));
        }
    }
}
