//! The CPU engine, the reference definition and the GPU engine, with the arguments of their calls.

use std::marker::PhantomData;
use std::os::raw::c_void;

use crate::element::{CacheElement, Element};
use crate::views::{CosSinCache, KvCacheMut, Positions, Tensor, TensorMut};
use crate::{check, create, sys, Error, Result, Spec, Status};

/// One apply: Q is written, K too when given (K is optional). In place unless sources are given;
/// out of place, a source has its destination's shape and any strides. Q and K may have different
/// head counts (GQA/MQA) and have `positions.count()` tokens.
pub struct RopeArgs<'a, T: Element> {
    raw: sys::posenc_rope_args,
    _borrow: PhantomData<&'a mut [T]>,
}

impl<'a, T: Element> RopeArgs<'a, T> {
    pub fn new(q: TensorMut<'a, T>, positions: Positions<'a>) -> Self {
        let mut raw = sys::posenc_rope_args::make();
        raw.q = q.raw;
        raw.positions = positions.raw;
        RopeArgs { raw, _borrow: PhantomData }
    }
    pub fn k(mut self, k: TensorMut<'a, T>) -> Self {
        self.raw.k = k.raw;
        self
    }
    /// Rotate from `q_src` into Q (out of place).
    pub fn q_src(mut self, q_src: Tensor<'a, T>) -> Self {
        self.raw.q_src = q_src.raw;
        self
    }
    pub fn k_src(mut self, k_src: Tensor<'a, T>) -> Self {
        self.raw.k_src = k_src.raw;
        self
    }
    /// Rotate by a caller's cos/sin cache instead of the spec's frequencies.
    pub fn cos_sin(mut self, cache: CosSinCache<'a>) -> Self {
        self.raw.cos_sin = cache.raw;
        self
    }
    /// The QK-norm weights of a spec with a QK norm: Q's, and K's when the call has K (each the
    /// norm's width: head_dim, or rotary_dim when it covers the rotary window only).
    pub fn norm(mut self, q_weight: &'a [T], k_weight: Option<&'a [T]>) -> Self {
        self.raw.q_norm_weight = q_weight.as_ptr() as *const c_void;
        self.raw.k_norm_weight = k_weight.map_or(std::ptr::null(), |w| w.as_ptr() as *const c_void);
        self
    }
    /// The C struct (for logging or a GPU call built from host-side shapes).
    pub fn raw(&self) -> &sys::posenc_rope_args {
        &self.raw
    }
}

/// One fused append: Q rotated, K rotated and written with V into the cache row of each token's
/// slot (cast to the cache's element type); slot -1 skips the token's K and V. Into an MLA cache
/// ([`KvCacheMut::mla`](crate::KvCacheMut::mla)) K is k_pe `[tokens, 1, rope_dim]` and V the
/// latent `[tokens, 1, latent_dim]`; Q is then usually the rope slice of each head (a strided view).
pub struct AppendArgs<'a, T: Element, C: CacheElement> {
    raw: sys::posenc_append_args,
    _borrow: PhantomData<(&'a mut [T], &'a mut [C])>,
}

impl<'a, T: Element, C: CacheElement> AppendArgs<'a, T, C> {
    /// `slots` holds one slot per token (`positions.count()` of them).
    pub fn new(
        q: TensorMut<'a, T>,
        k: Tensor<'a, T>,
        v: Tensor<'a, T>,
        positions: Positions<'a>,
        slots: &'a [i64],
        cache: KvCacheMut<'a, C>,
    ) -> Result<Self> {
        if slots.len() as i64 != positions.count() {
            return Err(Error::new(
                Status::InvalidArgument,
                format!("AppendArgs: {} slots for {} tokens (one slot per token)", slots.len(), positions.count()),
            ));
        }
        let mut raw = sys::posenc_append_args::make();
        raw.q = q.raw;
        raw.k = k.raw;
        raw.v = v.raw;
        raw.positions = positions.raw;
        raw.slots = slots.as_ptr();
        raw.cache = cache.raw;
        raw.cache_latent_dim = cache.latent_dim;
        Ok(AppendArgs { raw, _borrow: PhantomData })
    }
    pub fn q_src(mut self, q_src: Tensor<'a, T>) -> Self {
        self.raw.q_src = q_src.raw;
        self
    }
    pub fn cos_sin(mut self, cache: CosSinCache<'a>) -> Self {
        self.raw.cos_sin = cache.raw;
        self
    }
    /// The QK-norm weights of Q and K (as `RopeArgs::norm`); the cached K rows are normalised too.
    pub fn norm(mut self, q_weight: &'a [T], k_weight: &'a [T]) -> Self {
        self.raw.q_norm_weight = q_weight.as_ptr() as *const c_void;
        self.raw.k_norm_weight = k_weight.as_ptr() as *const c_void;
        self
    }
    /// Q written quantized into `q_out` instead of back into q, which is then only read (fp8
    /// serving: an fp8 attention kernel reads it). Q's shape with the given element strides, in
    /// the cache's element type; each element `C(x / scale)` as K is cast into the cache (fp8:
    /// saturating; other types take scale 1). Errors when the strides reach past `q_out`.
    pub fn q_out(mut self, q_out: &'a mut [C], token_stride: i64, head_stride: i64, scale: f32) -> Result<Self> {
        let q = &self.raw.q;
        let extent = (q.tokens - 1)
            .checked_mul(token_stride)
            .and_then(|a| (q.heads - 1).checked_mul(head_stride).and_then(|b| a.checked_add(b)))
            .and_then(|a| a.checked_add(q.head_dim));
        match extent {
            Some(n) if token_stride >= 0 && head_stride >= 0 && n <= q_out.len() as i64 => {}
            _ => {
                return Err(Error::new(
                    Status::InvalidArgument,
                    format!(
                        "AppendArgs::q_out: {} tokens x {} heads x {} with strides ({}, {}) do not fit its {} elements",
                        q.tokens,
                        q.heads,
                        q.head_dim,
                        token_stride,
                        head_stride,
                        q_out.len()
                    ),
                ))
            }
        }
        self.raw.q_out_data = q_out.as_mut_ptr() as *mut c_void;
        self.raw.q_out_token_stride = token_stride;
        self.raw.q_out_head_stride = head_stride;
        self.raw.q_out_dtype = C::CACHE_DTYPE;
        self.raw.q_out_scale = scale;
        Ok(self)
    }
    /// Per-head fp8 scales for the cache: head h of K is stored as `e4m3(x / k[h])`, of V with
    /// `v[h]`, each slice one scale per KV head; the cache's per-tensor scales must stay 1. Errors
    /// when a slice's length is not the cache's KV heads (the values are checked by the call).
    pub fn head_scales(mut self, k: &'a [f32], v: &'a [f32]) -> Result<Self> {
        let heads = self.raw.cache.kv_heads;
        for (name, s) in [("k", k), ("v", v)] {
            if s.len() as i64 != heads {
                return Err(Error::new(
                    Status::InvalidArgument,
                    format!("AppendArgs::head_scales: {} has {} scales for {} KV heads", name, s.len(), heads),
                ));
            }
        }
        self.raw.cache_k_head_scales = k.as_ptr();
        self.raw.cache_v_head_scales = v.as_ptr();
        Ok(self)
    }
    /// Per-head fp8 scales for q_out (after [`q_out`](Self::q_out), with its scale 1): one per Q
    /// head, head h written as `e4m3(x / q[h])`. Errors when the length is not Q's heads.
    pub fn q_out_head_scales(mut self, q: &'a [f32]) -> Result<Self> {
        let heads = self.raw.q.heads;
        if q.len() as i64 != heads {
            return Err(Error::new(
                Status::InvalidArgument,
                format!("AppendArgs::q_out_head_scales: {} scales for {} Q heads", q.len(), heads),
            ));
        }
        self.raw.q_out_head_scales = q.as_ptr();
        Ok(self)
    }
}

/// What an engine has done since its counters were enabled or reset.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counters {
    pub calls: i64,
    pub tokens: i64,
    pub bytes: i64,
    pub timed_calls: i64,
    pub device_ms: f64,
}

impl Counters {
    fn from_raw(c: &sys::posenc_counters) -> Counters {
        Counters { calls: c.calls, tokens: c.tokens, bytes: c.bytes, timed_calls: c.timed_calls, device_ms: c.device_ms }
    }
}

handle!(
    /// The multi-threaded CPU engine, built once per spec.
    CpuEngine, posenc_cpu_engine, posenc_cpu_engine_destroy,
    // SAFETY: the C ABI allows concurrent calls on an engine (every call takes it as const).
);

impl CpuEngine {
    /// An engine on all hardware threads.
    pub fn new(spec: &Spec) -> Result<CpuEngine> {
        create(|out| unsafe { sys::posenc_cpu_engine_create(spec.as_ptr(), std::ptr::null(), out) })
            .map(|raw| CpuEngine { raw })
    }

    pub fn with_threads(spec: &Spec, threads: i32) -> Result<CpuEngine> {
        let mut options = sys::posenc_cpu_options::make();
        options.threads = threads;
        create(|out| unsafe { sys::posenc_cpu_engine_create(spec.as_ptr(), &options, out) })
            .map(|raw| CpuEngine { raw })
    }

    /// Validates everything (nothing is written on error), then rotates.
    pub fn apply<T: Element>(&self, args: &mut RopeArgs<'_, T>) -> Result<()> {
        check(unsafe { sys::posenc_cpu_engine_apply(self.raw.as_ptr(), &args.raw) })
    }

    /// Validates everything (slots in [-1, slots), none twice), then rotates and appends.
    pub fn append<T: Element, C: CacheElement>(&self, args: &mut AppendArgs<'_, T, C>) -> Result<()> {
        check(unsafe { sys::posenc_cpu_engine_append(self.raw.as_ptr(), &args.raw) })
    }

    pub fn threads(&self) -> Result<i32> {
        let mut threads = 0;
        check(unsafe { sys::posenc_cpu_engine_threads(self.raw.as_ptr(), &mut threads) })?;
        Ok(threads)
    }

    pub fn set_counters(&self, on: bool) -> Result<()> {
        check(unsafe { sys::posenc_cpu_engine_set_counters(self.raw.as_ptr(), on as i32) })
    }

    pub fn counters(&self) -> Result<Counters> {
        let mut c = sys::posenc_counters::make();
        check(unsafe { sys::posenc_cpu_engine_get_counters(self.raw.as_ptr(), &mut c) })?;
        Ok(Counters::from_raw(&c))
    }

    pub fn reset_counters(&self) -> Result<()> {
        check(unsafe { sys::posenc_cpu_engine_reset_counters(self.raw.as_ptr()) })
    }
}

/// The definition every engine is tested against (scalar loops, one thread).
pub fn reference_apply<T: Element>(spec: &Spec, args: &mut RopeArgs<'_, T>) -> Result<()> {
    check(unsafe { sys::posenc_apply_reference(spec.as_ptr(), &args.raw) })
}

pub fn reference_append<T: Element, C: CacheElement>(spec: &Spec, args: &mut AppendArgs<'_, T, C>) -> Result<()> {
    check(unsafe { sys::posenc_append_reference(spec.as_ptr(), &args.raw) })
}

handle!(
    /// The GPU engine on one device. Its calls take device pointers and a vendor stream
    /// (cudaStream_t / hipStream_t; null is the legacy default stream), so they are `unsafe`: this
    /// crate cannot check device memory. Host-side validation (shapes, strides, dtypes) still runs
    /// before any launch.
    GpuEngine, posenc_gpu_engine, posenc_gpu_engine_destroy,
    // SAFETY: as CpuEngine.
);

impl GpuEngine {
    /// Error(Unsupported) naming the reason where there is no GPU or no GPU support.
    pub fn new(spec: &Spec, device: i32) -> Result<GpuEngine> {
        create(|out| unsafe { sys::posenc_gpu_engine_create(spec.as_ptr(), device, out) }).map(|raw| GpuEngine { raw })
    }

    /// One launch on `stream`; no allocation, copy or wait.
    ///
    /// # Safety
    /// Every pointer in `args` is memory of this engine's device that its view describes, alive
    /// until the stream has run the launch; `stream` is null or a live stream of that device.
    pub unsafe fn apply_raw(&self, args: &sys::posenc_rope_args, stream: *mut c_void) -> Result<()> {
        check(sys::posenc_gpu_engine_apply(self.raw.as_ptr(), args, stream))
    }

    /// # Safety
    /// As [`GpuEngine::apply_raw`]; `args.slots` is device memory too.
    pub unsafe fn append_raw(&self, args: &sys::posenc_append_args, stream: *mut c_void) -> Result<()> {
        check(sys::posenc_gpu_engine_append(self.raw.as_ptr(), args, stream))
    }

    /// Synchronizes `stream`, then reports a kernel fault or the first recorded bad position or slot.
    ///
    /// # Safety
    /// `stream` is null or a live stream of this engine's device.
    pub unsafe fn check(&self, stream: *mut c_void) -> Result<()> {
        check(sys::posenc_gpu_engine_check(self.raw.as_ptr(), stream))
    }

    pub fn set_counters(&self, on: bool, device_timing: bool) -> Result<()> {
        check(unsafe { sys::posenc_gpu_engine_set_counters(self.raw.as_ptr(), on as i32, device_timing as i32) })
    }

    pub fn counters(&self) -> Result<Counters> {
        let mut c = sys::posenc_counters::make();
        check(unsafe { sys::posenc_gpu_engine_get_counters(self.raw.as_ptr(), &mut c) })?;
        Ok(Counters::from_raw(&c))
    }

    pub fn reset_counters(&self) -> Result<()> {
        check(unsafe { sys::posenc_gpu_engine_reset_counters(self.raw.as_ptr()) })
    }
}
