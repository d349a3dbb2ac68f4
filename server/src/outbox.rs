//! A subscriber's bounded priority queue (PROTOCOL.md §6.4), shared between
//! the router, which fills it, and the connection's writer, which drains it.
//!
//! Four lanes, drained in this order: control (the session's own answers
//! and the room's announcements, never dropped), audio, relay (chat and
//! E2EE messages from other members: bounded, so that what others send can
//! never hold this subscriber's audio back or grow without end), and video
//! (key and delta frames in one FIFO, so a track's frames stay in order). When the queue is
//! full it drops video deltas first (and the rest of that track's deltas until
//! its next key frame, which it asks the publisher for), then video key
//! frames, and audio last. A queue that keeps overflowing for
//! `slow_consumer` is marked slow and its connection is closed. While the
//! transport reports its path congested (QUIC's losses, round trip and
//! congestion window), the media lanes hold half as much, so frames that
//! would only arrive late are dropped sooner and the queue's delay stays
//! short.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use convene_protocol::Timestamp;

/// Wakes whoever drains an [`Outbox`]; the tokio shell uses a `Notify`.
pub trait Wake: Send + Sync {
    /// Frames were queued.
    fn wake(&self);
    /// The outbox was closed from outside its connection (slowness,
    /// shutdown): its drainer must also stop, and its session learn why.
    fn wake_closed(&self) {
        self.wake();
    }
}

/// Which lane a media frame goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaClass {
    /// Audio: dropped last.
    Audio,
    /// A video key frame.
    Key,
    /// A video delta frame: dropped first.
    Delta,
}

/// Why a frame was dropped; a label of the drop metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A video delta frame made room, or waited for a key frame.
    VideoDelta,
    /// A video key frame made room.
    VideoKey,
    /// An audio frame made room.
    Audio,
}

/// A video frame in the queue, with the track it belongs to.
#[derive(Debug)]
struct VideoEntry {
    /// (publisher, track).
    track: (u32, u32),
    /// Key or delta.
    key: bool,
    /// The frame.
    frame: Bytes,
}

/// Sizes of an outbox.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    /// Most bytes of media queued.
    pub max_media_bytes: usize,
    /// Most media frames queued.
    pub max_media_frames: usize,
    /// Most control bytes queued before the subscriber counts as slow.
    pub max_control_bytes: usize,
    /// Most bytes of chat and E2EE messages from others queued; one more
    /// marks the subscriber slow.
    pub max_relay_bytes: usize,
    /// Continuous overflow after which the subscriber is disconnected.
    pub slow_consumer: Duration,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            max_media_bytes: 2 << 20,
            max_media_frames: 1024,
            max_control_bytes: 1 << 20,
            max_relay_bytes: MAX_RELAY_BYTES,
            slow_consumer: Duration::from_millis(
                convene_protocol::limits::default::SLOW_CONSUMER_MS as u64,
            ),
        }
    }
}

/// Bytes of chat and E2EE messages from other members a subscriber's queue
/// holds (PROTOCOL.md §11.5): sixteen seconds of the room's whole relay
/// budget at its default.
pub const MAX_RELAY_BYTES: usize = 1 << 20;

/// What happened to a pushed media frame.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    /// The frame was queued.
    pub queued: bool,
    /// Frames dropped to make room (or this frame), by reason.
    pub dropped: Vec<DropReason>,
    /// A video track of which frames were lost: ask its publisher for a key frame.
    pub needs_key_frame: Option<(u32, u32)>,
    /// The queue has overflowed for too long: disconnect the subscriber.
    pub slow: bool,
    /// How long the oldest media already queued has waited: a path that
    /// does not keep up shows here before anything is dropped.
    pub waited: std::time::Duration,
}

#[derive(Debug, Default)]
struct Inner {
    control: VecDeque<Bytes>,
    control_bytes: usize,
    relay: VecDeque<Bytes>,
    relay_bytes: usize,
    audio: VecDeque<Bytes>,
    video: VecDeque<VideoEntry>,
    media_bytes: usize,
    /// Video tracks whose deltas are dropped until their next key frame.
    starved: Vec<(u32, u32)>,
    /// Since when the queue has been overflowing without draining empty.
    overflow_since: Option<Timestamp>,
    /// When media was first queued since the queue last drained empty: the
    /// oldest frame's wait, for the queue-delay metric and the load signal
    /// (`--max-queue-delay-ms`). Only media pushes carry a time; control and
    /// relay frames are few and go first, so media's wait is what matters.
    nonempty_since: Option<Timestamp>,
    /// Set when the subscriber must be disconnected; nothing more is queued.
    closed: bool,
    /// Set when the closure is for slowness.
    slow: bool,
}

/// What one [`Outbox::drain_timed`] took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Frames remain queued.
    pub more: bool,
    /// How long the oldest frame taken had waited.
    pub waited: Option<std::time::Duration>,
    /// The first `control` frames taken are control frames.
    pub control: usize,
    /// The `audio` frames after them are audio.
    pub audio: usize,
}

/// The queue of one subscriber.
pub struct Outbox {
    limits: OutboxLimits,
    inner: Mutex<Inner>,
    waker: Box<dyn Wake>,
    /// Set by the transport while its path to the subscriber is congested
    /// (QUIC losses, RTT or a full window): the room hints publishers down
    /// as for drops, and the media lanes hold half as much.
    congested: std::sync::atomic::AtomicBool,
    /// What the transport estimates its path to the subscriber carries,
    /// kbit/s (0: no estimate yet): the room's budget for the subscriber
    /// (PROTOCOL.md §6.6.3) reads it now and then.
    path_kbps: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// An empty outbox that calls `waker` when there is something to drain.
    pub fn new(limits: OutboxLimits, waker: Box<dyn Wake>) -> Self {
        Outbox {
            limits,
            inner: Mutex::new(Inner::default()),
            waker,
            congested: std::sync::atomic::AtomicBool::new(false),
            path_kbps: std::sync::atomic::AtomicU32::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere must not take every subscriber down with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a control frame. Control is never dropped; a subscriber that lets
    /// control pile up past its limit is marked slow and closed.
    pub fn push_control(&self, frame: Bytes) -> bool {
        let mut q = self.lock();
        if q.closed {
            return false;
        }
        q.control_bytes += frame.len();
        q.control.push_back(frame);
        let became_slow = q.control_bytes > self.limits.max_control_bytes;
        if became_slow {
            mark_slow(&mut q);
        }
        drop(q);
        if became_slow {
            self.waker.wake_closed();
        } else {
            self.waker.wake();
        }
        true
    }

    /// Queues a chat or E2EE message from another member. These wait behind
    /// audio; a subscriber that lets them pile up past their limit is marked
    /// slow and closed (the room's relay budget keeps honest members far from it).
    pub fn push_relay(&self, frame: Bytes) -> bool {
        let mut q = self.lock();
        if q.closed {
            return false;
        }
        if q.relay_bytes + frame.len() > self.limits.max_relay_bytes {
            mark_slow(&mut q);
            drop(q);
            self.waker.wake_closed();
            return false;
        }
        q.relay_bytes += frame.len();
        q.relay.push_back(frame);
        drop(q);
        self.waker.wake();
        true
    }

    /// Queues the session's last words (its Error or Goodbye) on an outbox
    /// already closed: a subscriber cut off for slowness must still learn
    /// why (SLOW_CONSUMER), ahead of nothing, since its queue was emptied.
    pub fn push_last(&self, frame: Bytes) {
        let mut q = self.lock();
        if !q.closed {
            drop(q);
            self.push_control(frame);
            return;
        }
        q.control_bytes += frame.len();
        q.control.push_back(frame);
        drop(q);
        self.waker.wake();
    }

    /// Queues a media frame of `track` (publisher, track id) as of `now`,
    /// dropping by the spec's priorities when full.
    pub fn push_media(
        &self,
        now: Timestamp,
        class: MediaClass,
        track: (u32, u32),
        frame: Bytes,
    ) -> PushOutcome {
        let mut out = PushOutcome::default();
        let mut q = self.lock();
        if q.closed {
            return out;
        }
        match class {
            MediaClass::Key => q.starved.retain(|t| *t != track),
            MediaClass::Delta if q.starved.contains(&track) => {
                out.dropped.push(DropReason::VideoDelta);
                return out;
            }
            _ => {}
        }
        out.waited = q
            .nonempty_since
            .map_or(std::time::Duration::ZERO, |t| now.saturating_since(t));
        let len = frame.len();
        let (max_bytes, max_frames) = self.media_limits();
        while q.media_bytes + len > max_bytes || q.audio.len() + q.video.len() >= max_frames {
            match evict(&mut q, class) {
                Some((reason, lost_track)) => {
                    out.dropped.push(reason);
                    if let Some(t) = lost_track {
                        out.needs_key_frame = Some(t);
                    }
                }
                None => break,
            }
        }
        let fits = q.media_bytes + len <= max_bytes && q.audio.len() + q.video.len() < max_frames;
        if !out.dropped.is_empty() || !fits {
            let since = *q.overflow_since.get_or_insert(now);
            if now.saturating_since(since) >= self.limits.slow_consumer {
                mark_slow(&mut q);
                out.slow = true;
                drop(q);
                self.waker.wake_closed();
                return out;
            }
        }
        if !fits {
            // Nothing of lower priority was left to drop: this frame is the loss.
            out.dropped.push(match class {
                MediaClass::Audio => DropReason::Audio,
                MediaClass::Key => DropReason::VideoKey,
                MediaClass::Delta => DropReason::VideoDelta,
            });
            if class != MediaClass::Audio {
                if !q.starved.contains(&track) {
                    q.starved.push(track);
                }
                out.needs_key_frame = Some(track);
            }
            return out;
        }
        q.media_bytes += len;
        q.nonempty_since.get_or_insert(now);
        match class {
            MediaClass::Audio => q.audio.push_back(frame),
            MediaClass::Key | MediaClass::Delta => q.video.push_back(VideoEntry {
                track,
                key: class == MediaClass::Key,
                frame,
            }),
        }
        out.queued = true;
        drop(q);
        self.waker.wake();
        out
    }

    /// Moves queued frames into `out`, control first, then audio, then chat
    /// and E2EE messages from others, then video, up to about `max_bytes`.
    /// Returns true if frames remain.
    pub fn drain(&self, out: &mut Vec<Bytes>, max_bytes: usize) -> bool {
        self.take(out, max_bytes, None).more
    }

    /// Like [`Outbox::drain`] as of `now`, and also says how long the oldest
    /// frame taken had waited (an upper bound when the queue never emptied)
    /// and how many of the frames taken are control and audio: they come
    /// first, in that order, so a transport can send each lane its own way.
    /// `now` is on the clock the media was pushed with.
    pub fn drain_timed(&self, out: &mut Vec<Bytes>, max_bytes: usize, now: Timestamp) -> Drained {
        self.take(out, max_bytes, Some(now))
    }

    fn take(&self, out: &mut Vec<Bytes>, max_bytes: usize, now: Option<Timestamp>) -> Drained {
        let mut q = self.lock();
        let waited = now
            .zip(q.nonempty_since)
            .map(|(now, t)| now.saturating_since(t));
        let start = out.len();
        let (mut control, mut audio) = (0, 0);
        let mut taken = 0;
        while taken < max_bytes {
            if let Some(f) = q.control.pop_front() {
                q.control_bytes -= f.len();
                taken += f.len();
                control += 1;
                out.push(f);
            } else if let Some(f) = q.audio.pop_front() {
                q.media_bytes -= f.len();
                taken += f.len();
                audio += 1;
                out.push(f);
            } else if let Some(f) = q.relay.pop_front() {
                q.relay_bytes -= f.len();
                taken += f.len();
                out.push(f);
            } else if let Some(v) = q.video.pop_front() {
                q.media_bytes -= v.frame.len();
                taken += v.frame.len();
                out.push(v.frame);
            } else {
                break;
            }
        }
        let empty =
            q.control.is_empty() && q.audio.is_empty() && q.relay.is_empty() && q.video.is_empty();
        if empty {
            q.overflow_since = None;
            q.nonempty_since = None;
        } else if now.is_some() {
            // What stays has waited at most since now: an upper bound from here on.
            q.nonempty_since = now;
        }
        debug_assert!(out.len() - start >= control + audio);
        Drained {
            more: !empty,
            waited,
            control,
            audio,
        }
    }

    /// Marks the outbox closed (removal, shutdown, slowness) and wakes the drainer.
    pub fn close(&self) {
        self.lock().closed = true;
        self.waker.wake_closed();
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Says whether the transport's path to the subscriber is congested.
    pub fn set_congested(&self, congested: bool) {
        self.congested
            .store(congested, std::sync::atomic::Ordering::Relaxed);
    }

    /// True while the transport reports its path congested.
    pub fn is_congested(&self) -> bool {
        self.congested.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records the transport's estimate of what its path carries, kbit/s.
    pub fn set_path_kbps(&self, kbps: u32) {
        self.path_kbps
            .store(kbps, std::sync::atomic::Ordering::Relaxed);
    }

    /// The transport's estimate of what its path carries, kbit/s; `None`
    /// before it has one.
    pub fn path_kbps(&self) -> Option<u32> {
        match self.path_kbps.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            k => Some(k),
        }
    }

    /// The media lanes' limits now, bytes and frames: half while congested.
    fn media_limits(&self) -> (usize, usize) {
        let (bytes, frames) = (self.limits.max_media_bytes, self.limits.max_media_frames);
        if self.is_congested() {
            (bytes / 2, (frames / 2).max(1))
        } else {
            (bytes, frames)
        }
    }

    /// True if closed because the subscriber was too slow.
    pub fn is_slow(&self) -> bool {
        self.lock().slow
    }

    /// Frames queued now, for the queue-depth metric.
    pub fn depth(&self) -> usize {
        let q = self.lock();
        q.control.len() + q.audio.len() + q.relay.len() + q.video.len()
    }

    /// Bytes queued now in all lanes.
    pub fn bytes(&self) -> usize {
        let q = self.lock();
        q.control_bytes + q.relay_bytes + q.media_bytes
    }
}

/// Closes a queue whose subscriber is too slow and lets go of everything in
/// it: the subscriber is leaving, and only its last words are sent
/// ([`Outbox::push_last`]), without waiting behind what it did not read.
fn mark_slow(q: &mut Inner) {
    q.closed = true;
    q.slow = true;
    q.control.clear();
    q.control_bytes = 0;
    q.relay.clear();
    q.relay_bytes = 0;
    q.audio.clear();
    q.video.clear();
    q.media_bytes = 0;
}

/// Removes one frame to make room for a frame of `incoming` class. Returns the
/// reason and, for video, the track that now needs a key frame.
fn evict(q: &mut Inner, incoming: MediaClass) -> Option<(DropReason, Option<(u32, u32)>)> {
    // Oldest delta first: it and the rest of its track's deltas up to the next key frame.
    if let Some(i) = q.video.iter().position(|v| !v.key) {
        let track = q.video[i].track;
        let mut j = i;
        let mut removed_bytes = 0;
        while j < q.video.len() {
            if q.video[j].track == track {
                if q.video[j].key {
                    break;
                }
                removed_bytes += q.video[j].frame.len();
                q.video.remove(j);
            } else {
                j += 1;
            }
        }
        q.media_bytes -= removed_bytes;
        let key_queued_later = q.video.iter().skip(i).any(|v| v.track == track && v.key);
        if !key_queued_later && !q.starved.contains(&track) {
            q.starved.push(track);
        }
        return Some((DropReason::VideoDelta, (!key_queued_later).then_some(track)));
    }
    // Then key frames, but only to make room for something at least as important.
    if incoming != MediaClass::Delta
        && let Some(v) = q.video.pop_front()
    {
        q.media_bytes -= v.frame.len();
        if !q.starved.contains(&v.track) {
            q.starved.push(v.track);
        }
        return Some((DropReason::VideoKey, Some(v.track)));
    }
    // Audio only for audio.
    if incoming == MediaClass::Audio
        && let Some(f) = q.audio.pop_front()
    {
        q.media_bytes -= f.len();
        return Some((DropReason::Audio, None));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Count(Arc<AtomicUsize>);
    impl Wake for Count {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn outbox(frames: usize) -> (Outbox, Arc<AtomicUsize>) {
        let wakes = Arc::new(AtomicUsize::new(0));
        let limits = OutboxLimits {
            max_media_bytes: usize::MAX,
            max_media_frames: frames,
            max_control_bytes: 1000,
            max_relay_bytes: 100,
            slow_consumer: Duration::from_secs(5),
        };
        (Outbox::new(limits, Box::new(Count(wakes.clone()))), wakes)
    }

    fn f(tag: u8) -> Bytes {
        Bytes::from(vec![tag; 10])
    }

    fn drained(o: &Outbox) -> Vec<u8> {
        let mut v = Vec::new();
        o.drain(&mut v, usize::MAX);
        v.iter().map(|b| b[0]).collect()
    }

    const T: (u32, u32) = (1, 2);
    const A: (u32, u32) = (1, 1);

    #[test]
    fn drains_control_then_audio_then_video_in_order() {
        let (o, wakes) = outbox(10);
        let t0 = Timestamp(0);
        o.push_media(t0, MediaClass::Key, T, f(1));
        o.push_media(t0, MediaClass::Delta, T, f(2));
        o.push_media(t0, MediaClass::Audio, A, f(3));
        o.push_control(f(4));
        assert_eq!(drained(&o), vec![4, 3, 1, 2]);
        assert_eq!(wakes.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_full_queue_drops_deltas_first_and_asks_for_a_key_frame() {
        let (o, _) = outbox(3);
        let t0 = Timestamp(0);
        o.push_media(t0, MediaClass::Key, T, f(1));
        o.push_media(t0, MediaClass::Delta, T, f(2));
        o.push_media(t0, MediaClass::Delta, T, f(3));
        let out = o.push_media(t0, MediaClass::Audio, A, f(4));
        assert!(out.queued);
        assert_eq!(out.dropped, vec![DropReason::VideoDelta]);
        assert_eq!(out.needs_key_frame, Some(T));
        // Both deltas went: the second cannot be decoded without the first.
        assert_eq!(drained(&o), vec![4, 1]);
        // Until a key frame arrives, the track's deltas are not queued.
        let out = o.push_media(t0, MediaClass::Delta, T, f(5));
        assert!(!out.queued);
        o.push_media(t0, MediaClass::Key, T, f(6));
        o.push_media(t0, MediaClass::Delta, T, f(7));
        assert_eq!(drained(&o), vec![6, 7]);
    }

    #[test]
    fn audio_survives_while_video_is_dropped() {
        let (o, _) = outbox(4);
        let t0 = Timestamp(0);
        for i in 0..100u8 {
            let class = if i % 10 == 0 {
                MediaClass::Key
            } else {
                MediaClass::Delta
            };
            o.push_media(t0, class, T, f(100));
            o.push_media(t0, MediaClass::Audio, A, f(i));
        }
        let got = drained(&o);
        let audio: Vec<u8> = got.iter().copied().filter(|&x| x < 100).collect();
        // The last four audio frames are queued; the video made way for them.
        assert_eq!(audio, vec![96, 97, 98, 99]);
    }

    #[test]
    fn sustained_overflow_marks_the_subscriber_slow() {
        let (o, _) = outbox(1);
        o.push_media(Timestamp(0), MediaClass::Audio, A, f(1));
        let first = o.push_media(Timestamp(0), MediaClass::Audio, A, f(2));
        assert!(!first.slow);
        let later = o.push_media(Timestamp::from_millis(4_999), MediaClass::Audio, A, f(3));
        assert!(!later.slow);
        let too_long = o.push_media(Timestamp::from_millis(5_000), MediaClass::Audio, A, f(4));
        assert!(too_long.slow);
        assert!(o.is_closed() && o.is_slow());
        assert!(!o.push_control(f(9)));
    }

    #[test]
    fn draining_empty_resets_the_overflow_clock() {
        let (o, _) = outbox(1);
        o.push_media(Timestamp(0), MediaClass::Audio, A, f(1));
        o.push_media(Timestamp(0), MediaClass::Audio, A, f(2));
        drained(&o);
        o.push_media(Timestamp::from_millis(6_000), MediaClass::Audio, A, f(3));
        let out = o.push_media(Timestamp::from_millis(6_001), MediaClass::Audio, A, f(4));
        assert!(!out.slow);
    }

    #[test]
    fn a_congested_path_halves_what_the_media_lanes_hold() {
        let push_eight = |o: &Outbox| {
            for i in 0..8u8 {
                let class = if i == 0 {
                    MediaClass::Key
                } else {
                    MediaClass::Delta
                };
                o.push_media(Timestamp(0), class, T, f(i));
            }
        };
        let (o, _) = outbox(8);
        push_eight(&o);
        assert_eq!(drained(&o), (0..8).collect::<Vec<u8>>());
        let (o, _) = outbox(8);
        o.set_congested(true);
        push_eight(&o);
        // Four frames fit; the deltas beyond them went, and the track waits
        // for its next key frame.
        let kept = drained(&o);
        assert!(kept.len() <= 4, "{kept:?}");
        assert_eq!(kept.first(), Some(&0), "the key frame stays: {kept:?}");
        // The path clears: the whole queue is usable again.
        o.set_congested(false);
        for i in 0..8u8 {
            let class = if i == 0 {
                MediaClass::Key
            } else {
                MediaClass::Delta
            };
            o.push_media(Timestamp(0), class, T, f(10 + i));
        }
        assert_eq!(drained(&o).len(), 8);
    }

    #[test]
    fn control_flood_closes_as_slow() {
        let (o, _) = outbox(10);
        for _ in 0..101 {
            o.push_control(f(0));
        }
        assert!(o.is_slow());
    }
}
