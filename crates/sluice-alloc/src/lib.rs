//! Per-job memory accounting: what each running job's tasks hold on the heap, so that a
//! job over its limit fails alone instead of taking the process down with it.
//!
//! ```text
//!  Guarded::poll of a job's task ── enter(job's slot) ── poll ── leave ── over the limit? fail
//!         │ every allocation while polling is charged to the slot in a header before it
//!  AccountingAllocator: [slot | padding][ the caller's bytes ]  (header: 16 bytes, or the
//!         alignment if larger); a free is credited to the slot in its header, whichever
//!         thread frees it, so a batch made by one task and dropped by another is even.
//! ```
//!
//! The binary installs [`AccountingAllocator`] as its global allocator; without it (a
//! library user's own allocator, unit tests) nothing is measured and limits are not
//! enforced. Allocations outside any job's poll (the server, blocking threads) are charged
//! to slot 0, which is not counted.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// How many jobs can be accounted at once (slot 0 is "no job").
const SLOTS: usize = 256;

static USED: [AtomicI64; SLOTS] = [const { AtomicI64::new(0) }; SLOTS];
static TAKEN: Mutex<[bool; SLOTS]> = Mutex::new([false; SLOTS]);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// This thread's slot, and the bytes charged to it not yet added to its count.
struct Local {
    slot: Cell<u16>,
    pending: Cell<i64>,
}

thread_local! {
    /// The slot allocations on this thread are charged to now, and its pending bytes:
    /// counted here and added to the slot's shared count in steps of [`FLUSH`] bytes (or
    /// when the poll ends), so that allocating does not touch a shared cache line.
    static LOCAL: Local = const {
        Local {
            slot: Cell::new(0),
            pending: Cell::new(0),
        }
    };
}

/// Most bytes a thread keeps uncounted for its slot.
const FLUSH: i64 = 256 << 10;

/// The smallest header: keeps the slot and the caller's alignment.
const HEADER: usize = 16;

/// Bytes reserved before an allocation of alignment `align`.
fn header(align: usize) -> usize {
    align.max(HEADER)
}

/// A global allocator that charges every allocation to the job being polled on its thread
/// (see the module docs). Wraps another allocator.
pub struct AccountingAllocator<A> {
    inner: A,
}

impl<A> AccountingAllocator<A> {
    /// Accounts allocations made through `inner`.
    pub const fn new(inner: A) -> Self {
        Self { inner }
    }
}

fn current() -> u16 {
    LOCAL.try_with(|l| l.slot.get()).unwrap_or(0)
}

fn charge(slot: u16, bytes: i64) {
    if slot == 0 {
        return;
    }
    // The thread's own slot: counted locally. Another slot's block (freed here): at once.
    let counted = LOCAL
        .try_with(|l| {
            if l.slot.get() != slot {
                return false;
            }
            let pending = l.pending.get() + bytes;
            if pending.abs() >= FLUSH {
                USED[slot as usize].fetch_add(pending, Ordering::Relaxed);
                l.pending.set(0);
            } else {
                l.pending.set(pending);
            }
            true
        })
        .unwrap_or(false);
    if !counted {
        USED[slot as usize].fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Turns transparent huge pages off for this process, unless `MIMALLOC_ALLOW_THP` says
/// otherwise (Linux; elsewhere it does nothing). With them on (the allocator asks for them
/// where the system's setting is `madvise`), the kernel may compact memory to back a fresh
/// region with a huge page, stalling the faulting thread for milliseconds: in a paced
/// 1-second window benchmark one window in a few runs took 8–14 ms to fire instead of
/// 2–3 ms, and the run's p99 latency went to 10–39 ms instead of 4–5 ms. Small pages cost
/// little throughput (none to a few percent in the file benchmarks).
pub fn disable_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and reads or writes no memory of
    // ours; it only sets a flag of the process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Makes `slot` this thread's, adding what it kept for the one before to that one's count.
fn switch(slot: u16) -> u16 {
    LOCAL
        .try_with(|l| {
            let before = l.slot.replace(slot);
            let pending = l.pending.replace(0);
            if before != 0 && pending != 0 {
                USED[before as usize].fetch_add(pending, Ordering::Relaxed);
            }
            before
        })
        .unwrap_or(0)
}

#[allow(unsafe_code)]
// SAFETY: every block handed out is `header` bytes into a block of the inner allocator,
// allocated with the caller's alignment (at least 16) and `header` more bytes; the slot is
// kept in the 8 bytes just before the caller's pointer, inside the header. Every free,
// zeroed allocation and reallocation goes back to the inner allocator with the same
// enlarged layout.
unsafe impl<A: GlobalAlloc> GlobalAlloc for AccountingAllocator<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with a layout that has the same alignment and is larger.
        unsafe { self.allocate(layout, false) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe { self.allocate(layout, true) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let h = header(layout.align());
        // SAFETY: `ptr` came from `allocate`, which put the slot 8 bytes before it and
        // the block `h` bytes before it, with this enlarged layout.
        unsafe {
            let slot = (ptr.sub(8) as *const u64).read() as u16;
            charge(slot, -(layout.size() as i64));
            let full =
                Layout::from_size_align_unchecked(layout.size() + h, layout.align().max(HEADER));
            self.inner.dealloc(ptr.sub(h), full);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let h = header(layout.align());
        let Some(new_full) = new_size.checked_add(h) else {
            return std::ptr::null_mut();
        };
        // SAFETY: as `dealloc`; the header moves with the block, so the slot stays.
        unsafe {
            let slot = (ptr.sub(8) as *const u64).read() as u16;
            let full =
                Layout::from_size_align_unchecked(layout.size() + h, layout.align().max(HEADER));
            let base = self.inner.realloc(ptr.sub(h), full, new_full);
            if base.is_null() {
                return base;
            }
            charge(slot, new_size as i64 - layout.size() as i64);
            base.add(h)
        }
    }
}

#[allow(unsafe_code)]
impl<A: GlobalAlloc> AccountingAllocator<A> {
    /// # Safety
    /// As [`GlobalAlloc::alloc`].
    unsafe fn allocate(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        let h = header(layout.align());
        let Some(size) = layout.size().checked_add(h) else {
            return std::ptr::null_mut();
        };
        let Ok(full) = Layout::from_size_align(size, layout.align().max(HEADER)) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `full` has a non-zero size (it includes the header).
        let base = unsafe {
            match zeroed {
                true => self.inner.alloc_zeroed(full),
                false => self.inner.alloc(full),
            }
        };
        if base.is_null() {
            return base;
        }
        if !INSTALLED.load(Ordering::Relaxed) {
            INSTALLED.store(true, Ordering::Relaxed);
        }
        let slot = current();
        charge(slot, layout.size() as i64);
        // SAFETY: `h` ≥ 16 bytes lie before the returned pointer inside the block, and
        // `base + h - 8` is 8-aligned (`base` is at least 16-aligned, `h` a multiple of 16).
        unsafe {
            let ptr = base.add(h);
            (ptr.sub(8) as *mut u64).write(slot as u64);
            ptr
        }
    }
}

/// Whether the process allocates through [`AccountingAllocator`] (otherwise nothing is
/// measured).
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// One job's account: what its tasks hold, and its limit.
#[derive(Debug)]
pub struct JobMemory {
    slot: u16,
    /// The slot's count when the account opened (blocks of an earlier job that used the
    /// slot may still be alive).
    base: i64,
    limit: Option<u64>,
}

impl JobMemory {
    /// An account with `limit` bytes (`None`: measured, not limited). When every slot is
    /// taken the job is not accounted (slot 0).
    pub fn open(limit: Option<u64>) -> Self {
        let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
        let slot = (1..SLOTS).find(|&s| !taken[s]).unwrap_or(0);
        if slot != 0 {
            taken[slot] = true;
        }
        Self {
            slot: slot as u16,
            base: USED[slot].load(Ordering::Relaxed),
            limit,
        }
    }

    /// Bytes the job's tasks hold now (0 when not measured).
    pub fn used(&self) -> u64 {
        if self.slot == 0 {
            return 0;
        }
        (USED[self.slot as usize].load(Ordering::Relaxed) - self.base).max(0) as u64
    }

    /// The limit, when one is set.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Whether the job holds more than its limit.
    pub fn over_limit(&self) -> Option<(u64, u64)> {
        let limit = self.limit?;
        let used = self.used();
        (used > limit).then_some((used, limit))
    }

    /// Charges allocations on this thread to the job until [`leave`]; returns what to
    /// restore.
    pub fn enter(&self) -> u16 {
        switch(self.slot)
    }
}

/// Restores the slot [`JobMemory::enter`] returned (what was charged meanwhile is then
/// in the job's count).
pub fn leave(previous: u16) {
    switch(previous);
}

impl Drop for JobMemory {
    fn drop(&mut self) {
        if self.slot != 0 {
            let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
            taken[self.slot as usize] = false;
        }
    }
}

/// Bytes as people read them: `512 MiB`, `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{v:.1} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The allocator over the system one, driven directly (the test binary keeps its own).
    #[test]
    #[allow(unsafe_code)]
    fn blocks_are_charged_to_the_slot_they_were_made_in_whoever_frees_them() {
        let a = AccountingAllocator::new(std::alloc::System);
        let job = JobMemory::open(Some(1000));
        assert_ne!(job.slot, 0, "a free slot");
        let prev = job.enter();
        let layouts = [
            Layout::from_size_align(600, 8).unwrap(),
            Layout::from_size_align(100, 64).unwrap(),
        ];
        // SAFETY: non-zero sizes; each block freed once with its own layout.
        let (p, q) = unsafe { (a.alloc(layouts[0]), a.alloc_zeroed(layouts[1])) };
        leave(prev);
        assert_eq!(q as usize % 64, 0, "the caller's alignment kept");
        // SAFETY: `q` holds 100 zeroed bytes.
        assert!(
            unsafe { std::slice::from_raw_parts(q, 100) }
                .iter()
                .all(|&b| b == 0)
        );
        assert_eq!(job.used(), 700);
        assert_eq!(job.over_limit(), None);
        // Grown outside the job's poll: still the job's block.
        // SAFETY: `p` came from `a` with layouts[0].
        let p = unsafe { a.realloc(p, layouts[0], 1200) };
        assert_eq!(job.used(), 1300);
        assert_eq!(job.over_limit(), Some((1300, 1000)));
        // Freed on another thread: credited to the job all the same.
        let (p, q) = (p as usize, q as usize);
        std::thread::spawn(move || {
            // SAFETY: as above, with the grown size for `p`.
            unsafe {
                a.dealloc(p as *mut u8, Layout::from_size_align(1200, 8).unwrap());
                a.dealloc(q as *mut u8, layouts[1]);
            }
        })
        .join()
        .unwrap();
        assert_eq!(job.used(), 0);
        drop(job);
        assert!(human_bytes(3 << 20).starts_with("3.0 MiB"));
    }
}
