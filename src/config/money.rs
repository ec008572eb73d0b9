//! Exact decimal prices. A price is written as a string of USD per million
//! tokens ("0.40") and kept as integer nano-USD per million tokens, so no
//! floating point ever touches money.

/// Nano-USD (1e-9 USD). All balances, prices and costs use this unit.
pub type NanoUsd = i64;

const NANOS_PER_USD: i64 = 1_000_000_000;

/// Parses a non-negative decimal USD amount with at most 9 fractional digits
/// into nano-USD. Returns a sentence saying what is wrong otherwise.
pub fn parse_usd(text: &str) -> Result<NanoUsd, String> {
    let text = text.trim();
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !(frac.is_empty() || digits(frac)) {
        return Err(format!(
            "{text:?} is not a plain decimal number such as \"0.40\""
        ));
    }
    if frac.len() > 9 {
        return Err(format!(
            "{text:?} has more than 9 decimal places (the gateway counts in nano-USD)"
        ));
    }
    let whole: i64 = whole
        .parse()
        .ok()
        .filter(|w: &i64| *w <= 1_000_000)
        .ok_or_else(|| format!("{text:?} is larger than 1000000 USD"))?;
    let frac_nanos: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().expect("nine ASCII digits")
    };
    Ok(whole * NANOS_PER_USD + frac_nanos)
}

/// Renders nano-USD per million tokens as USD per single token, the unit of
/// OpenRouter's `pricing` strings ("0.0000004"). Exact: integer arithmetic.
pub fn per_token_usd_string(nano_per_million: NanoUsd) -> String {
    // USD per token = nano_per_million / 1e9 / 1e6 = nano_per_million / 1e15.
    const SCALE: i64 = 1_000_000_000_000_000;
    let whole = nano_per_million / SCALE;
    let frac = nano_per_million % SCALE;
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:015}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// Renders nano-USD as an exact decimal USD amount ("0.000123", "-1.5",
/// "0"): valid both as a JSON number and as a string for people.
pub fn usd_string(nano: NanoUsd) -> String {
    let sign = if nano < 0 { "-" } else { "" };
    let abs = nano.unsigned_abs();
    let whole = abs / NANOS_PER_USD as u64;
    let frac = abs % NANOS_PER_USD as u64;
    if frac == 0 {
        return format!("{sign}{whole}");
    }
    let frac = format!("{frac:09}");
    format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
}

/// Parses a signed decimal USD amount (an adjustment may be negative).
pub fn parse_signed_usd(text: &str) -> Result<NanoUsd, String> {
    match text.trim().strip_prefix('-') {
        Some(rest) => parse_usd(rest).map(|n| -n),
        None => parse_usd(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_decimals() {
        let cases = [
            ("0", 0),
            ("0.40", 400_000_000),
            ("1.6", 1_600_000_000),
            ("15", 15_000_000_000),
            ("0.000000001", 1),
        ];
        for (text, want) in cases {
            assert_eq!(parse_usd(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_what_is_not_an_exact_amount() {
        for text in [
            "",
            "-1",
            "1e3",
            "0.0000000001",
            "abc",
            "1.2.3",
            ".5",
            "2000000",
        ] {
            assert!(parse_usd(text).is_err(), "{text} should be rejected");
        }
    }

    #[test]
    fn renders_per_token_strings() {
        assert_eq!(per_token_usd_string(400_000_000), "0.0000004");
        assert_eq!(per_token_usd_string(1_600_000_000), "0.0000016");
        assert_eq!(per_token_usd_string(0), "0");
        assert_eq!(per_token_usd_string(75_000_000), "0.000000075");
    }

    #[test]
    fn usd_strings_are_exact_and_signed() {
        assert_eq!(usd_string(0), "0");
        assert_eq!(usd_string(123), "0.000000123");
        assert_eq!(usd_string(-1_500_000_000), "-1.5");
        assert_eq!(usd_string(i64::MIN), "-9223372036.854775808");
        assert_eq!(parse_signed_usd("-0.25"), Ok(-250_000_000));
        assert_eq!(parse_signed_usd("2"), Ok(2_000_000_000));
    }
}
