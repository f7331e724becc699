//! IEEE 754 half-precision conversion for weight storage.
//!
//! Written here (20 lines) rather than pulled in as a crate: the exporter only ever converts
//! f32 → f16 bits, once per weight, and ONNX wants the raw `u16` bit patterns anyway.

/// Largest finite half-precision value.
pub const F16_MAX: f32 = 65504.0;

/// Converts an `f32` to the bit pattern of the nearest `f16` (round to nearest, ties to
/// even, as hardware conversions do). Values beyond ±65504 (after rounding) become ±∞,
/// magnitudes below 2⁻²⁵ become ±0, and NaN stays NaN.
pub fn f32_to_f16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x007f_ffff;
    if exp == 0xff {
        // ∞ keeps a zero mantissa; NaN keeps a non-zero (quiet) one.
        let nan = if man != 0 {
            0x0200 | (man >> 13) as u16
        } else {
            0
        };
        return sign | 0x7c00 | nan;
    }
    // Exponent rebased from f32's bias (127) to f16's (15).
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    let (kept, rem, halfway) = if e <= 0 {
        // Subnormal result: shift the mantissa, implicit leading one included, so that one
        // unit is 2⁻²⁴.
        if e < -10 {
            return sign;
        }
        let m = man | 0x0080_0000;
        let shift = (14 - e) as u32;
        (m >> shift, m & ((1 << shift) - 1), 1u32 << (shift - 1))
    } else {
        (((e as u32) << 10) | (man >> 13), man & 0x1fff, 0x1000)
    };
    // A carry out of the mantissa correctly bumps the exponent (up to ∞).
    let rounded = if rem > halfway || (rem == halfway && kept & 1 == 1) {
        kept + 1
    } else {
        kept
    };
    sign | rounded as u16
}

/// Converts half-precision bits back to `f32` (exact); used by tests and by checks that
/// compare stored weights with the originals.
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let man = f32::from(h & 0x03ff);
    match exp {
        0 => sign * man * 2f32.powi(-24),
        0x1f if man == 0.0 => sign * f32::INFINITY,
        0x1f => f32::NAN,
        _ => sign * (1.0 + man / 1024.0) * 2f32.powi(exp - 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_bit_patterns() {
        assert_eq!(f32_to_f16_bits(0.0), 0x0000);
        assert_eq!(f32_to_f16_bits(-0.0), 0x8000);
        assert_eq!(f32_to_f16_bits(1.0), 0x3c00);
        assert_eq!(f32_to_f16_bits(-2.0), 0xc000);
        assert_eq!(f32_to_f16_bits(0.5), 0x3800);
        assert_eq!(f32_to_f16_bits(0.1), 0x2e66);
        assert_eq!(f32_to_f16_bits(F16_MAX), 0x7bff);
        assert_eq!(f32_to_f16_bits(2f32.powi(-14)), 0x0400, "smallest normal");
        assert_eq!(
            f32_to_f16_bits(2f32.powi(-24)),
            0x0001,
            "smallest subnormal"
        );
        assert_eq!(f32_to_f16_bits(1e-9), 0x0000, "underflows to zero");
        assert_eq!(f32_to_f16_bits(f32::INFINITY), 0x7c00);
        assert_eq!(f32_to_f16_bits(f32::NEG_INFINITY), 0xfc00);
        assert!(f16_bits_to_f32(f32_to_f16_bits(f32::NAN)).is_nan());
    }

    #[test]
    fn rounds_to_nearest_even() {
        let ulp = 2f32.powi(-10); // spacing of f16 values in [1, 2)
        assert_eq!(f32_to_f16_bits(1.0 + ulp / 2.0), 0x3c00, "tie goes to even");
        assert_eq!(f32_to_f16_bits(1.0 + 1.5 * ulp), 0x3c02, "tie goes to even");
        assert_eq!(f32_to_f16_bits(1.0 + 0.6 * ulp), 0x3c01);
        assert_eq!(f32_to_f16_bits(65520.0), 0x7c00, "rounds past the max to ∞");
        assert_eq!(f32_to_f16_bits(65519.0), 0x7bff);
        assert_eq!(
            f32_to_f16_bits(2f32.powi(-25)),
            0x0000,
            "subnormal tie to even"
        );
        assert_eq!(f32_to_f16_bits(1.5 * 2f32.powi(-24)), 0x0002);
    }

    #[test]
    fn round_trip_error_is_within_half_an_ulp() {
        let mut x = -3.0f32;
        while x < 3.0 {
            let back = f16_bits_to_f32(f32_to_f16_bits(x));
            // relative half-ulp of f16 is 2⁻¹¹ for normal values
            assert!(
                (back - x).abs() <= x.abs() * 2f32.powi(-11) + 2f32.powi(-25),
                "{x}"
            );
            x += 0.000_731;
        }
    }
}
