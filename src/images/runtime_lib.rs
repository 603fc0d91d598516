//! Tests of `runtime/cubbi-lib.sh`, the shell functions cubbi-init and cubbi-project source:
//! the same env files go through the shell reader and `config::env_file`, and the masking of
//! credentials in URLs is checked on the shapes git prints.

use std::path::PathBuf;
use std::process::Command;

fn library() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("runtime/cubbi-lib.sh")
}

/// Runs `script` in bash with the library sourced; `$1`... are `args`.
fn bash(script: &str, args: &[&str]) -> (i32, String) {
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!(". \"$CUBBI_LIB\" || exit 99\n{script}"))
        .arg("bash")
        .args(args)
        .env("CUBBI_LIB", library())
        .output()
        .expect("bash must be installed");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

fn mask(input: &str) -> String {
    bash("printf '%s' \"$1\" | cubbi_mask_urls", &[input]).1
}

#[test]
fn credentials_in_urls_are_masked() {
    for (input, expected) in [
        (
            "fatal: unable to access 'https://user:tok@host/x/': 403",
            "fatal: unable to access 'https://***@host/x/': 403",
        ),
        ("https://tok@host", "https://***@host"),
        ("ssh://git@host/a.git", "ssh://***@host/a.git"),
        (
            "a https://u:p@h1/x and http://t@h2 both",
            "a https://***@h1/x and http://***@h2 both",
        ),
        (
            "no url, a@b and git@host:a/b.git",
            "no url, a@b and git@host:a/b.git",
        ),
        ("https://host/path@v1", "https://host/path@v1"),
        ("line\r", "line"),
    ] {
        assert_eq!(mask(input), expected, "{input}");
    }
}

/// Prints what `cubbi_read_env` read, sorted, as KEY=VALUE lines, then the status.
fn shell_read(text: &str, pam: bool) -> (Vec<(String, String)>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("env");
    std::fs::write(&file, text).unwrap();
    let (code, out) = bash(
        "declare -A E=(); cubbi_read_env \"$1\" E $2; s=$?\n\
         for k in \"${!E[@]}\"; do printf '%s=%s\\0' \"$k\" \"${E[$k]}\"; done\n\
         printf 'status=%s bad=%s' \"$s\" \"$CUBBI_ENV_BAD_LINE\"",
        &[file.to_str().unwrap(), if pam { "pam" } else { "" }],
    );
    assert_eq!(code, 0, "{out}");
    let mut parts: Vec<&str> = out.split('\0').collect();
    let status = parts.pop().unwrap_or_default().to_string();
    let mut entries: Vec<(String, String)> = parts
        .iter()
        .filter_map(|entry| entry.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    entries.sort();
    (entries, status)
}

#[test]
fn shell_and_rust_read_env_files_alike() {
    for text in [
        "A=1\nB=two words\n",
        "# comment\n\n  export A=1\r\nB=\"quoted\"\nC='x'\nE=a=b\nA=2",
        "URL=https://u:p@host/x.git\nBRANCH=feature/x\n",
        "EMPTY=\nQ=\"\"\nINNER=say \"hi\" \\ ok\n\tTAB=1\n",
    ] {
        let mut rust: Vec<(String, String)> = crate::config::env_file::parse_file(text)
            .unwrap()
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect();
        rust.sort();
        for pam in [false, true] {
            let (shell, status) = shell_read(text, pam);
            assert_eq!(shell, rust, "{text:?} (pam: {pam})");
            assert_eq!(status, "status=0 bad=", "{text:?}");
        }
    }
}

#[test]
fn shell_reader_reports_bad_lines_by_number_only() {
    let (entries, status) = shell_read("A=1\nsk-SECRET\nBAD KEY=2\nB=2\n", false);
    assert_eq!(status, "status=1 bad=2");
    assert_eq!(
        entries,
        vec![("A".to_string(), "1".to_string()), ("B".into(), "2".into())]
    );
}

#[test]
fn shell_reader_cuts_at_hash_like_pam_env() {
    let (entries, _) = shell_read("A=x#y\n", true);
    assert_eq!(entries, vec![("A".to_string(), "x".to_string())]);
    let (entries, _) = shell_read("A=x#y\n", false);
    assert_eq!(entries, vec![("A".to_string(), "x#y".to_string())]);
}

/// cubbi-init and cubbi-project load the library from their own folder and define no
/// KEY=VALUE reader of their own.
#[test]
fn scripts_source_the_library() {
    let runtime = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("runtime");
    for script in ["cubbi-init", "cubbi-project"] {
        let text = std::fs::read_to_string(runtime.join(script)).unwrap();
        assert!(
            text.contains(". \"${BASH_SOURCE[0]%/*}/cubbi-lib.sh\""),
            "{script} must source cubbi-lib.sh"
        );
        assert!(
            !text.contains("read -r line"),
            "{script} parses env files itself"
        );
        assert!(!text.contains("sed -E"), "{script} masks URLs itself");
    }
    let setup = std::fs::read_to_string(runtime.join("setup-image.sh")).unwrap();
    assert!(
        setup.contains("\"$R/cubbi-lib.sh\" \"$L/\""),
        "not installed"
    );
}

/// `fetch-node.sh` against a fake `npm` that packs well-formed but different tarballs (what a
/// substituted registry package looks like): the build must refuse them before installing.
#[test]
fn fetch_node_refuses_a_package_that_is_not_the_pinned_one() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let write_tool = |name: &str, text: &str| {
        use std::os::unix::fs::PermissionsExt;
        let path = bin.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    write_tool("dpkg", "#!/bin/sh\necho amd64\n");
    // Packs a tarball with package/bin/node (a script printing v22) for each spec.
    write_tool(
        "npm",
        "#!/bin/sh\n\
         [ \"$1\" = pack ] || { echo 10.0.0; exit 0; }\n\
         shift\n\
         for spec; do case $spec in --*) continue ;; esac\n\
           name=${spec%@*}; version=${spec##*@}\n\
           rm -rf package && mkdir -p package/bin\n\
           printf '#!/bin/sh\\necho v22\\n' > package/bin/node && chmod +x package/bin/node\n\
           printf '{}' > package/package.json\n\
           tar -czf \"$name-$version.tgz\" package && rm -rf package\n\
         done\n",
    );
    let dest = dir.path().join("node");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("runtime/fetch-node.sh");
    let output = Command::new("sh")
        .arg(&script)
        .arg(&dest)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a substituted package was installed"
    );
    assert!(
        stderr.contains("does not match its pinned SHA-512"),
        "{stderr}"
    );
    assert!(
        !dest.join("bin/node").exists(),
        "installed before verifying"
    );
}
