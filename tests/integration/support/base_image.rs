//! `debian:bookworm` without a registry: bootstrapped once with debootstrap, cached as a
//! rootfs tarball between runs, and imported under its usual tag so Dockerfiles build unchanged.

use std::path::PathBuf;
use std::process::Command;

use bollard::Docker;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::TryStreamExt;

pub const BASE_IMAGE: &str = "debian:bookworm";
/// The Debian release `BASE_IMAGE` is.
const RELEASE: &str = "bookworm";

pub async fn ensure(docker: &Docker) -> Result<(), String> {
    if docker.inspect_image(BASE_IMAGE).await.is_ok() {
        return Ok(());
    }
    let tarball = tokio::task::spawn_blocking(cached_rootfs_once)
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

/// The rootfs tarball; a failed bootstrap is reported to every later test without trying the
/// mirror again (one bad mirror would otherwise cost a debootstrap per test).
fn cached_rootfs_once() -> Result<PathBuf, String> {
    static FAILURE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let mut failure = FAILURE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(reason) = failure.as_ref() {
        return Err(format!("(an earlier test's bootstrap) {reason}"));
    }
    cached_rootfs().inspect_err(|reason| *failure = Some(reason.clone()))
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
    let (mirror, origin) = debian_mirror()?;
    let rootfs = tempfile::Builder::new()
        .prefix("bookworm-rootfs-")
        .tempdir_in(&dir)
        .map_err(|e| e.to_string())?;
    run(Command::new("debootstrap")
        .args(["--variant=minbase", RELEASE])
        .arg(rootfs.path())
        .arg(&mirror))
    .map_err(|err| {
        format!(
            "{err}\nthe mirror was {mirror}, from {origin}; set \
             CUBBI_TEST_DEBIAN_MIRROR=http://.../debian to use another"
        )
    })?;
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

/// The Debian mirror to bootstrap from: `CUBBI_TEST_DEBIAN_MIRROR`, else the one apt on this
/// host uses for Debian itself (the only one reachable here), with where it was read.
fn debian_mirror() -> Result<(String, String), String> {
    if let Ok(mirror) = std::env::var("CUBBI_TEST_DEBIAN_MIRROR") {
        return Ok((mirror, "CUBBI_TEST_DEBIAN_MIRROR".into()));
    }
    let mirror = super::apt_sources::host_mirror(std::path::Path::new("/etc/apt"), RELEASE)?;
    Ok((
        mirror.uri,
        format!("{} (suite {})", mirror.file.display(), mirror.suite),
    ))
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    // debootstrap reports on stdout (`E: ...`), other tools on stderr.
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&str> = text.lines().collect();
    Err(format!(
        "{command:?} failed ({}):\n{}",
        output.status,
        lines[lines.len().saturating_sub(10)..].join("\n")
    ))
}

pub fn mirror_parsing_self_check() -> Result<(), String> {
    super::apt_sources::self_check()
}
