//! Views of caller slices as the C ABI takes them: each is checked to lie inside its slice, so the library never touches memory beyond it.

use std::marker::PhantomData;
use std::os::raw::c_void;

use crate::element::{CacheElement, Element};
use crate::{sys, Error, Result, Status};

fn invalid(message: String) -> Error {
    Error::new(Status::InvalidArgument, message)
}

fn length(len: usize) -> i64 {
    // A slice never holds more than isize::MAX bytes, so its element count fits in i64.
    len as i64
}

/// Elements a [tokens, heads, head_dim] view with these strides spans (0 when empty), checked.
fn tensor_extent(
    what: &str,
    tokens: i64,
    heads: i64,
    head_dim: i64,
    token_stride: i64,
    head_stride: i64,
    slice_len: usize,
) -> Result<()> {
    if tokens < 0 || heads < 0 || head_dim < 0 || token_stride < 0 || head_stride < 0 {
        return Err(invalid(format!(
            "{}: shape [{}, {}, {}] and strides ({}, {}) must not be negative",
            what, tokens, heads, head_dim, token_stride, head_stride
        )));
    }
    if tokens == 0 || heads == 0 || head_dim == 0 {
        return Ok(()); // nothing is addressed; the library names the empty dimension
    }
    let extent = (tokens - 1)
        .checked_mul(token_stride)
        .and_then(|a| (heads - 1).checked_mul(head_stride).and_then(|b| a.checked_add(b)))
        .and_then(|a| a.checked_add(head_dim));
    match extent {
        Some(extent) if extent <= length(slice_len) => Ok(()),
        Some(extent) => Err(invalid(format!(
            "{}: [{}, {}, {}] with strides ({}, {}) spans {} elements, but its slice holds {}",
            what, tokens, heads, head_dim, token_stride, head_stride, extent, slice_len
        ))),
        None => Err(Error::new(
            Status::Overflow,
            format!(
                "{}: [{}, {}, {}] with strides ({}, {}) spans more than 2^63 elements",
                what, tokens, heads, head_dim, token_stride, head_stride
            ),
        )),
    }
}

/// A `[tokens, heads, head_dim]` view type over `$slice` (`&mut [T]` or `&[T]`) as the C struct
/// `$raw`: `new` (dense) and `strided`, both checked against the slice.
macro_rules! tensor_view {
    ($(#[$doc:meta])* $name:ident, $raw:ident, $slice:ty, $as_ptr:ident, $pointer:ty) => {
        $(#[$doc])*
        pub struct $name<'a, T: Element> {
            pub(crate) raw: sys::$raw,
            _borrow: PhantomData<$slice>,
        }

        impl<'a, T: Element> $name<'a, T> {
            /// A dense view (token_stride = heads * head_dim, head_stride = head_dim).
            pub fn new(data: $slice, tokens: i64, heads: i64, head_dim: i64) -> Result<Self> {
                let token_stride = heads.checked_mul(head_dim).unwrap_or(-1);
                Self::strided(data, tokens, heads, head_dim, token_stride, head_dim)
            }

            /// A strided view, e.g. Q or K inside a fused QKV buffer.
            pub fn strided(
                data: $slice,
                tokens: i64,
                heads: i64,
                head_dim: i64,
                token_stride: i64,
                head_stride: i64,
            ) -> Result<Self> {
                tensor_extent(stringify!($name), tokens, heads, head_dim, token_stride, head_stride, data.len())?;
                Ok($name {
                    raw: sys::$raw {
                        data: data.$as_ptr() as $pointer,
                        dtype: T::DTYPE,
                        reserved: 0,
                        tokens,
                        heads,
                        head_dim,
                        token_stride,
                        head_stride,
                    },
                    _borrow: PhantomData,
                })
            }
        }
    };
}

tensor_view!(
    /// A writable `[tokens, heads, head_dim]` view of a slice, head_dim contiguous, strides in
    /// elements: element (t, h, d) is `data[t * token_stride + h * head_stride + d]`.
    TensorMut, posenc_tensor, &'a mut [T], as_mut_ptr, *mut c_void
);
tensor_view!(
    /// A read-only view (an out-of-place source, or an append's K and V), laid out as [`TensorMut`].
    Tensor, posenc_const_tensor, &'a [T], as_ptr, *const c_void
);

mod sealed {
    pub trait Sealed {}
    impl Sealed for i32 {}
    impl Sealed for i64 {}
}

/// Position id element types.
pub trait PositionIndex: Copy + sealed::Sealed {
    const TYPE: i32;
}
impl PositionIndex for i32 {
    const TYPE: i32 = crate::sys::POSENC_INDEX_I32;
}
impl PositionIndex for i64 {
    const TYPE: i32 = crate::sys::POSENC_INDEX_I64;
}

/// Position ids, one per token and stream (stream-major: stream s of token t at `ids[s * count + t]`).
/// Batches are flattened: a ragged batch, a padded batch and a decode step are all one position
/// per token.
#[derive(Clone, Copy)]
pub struct Positions<'a> {
    pub(crate) raw: sys::posenc_positions,
    _borrow: PhantomData<&'a [i64]>,
}

impl<'a> Positions<'a> {
    /// One stream: a position per element.
    pub fn new<I: PositionIndex>(ids: &'a [I]) -> Positions<'a> {
        let count = length(ids.len());
        Positions {
            raw: sys::posenc_positions {
                data: ids.as_ptr() as *const c_void,
                type_: I::TYPE,
                streams: 1,
                count,
                stream_stride: count,
            },
            _borrow: PhantomData,
        }
    }

    /// `streams` streams of `count` tokens, stream-major (ChatGLM-6B 2-D: 2, M-RoPE: 3).
    pub fn streams<I: PositionIndex>(ids: &'a [I], streams: i32, count: i64) -> Result<Positions<'a>> {
        let needed = (streams as i64).checked_mul(count);
        if streams < 1 || count < 0 || needed != Some(length(ids.len())) {
            return Err(invalid(format!(
                "Positions::streams: {} streams of {} tokens need {} ids, the slice holds {}",
                streams,
                count,
                needed.map_or("too many".to_string(), |n| n.to_string()),
                ids.len()
            )));
        }
        Ok(Positions {
            raw: sys::posenc_positions {
                data: ids.as_ptr() as *const c_void,
                type_: I::TYPE,
                streams,
                count,
                stream_stride: count,
            },
            _borrow: PhantomData,
        })
    }

    /// Tokens.
    pub fn count(&self) -> i64 {
        self.raw.count
    }
}

/// A caller's cos/sin cache `[rows, rotary_dim]` (vLLM's cos_sin_cache): row p holds the cos of the
/// R/2 pairs at position p, then their sin. It replaces the spec's frequency scheme.
#[derive(Clone, Copy)]
pub struct CosSinCache<'a> {
    pub(crate) raw: sys::posenc_cos_sin_cache,
    _borrow: PhantomData<&'a [f32]>,
}

impl<'a> CosSinCache<'a> {
    pub fn new<E: Element>(data: &'a [E], rows: i64, rotary_dim: i64) -> Result<CosSinCache<'a>> {
        Self::strided(data, rows, rotary_dim, rotary_dim)
    }

    pub fn strided<E: Element>(data: &'a [E], rows: i64, rotary_dim: i64, row_stride: i64) -> Result<CosSinCache<'a>> {
        tensor_extent("CosSinCache", rows, 1, rotary_dim, row_stride, 0, data.len())?;
        Ok(CosSinCache {
            raw: sys::posenc_cos_sin_cache {
                data: data.as_ptr() as *const c_void,
                dtype: E::DTYPE,
                reserved: 0,
                rows,
                rotary_dim,
                row_stride,
            },
            _borrow: PhantomData,
        })
    }
}

/// Where a KV-cache slot's rows live (slot = block * block_len + offset):
/// contiguous `[batch, max_len, kv_heads, head_dim]`, paged NHD `[blocks, page_size, kv_heads,
/// head_dim]`, paged HND `[blocks, kv_heads, page_size, head_dim]`, and DeepSeek-V3's multi-head
/// latent attention cache (one tensor, [`KvCacheMut::mla`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheLayout {
    Contiguous,
    PagedNhd,
    PagedHnd,
    /// One tensor `[blocks, page_size, latent_dim + rope_dim]`: each slot's row holds the
    /// append's V (the compressed c_kv latent) copied as given, then its K (k_pe) rotated.
    Mla,
}

impl CacheLayout {
    fn to_raw(self) -> i32 {
        match self {
            CacheLayout::Contiguous => sys::POSENC_LAYOUT_CONTIGUOUS,
            CacheLayout::PagedNhd => sys::POSENC_LAYOUT_PAGED_NHD,
            CacheLayout::PagedHnd => sys::POSENC_LAYOUT_PAGED_HND,
            CacheLayout::Mla => sys::POSENC_LAYOUT_MLA,
        }
    }
}

/// A KV cache: K and V in two slices of equal size, `blocks * block_len` slots of
/// `kv_heads * head_dim` elements each ([`KvCacheMut::new`]), or the one-slice MLA cache
/// ([`KvCacheMut::mla`]).
pub struct KvCacheMut<'a, C: CacheElement> {
    pub(crate) raw: sys::posenc_kv_cache,
    /// The MLA latent's elements per row (the append's `cache_latent_dim`); 0 for the other layouts.
    pub(crate) latent_dim: i64,
    _borrow: PhantomData<&'a mut [C]>,
}

/// `dims` multiplied, when none is negative and the product fits in i64.
fn elements(dims: &[i64]) -> Option<i64> {
    dims.iter().try_fold(1i64, |acc, &d| if d < 0 { None } else { acc.checked_mul(d) })
}

impl<'a, C: CacheElement> KvCacheMut<'a, C> {
    /// A two-tensor cache (`layout` other than [`CacheLayout::Mla`]).
    pub fn new(
        k: &'a mut [C],
        v: &'a mut [C],
        layout: CacheLayout,
        blocks: i64,
        block_len: i64,
        kv_heads: i64,
        head_dim: i64,
    ) -> Result<Self> {
        if layout == CacheLayout::Mla {
            return Err(invalid(
                "KvCacheMut::new: CacheLayout::Mla is one tensor, not a K and a V (use KvCacheMut::mla)".to_string(),
            ));
        }
        let elements = elements(&[blocks, block_len, kv_heads, head_dim]);
        match elements {
            Some(n) if n <= length(k.len()) && n <= length(v.len()) => {}
            _ => {
                return Err(invalid(format!(
                    "KvCacheMut: {} blocks x {} slots x {} heads x {} dims need {} elements in K and in V, the slices hold {} and {}",
                    blocks,
                    block_len,
                    kv_heads,
                    head_dim,
                    elements.map_or("an invalid number of".to_string(), |n| n.to_string()),
                    k.len(),
                    v.len()
                )))
            }
        }
        Ok(KvCacheMut {
            raw: sys::posenc_kv_cache {
                k: k.as_mut_ptr() as *mut c_void,
                v: v.as_mut_ptr() as *mut c_void,
                dtype: C::CACHE_DTYPE,
                layout: layout.to_raw(),
                kv_heads,
                head_dim,
                blocks,
                block_len,
                k_scale: 1.0,
                v_scale: 1.0,
            },
            latent_dim: 0,
            _borrow: PhantomData,
        })
    }

    /// DeepSeek-V3's multi-head latent attention cache: one slice `[blocks, page_size,
    /// latent_dim + rope_dim]` whose rows hold an append's V (the c_kv latent, `[tokens, 1,
    /// latent_dim]`, copied) then its K (k_pe, `[tokens, 1, rope_dim]`, rotated). `latent_dim`
    /// (kv_lora_rank) is a multiple of `rope_dim` (the spec's head_dim); the library checks it.
    pub fn mla(cache: &'a mut [C], blocks: i64, page_size: i64, latent_dim: i64, rope_dim: i64) -> Result<Self> {
        let row = latent_dim.checked_add(rope_dim).filter(|_| latent_dim >= 0 && rope_dim >= 0);
        let needed = row.and_then(|row| elements(&[blocks, page_size, row]));
        match needed {
            Some(n) if n <= length(cache.len()) => {}
            _ => {
                return Err(invalid(format!(
                    "KvCacheMut::mla: {} blocks x {} slots x ({} latent + {} rope) elements need {} elements, the slice holds {}",
                    blocks,
                    page_size,
                    latent_dim,
                    rope_dim,
                    needed.map_or("an invalid number of".to_string(), |n| n.to_string()),
                    cache.len()
                )))
            }
        }
        Ok(KvCacheMut {
            raw: sys::posenc_kv_cache {
                k: cache.as_mut_ptr() as *mut c_void,
                v: std::ptr::null_mut(),
                dtype: C::CACHE_DTYPE,
                layout: CacheLayout::Mla.to_raw(),
                kv_heads: 1,
                head_dim: rope_dim,
                blocks,
                block_len: page_size,
                k_scale: 1.0,
                v_scale: 1.0,
            },
            latent_dim,
            _borrow: PhantomData,
        })
    }

    /// fp8 caches: the cache stores e4m3(x / scale) (other dtypes require 1); in an MLA cache
    /// k_scale is k_pe's and v_scale the latent's.
    pub fn with_scales(mut self, k_scale: f32, v_scale: f32) -> Self {
        self.raw.k_scale = k_scale;
        self.raw.v_scale = v_scale;
        self
    }

    /// Slots the cache holds.
    pub fn slots(&self) -> i64 {
        self.raw.blocks * self.raw.block_len
    }
}
