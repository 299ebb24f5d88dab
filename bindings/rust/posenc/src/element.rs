//! Element types of activations (f32, F16, Bf16) and KV caches (those and Fp8E4m3), with exact conversions.

use crate::sys;

mod sealed {
    pub trait Sealed {}
}

/// An activation element type the engines read and write.
pub trait Element: Copy + sealed::Sealed {
    /// posenc.h's POSENC_DTYPE_* value.
    const DTYPE: i32;
}

/// A KV-cache element type.
pub trait CacheElement: Copy + sealed::Sealed {
    /// posenc.h's POSENC_CACHE_* value.
    const CACHE_DTYPE: i32;
}

/// IEEE binary16, as its bits.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct F16(pub u16);

/// bfloat16, as its bits.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Bf16(pub u16);

/// OCP E4M3FN (the fp8 KV cache), as its bits; read a value back as `to_f32() * scale`.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Fp8E4m3(pub u8);

/// Seals the element types and gives each its posenc.h number: activation (`DTYPE`) where it is one,
/// KV cache (`CACHE_DTYPE`).
macro_rules! elements {
    ($($ty:ty: $($dtype:ident)? / $cache:ident;)*) => {$(
        impl sealed::Sealed for $ty {}
        $(impl Element for $ty {
            const DTYPE: i32 = sys::$dtype;
        })?
        impl CacheElement for $ty {
            const CACHE_DTYPE: i32 = sys::$cache;
        }
    )*};
}
elements!(
    f32: POSENC_DTYPE_F32 / POSENC_CACHE_F32;
    F16: POSENC_DTYPE_F16 / POSENC_CACHE_F16;
    Bf16: POSENC_DTYPE_BF16 / POSENC_CACHE_BF16;
    Fp8E4m3: / POSENC_CACHE_FP8_E4M3;
);

impl Bf16 {
    /// Rounds to nearest even (NaN stays a quiet NaN), as PyTorch's cast does.
    pub fn from_f32(f: f32) -> Bf16 {
        let u = f.to_bits();
        if u & 0x7fff_ffff > 0x7f80_0000 {
            return Bf16(((u >> 16) | 0x40) as u16);
        }
        Bf16((u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16)
    }
    /// Exact.
    pub fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
}

impl F16 {
    /// Rounds to nearest even, with subnormals, overflow to infinity, NaN kept quiet.
    pub fn from_f32(f: f32) -> F16 {
        let u = f.to_bits();
        let sign = ((u >> 16) & 0x8000) as u16;
        let abs = u & 0x7fff_ffff;
        if abs > 0x7f80_0000 {
            return F16(sign | 0x7e00 | ((abs >> 13) & 0x3ff) as u16);
        }
        if abs >= 0x4780_0000 {
            // >= 65536: beyond the largest finite half (65504) even after rounding.
            return F16(sign | 0x7c00);
        }
        let exponent = (abs >> 23) as i32 - 127;
        if exponent >= -14 {
            // Normal: drop 13 mantissa bits, rounding to nearest even (a carry may reach infinity).
            let rebased = abs - ((127 - 15) << 23);
            let rounded = rebased + 0xfff + ((rebased >> 13) & 1);
            return F16(sign | (rounded >> 13) as u16);
        }
        if exponent < -25 {
            return F16(sign); // below half the smallest subnormal: rounds to zero
        }
        // Subnormal: the value in units of 2^-24, rounded to nearest even.
        let mantissa = (abs & 0x007f_ffff) | 0x0080_0000;
        let shift = (-exponent - 1) as u32; // value = mantissa * 2^(exponent - 23) = (mantissa >> shift) units of 2^-24
        let half = 1u32 << (shift - 1);
        let bits = mantissa >> shift;
        let rest = mantissa & ((1u32 << shift) - 1);
        let rounded = if rest > half || (rest == half && bits & 1 == 1) { bits + 1 } else { bits };
        F16(sign | rounded as u16)
    }
    /// Exact.
    pub fn to_f32(self) -> f32 {
        let h = self.0 as u32;
        let sign = (h & 0x8000) << 16;
        let exponent = (h >> 10) & 0x1f;
        let mantissa = h & 0x3ff;
        let magnitude = if exponent == 0x1f {
            0x7f80_0000 | (mantissa << 13)
        } else if exponent != 0 {
            ((exponent + 127 - 15) << 23) | (mantissa << 13)
        } else {
            // Subnormal: mantissa * 2^-24, exact in f32.
            let two_to_minus_24 = f32::from_bits(0x3380_0000);
            return f32::from_bits(sign) + (if sign != 0 { -1.0 } else { 1.0 }) * mantissa as f32 * two_to_minus_24;
        };
        f32::from_bits(sign | magnitude)
    }
}

impl Fp8E4m3 {
    /// Exact (0x7f and 0xff are NaN).
    pub fn to_f32(self) -> f32 {
        let sign = if self.0 & 0x80 != 0 { -1.0f32 } else { 1.0 };
        let exponent = ((self.0 >> 3) & 0x0f) as i32;
        let mantissa = (self.0 & 0x07) as f32;
        if self.0 & 0x7f == 0x7f {
            return f32::NAN;
        }
        if exponent == 0 {
            return sign * mantissa * 2f32.powi(-9); // subnormal: m/8 * 2^-6
        }
        sign * (1.0 + mantissa / 8.0) * 2f32.powi(exponent - 7)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(Bf16::from_f32(1.0).0, 0x3f80);
        assert_eq!(Bf16::from_f32(f32::from_bits(0x3f80_8000)).0, 0x3f80); // tie to even (down)
        assert_eq!(Bf16::from_f32(f32::from_bits(0x3f81_8000)).0, 0x3f82); // tie to even (up)
        assert_eq!(Bf16::from_f32(f32::from_bits(0x3f80_8001)).0, 0x3f81);
        assert!(Bf16::from_f32(f32::NAN).to_f32().is_nan());
        for bits in 0..=u16::MAX {
            let value = Bf16(bits);
            if !value.to_f32().is_nan() {
                assert_eq!(Bf16::from_f32(value.to_f32()), value);
            }
        }
    }

    #[test]
    fn f16_round_trips_and_rounds() {
        for bits in 0..=u16::MAX {
            let value = F16(bits);
            let f = value.to_f32();
            if f.is_nan() {
                assert!(F16::from_f32(f).to_f32().is_nan());
            } else {
                assert_eq!(F16::from_f32(f), value, "bits {:#06x} -> {}", bits, f);
            }
        }
        assert_eq!(F16::from_f32(1.0).0, 0x3c00);
        assert_eq!(F16::from_f32(65504.0).0, 0x7bff);
        assert_eq!(F16::from_f32(65520.0).0, 0x7c00); // halfway to 65536 rounds to even: infinity
        assert_eq!(F16::from_f32(65519.0).0, 0x7bff);
        assert_eq!(F16::from_f32(f32::from_bits(0x3380_0000)).0, 0x0001); // 2^-24, the smallest subnormal
        assert_eq!(F16::from_f32(f32::from_bits(0x3300_0000)).0, 0x0000); // 2^-25, half of it: tie to even (0)
        assert_eq!(F16::from_f32(f32::from_bits(0x3300_0001)).0, 0x0001);
        assert_eq!(F16::from_f32(-0.0).0, 0x8000);
        // Ties between neighbours: 1 + 2^-11 is halfway between 1 and 1 + 2^-10.
        assert_eq!(F16::from_f32(1.0 + 2f32.powi(-11)).0, 0x3c00);
        assert_eq!(F16::from_f32(1.0 + 3.0 * 2f32.powi(-11)).0, 0x3c02);
    }

    #[test]
    fn e4m3_decodes() {
        assert_eq!(Fp8E4m3(0x38).to_f32(), 1.0);
        assert_eq!(Fp8E4m3(0x7e).to_f32(), 448.0);
        assert_eq!(Fp8E4m3(0xfe).to_f32(), -448.0);
        assert_eq!(Fp8E4m3(0x01).to_f32(), 2f32.powi(-9));
        assert!(Fp8E4m3(0x7f).to_f32().is_nan());
    }
}
