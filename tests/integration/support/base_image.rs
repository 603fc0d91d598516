//! `debian:bookworm` without a registry: bootstrapped once with debootstrap, cached as a
//! rootfs tarball between runs, and imported under its usual tag so Dockerfiles build unchanged.

use std::path::PathBuf;
use std::process::Command;

use bollard::Docker;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::TryStreamExt;

pub const BASE_IMAGE: &str = "debian:bookworm";

pub async fn ensure(docker: &Docker) -> Result<(), String> {
    if docker.inspect_image(BASE_IMAGE).await.is_ok() {
        return Ok(());
    }
    let tarball = tokio::task::spawn_blocking(cached_rootfs)
        .await
        .map_err(|e| e.to_string())??;
    let bytes = tokio::fs::read(&tarball)
        .await
        .map_err(|e| format!("cannot read {}: {e}", tarball.display()))?;
    let options = CreateImageOptionsBuilder::new()
        .from_src("-")
        .repo("debian")
        .tag("bookworm")
        .build();
    docker
        .create_image(Some(options), Some(bollard::body_full(bytes.into())), None)
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| format!("docker import of {} failed: {e}", tarball.display()))?;
    Ok(())
}

fn cache_dir() -> PathBuf {
    std::env::var_os("CUBBI_TEST_CACHE")
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|dir| dir.join("cubbi-test")))
        .unwrap_or_else(|| PathBuf::from("/var/tmp/cubbi-test"))
}

/// The rootfs tarball, made under an exclusive lock so parallel runs bootstrap only once.
fn cached_rootfs() -> Result<PathBuf, String> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tarball = dir.join("debian-bookworm.tar");
    let lock = std::fs::File::create(dir.join(".lock")).map_err(|e| e.to_string())?;
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("cannot lock the rootfs cache: {e}"))?;
    if tarball.is_file() {
        return Ok(tarball);
    }
    super::dockerd::which("debootstrap")
        .ok_or("debootstrap is not installed: run install/test.sh, which installs it")?;
    let mirror = debian_mirror()?;
    let rootfs = tempfile::Builder::new()
        .prefix("bookworm-rootfs-")
        .tempdir_in(&dir)
        .map_err(|e| e.to_string())?;
    run(Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(rootfs.path())
        .arg(&mirror))?;
    let partial = dir.join("debian-bookworm.tar.partial");
    run(Command::new("tar")
        .arg("-C")
        .arg(rootfs.path())
        .args(["-c", "-f"])
        .arg(&partial)
        .arg("."))?;
    std::fs::rename(&partial, &tarball).map_err(|e| e.to_string())?;
    Ok(tarball)
}

/// The Debian mirror this host already uses (the only one reachable here), from apt's sources.
fn debian_mirror() -> Result<String, String> {
    if let Ok(mirror) = std::env::var("CUBBI_TEST_DEBIAN_MIRROR") {
        return Ok(mirror);
    }
    let mut texts = Vec::new();
    for dir in ["/etc/apt/sources.list.d"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                texts.push(std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
    }
    texts.push(std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    mirror_from_sources(&texts.join("\n"))
        .ok_or_else(|| "no Debian mirror found in /etc/apt; set CUBBI_TEST_DEBIAN_MIRROR".into())
}

/// The first Debian archive URI (not the security archive) in deb822 or one-line sources.
fn mirror_from_sources(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .flat_map(|line| {
            let uris = line.strip_prefix("URIs:").map(str::split_whitespace);
            let one_line = line
                .strip_prefix("deb ")
                .and_then(|rest| rest.split_whitespace().find(|word| word.contains("://")));
            uris.into_iter().flatten().chain(one_line)
        })
        .find(|uri| uri.starts_with("http") && !uri.contains("security"))
        .map(str::to_string)
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{command:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    ))
}

pub fn mirror_parsing_self_check() -> Result<(), String> {
    let deb822 = "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm\n\
                  Types: deb\nURIs: http://mirror.invalid/debian-security\n";
    let one_line = "deb [arch=amd64] http://other.invalid/debian bookworm main\n";
    match (mirror_from_sources(deb822), mirror_from_sources(one_line)) {
        (Some(a), Some(b))
            if a == "http://mirror.invalid/debian" && b == "http://other.invalid/debian" =>
        {
            Ok(())
        }
        other => Err(format!("unexpected mirrors: {other:?}")),
    }
}
