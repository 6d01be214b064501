//! A team of threads for one short pass: the way a batch-1 inference or a training step uses
//! every core.
//!
//! Such a pass is a chain of kernels of 10 to 700 us each. Handing each kernel's halves to
//! the rayon pool costs a thread wake-up per kernel, which is more than the half saves
//! (measured: a LeNet-5 training step at batch 64 ran 1.35x faster in a team, whose ReLU
//! forward went from 89 to 34 us). A team instead borrows the pool's other threads once per pass:
//! they spin, taking tasks from each kernel as the calling thread (the leader) publishes it,
//! until the pass ends. A stage then costs a few cache-line transfers instead of a wake-up.
//!
//! Tasks are claimed from a shared counter, not assigned: a helper that starts late (or never)
//! only leaves more tasks to the leader, so nothing waits on a thread that is not there.
//!
//! The team is found through a thread-local set for the duration of [`Team::run`] (as rayon
//! finds its pool), so kernels deep in a layer reach it without every layer passing it on;
//! outside a team, [`for_each_task`] falls back to the rayon pool.

use crossbeam_utils::CachePadded;
use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// One stage: `tasks` calls of `task`, with the lifetime erased (see [`Team::for_each`]).
#[derive(Clone, Copy)]
struct Stage {
    tasks: usize,
    task: *const (dyn Fn(usize) + Sync + 'static),
}

/// Each counter sits on a cache line of its own (`CachePadded`). Helpers poll `epoch` and
/// `finished` while they wait, the leader polls `done`; on one shared line, every claim of a
/// task (`next`) and every count of a finished one would first have to take the line back from
/// the pollers. Measured on `cnn4` at batch 1: 137 to 125 us.
pub struct Team {
    /// Threads that may take part, the leader included.
    size: usize,
    /// Odd while a stage is open to helpers, even while it is closed. Only the leader writes.
    epoch: CachePadded<AtomicUsize>,
    /// Helpers reading the open stage: the leader does not touch `stage` again until this is 0.
    active: CachePadded<AtomicUsize>,
    /// The next task of the open stage to hand out, and how many have finished.
    next: CachePadded<AtomicUsize>,
    done: CachePadded<AtomicUsize>,
    /// Set when the pass is over: helpers return.
    finished: CachePadded<AtomicBool>,
    /// Set when a task panicked on a helper: the leader panics in turn.
    panicked: AtomicBool,
    /// More threads than cores: a thread that spins while it waits may hold the very core
    /// that the thread it waits for needs, so waiting threads yield it instead (measured on 2
    /// cores, one epoch of the X/O network: 0.6 s with 2 threads, 12 s spinning with 64).
    oversubscribed: bool,
    stage: UnsafeCell<Stage>,
}

// SAFETY: `stage` is written only by the leader while the stage is closed and no helper is
// active, and read by helpers only while it is open and they are counted in `active` (see
// `Team::serve`); everything else is atomic.
unsafe impl Sync for Team {}

/// The cores this process may run on, asked once: the question reads the cgroup's files.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

thread_local! {
    /// The team whose leader is this thread, during [`Team::run`].
    static CURRENT: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

impl Team {
    fn new(size: usize) -> Self {
        fn nothing(_: usize) {}
        let nothing: &'static (dyn Fn(usize) + Sync) = &nothing;
        Team {
            size,
            epoch: CachePadded::new(AtomicUsize::new(0)),
            active: CachePadded::new(AtomicUsize::new(0)),
            next: CachePadded::new(AtomicUsize::new(0)),
            done: CachePadded::new(AtomicUsize::new(0)),
            finished: CachePadded::new(AtomicBool::new(false)),
            panicked: AtomicBool::new(false),
            oversubscribed: size > cores(),
            stage: UnsafeCell::new(Stage {
                tasks: 0,
                task: nothing,
            }),
        }
    }

    /// Runs `pass` on the calling thread with a team of the rayon pool's threads (the caller
    /// leads), so that the kernels it calls split their work with [`for_each_task`]. Within
    /// an enclosing team, or with one thread, `pass` just runs.
    pub fn run<R: Send>(pass: impl FnOnce() -> R + Send) -> R {
        let threads = rayon::current_num_threads();
        if threads < 2 || CURRENT.with(|c| !c.get().is_null()) {
            return pass();
        }
        let team = Team::new(threads);
        rayon::in_place_scope(|scope| {
            for _ in 1..threads {
                scope.spawn(|_| team.serve());
            }
            // Ends the helpers' loops however `pass` returns, before the scope waits for them.
            struct Finish<'t>(&'t Team);
            impl Drop for Finish<'_> {
                fn drop(&mut self) {
                    self.0.finished.store(true, Ordering::Release);
                    CURRENT.with(|c| c.set(std::ptr::null()));
                }
            }
            let _finish = Finish(&team);
            CURRENT.with(|c| c.set(&team));
            pass()
        })
    }

    /// The team led by this thread, if any.
    pub(crate) fn current() -> Option<&'static Team> {
        let team = CURRENT.with(Cell::get);
        // SAFETY: CURRENT is set only while `Team::run` holds the team on its stack, and only
        // on the leader's thread, where every use of this reference ends before `run` returns
        // (kernels do not keep it).
        unsafe { team.as_ref() }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// One turn of a wait loop: a spin, or with more threads than cores, the core handed to
    /// another thread.
    #[inline]
    fn wait(&self) {
        if self.oversubscribed {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }

    /// Runs `task(0) .. task(tasks - 1)` on the team, the leader included; returns when all
    /// have finished.
    pub fn for_each(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        if tasks <= 1 {
            (0..tasks).for_each(task);
            return;
        }
        // SAFETY: the erased `task` is called only by helpers counted in `active` while this
        // stage is open, and this function returns only after closing it and seeing `active`
        // at zero: no call outlives the borrow.
        let task: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(task) };
        // SAFETY: the stage is closed (the epoch is even) and no helper is active.
        unsafe { *self.stage.get() = Stage { tasks, task } };
        self.next.store(0, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::SeqCst); // open
        let panic = self.take_tasks(Stage { tasks, task });
        while self.done.load(Ordering::Acquire) < tasks {
            self.wait();
        }
        self.epoch.fetch_add(1, Ordering::SeqCst); // closed
        while self.active.load(Ordering::SeqCst) != 0 {
            self.wait();
        }
        // Only now, with no task of the stage running anywhere, may a panic unwind.
        if let Some(payload) = panic {
            resume_unwind(payload);
        }
        if self.panicked.swap(false, Ordering::Relaxed) {
            panic!("a kernel task panicked on another thread");
        }
    }

    /// Claims and runs tasks of `stage` until none are left; returns the first panic of those
    /// tasks, if any.
    fn take_tasks(&self, stage: Stage) -> Option<Box<dyn std::any::Any + Send>> {
        let mut panic = None;
        loop {
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            if index >= stage.tasks {
                break;
            }
            // SAFETY: the stage is open, so its task is alive (see `for_each`).
            let task = unsafe { &*stage.task };
            // Every claimed task is counted done, panic or not, so the leader never waits
            // forever; the first panic is carried on afterwards.
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| task(index))) {
                panic.get_or_insert(payload);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
        panic
    }

    /// A helper's loop: takes tasks from each stage the leader opens, until the pass is over.
    fn serve(&self) {
        let mut last = 0;
        loop {
            if self.finished.load(Ordering::Acquire) {
                return;
            }
            let epoch = self.epoch.load(Ordering::Acquire);
            if epoch.is_multiple_of(2) || epoch == last {
                self.wait();
                continue;
            }
            // Announce ourselves, then check that the stage is still open: the leader closes
            // it before it waits for `active` to drop to zero, so one of us sees the other.
            self.active.fetch_add(1, Ordering::SeqCst);
            if self.epoch.load(Ordering::SeqCst) == epoch {
                // SAFETY: the stage is open and we are counted in `active`.
                let stage = unsafe { *self.stage.get() };
                if self.take_tasks(stage).is_some() {
                    self.panicked.store(true, Ordering::Relaxed);
                }
                last = epoch;
            }
            self.active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Runs `task(0) .. task(tasks - 1)` in parallel: on the current team when there is one, else
/// on the rayon pool.
pub fn for_each_task(tasks: usize, task: impl Fn(usize) + Sync) {
    if tasks <= 1 {
        // Nothing to share: not even a hand-over to the pool.
        (0..tasks).for_each(task);
        return;
    }
    match Team::current() {
        Some(team) => team.for_each(tasks, &task),
        None => {
            use rayon::prelude::*;
            (0..tasks).into_par_iter().for_each(&task);
        }
    }
}

/// [`for_each_task`] when `work` reaches `min_work` (see [`parts_for`]), else the tasks in
/// turn on the calling thread.
pub fn for_each_task_above(
    work: usize,
    min_work: usize,
    tasks: usize,
    task: impl Fn(usize) + Sync,
) {
    if parts_for(work, min_work) > 1 {
        for_each_task(tasks, task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// Runs `work(index, chunk)` on each `chunk_len`-long chunk of `data` in parallel (on the
/// current team when there is one, else on the rayon pool), like `par_chunks_mut`.
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk_len: usize,
    work: impl Fn(usize, &mut [T]) + Sync,
) {
    let chunk_len = chunk_len.max(1);
    let (len, base) = (data.len(), SharedSlice::new(data));
    for_each_task(len.div_ceil(chunk_len), |index| {
        let start = index * chunk_len;
        let end = (start + chunk_len).min(len);
        // SAFETY: the chunks are disjoint, and `data` is borrowed mutably for the whole call.
        let chunk = unsafe { base.part(start, end - start) };
        work(index, chunk);
    });
}

/// [`for_each_chunk_mut`] over two slices in step: task `index` gets chunk `index` of each
/// (`first_len`-long chunks of `first`, `second_len`-long ones of `second`; a chunk past the
/// end of `second` is empty, so an empty `second` gives every task an empty slice).
pub fn for_each_chunk_pair_mut<A: Send, B: Send>(
    (first, first_len): (&mut [A], usize),
    (second, second_len): (&mut [B], usize),
    work: impl Fn(usize, &mut [A], &mut [B]) + Sync,
) {
    let (len, base) = (second.len(), SharedSlice::new(second));
    for_each_chunk_mut(first, first_len, |index, chunk| {
        let start = (index * second_len).min(len);
        let end = (start + second_len).min(len);
        // SAFETY: as in `for_each_chunk_mut`: the chunks are disjoint, and `second` is
        // borrowed mutably for the whole call.
        let paired = unsafe { base.part(start, end - start) };
        work(index, chunk, paired);
    });
}

/// A slice that parallel tasks write disjoint parts of, kept as a raw pointer and a length:
/// no task ever holds a `&mut` to the whole (two live `&mut` to one buffer are undefined
/// behaviour even when the writes are disjoint), only to its own part ([`SharedSlice::part`])
/// or a bounds-checked address ([`SharedSlice::ptr_for`]).
pub struct SharedSlice<T> {
    ptr: *mut T,
    len: usize,
}

impl<T> Clone for SharedSlice<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedSlice<T> {}

// SAFETY: used only where each task writes its own part of the slice.
unsafe impl<T: Send> Send for SharedSlice<T> {}
unsafe impl<T: Send> Sync for SharedSlice<T> {}

impl<T> SharedSlice<T> {
    /// Shares `slice`, which stays mutably borrowed by the caller while tasks write it.
    pub fn new(slice: &mut [T]) -> Self {
        SharedSlice {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of element `offset`, from which `count` elements are to be accessed.
    /// Panics unless they lie inside the slice; writing through it is the caller's
    /// responsibility (no other task may touch those elements meanwhile).
    #[inline(always)]
    pub fn ptr_for(self, offset: usize, count: usize) -> *mut T {
        assert!(
            offset.checked_add(count).is_some_and(|end| end <= self.len),
            "a shared slice of {} accessed at {offset}..+{count}",
            self.len
        );
        self.ptr.wrapping_add(offset)
    }

    /// Elements `start..start + count` as a slice of their own. Panics unless inside.
    ///
    /// # Safety
    /// No other reference to those elements may be live while the returned one is, and the
    /// slice given to [`SharedSlice::new`] must outlive it.
    #[inline(always)]
    pub unsafe fn part<'a>(self, start: usize, count: usize) -> &'a mut [T] {
        let at = self.ptr_for(start, count);
        // SAFETY: inside the shared slice (checked above), exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(at, count) }
    }
}

/// How many parts to split `work` (multiply-adds or so) into: every thread of the current team
/// when there is one and the work reaches [`TEAM_MIN_WORK`]; otherwise every thread of the
/// rayon pool when it reaches `pool_min_work`, one part below it.
pub fn parts_for(work: usize, pool_min_work: usize) -> usize {
    match Team::current() {
        Some(team) if work >= TEAM_MIN_WORK => team.size(),
        Some(_) => 1,
        None if work >= pool_min_work => rayon::current_num_threads().max(1),
        None => 1,
    }
}

/// Below this much work a kernel does not split itself over a team: the stage's hand-over
/// (a few cache-line transfers, about a microsecond) would cost more than it saves.
pub const TEAM_MIN_WORK: usize = 1 << 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    #[test]
    fn every_task_runs_once_per_stage() {
        for threads in [1, 2, 4] {
            let counts: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
            pool(threads).install(|| {
                Team::run(|| {
                    for stage in 0..200 {
                        let tasks = stage % 7 * 150;
                        for_each_task(tasks, |i| {
                            counts[i].fetch_add(1, Ordering::Relaxed);
                        });
                    }
                })
            });
            let expected: Vec<usize> = (0..1000)
                .map(|i| (0..200).filter(|s| i < s % 7 * 150).count())
                .collect();
            let got: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            assert_eq!(got, expected, "{threads} threads");
        }
    }

    #[test]
    fn a_stage_sees_the_previous_stage_written() {
        pool(2).install(|| {
            Team::run(|| {
                let mut data = vec![0u32; 4096];
                for round in 1..100u32 {
                    let previous = data.clone();
                    for_each_chunk_mut(&mut data, 64, |_, chunk| {
                        for v in chunk.iter_mut() {
                            *v += 1;
                        }
                    });
                    assert!(data.iter().zip(&previous).all(|(a, b)| *a == b + 1));
                    assert!(data.iter().all(|&v| v == round));
                }
            })
        });
    }

    #[test]
    fn a_panicking_task_panics_the_leader_and_the_team_ends() {
        let result = pool(2).install(|| {
            catch_unwind(AssertUnwindSafe(|| {
                Team::run(|| {
                    for_each_task(64, |i| {
                        if i == 37 {
                            panic!("task 37");
                        }
                    })
                })
            }))
        });
        assert!(result.is_err());
        // The pool still works afterwards.
        let sum: usize = pool(2).install(|| Team::run(|| 1 + 1));
        assert_eq!(sum, 2);
    }
}
