//! Floats written as Python writes them: `repr` and `floatToGoString`.
//!
//! Python's `repr` gives the shortest string that reads back to the same float, switching to
//! exponent notation below `1e-4` and from `1e16` on. `floatToGoString` (used for every value and
//! every `le` label in the exposition and in histogram keys) writes `+Inf`, `-Inf`, `NaN`, and
//! switches to exponent notation sooner for positive values, as Go does (`1e+06`).

use std::fmt::Write;

/// Writes `x` as Python's `repr(float)` does.
///
/// ```
/// use prometheus_multiproc_format::float::python_repr;
/// assert_eq!(python_repr(1.0), "1.0");
/// assert_eq!(python_repr(0.005), "0.005");
/// assert_eq!(python_repr(1e16), "1e+16");
/// assert_eq!(python_repr(1e-5), "1e-05");
/// assert_eq!(python_repr(-0.0), "-0.0");
/// assert_eq!(python_repr(f64::INFINITY), "inf");
/// ```
pub fn python_repr(x: f64) -> String {
    let mut out = String::with_capacity(24);
    write_python_repr(&mut out, x);
    out
}

/// Appends `x` as Python's `repr(float)` writes it to `out`.
pub fn write_python_repr(out: &mut String, x: f64) {
    if x.is_nan() {
        out.push_str("nan");
        return;
    }
    if x.is_infinite() {
        out.push_str(if x > 0.0 { "inf" } else { "-inf" });
        return;
    }
    let mut buf = Digits::default();
    let decpt = buf.shortest(x.abs());
    if x.is_sign_negative() {
        out.push('-');
    }
    let digits = buf.as_str();
    let n = digits.len() as i32;
    if decpt <= -4 || decpt > 16 {
        // Exponent notation: d[.ddd]e[+-]XX, at least two exponent digits.
        out.push_str(&digits[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let exp = decpt - 1;
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    } else if decpt <= 0 {
        out.push_str("0.");
        for _ in 0..-decpt {
            out.push('0');
        }
        out.push_str(digits);
    } else if decpt >= n {
        out.push_str(digits);
        for _ in 0..decpt - n {
            out.push('0');
        }
        out.push_str(".0");
    } else {
        out.push_str(&digits[..decpt as usize]);
        out.push('.');
        out.push_str(&digits[decpt as usize..]);
    }
}

/// The shortest round-trip decimal digits of a float, on the stack.
struct Digits {
    buf: [u8; 40],
    len: usize,
}

impl Default for Digits {
    fn default() -> Digits {
        Digits {
            buf: [0; 40],
            len: 0,
        }
    }
}

impl Write for Digits {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl Digits {
    /// Fills in the digits of a finite, non-negative `x` and returns the position of the
    /// decimal point: `x = 0.DIGITS * 10^decpt`.
    fn shortest(&mut self, x: f64) -> i32 {
        // Rust's `{:e}` is the shortest representation that reads back exactly, like Python's
        // repr: `1.2345e-7`, `5e0`.
        self.len = 0;
        let _ = write!(self, "{x:e}");
        let text = &self.buf[..self.len];
        let e = text.iter().position(|&c| c == b'e').unwrap_or(text.len());
        let mut exp: i32 = 0;
        let mut negative = false;
        for &c in &text[(e + 1).min(text.len())..] {
            match c {
                b'-' => negative = true,
                b'0'..=b'9' => exp = exp * 10 + i32::from(c - b'0'),
                _ => {}
            }
        }
        if negative {
            exp = -exp;
        }
        // Drop the '.' from the mantissa, keeping the digits in place.
        let mut len = 0;
        for i in 0..e {
            let c = self.buf[i];
            if c != b'.' {
                self.buf[len] = c;
                len += 1;
            }
        }
        self.len = len;
        if self.as_str() == "0" {
            return 1;
        }
        self.break_tie_to_even(x, exp);
        exp + 1
    }

    /// When two digit strings of the same length are equally near `x` (an exact tie), Python's
    /// `repr` (David Gay's dtoa) takes the one whose last digit is even; Rust's formatter may
    /// take the other. Only an odd last digit can need the change, and only when the neighbour
    /// also reads back as `x` is it worth the exact check.
    fn break_tie_to_even(&mut self, x: f64, exp: i32) {
        let n = self.len;
        let last = self.buf[n - 1];
        if (last - b'0').is_multiple_of(2) {
            return;
        }
        for neighbour in [last - 1, last + 1] {
            if neighbour > b'9' {
                continue;
            }
            let mut candidate = Digits::default();
            let _ = candidate.write_str(&self.as_str()[..n - 1]);
            candidate.buf[n - 1] = neighbour;
            candidate.len = n;
            let mut text = String::with_capacity(48);
            text.push_str(&candidate.as_str()[..1]);
            text.push('.');
            text.push_str(&candidate.as_str()[1..]);
            let _ = write!(text, "e{exp}");
            if text.parse::<f64>() != Ok(x) {
                continue;
            }
            // Both read back as `x`: is `x` exactly halfway between them? Then its exact
            // decimal expansion is the lower string followed by a single 5.
            let lower = if neighbour < last { &candidate } else { &*self };
            let exact = format!("{:.1100e}", x);
            let mantissa = exact.split('e').next().unwrap_or("");
            let digits: Vec<u8> = mantissa.bytes().filter(|c| *c != b'.').collect();
            let tie = digits.len() > n
                && digits[..n] == lower.buf[..n]
                && digits[n] == b'5'
                && digits[n + 1..].iter().all(|&c| c == b'0');
            if tie {
                self.buf[n - 1] = neighbour;
                return;
            }
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("0")
    }
}

/// Writes `x` as Python's `prometheus_client.utils.floatToGoString` does.
///
/// ```
/// use prometheus_multiproc_format::float::go_float;
/// assert_eq!(go_float(f64::INFINITY), "+Inf");
/// assert_eq!(go_float(f64::NEG_INFINITY), "-Inf");
/// assert_eq!(go_float(f64::NAN), "NaN");
/// assert_eq!(go_float(0.25), "0.25");
/// assert_eq!(go_float(1e6), "1e+06");
/// assert_eq!(go_float(1234567.5), "1.2345675e+06");
/// assert_eq!(go_float(123456.0), "123456.0");
/// assert_eq!(go_float(-1e6), "-1000000.0");
/// ```
pub fn go_float(x: f64) -> String {
    let mut out = String::with_capacity(24);
    write_go_float(&mut out, x);
    out
}

/// Appends `x` as `floatToGoString` writes it to `out`.
pub fn write_go_float(out: &mut String, x: f64) {
    if x.is_nan() {
        out.push_str("NaN");
        return;
    }
    if x == f64::INFINITY {
        out.push_str("+Inf");
        return;
    }
    if x == f64::NEG_INFINITY {
        out.push_str("-Inf");
        return;
    }
    let start = out.len();
    write_python_repr(out, x);
    let s = &out[start..];
    // Go switches to exponents sooner than Python (only positive values matter for `le`).
    let dot = s.find('.');
    if let Some(dot) = dot.filter(|&d| x > 0.0 && d > 6) {
        let mut mantissa = String::with_capacity(s.len());
        mantissa.push_str(&s[..1]);
        mantissa.push('.');
        mantissa.push_str(&s[1..dot]);
        mantissa.push_str(&s[dot + 1..]);
        let trimmed = mantissa.trim_end_matches(['0', '.']).to_owned();
        out.truncate(start);
        let _ = write!(out, "{}e+{:02}", trimmed, dot - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_matches_python_on_known_values() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0.0"),
            (1.5, "1.5"),
            (100.0, "100.0"),
            (0.1, "0.1"),
            (1e-4, "0.0001"),
            (1.5e-5, "1.5e-05"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e20, "1.2345e+20"),
            (1e300, "1e+300"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (123456789.125, "123456789.125"),
            (-2.5, "-2.5"),
        ];
        for (x, want) in cases {
            assert_eq!(python_repr(*x), *want, "repr({x:e})");
        }
    }

    #[test]
    fn go_float_matches_python_on_le_values() {
        let cases: &[(f64, &str)] = &[
            (0.005, "0.005"),
            (10.0, "10.0"),
            (1e5, "100000.0"),
            (1e6, "1e+06"),
            (2.5e6, "2.5e+06"),
            (1e16, "1e+16"),
            (1e20, "1e+20"),
            (0.0, "0.0"),
        ];
        for (x, want) in cases {
            assert_eq!(go_float(*x), *want, "floatToGoString({x:e})");
        }
    }
}
