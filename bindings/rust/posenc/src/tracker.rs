//! The continuous-batching position tracker: each step's positions for prefill chunks and decode tokens of many sequences.

use std::os::raw::c_void;

use crate::views::Positions;
use crate::{check, create, sys, Error, Result, Status};

/// A sequence's state. A token at absolute index n (n tokens precede it) gets
/// `position(n) = n < pin_from ? n + rope_delta : pin_value` and, on stream 1 of 2-stream
/// trackers, `block(n) = n < pin_from ? 0 : n - pin_from + 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SequenceState {
    /// Tokens already in the sequence (its KV cache).
    pub length: i64,
    pub rope_delta: i64,
    /// `None`: never pinned.
    pub pin_from: Option<i64>,
    pub pin_value: i64,
}

impl SequenceState {
    pub(crate) fn from_raw(raw: &sys::posenc_sequence_state) -> SequenceState {
        SequenceState {
            length: raw.length,
            rope_delta: raw.rope_delta,
            pin_from: if raw.pin_from == sys::POSENC_NEVER_PINNED { None } else { Some(raw.pin_from) },
            pin_value: raw.pin_value,
        }
    }
}

impl Default for SequenceState {
    fn default() -> Self {
        SequenceState { length: 0, rope_delta: 0, pin_from: None, pin_value: 0 }
    }
}

/// `new_tokens` tokens of sequence `seq_id` in one step (a prefill chunk, or 1 to decode).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepEntry {
    pub seq_id: i64,
    pub new_tokens: i64,
}

// StepEntry is passed to the library as posenc_step_entry: same layout.
const _: () = assert!(
    std::mem::size_of::<StepEntry>() == std::mem::size_of::<sys::posenc_step_entry>()
        && std::mem::align_of::<StepEntry>() == std::mem::align_of::<sys::posenc_step_entry>()
);

/// One step's positions: `streams` x `tokens`, stream-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PositionIds {
    pub streams: i32,
    pub tokens: i64,
    pub values: Vec<i64>,
}

impl PositionIds {
    /// The `tokens` values of stream `s`.
    pub fn stream(&self, s: usize) -> &[i64] {
        let tokens = self.tokens as usize;
        &self.values[s * tokens..(s + 1) * tokens]
    }

    /// As an engine call takes them.
    pub fn positions(&self) -> Positions<'_> {
        Positions::streams(&self.values, self.streams, self.tokens).expect("a step's values hold streams x tokens ids")
    }
}

handle!(
    /// Position bookkeeping for continuous batching (host). A step that fails changes nothing.
    PositionTracker, posenc_position_tracker, posenc_position_tracker_destroy,
    // SAFETY: mutation needs &mut self; the library's read-only calls on one tracker may run at once.
);

impl PositionTracker {
    /// `streams` 1, 2 (ChatGLM-6B 2-D) or 3 (M-RoPE); positions must lie in [0, position_limit).
    pub fn new(streams: i32, position_limit: i64) -> Result<PositionTracker> {
        create(|out| unsafe { sys::posenc_position_tracker_create(streams, position_limit, out) })
            .map(|raw| PositionTracker { raw })
    }

    pub fn add_sequence(&mut self, seq_id: i64, state: SequenceState) -> Result<()> {
        let mut raw = sys::posenc_sequence_state::make();
        raw.length = state.length;
        raw.rope_delta = state.rope_delta;
        raw.pin_from = state.pin_from.unwrap_or(sys::POSENC_NEVER_PINNED);
        raw.pin_value = state.pin_value;
        check(unsafe { sys::posenc_position_tracker_add(self.raw.as_ptr(), seq_id, &raw) })
    }

    pub fn remove_sequence(&mut self, seq_id: i64) -> Result<()> {
        check(unsafe { sys::posenc_position_tracker_remove(self.raw.as_ptr(), seq_id) })
    }

    pub fn contains(&self, seq_id: i64) -> Result<bool> {
        let mut flag = 0;
        check(unsafe { sys::posenc_position_tracker_contains(self.raw.as_ptr(), seq_id, &mut flag) })?;
        Ok(flag != 0)
    }

    pub fn state(&self, seq_id: i64) -> Result<SequenceState> {
        let mut raw = sys::posenc_sequence_state::make();
        check(unsafe { sys::posenc_position_tracker_get_state(self.raw.as_ptr(), seq_id, &mut raw) })?;
        Ok(SequenceState::from_raw(&raw))
    }

    /// Re-pins a sequence from its current length (its block position restarts at 1).
    pub fn pin(&mut self, seq_id: i64, pin_value: i64) -> Result<()> {
        check(unsafe { sys::posenc_position_tracker_pin(self.raw.as_ptr(), seq_id, pin_value) })
    }

    /// The sequence's slot: its index in the tracker's state, and its slot in a
    /// [`GpuPositionTracker`] made from this tracker. Slots follow the order of `add_sequence`;
    /// `remove_sequence` moves the last slot's sequence into the freed one.
    pub fn slot(&self, seq_id: i64) -> Result<i64> {
        let mut slot = 0;
        check(unsafe { sys::posenc_position_tracker_slot(self.raw.as_ptr(), seq_id, &mut slot) })?;
        Ok(slot)
    }

    pub fn len(&self) -> Result<i64> {
        let mut size = 0;
        check(unsafe { sys::posenc_position_tracker_size(self.raw.as_ptr(), &mut size) })?;
        Ok(size)
    }

    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|n| n == 0)
    }

    pub fn streams(&self) -> Result<i32> {
        let mut streams = 0;
        check(unsafe { sys::posenc_position_tracker_streams(self.raw.as_ptr(), &mut streams) })?;
        Ok(streams)
    }

    /// The step's positions, then the sequences' lengths grow by their new tokens.
    pub fn step(&mut self, entries: &[StepEntry]) -> Result<PositionIds> {
        let raw = self.raw.as_ptr();
        self.run(entries, |e, n, out, cap, tokens| unsafe { sys::posenc_position_tracker_step(raw, e, n, out, cap, tokens) })
    }

    /// The same positions without committing.
    pub fn peek(&self, entries: &[StepEntry]) -> Result<PositionIds> {
        let raw = self.raw.as_ptr();
        self.run(entries, |e, n, out, cap, tokens| unsafe { sys::posenc_position_tracker_peek(raw, e, n, out, cap, tokens) })
    }

    fn run(
        &self,
        entries: &[StepEntry],
        call: impl FnOnce(*const sys::posenc_step_entry, usize, *mut i64, usize, *mut i64) -> sys::posenc_status,
    ) -> Result<PositionIds> {
        // Sized from the entries; a bad entry (new_tokens < 1, unknown sequence) is the library's to name.
        let total = entries
            .iter()
            .try_fold(0i64, |sum, e| sum.checked_add(e.new_tokens.max(0)))
            .ok_or_else(|| Error::new(Status::Overflow, "PositionTracker: the step's tokens overflow i64".to_string()))?;
        let streams = self.streams()?;
        let capacity = (streams as i64)
            .checked_mul(total)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| Error::new(Status::Overflow, format!("PositionTracker: {} tokens x {} streams overflow", total, streams)))?;
        let mut values: Vec<i64> = Vec::new();
        values.try_reserve_exact(capacity).map_err(|_| {
            Error::new(Status::OutOfMemory, format!("PositionTracker: no memory for {} positions", capacity))
        })?;
        values.resize(capacity, 0);
        let mut tokens = 0i64;
        check(call(entries.as_ptr() as *const sys::posenc_step_entry, entries.len(), values.as_mut_ptr(), capacity, &mut tokens))?;
        values.truncate((streams as i64 * tokens) as usize);
        Ok(PositionIds { streams, tokens, values })
    }
}

handle!(
    /// The position tracker on a GPU: a device copy of a [`PositionTracker`]'s slots whose steps
    /// turn device-side (slot, new_tokens) lists into positions on a stream, with no host round
    /// trip, for a [`GpuEngine`](crate::GpuEngine) call. It owns its device state and borrows
    /// nothing: the host tracker is only read at creation (sequences added later are not seen).
    ///
    /// Its steps take device pointers and a vendor stream (cudaStream_t / hipStream_t; null is the
    /// legacy default stream), so they are `unsafe`. A bad entry (a slot outside [0, slots), a
    /// repeated slot, new_tokens < 1, a position outside the host tracker's limit) cannot be refused
    /// before the launch: it writes nothing, is recorded on the device, and
    /// [`check`](GpuPositionTracker::check) reports the first one.
    GpuPositionTracker, posenc_gpu_position_tracker, posenc_gpu_position_tracker_destroy,
    // SAFETY: a step needs &mut self; the library's read-only calls may run at once.
);

impl GpuPositionTracker {
    /// Uploads `host`'s slots to device `device` (slot i on the device is host slot i,
    /// [`PositionTracker::slot`]). `max_tokens` in [1, 2^31 - 1] bounds one step's tokens and is
    /// the stream stride of its output. Error(Unsupported) naming the reason where there is no
    /// GPU or no GPU support.
    pub fn new(host: &PositionTracker, device: i32, max_tokens: i64) -> Result<GpuPositionTracker> {
        create(|out| unsafe { sys::posenc_gpu_position_tracker_create(host.raw.as_ptr(), device, max_tokens, out) })
            .map(|raw| GpuPositionTracker { raw })
    }

    /// One step on `stream`: `entries` (slot, new_tokens) pairs, `total_tokens` (at most
    /// `max_tokens`) the sum of new_tokens the caller planned. One launch; no allocation, copy or
    /// wait.
    ///
    /// # Safety
    /// `slots` and `new_tokens` are device arrays of `entries` values and `positions` a device
    /// buffer of `streams * max_tokens` values, all of this tracker's device and alive until the
    /// stream has run the launch; `stream` is null or a live stream of that device.
    pub unsafe fn step_raw(
        &mut self,
        slots: *const i32,
        new_tokens: *const i32,
        entries: usize,
        total_tokens: i64,
        positions: *mut i64,
        stream: *mut c_void,
    ) -> Result<()> {
        check(sys::posenc_gpu_position_tracker_step(
            self.raw.as_ptr(),
            slots,
            new_tokens,
            entries,
            total_tokens,
            positions,
            stream,
        ))
    }

    /// The view of a step's `total_tokens` positions in the device buffer `positions` (int64, this
    /// tracker's streams, stream stride `max_tokens`), as the `positions` field of
    /// [`GpuEngine::apply_raw`](crate::GpuEngine::apply_raw)'s arguments takes it.
    pub fn positions_raw(&self, positions: *const i64, total_tokens: i64) -> Result<sys::posenc_positions> {
        let mut view = sys::posenc_positions {
            data: std::ptr::null(),
            type_: 0,
            streams: 0,
            count: 0,
            stream_stride: 0,
        };
        check(unsafe { sys::posenc_gpu_position_tracker_positions(self.raw.as_ptr(), positions, total_tokens, &mut view) })?;
        Ok(view)
    }

    /// Synchronizes `stream`, then reports the first bad entry recorded since the last check (and
    /// clears it), or a fault of the launch.
    ///
    /// # Safety
    /// `stream` is null or a live stream of this tracker's device.
    pub unsafe fn check(&self, stream: *mut c_void) -> Result<()> {
        check(sys::posenc_gpu_position_tracker_check(self.raw.as_ptr(), stream))
    }

    /// The device lengths in slot order (synchronizes `stream`; for tests and monitoring).
    ///
    /// # Safety
    /// `stream` is null or a live stream of this tracker's device.
    pub unsafe fn lengths(&self, stream: *mut c_void) -> Result<Vec<i64>> {
        let slots = usize::try_from(self.slots()?)
            .map_err(|_| Error::new(Status::Internal, "GpuPositionTracker: a negative slot count".to_string()))?;
        let mut lengths = vec![0i64; slots];
        check(sys::posenc_gpu_position_tracker_lengths(self.raw.as_ptr(), lengths.as_mut_ptr(), slots, stream))?;
        Ok(lengths)
    }

    pub fn streams(&self) -> Result<i32> {
        let mut streams = 0;
        check(unsafe { sys::posenc_gpu_position_tracker_streams(self.raw.as_ptr(), &mut streams) })?;
        Ok(streams)
    }

    pub fn slots(&self) -> Result<i64> {
        let mut slots = 0;
        check(unsafe { sys::posenc_gpu_position_tracker_slots(self.raw.as_ptr(), &mut slots) })?;
        Ok(slots)
    }

    pub fn max_tokens(&self) -> Result<i64> {
        let mut max_tokens = 0;
        check(unsafe { sys::posenc_gpu_position_tracker_max_tokens(self.raw.as_ptr(), &mut max_tokens) })?;
        Ok(max_tokens)
    }
}
