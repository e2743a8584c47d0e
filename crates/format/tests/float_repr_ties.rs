//! Floats whose shortest round-trip digits are a tie between two candidates, equally near the
//! exact binary value. Python's `repr` (David Gay's `dtoa`, mode 0) breaks the tie to the even
//! last digit; a formatter that rounds the tie up writes a different, equally short string, so
//! histogram `le` labels, keys and exposition values would not match Python's byte for byte.
//!
//! Expected strings are Python 3.11's `repr` and prometheus_client 0.26's `floatToGoString`.

use prometheus_multiproc_format::float::{go_float, python_repr};

/// (bits, repr, floatToGoString)
const TIES: &[(u64, &str, &str)] = &[
    (
        0x3f6d120000000000,
        "0.0035486221313476562",
        "0.0035486221313476562",
    ),
    (
        0x3f80290000000000,
        "0.007890701293945312",
        "0.007890701293945312",
    ),
    (
        0x3f88950000000000,
        "0.012002944946289062",
        "0.012002944946289062",
    ),
    (
        0x40a629f728000000,
        "2836.9827270507812",
        "2836.9827270507812",
    ),
    (
        0x40d7c88202000000,
        "24354.031372070312",
        "24354.031372070312",
    ),
    (0x40f370b3a5000000, "79627.22778320312", "79627.22778320312"),
    (
        0x40fae0bd51000000,
        "110091.83227539062",
        "110091.83227539062",
    ),
    (
        0x414c0f9112900000,
        "3677986.1450195312",
        "3.6779861450195312e+06",
    ),
    // 2**49 + 1.25 and 2**50 + 0.25.
    (
        0x430000000000000a,
        "562949953421313.2",
        "5.629499534213132e+14",
    ),
    (
        0x4310000000000001,
        "1125899906842624.2",
        "1.1258999068426242e+15",
    ),
];

#[test]
fn repr_breaks_shortest_digit_ties_to_even_like_python() {
    let mut wrong = Vec::new();
    for &(bits, repr, _) in TIES {
        let x = f64::from_bits(bits);
        if python_repr(x) != repr {
            wrong.push(format!("repr({x:e}): want {repr}, got {}", python_repr(x)));
        }
        let neg = format!("-{repr}");
        if python_repr(-x) != neg {
            wrong.push(format!(
                "repr({:e}): want {neg}, got {}",
                -x,
                python_repr(-x)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn float_to_go_string_breaks_shortest_digit_ties_to_even_like_python() {
    let mut wrong = Vec::new();
    for &(bits, repr, go) in TIES {
        let x = f64::from_bits(bits);
        if go_float(x) != go {
            wrong.push(format!(
                "floatToGoString({x:e}): want {go}, got {}",
                go_float(x)
            ));
        }
        // Negative values keep Python's repr.
        let neg = format!("-{repr}");
        if go_float(-x) != neg {
            wrong.push(format!(
                "floatToGoString({:e}): want {neg}, got {}",
                -x,
                go_float(-x)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
