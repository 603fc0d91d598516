//! The Debian mirror to bootstrap from, picked the way apt reads its sources: only
//! `sources.list`, `sources.list.d/*.list` and `sources.list.d/*.sources` (in apt's order),
//! `Enabled: no` stanzas skipped, and only an entry of the Debian archive itself: a `deb` entry
//! whose suite is the release being bootstrapped (or its `-updates` beside it) with component
//! `main`. Third-party repositories (NodeSource's `nodistro`, Docker's `bookworm stable`, a cloud
//! SDK's `cloud-sdk-bookworm`) and the security archive never qualify.

use std::path::{Path, PathBuf};

/// One `deb` entry, from a one-line `.list` line or a deb822 `.sources` stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub file: PathBuf,
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
}

/// The mirror chosen, with where it came from (so a failure can say so).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub uri: String,
    pub file: PathBuf,
    pub suite: String,
}

/// Debian release names: a host on another Debian release still has a Debian archive mirror
/// that carries the one being bootstrapped.
const DEBIAN_RELEASES: &[&str] = &[
    "buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid", "unstable", "testing",
];

/// The files apt reads under `etc_apt`, in the order it reads them.
pub fn source_files(etc_apt: &Path) -> Vec<PathBuf> {
    let mut files = vec![etc_apt.join("sources.list")];
    let mut parts: Vec<PathBuf> = std::fs::read_dir(etc_apt.join("sources.list.d"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            // apt ignores names with other characters, and any other extension.
            let stem_ok = |stem: &str| {
                !stem.is_empty()
                    && stem
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            };
            name.strip_suffix(".list").is_some_and(stem_ok)
                || name.strip_suffix(".sources").is_some_and(stem_ok)
        })
        .collect();
    parts.sort();
    files.extend(parts);
    files.into_iter().filter(|path| path.is_file()).collect()
}

/// Every enabled `deb` entry of one file.
pub fn parse(file: &Path, text: &str) -> Vec<Source> {
    if file.extension().is_some_and(|ext| ext == "sources") {
        parse_deb822(file, text)
    } else {
        text.lines()
            .filter_map(|line| parse_one_line(file, line))
            .collect()
    }
}

/// `deb [opt=val opt2=val] URI SUITE [COMPONENT...]`
fn parse_one_line(file: &Path, line: &str) -> Option<Source> {
    let line = line.split('#').next().unwrap_or_default().trim();
    let rest = line.strip_prefix("deb")?;
    if !rest.starts_with([' ', '\t']) {
        return None; // deb-src, or a word that only starts with "deb"
    }
    let mut rest = rest.trim_start();
    if let Some(options) = rest.strip_prefix('[') {
        let (options, after) = options.split_once(']')?;
        if options
            .split_whitespace()
            .any(|option| option.eq_ignore_ascii_case("enabled=no"))
        {
            return None;
        }
        rest = after;
    }
    let mut words = rest.split_whitespace();
    let uri = words.next()?.to_string();
    let suite = words.next()?.to_string();
    Some(Source {
        file: file.to_path_buf(),
        uris: vec![uri],
        suites: vec![suite],
        components: words.map(str::to_string).collect(),
    })
}

fn parse_deb822(file: &Path, text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut finish = |fields: &mut Vec<(String, String)>| {
        let get = |name: &str| {
            fields
                .iter()
                .filter(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
                .next_back()
        };
        let words = |name: &str| -> Vec<String> {
            get(name)
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        let enabled = get("Enabled").is_none_or(|value| !value.trim().eq_ignore_ascii_case("no"));
        if enabled && words("Types").iter().any(|t| t == "deb") {
            sources.push(Source {
                file: file.to_path_buf(),
                uris: words("URIs"),
                suites: words("Suites"),
                components: words("Components"),
            });
        }
        fields.clear();
    };
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            finish(&mut fields);
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            fields.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    finish(&mut fields);
    sources
}

/// The best Debian archive mirror for `release` among `sources` (apt's order breaks ties):
/// an entry for `release` itself, else its `-updates`, else any Debian release's entry.
pub fn pick(sources: &[Source], release: &str) -> Option<Mirror> {
    let updates = format!("{release}-updates");
    let rank = |suite: &str| -> Option<u8> {
        if suite == release {
            Some(0)
        } else if suite == updates {
            Some(1)
        } else if DEBIAN_RELEASES.contains(&suite) {
            Some(2)
        } else {
            None
        }
    };
    sources
        .iter()
        .filter(|source| source.components.iter().any(|c| c == "main"))
        .flat_map(|source| {
            source.suites.iter().flat_map(move |suite| {
                source
                    .uris
                    .iter()
                    .filter(|uri| {
                        (uri.starts_with("http://") || uri.starts_with("https://"))
                            && !uri.contains("security")
                    })
                    .filter_map(move |uri| {
                        Some((
                            rank(suite)?,
                            Mirror {
                                uri: uri.trim_end_matches('/').to_string(),
                                file: source.file.clone(),
                                suite: suite.clone(),
                            },
                        ))
                    })
            })
        })
        .enumerate()
        .min_by_key(|(order, (rank, _))| (*rank, *order))
        .map(|(_, (_, mirror))| mirror)
}

/// The mirror apt on this host would use for `release`, read from `etc_apt`.
pub fn host_mirror(etc_apt: &Path, release: &str) -> Result<Mirror, String> {
    let files = source_files(etc_apt);
    let mut sources = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .map_err(|err| format!("cannot read {}: {err}", file.display()))?;
        sources.extend(parse(file, &text));
    }
    pick(&sources, release).ok_or_else(|| {
        format!(
            "no Debian archive for `{release}` (a `deb` entry with suite {release}, \
             {release}-updates or another Debian release, component main, not the security \
             archive) in {}; set CUBBI_TEST_DEBIAN_MIRROR=http://.../debian",
            files
                .iter()
                .map(|file| file.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Realistic sets of sources, in several orders (run by the integration binary's harness).
pub fn self_check() -> Result<(), String> {
    let debian = (
        "debian.sources",
        "Types: deb\n\
         # http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
         URIs: http://deb.example.org/debian\n\
         Suites: bookworm bookworm-updates\n\
         Components: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
         \n\
         Types: deb\n\
         URIs: http://deb.example.org/debian-security\n\
         Suites: bookworm-security\n\
         Components: main\n",
    );
    let nodesource = (
        "nodesource.sources",
        "Types: deb\nURIs: https://deb.nodesource.example/node_20.x\nSuites: nodistro\n\
         Components: main\nArchitectures: amd64\nSigned-By: /usr/share/keyrings/nodesource.gpg\n",
    );
    let docker = (
        "docker.list",
        "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] \
         https://download.docker.example/linux/debian bookworm stable\n",
    );
    let cloud_sdk = (
        "google-cloud-sdk.list",
        "deb [signed-by=/usr/share/keyrings/cloud.google.gpg] \
         https://packages.cloud.example/apt cloud-sdk-bookworm main\n",
    );
    let disabled = (
        "aaa-disabled.sources",
        "Types: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\nComponents: main\n\
         Enabled: no\n",
    );
    let parts = [debian, nodesource, docker, cloud_sdk, disabled];
    let expected = Mirror {
        uri: "http://deb.example.org/debian".into(),
        file: PathBuf::from("debian.sources"),
        suite: "bookworm".into(),
    };
    // Every rotation and its reverse: apt's order must not matter for which archive wins.
    for shift in 0..parts.len() {
        for reverse in [false, true] {
            let mut order: Vec<_> = parts.iter().cycle().skip(shift).take(parts.len()).collect();
            if reverse {
                order.reverse();
            }
            let sources: Vec<Source> = order
                .iter()
                .flat_map(|(name, text)| parse(Path::new(name), text))
                .collect();
            let picked = pick(&sources, "bookworm");
            if picked.as_ref() != Some(&expected) {
                return Err(format!("order {order:?}: picked {picked:?}"));
            }
        }
    }

    // Third-party entries alone are never a Debian mirror.
    let third_party: Vec<Source> = [nodesource, docker, cloud_sdk, disabled]
        .iter()
        .flat_map(|(name, text)| parse(Path::new(name), text))
        .collect();
    if let Some(mirror) = pick(&third_party, "bookworm") {
        return Err(format!("a third-party source was taken: {mirror:?}"));
    }

    // One-line sources.list with deb-src, comments and an options block; a trixie host's
    // Debian mirror still serves bookworm.
    let list = "# deb http://commented.example/debian bookworm main\n\
                deb-src http://src.example/debian bookworm main\n\
                deb [arch=amd64] http://deb.example.net/debian/ trixie main contrib\n\
                deb http://security.example.net/debian-security trixie-security main\n";
    let sources = parse(Path::new("sources.list"), list);
    let picked = pick(&sources, "bookworm").map(|m| m.uri);
    if picked.as_deref() != Some("http://deb.example.net/debian") {
        return Err(format!("sources.list: picked {picked:?}"));
    }

    // The files apt reads: a disabled or renamed file is not one of them.
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let parts_dir = dir.path().join("sources.list.d");
    std::fs::create_dir(&parts_dir).map_err(|e| e.to_string())?;
    for name in [
        "debian.sources",
        "nodesource.sources.disabled-by-admin",
        "cloud.list.save",
        "docker.list",
    ] {
        std::fs::write(parts_dir.join(name), "").map_err(|e| e.to_string())?;
    }
    let read: Vec<String> = source_files(dir.path())
        .iter()
        .filter_map(|p| Some(p.file_name()?.to_str()?.to_string()))
        .collect();
    if read != ["debian.sources", "docker.list"] {
        return Err(format!("files read: {read:?}"));
    }
    match host_mirror(dir.path(), "bookworm") {
        Err(message) if message.contains("CUBBI_TEST_DEBIAN_MIRROR") => Ok(()),
        other => Err(format!("empty sources: {other:?}")),
    }
}
