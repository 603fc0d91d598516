//! Resource limits in the forms users type them.

use crate::api::ApiError;

/// Docker's memory syntax: a number with an optional unit b, k, m, g, t (`512m`, `4g`, `4GB`).
pub fn parse_memory(raw: &str) -> Result<i64, ApiError> {
    let invalid = || {
        ApiError::invalid(format!(
            "`{raw}` is not a memory size; use a number with a unit, e.g. 512m or 4g"
        ))
    };
    let text = raw.trim().to_ascii_lowercase();
    let text = text
        .strip_suffix('b')
        .filter(|t| !t.is_empty())
        .unwrap_or(&text);
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let factor: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(invalid()),
    };
    let bytes = number * factor;
    // Docker itself refuses limits under 6 MiB; say so before it does.
    if !(bytes.is_finite() && bytes >= 6.0 * 1024.0 * 1024.0 && bytes < i64::MAX as f64) {
        return Err(ApiError::invalid(format!(
            "memory limit `{raw}` is out of range (at least 6m)"
        )));
    }
    Ok(bytes as i64)
}

/// The memory limit when none is given: half the host's memory.
pub fn default_memory(host_bytes: i64) -> i64 {
    (host_bytes / 2).max(6 * 1024 * 1024)
}

/// The host's memory in bytes (MemTotal of /proc/meminfo).
pub fn host_memory() -> Result<i64, ApiError> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .map_err(|err| ApiError::unavailable(format!("cannot read /proc/meminfo: {err}")))?;
    parse_mem_total(&text).ok_or_else(|| {
        ApiError::unavailable(
            "no MemTotal in /proc/meminfo; give the session a limit with --memory",
        )
    })
}

fn parse_mem_total(meminfo: &str) -> Option<i64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: i64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// `--pids-limit`, by default [`crate::api::DEFAULT_PIDS_LIMIT`]; at least 64 (systemd, sshd
/// and the inner dockerd need a few dozen before the agent runs anything).
pub fn pids_limit(requested: Option<i64>) -> Result<i64, ApiError> {
    let limit = requested.unwrap_or(crate::api::DEFAULT_PIDS_LIMIT);
    if !(64..=4_194_304).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "pids limit {limit} is out of range: give 64 to 4194304 (default {})",
            crate::api::DEFAULT_PIDS_LIMIT
        )));
    }
    Ok(limit)
}

/// The smallest CPU limit: Docker's NanoCpus of anything smaller rounds to 0, which means no
/// limit at all.
pub const MIN_CPUS: f64 = 0.01;

/// A CPU count a limit may be: finite and at least [`MIN_CPUS`].
pub fn check_cpus(cpus: f64) -> Result<f64, ApiError> {
    if !(cpus.is_finite() && cpus >= MIN_CPUS) {
        return Err(ApiError::invalid(format!(
            "{cpus} CPUs is not a limit: give at least {MIN_CPUS}"
        )));
    }
    Ok(cpus)
}

/// `--cpus` as Docker's NanoCpus; by default half the host's cores (at least one).
pub fn nano_cpus(cpus: Option<CpuLimit>, host_cores: usize) -> Result<i64, ApiError> {
    let cpus = match cpus {
        Some(limit) => limit.cpus(),
        None => check_cpus((host_cores as f64 / 2.0).max(1.0))?,
    };
    if cpus > host_cores.max(1) as f64 {
        return Err(ApiError::invalid(format!(
            "--cpus {cpus} is out of range: this host has {host_cores} cores"
        )));
    }
    Ok((cpus * 1e9) as i64)
}

/// A memory size, parsed once from Docker's syntax (`512m`, `4g`, a plain byte count) where it
/// enters: clap, serde, the config. Serialized as its byte count, which parses back the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemoryLimit(i64);

impl MemoryLimit {
    pub fn from_bytes(bytes: i64) -> Result<Self, ApiError> {
        parse_memory(&bytes.to_string()).map(Self)
    }

    pub fn bytes(self) -> i64 {
        self.0
    }
}

impl std::str::FromStr for MemoryLimit {
    type Err = ApiError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_memory(text).map(Self)
    }
}

impl std::fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MIB: i64 = 1024 * 1024;
        if self.0 % (1024 * MIB) == 0 {
            write!(f, "{}g", self.0 / (1024 * MIB))
        } else if self.0 % MIB == 0 {
            write!(f, "{}m", self.0 / MIB)
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl serde::Serialize for MemoryLimit {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for MemoryLimit {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A CPU limit: finite and at least [`MIN_CPUS`] (NanoCpus of anything less is 0, no limit).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct CpuLimit(f64);

impl CpuLimit {
    pub fn new(cpus: f64) -> Result<Self, ApiError> {
        check_cpus(cpus).map(Self)
    }

    pub fn cpus(self) -> f64 {
        self.0
    }
}

impl std::str::FromStr for CpuLimit {
    type Err = ApiError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let cpus: f64 = text
            .trim()
            .parse()
            .map_err(|_| ApiError::invalid(format!("`{text}` is not a number of CPUs")))?;
        Self::new(cpus)
    }
}

impl std::fmt::Display for CpuLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl serde::Serialize for CpuLimit {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for CpuLimit {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::new(f64::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// A limit on a session's processes: 64 to 4194304.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PidsLimit(i64);

impl PidsLimit {
    pub fn new(limit: i64) -> Result<Self, ApiError> {
        pids_limit(Some(limit)).map(Self)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl Default for PidsLimit {
    fn default() -> Self {
        Self(crate::api::DEFAULT_PIDS_LIMIT)
    }
}

impl std::str::FromStr for PidsLimit {
    type Err = ApiError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let limit: i64 = text
            .trim()
            .parse()
            .map_err(|_| ApiError::invalid(format!("`{text}` is not a number of processes")))?;
        Self::new(limit)
    }
}

impl std::fmt::Display for PidsLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl serde::Serialize for PidsLimit {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for PidsLimit {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::new(i64::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// A limit on what a session writes to its root file system, as the engine's storage
/// driver counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLimit {
    /// Bytes a session may write.
    pub writable_bytes: i64,
    /// The driver's size counts the image too (btrfs: the size of the whole root file
    /// system), not only what the session wrote (overlay2 on XFS).
    pub counts_image: bool,
}

impl DiskLimit {
    /// `StorageOpt size` for a session of an image of `image_bytes`, so the session may write
    /// `writable_bytes` whatever the driver counts.
    pub fn storage_size(&self, image_bytes: i64) -> i64 {
        if self.counts_image {
            self.writable_bytes.saturating_add(image_bytes.max(0))
        } else {
            self.writable_bytes
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units() {
        assert_eq!(parse_memory("512m").unwrap(), 512 * 1024 * 1024);
        assert_eq!(parse_memory("4g").unwrap(), 4 * 1024 * 1024 * 1024);
        assert_eq!(parse_memory("4GB").unwrap(), 4 * 1024 * 1024 * 1024);
        assert_eq!(parse_memory("1.5g").unwrap(), 1536 * 1024 * 1024);
        for bad in ["", "g", "12x", "-1g", "1k", "lots"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_defaults_to_half_the_host() {
        let meminfo = "MemTotal:       24576000 kB\nMemFree:        1000 kB\n";
        let total = parse_mem_total(meminfo).unwrap();
        assert_eq!(total, 24_576_000 * 1024);
        assert_eq!(default_memory(total), 12_288_000 * 1024);
        assert!(parse_mem_total("MemFree: 1 kB\n").is_none());
        assert!(host_memory().unwrap() > 0);
    }

    #[test]
    fn pids_limit_has_a_default_and_a_range() {
        assert_eq!(pids_limit(None).unwrap(), 4096);
        assert_eq!(pids_limit(Some(100)).unwrap(), 100);
        for bad in [0, -1, 10, 5_000_000] {
            let err = pids_limit(Some(bad)).unwrap_err();
            assert_eq!(err.code(), crate::api::ErrorCode::Invalid, "{bad}");
        }
    }

    #[test]
    fn a_cpu_limit_too_small_to_be_one_is_refused() {
        // 1e-10 CPUs would be NanoCpus 0: no limit at all.
        for bad in [0.0, 1e-10, 0.009, -1.0, f64::NAN, f64::INFINITY] {
            assert!(check_cpus(bad).is_err(), "{bad}");
            assert!(CpuLimit::new(bad).is_err(), "{bad}");
        }
        let cpus = |n: f64| Some(CpuLimit::new(n).unwrap());
        assert_eq!(nano_cpus(cpus(0.01), 8).unwrap(), 10_000_000);
    }

    #[test]
    fn cpus_default_to_half_the_host() {
        assert_eq!(nano_cpus(None, 2).unwrap(), 1_000_000_000);
        assert_eq!(nano_cpus(None, 8).unwrap(), 4_000_000_000);
        assert_eq!(nano_cpus(None, 1).unwrap(), 1_000_000_000);
        let cpus = |n: f64| Some(CpuLimit::new(n).unwrap());
        assert_eq!(nano_cpus(cpus(0.5), 2).unwrap(), 500_000_000);
        assert!(nano_cpus(cpus(3.0), 2).is_err());
    }

    /// Limits parse once where they enter, refuse what Docker would misread, and go back and
    /// forth through serde unchanged.
    #[test]
    fn typed_limits_parse_at_the_edge_and_round_trip() {
        let memory: MemoryLimit = "4g".parse().unwrap();
        assert_eq!(memory.bytes(), 4 << 30);
        assert_eq!(memory.to_string(), "4g");
        let json = serde_json::to_string(&memory).unwrap();
        assert_eq!(serde_json::from_str::<MemoryLimit>(&json).unwrap(), memory);
        assert!("lots".parse::<MemoryLimit>().is_err());
        assert!(serde_json::from_str::<MemoryLimit>("\"1k\"").is_err());
        assert_eq!(
            MemoryLimit::from_bytes(768 << 20).unwrap().to_string(),
            "768m"
        );

        assert!(serde_json::from_str::<CpuLimit>("1e-10").is_err());
        assert!("0.001".parse::<CpuLimit>().is_err());
        assert_eq!(serde_json::from_str::<CpuLimit>("1.5").unwrap().cpus(), 1.5);
        assert!(CpuLimit::new(0.5).unwrap() < CpuLimit::new(2.0).unwrap());

        assert!(serde_json::from_str::<PidsLimit>("4194305").is_err());
        assert!("12".parse::<PidsLimit>().is_err());
        assert_eq!(
            serde_json::from_str::<PidsLimit>("2048").unwrap().get(),
            2048
        );
        assert_eq!(PidsLimit::default().get(), crate::api::DEFAULT_PIDS_LIMIT);
    }
}
