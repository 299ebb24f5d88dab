//! Exact rotary position embeddings (RoPE) and GLM position handling for LLM inference, on
//! libposenc's stable C ABI.
//!
//! - [`Config`] reads a Hugging Face `config.json` and gives a [`Spec`] per attention layer type;
//!   [`Spec::new`] builds a plain one.
//! - [`CpuEngine`] rotates Q and K held in slices ([`TensorMut`], [`Tensor`]) at the positions of
//!   [`Positions`], in place or out of place, and appends to a KV cache ([`KvCacheMut`]).
//! - [`PositionTracker`] produces each continuous-batching step's positions (prefill chunks and
//!   decode tokens of many sequences); [`glm`] builds the position ids of every GLM generation
//!   (ChatGLM-6B's 2-D ids, GLM-130B, blank infilling, padded batches, M-RoPE for GLM-4.1V/4.5V)
//!   and attention masks.
//! - [`GpuEngine`] takes device pointers and a vendor stream (raw, `unsafe`);
//!   [`GpuPositionTracker`] makes each step's positions on the device for it.
//!
//! Every failure is an [`Error`] with the library's [`Status`] and its message, which names the
//! offending value, its index and the limit. Nothing a failed call was asked to write is written.
//! Views are checked against their slices before the library sees them, so no call can read or
//! write outside the memory it was given.

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::raw::c_char;
use std::path::Path;
use std::ptr::{self, NonNull};

pub use posenc_sys as sys;

/// An owning handle of the C ABI: the struct, Send + Sync (the C ABI allows concurrent calls on a
/// handle it takes as const; mutation needs `&mut self`), and Drop calling its destroy function.
macro_rules! handle {
    ($(#[$doc:meta])* $name:ident, $raw:ident, $destroy:ident $(,)?) => {
        $(#[$doc])*
        pub struct $name {
            raw: std::ptr::NonNull<$crate::sys::$raw>,
        }
        unsafe impl Send for $name {}
        unsafe impl Sync for $name {}
        impl Drop for $name {
            fn drop(&mut self) {
                unsafe { $crate::sys::$destroy(self.raw.as_ptr()) }
            }
        }
    };
}

mod element;
mod engine;
mod tracker;
mod views;

pub use element::{Bf16, CacheElement, Element, Fp8E4m3, F16};
pub use engine::{reference_append, reference_apply, AppendArgs, Counters, CpuEngine, GpuEngine, RopeArgs};
pub use tracker::{GpuPositionTracker, PositionIds, PositionTracker, SequenceState, StepEntry};
pub use views::{CacheLayout, CosSinCache, KvCacheMut, PositionIndex, Positions, Tensor, TensorMut};

// ------------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------------

/// What kind of failure (posenc.h's status codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    InvalidArgument,
    OutOfRange,
    Overflow,
    Config,
    Unsupported,
    Vendor,
    Io,
    OutOfMemory,
    Internal,
    /// A status this crate does not know (a newer libposenc).
    Unknown(i32),
}

impl Status {
    fn from_raw(status: sys::posenc_status) -> Status {
        match status {
            sys::POSENC_ERROR_INVALID_ARGUMENT => Status::InvalidArgument,
            sys::POSENC_ERROR_OUT_OF_RANGE => Status::OutOfRange,
            sys::POSENC_ERROR_OVERFLOW => Status::Overflow,
            sys::POSENC_ERROR_CONFIG => Status::Config,
            sys::POSENC_ERROR_UNSUPPORTED => Status::Unsupported,
            sys::POSENC_ERROR_VENDOR => Status::Vendor,
            sys::POSENC_ERROR_IO => Status::Io,
            sys::POSENC_ERROR_OUT_OF_MEMORY => Status::OutOfMemory,
            sys::POSENC_ERROR_INTERNAL => Status::Internal,
            other => Status::Unknown(other),
        }
    }
}

/// A failed posenc call: its status and message ("posenc_cpu_engine_apply: position 5000 at token
/// index 3 is outside [0, 1000)").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    status: Status,
    message: String,
}

impl Error {
    pub fn status(&self) -> Status {
        self.status
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    /// An error raised by this crate before calling the library (same wording rules).
    pub(crate) fn new(status: Status, message: String) -> Error {
        Error { status, message }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.status, self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Ok, or the error the library recorded on this thread for `status`.
pub(crate) fn check(status: sys::posenc_status) -> Result<()> {
    if status == sys::POSENC_OK {
        return Ok(());
    }
    // SAFETY: posenc_last_error returns a NUL-terminated string valid until the next call on this
    // thread; it is copied before any other call.
    let message = unsafe { text(sys::posenc_last_error()) };
    Err(Error { status: Status::from_raw(status), message })
}

/// Copies a C string the library handed out ("" for NULL).
///
/// # Safety
/// `p` is NULL or a valid NUL-terminated string.
pub(crate) unsafe fn text(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

fn c_string(value: &str, what: &str) -> Result<CString> {
    CString::new(value).map_err(|_| {
        Error::new(Status::InvalidArgument, format!("{} contains a NUL byte at index {}", what, value.find('\0').unwrap_or(0)))
    })
}

/// Runs a constructor that writes a handle through an out-pointer.
fn create<T>(f: impl FnOnce(*mut *mut T) -> sys::posenc_status) -> Result<NonNull<T>> {
    let mut out: *mut T = ptr::null_mut();
    check(f(&mut out))?;
    NonNull::new(out).ok_or_else(|| Error::new(Status::Internal, "posenc returned a NULL handle".to_string()))
}

// ------------------------------------------------------------------------------------------------
// Versions and backends
// ------------------------------------------------------------------------------------------------

/// The library's version and the GPU backend compiled into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub major: i32,
    pub minor: i32,
    pub patch: i32,
    /// The C ABI version (libposenc.so.<abi>).
    pub abi: i32,
    pub version: String,
    /// "cuda", "hip" or "none".
    pub backend: String,
}

pub fn version() -> Result<Version> {
    let mut info = sys::posenc_version_info::make();
    check(unsafe { sys::posenc_get_version(&mut info) })?;
    Ok(Version {
        major: info.major,
        minor: info.minor,
        patch: info.patch,
        abi: info.abi,
        version: unsafe { text(info.version) },
        backend: unsafe { text(info.backend) },
    })
}

/// Whether a GPU engine can be created, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    pub backend: String,
    pub device_count: i32,
    pub available: bool,
    /// "" when available.
    pub unavailable_reason: String,
}

pub fn gpu_info() -> Result<GpuInfo> {
    let mut info = sys::posenc_gpu_info::make();
    check(unsafe { sys::posenc_get_gpu_info(&mut info) })?;
    Ok(GpuInfo {
        backend: unsafe { text(info.backend) },
        device_count: info.device_count,
        available: info.available != 0,
        unavailable_reason: unsafe { text(info.unavailable_reason) },
    })
}

// ------------------------------------------------------------------------------------------------
// Enumerations
// ------------------------------------------------------------------------------------------------

macro_rules! c_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$variant_doc:meta])* $variant:ident = $value:path),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$variant_doc])* $variant),* }
        impl $name {
            pub fn to_raw(self) -> i32 {
                match self { $($name::$variant => $value),* }
            }
            /// Error(Unsupported) for a value this crate does not know (a newer libposenc).
            pub fn from_raw(value: i32) -> Result<$name> {
                $(if value == $value { return Ok($name::$variant); })*
                Err(Error::new(Status::Unsupported, format!("{} value {} is unknown to this crate", stringify!($name), value)))
            }
        }
    };
}

c_enum!(
    /// Activation element types.
    DType { F32 = sys::POSENC_DTYPE_F32, F16 = sys::POSENC_DTYPE_F16, Bf16 = sys::POSENC_DTYPE_BF16 }
);
c_enum!(
    /// Which elements of the rotary window form a rotation pair.
    Pairing {
        HalfSplit = sys::POSENC_PAIRING_HALF_SPLIT,
        Interleaved = sys::POSENC_PAIRING_INTERLEAVED,
        InterleavedToHalf = sys::POSENC_PAIRING_INTERLEAVED_TO_HALF,
        HalfSplit2d = sys::POSENC_PAIRING_HALF_SPLIT_2D,
    }
);
c_enum!(
    /// How cos/sin and the rotation are rounded.
    Numerics {
        HfCompatible = sys::POSENC_NUMERICS_HF_COMPATIBLE,
        HfFp32Apply = sys::POSENC_NUMERICS_HF_FP32_APPLY,
        Accurate = sys::POSENC_NUMERICS_ACCURATE,
    }
);
c_enum!(
    /// Whose float32 pow/cos/sin the hf numerics reproduce (docs/NUMERICS.md §3.4); `accurate`
    /// ignores it. An engine refuses one it cannot reproduce (`Status::Unsupported`).
    HfArithmetic {
        /// torch on the engine's own device: `TorchCpu` on the CPU engine, `TorchCuda` on the GPU engine.
        Engine = sys::POSENC_HF_ARITHMETIC_ENGINE,
        /// torch on an x86-64 CPU (SLEEF/glibc pow, Intel MKL cos/sin): the CPU engine only.
        TorchCpu = sys::POSENC_HF_ARITHMETIC_TORCH_CPU,
        /// torch on an NVIDIA GPU (CUDA's powf/cosf/sinf): the GPU engine only.
        TorchCuda = sys::POSENC_HF_ARITHMETIC_TORCH_CUDA,
        /// Correctly rounded pow/cos/sin: the same bits on every engine.
        Exact = sys::POSENC_HF_ARITHMETIC_EXACT,
    }
);

c_enum!(
    /// The per-head RMSNorm of Q and K before the rotation (docs/NUMERICS.md §3.6); its weights
    /// are passed with each call (`RopeArgs::norm`, `AppendArgs::norm`).
    QkNorm {
        /// No normalisation (most models).
        None = sys::POSENC_QK_NORM_NONE,
        /// `round(w * round(x * r))`: Qwen3, Qwen3-MoE/VL, GLM-4.5 with `use_qk_norm`.
        Rms = sys::POSENC_QK_NORM_RMS,
        /// `round(x * r * (1 + w))`: Gemma 3.
        RmsOnePlus = sys::POSENC_QK_NORM_RMS_ONE_PLUS,
    }
);
c_enum!(
    /// The frequency scheme of a spec.
    Scaling {
        None = sys::POSENC_SCALING_NONE,
        Linear = sys::POSENC_SCALING_LINEAR,
        Dynamic = sys::POSENC_SCALING_DYNAMIC,
        Yarn = sys::POSENC_SCALING_YARN,
        LongRope = sys::POSENC_SCALING_LONGROPE,
        Llama3 = sys::POSENC_SCALING_LLAMA3,
        Table = sys::POSENC_SCALING_TABLE,
    }
);

pub mod glm;

// ------------------------------------------------------------------------------------------------
// Configs and specs
// ------------------------------------------------------------------------------------------------

handle!(
    /// A parsed Hugging Face config.json.
    Config, posenc_config, posenc_config_destroy,
    // SAFETY: a config is immutable after parsing; the C ABI allows concurrent use of const handles.
);

/// What posenc needs of a model besides its specs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigInfo {
    pub model_type: String,
    pub source: String,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub max_position_embeddings: i64,
}

impl Config {
    /// Reads and parses a config.json file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let text = path.to_str().ok_or_else(|| {
            Error::new(Status::InvalidArgument, format!("path {} is not UTF-8", path.display()))
        })?;
        let c_path = c_string(text, "path")?;
        create(|out| unsafe { sys::posenc_config_load(c_path.as_ptr(), out) }).map(|raw| Config { raw })
    }

    /// Parses config.json text; `source` labels messages.
    pub fn parse(json: &str, source: &str) -> Result<Config> {
        let c_source = c_string(source, "source")?;
        create(|out| unsafe {
            sys::posenc_config_parse(json.as_ptr() as *const c_char, json.len(), c_source.as_ptr(), out)
        })
        .map(|raw| Config { raw })
    }

    /// The configuration `posenc run` uses by default: GLM-4-9B-chat.
    pub fn glm4_9b_chat() -> Result<Config> {
        create(|out| unsafe { sys::posenc_config_default(out) }).map(|raw| Config { raw })
    }

    pub fn info(&self) -> Result<ConfigInfo> {
        let mut info = sys::posenc_config_info::make();
        check(unsafe { sys::posenc_config_get_info(self.raw.as_ptr(), &mut info) })?;
        Ok(ConfigInfo {
            model_type: unsafe { text(info.model_type) },
            source: unsafe { text(info.source) },
            num_attention_heads: info.num_attention_heads,
            num_key_value_heads: info.num_key_value_heads,
            head_dim: info.head_dim,
            max_position_embeddings: info.max_position_embeddings,
        })
    }

    /// The layer types with a spec ("default", or e.g. "full_attention" and "sliding_attention").
    pub fn layer_types(&self) -> Result<Vec<String>> {
        let mut info = sys::posenc_config_info::make();
        check(unsafe { sys::posenc_config_get_info(self.raw.as_ptr(), &mut info) })?;
        let mut names = Vec::new();
        for index in 0..info.layer_type_count {
            let mut name: *const c_char = ptr::null();
            check(unsafe { sys::posenc_config_layer_type(self.raw.as_ptr(), index, &mut name) })?;
            names.push(unsafe { text(name) });
        }
        Ok(names)
    }

    /// The spec of `layer_type` (None: "default").
    pub fn spec(&self, layer_type: Option<&str>) -> Result<Spec> {
        let c_layer = layer_type.map(|t| c_string(t, "layer_type")).transpose()?;
        let layer_ptr = c_layer.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        create(|out| unsafe { sys::posenc_config_spec(self.raw.as_ptr(), layer_ptr, out) }).map(|raw| Spec { raw })
    }
}

/// A plain spec: default-theta RoPE (a scaling scheme comes from a config). Defaults as posenc.h's
/// posenc_spec_desc: rotary_dim = head_dim, offset 0, half_split, hf_compatible, theta 10000, the
/// scheme's attention factor, positions below 2^31, hf_arithmetic `Engine`.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecDesc {
    pub head_dim: i64,
    pub rotary_dim: Option<i64>,
    pub rotary_offset: i64,
    pub pairing: Pairing,
    pub numerics: Numerics,
    pub theta: f64,
    pub attention_factor: Option<f64>,
    pub position_limit: Option<i64>,
    pub hf_arithmetic: HfArithmetic,
    /// The QK-norm stage (`QkNorm::None`: none), its epsilon and whether it covers the rotary
    /// window only.
    pub qk_norm: QkNorm,
    pub qk_norm_epsilon: f64,
    pub qk_norm_rotary_only: bool,
}

impl SpecDesc {
    pub fn new(head_dim: i64) -> SpecDesc {
        SpecDesc {
            head_dim,
            rotary_dim: None,
            rotary_offset: 0,
            pairing: Pairing::HalfSplit,
            numerics: Numerics::HfCompatible,
            theta: 10000.0,
            attention_factor: None,
            position_limit: None,
            hf_arithmetic: HfArithmetic::Engine,
            qk_norm: QkNorm::None,
            qk_norm_epsilon: 1e-6,
            qk_norm_rotary_only: false,
        }
    }
}

handle!(
    /// The complete, immutable definition of one rotation.
    Spec, posenc_spec, posenc_spec_destroy,
    // SAFETY: immutable; the C ABI allows concurrent use.
);

/// A spec's fields.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecInfo {
    pub head_dim: i64,
    pub rotary_dim: i64,
    pub rotary_offset: i64,
    pub pairing: Pairing,
    pub numerics: Numerics,
    pub scaling: Scaling,
    /// Position streams an apply must pass (1, 2 for ChatGLM-6B 2-D, 3 for M-RoPE).
    pub position_streams: i32,
    pub theta: f64,
    pub attention_factor: f64,
    pub position_limit: i64,
    pub frequency_count: i64,
    pub mrope_section_count: i64,
    pub mrope_interleaved: bool,
    /// As given (`Engine` stays `Engine`: each engine resolves it).
    pub hf_arithmetic: HfArithmetic,
    /// The QK-norm stage (a config.json of Qwen3, Gemma 3 or GLM-4.5 sets it).
    pub qk_norm: QkNorm,
    pub qk_norm_epsilon: f64,
    pub qk_norm_rotary_only: bool,
}

impl Spec {
    pub fn new(desc: &SpecDesc) -> Result<Spec> {
        let mut d = sys::posenc_spec_desc::make();
        d.head_dim = desc.head_dim;
        d.rotary_dim = desc.rotary_dim.unwrap_or(0);
        d.rotary_offset = desc.rotary_offset;
        d.pairing = desc.pairing.to_raw();
        d.numerics = desc.numerics.to_raw();
        d.theta = desc.theta;
        d.attention_factor = desc.attention_factor.unwrap_or(0.0);
        d.position_limit = desc.position_limit.unwrap_or(0);
        d.hf_arithmetic = desc.hf_arithmetic.to_raw();
        d.qk_norm = desc.qk_norm.to_raw();
        d.qk_norm_epsilon = desc.qk_norm_epsilon;
        d.qk_norm_rotary_only = desc.qk_norm_rotary_only as i32;
        // Zero means "the default" in posenc_spec_desc: refuse it here where the caller meant a value.
        if desc.theta == 0.0 || desc.attention_factor == Some(0.0) || desc.position_limit == Some(0) {
            return Err(Error::new(
                Status::InvalidArgument,
                format!(
                    "Spec::new: theta {}, attention_factor {:?} and position_limit {:?} must not be 0",
                    desc.theta, desc.attention_factor, desc.position_limit
                ),
            ));
        }
        create(|out| unsafe { sys::posenc_spec_create(&d, out) }).map(|raw| Spec { raw })
    }

    pub fn info(&self) -> Result<SpecInfo> {
        let mut i = sys::posenc_spec_info::make();
        check(unsafe { sys::posenc_spec_get_info(self.raw.as_ptr(), &mut i) })?;
        Ok(SpecInfo {
            head_dim: i.head_dim,
            rotary_dim: i.rotary_dim,
            rotary_offset: i.rotary_offset,
            pairing: Pairing::from_raw(i.pairing)?,
            numerics: Numerics::from_raw(i.numerics)?,
            scaling: Scaling::from_raw(i.scaling)?,
            position_streams: i.position_streams,
            theta: i.theta,
            attention_factor: i.attention_factor,
            position_limit: i.position_limit,
            frequency_count: i.frequency_count,
            mrope_section_count: i.mrope_section_count,
            mrope_interleaved: i.mrope_interleaved != 0,
            hf_arithmetic: HfArithmetic::from_raw(i.hf_arithmetic)?,
            qk_norm: QkNorm::from_raw(i.qk_norm)?,
            qk_norm_epsilon: i.qk_norm_epsilon,
            qk_norm_rotary_only: i.qk_norm_rotary_only != 0,
        })
    }

    /// The init-time inv_freq table (float32, as transformers computes it).
    pub fn inv_freq(&self) -> Result<Vec<f32>> {
        let count = self.info()?.frequency_count as usize;
        let mut table = vec![0.0f32; count];
        check(unsafe { sys::posenc_spec_inv_freq(self.raw.as_ptr(), table.as_mut_ptr(), table.len()) })?;
        Ok(table)
    }

    /// M-RoPE pairs per position stream (empty for single-stream specs).
    pub fn mrope_section(&self) -> Result<Vec<i64>> {
        let count = self.info()?.mrope_section_count as usize;
        let mut section = vec![0i64; count];
        check(unsafe { sys::posenc_spec_mrope_section(self.raw.as_ptr(), section.as_mut_ptr(), section.len()) })?;
        Ok(section)
    }

    /// The multi-line summary `posenc info` prints.
    pub fn describe(&self) -> Result<String> {
        let mut p: *const c_char = ptr::null();
        check(unsafe { sys::posenc_spec_describe(self.raw.as_ptr(), &mut p) })?;
        Ok(unsafe { text(p) })
    }

    pub fn with_numerics(&self, numerics: Numerics) -> Result<Spec> {
        create(|out| unsafe { sys::posenc_spec_with_numerics(self.raw.as_ptr(), numerics.to_raw(), out) })
            .map(|raw| Spec { raw })
    }

    pub fn with_position_limit(&self, position_limit: i64) -> Result<Spec> {
        create(|out| unsafe { sys::posenc_spec_with_position_limit(self.raw.as_ptr(), position_limit, out) })
            .map(|raw| Spec { raw })
    }

    /// A copy whose hf numerics reproduce another arithmetic (an engine refuses one it cannot
    /// reproduce when it is built from the spec).
    pub fn with_hf_arithmetic(&self, hf_arithmetic: HfArithmetic) -> Result<Spec> {
        create(|out| unsafe { sys::posenc_spec_with_hf_arithmetic(self.raw.as_ptr(), hf_arithmetic.to_raw(), out) })
            .map(|raw| Spec { raw })
    }

    pub(crate) fn as_ptr(&self) -> *const sys::posenc_spec {
        self.raw.as_ptr()
    }
}
