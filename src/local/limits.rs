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

/// `--cpus` as Docker's NanoCpus; by default half the host's cores (at least one).
pub fn nano_cpus(cpus: Option<f64>, host_cores: usize) -> Result<i64, ApiError> {
    let cpus = cpus.unwrap_or_else(|| (host_cores as f64 / 2.0).max(1.0));
    if !(cpus > 0.0 && cpus <= host_cores.max(1) as f64) {
        return Err(ApiError::invalid(format!(
            "--cpus {cpus} is out of range: this host has {host_cores} cores"
        )));
    }
    Ok((cpus * 1e9) as i64)
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
    fn cpus_default_to_half_the_host() {
        assert_eq!(nano_cpus(None, 2).unwrap(), 1_000_000_000);
        assert_eq!(nano_cpus(None, 8).unwrap(), 4_000_000_000);
        assert_eq!(nano_cpus(None, 1).unwrap(), 1_000_000_000);
        assert_eq!(nano_cpus(Some(0.5), 2).unwrap(), 500_000_000);
        assert!(nano_cpus(Some(0.0), 2).is_err());
        assert!(nano_cpus(Some(3.0), 2).is_err());
    }
}
