//! Benchmarks for Hayloft: shared helpers for the criterion benches and binaries.

pub mod disk;
pub mod workload;

/// Parses a size: bytes, or a number with `KiB`/`K`, `MiB`/`M` or
/// `GiB`/`G` (powers of 1024).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = digits.parse().map_err(|e| format!("size {text:?}: {e}"))?;
    let multiplier = match unit {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => return Err(format!("unknown unit {other:?}")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| "size overflows".to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(super::parse_size("4096"), Ok(4096));
        assert_eq!(super::parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(super::parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(super::parse_size("1GiB"), Ok(1 << 30));
        assert!(super::parse_size("1TB").is_err());
        assert!(super::parse_size("KiB").is_err());
    }
}
