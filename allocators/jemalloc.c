/*
 * jemalloc.c -- `jemalloc`: jemalloc 5's mallocx/sdallocx on an arena of the instance's own.
 *
 * Design: every instance draws from an arena that no other instance uses while it lives. Every
 * call passes MALLOCX_ALIGN(FileAlignment + 1) | MALLOCX_ARENA(arena) and a tcache flag; sdallocx
 * gets the size and the same flags, so jemalloc never looks the size up. FrameSize 0 becomes
 * 4096, written back; Frames is not a bound (0 stays 0). DeleteAllocator discards every frame
 * still live in one step with "arena.<i>.reset".
 *
 * The idle set. An arena is not destroyed at DeleteAllocator but reset and parked, and
 * InitializeAllocator takes the most recently parked one before it creates any. For a
 * short-lived instance (a fuzzer creates and deletes instances for every input) that is the
 * difference: "arenas.create" maps the arena's metadata and then every extent afresh, page fault
 * by page fault, and "arena.<i>.destroy" purges and unmaps all of it again, with a TLB shootdown
 * per madvise/munmap -- measured with jemalloc 5.3 on x86-64, about 850 us for an arena that
 * served twenty 64 KiB frames, against 7 us for the reset. Reset, per jemalloc(3), discards
 * all of the arena's allocations (large extents and small slabs) but keeps the arena, its
 * metadata and its pages: they become the arena's dirty extents, which the next instance reuses
 * with no system call and no page fault, and which jemalloc's decay (opt.dirty_decay_ms, left
 * at its default) purges as usual while the arena is in use. What holds:
 *  - no sharing: an arena is held by exactly one instance (or one shared heap) or parked, never
 *    both; it is parked after its reset and taken under the idle set's lock, so a new instance's
 *    frame never comes from memory another instance can still reach;
 *  - a parked arena holds no allocation: the reset leaves it no active page (the tests read
 *    "stats.arenas.<i>.pactive" and its small and large "allocated");
 *  - bounds: at most KS_JEMALLOC_IDLE_ARENAS are parked (one more is destroyed, as before), and
 *    an arena that may hold more than KS_JEMALLOC_IDLE_ARENA_MAX_BYTES is purged
 *    ("arena.<i>.purge": its pages go back to the system, its address space stays retained)
 *    before it is parked. That figure is an estimate carried with the arena -- the largest peak
 *    of live frame bytes of any instance since its last purge, summed over the instances of a
 *    shared heap -- because the exact one ("stats.arenas.<i>.pdirty") needs an "epoch" refresh,
 *    which merges the statistics of every arena (about 6 us each) and would cost more than the
 *    reuse saves. Parked arenas cannot decay: decay runs on an arena's own allocations;
 *  - release: ks_jemalloc_idle_trim() destroys every parked arena, for a program or a
 *    benchmark that wants the memory back.
 * The cap is small on purpose: every arena that exists, parked or not, adds to the cost of an
 * "epoch" refresh, which counters() pays.
 *
 * The tcache decision. jemalloc's automatic per-thread tcache must not be used: its bins are
 * per size class, not per arena, so an automatic tcache would hand this instance frames of other
 * arenas and keep frames of this arena cached after the arena is reset (jemalloc requires every
 * tcache that touched an arena to be flushed before arena.<i>.reset or .destroy). Without a
 * tcache (MALLOCX_TCACHE_NONE) every Allocate and Free takes the arena's bin or extent mutex:
 * thread-safe, but measured with jemalloc 5.3 on x86-64 at 90 to 175 ns per op for frames of 64 B
 * to 4 KiB against about 20 ns with a tcache (and the same either way above opt.tcache_max, 32 KiB
 * by default, where no tcache is used). So every thread that calls an instance gets an explicit
 * tcache of its own for it ("tcache.create"), which keeps jemalloc's real fast path (a lock-free
 * pop from a thread cache) and honours jemalloc's rule that an explicit tcache is used by one
 * thread at a time. That is what makes the instance KS_CAP_THREAD_SAFE with no lock of ours on
 * the fast path: a thread finds its tcache for the instance in a small thread-local table keyed
 * by the instance's serial number (a hit is one compare), and only a miss takes the instance's
 * mutex to find or make the thread's record. A frame freed by another thread goes into that
 * thread's tcache, which is fine: it is of the same arena. A thread gets its tcache only at its
 * KS_JEMALLOC_TCACHE_AFTER_CALLS-th call (Allocate or Free) of the instance, before which it runs
 * on MALLOCX_TCACHE_NONE: an explicit tcache costs about 55 us to create and destroy (its bin
 * stacks are a zeroed 32 KiB allocation: a madvise to zero it, page faults to touch it), which it
 * earns back at some 100 ns a call only after a few hundred calls; and it cannot be parked with
 * the arena, as jemalloc 5's "tcache.flush" of an explicit tcache destroys it and creates it
 * again on next use. Frames allocated before the switch are freed through the tcache, which is
 * fine. If jemalloc has no explicit tcache left (it has 4093), the thread stays on
 * MALLOCX_TCACHE_NONE; counters say how many tcaches the instance has. Every tcache of the
 * instance is destroyed (flushed) at DeleteAllocator, before the reset; a thread that exits
 * leaves its tcache with the instance until then.
 *
 * Frame counts. Each thread's record counts the frames it allocated and freed, written by that
 * thread alone (a relaxed load and store, no locked instruction); frames_live is their sum. The
 * peak that feeds the arena's dirty_bytes_estimate is the sum of each thread's own peak of
 * allocations minus frees: exact for one thread, an overestimate when threads free each other's
 * frames (a producer's count only grows), which costs at worst a purge before parking.
 *
 * Shared heap (KS_CAP_SHARED_HEAP | KS_CAP_ANY_SIZE): when the pin has a heap, all jemalloc
 * instances on it share one arena, taken by the first heap->attach("jemalloc") and reset and
 * parked by the last detach; the heap's mmap'ed region itself is not used, the arena is the
 * shared pool. Pins of any FrameSize may share it. An arena shared by live instances cannot be
 * reset to drop one instance's frames, so in this mode the instance tracks its live frames in the
 * sharded hash set beside them (frame_set.c: one spinlock per shard) and frees them one by one at
 * DeleteAllocator; the set also turns a Free of a frame that is not live into a counted no-op.
 * Private instances track nothing.
 *
 * Bare: the entry's `bare` hook is jemalloc as its users call it -- mallocx(size,
 * MALLOCX_ALIGN(a)) and sdallocx with the same size and flags, on jemalloc's automatic arenas and
 * tcache, which are the process's malloc here -- so that the benchmarks show what the instance's
 * contract costs.
 *
 * Complexity: Allocate and Free are jemalloc's: O(1) tcache pop/push on a hit, an arena refill
 * or flush (amortised over a batch) on a miss, a bin lock before the tcache starts; large frames
 * (above opt.tcache_max) go to the arena's extent allocator. Ours: a thread-local lookup (one
 * compare on a hit) and two single-writer counter updates; a thread's first call of an instance
 * takes the instance's mutex once. Shared mode adds an expected O(1) set operation under the
 * frame's shard lock.
 *
 * Complexity of the lifetime: InitializeAllocator takes a parked arena (a lock and a pop) or
 * creates one (mostly mmap work); DeleteAllocator resets it, work in proportion to the slabs and
 * large extents it holds, with no system call unless the arena is purged (over the byte cap) or
 * destroyed (the idle set full).
 *
 * Memory: jemalloc's size-class rounding (four classes per doubling, so up to 25% over FrameSize
 * once past 128 bytes, more for tiny frames: 17 bytes take 32; an alignment above 16 rounds a
 * small frame up to a multiple of it) and its arena metadata; the explicit tcache holds freed
 * small frames until it fills or is flushed, one tcache per thread that used the instance. Per
 * thread that called the instance, a 64-byte record. Shared mode adds 16 to 32 bytes per live
 * frame of set table and 64 bytes per shard. Parked arenas keep up to about
 * KS_JEMALLOC_IDLE_ARENAS * KS_JEMALLOC_IDLE_ARENA_MAX_BYTES resident (64 MiB by default), plus their metadata and
 * retained address space. counters: reserved_bytes is the private arena's mapped bytes
 * ("stats.arenas.<i>.mapped" after an "epoch" refresh; for a reused arena it includes what
 * earlier users left mapped), or in shared mode this instance's share, frames_live * usable
 * frame size, since the arena is the shared heap.
 *
 * self_check of a private instance compares the arena's active pages with its live frames. It
 * reads jemalloc's live page counter -- the figure "stats.arenas.<i>.pactive" snapshots --
 * through "experimental.arenas.<i>.pactivep", an undocumented experimental mallctl that jemalloc
 * 5.3 has, and falls back to an "epoch" refresh where that is missing: a refresh, which every
 * existing arena makes dearer, ran every 16 ops in the fuzzers.
 *
 * Thread safety: KS_CAP_THREAD_SAFE: one tcache per thread and instance (above), jemalloc locks
 * its arenas, the shared-mode set is thread-safe, a thread's record is written by that thread
 * only. Instances on different threads are independent, also on one shared arena; the idle set
 * is under one mutex (the mallctl calls run outside it), and attach/detach are thread-safe.
 * Under TSan, Allocate and Free acquire and release one sync object standing for jemalloc's
 * internal locks, which TSan cannot see (as mimalloc.c and tcmalloc.c do for theirs).
 * A frame used after its instance's DeleteAllocator now reads or writes a parked arena's pages,
 * or the next instance's frames, where with a destroyed arena it would mostly have faulted on an
 * unmapped page; nothing in the contract allows that use.
 */
#include <jemalloc/jemalloc.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame_set.h"
#include "framing.h"
#include "jemalloc_idle.h"
#include "ksalloc.h"
#include "peer_sync.h"
#include "sanitizers.h"
#include "serial.h"

#ifndef KS_JEMALLOC_DEFAULT_FRAME_BYTES
#define KS_JEMALLOC_DEFAULT_FRAME_BYTES 4096u
#endif
#ifndef KS_JEMALLOC_MAX_FRAME_BYTES
#define KS_JEMALLOC_MAX_FRAME_BYTES ((size_t)256 << 20)
#endif
#ifndef KS_JEMALLOC_MAX_ALIGN_BYTES
#define KS_JEMALLOC_MAX_ALIGN_BYTES ((size_t)1 << 20)
#endif
/* Arenas reset and kept for the next instances; 0 destroys every arena at DeleteAllocator. */
#ifndef KS_JEMALLOC_IDLE_ARENAS
#define KS_JEMALLOC_IDLE_ARENAS 8u
#endif
/* A parked arena whose pages may exceed this is purged first (estimate: see the top comment). */
#ifndef KS_JEMALLOC_IDLE_ARENA_MAX_BYTES
#define KS_JEMALLOC_IDLE_ARENA_MAX_BYTES ((size_t)8 << 20)
#endif
/* Calls (Allocate or Free) a thread makes of an instance without a tcache before it creates one
 * for it; 0: from the first call. */
#ifndef KS_JEMALLOC_TCACHE_AFTER_CALLS
#define KS_JEMALLOC_TCACHE_AFTER_CALLS 256u
#endif
/* The thread-local table of a thread's records, by instance serial: a power of two. A thread that
 * uses more instances than this at once still works, through the instance's mutex more often. */
#ifndef KS_JEMALLOC_THREAD_SLOTS
#define KS_JEMALLOC_THREAD_SLOTS 8u
#endif

/* jemalloc's internal locks and atomics, as TSan is told of them (peer_sync.h); mallocx and
 * sdallocx are not intercepted either. */
KS_PEER_SYNC_OBJECT(jemalloc_tsan_sync);
#define JEMALLOC_FRAME_ACQUIRED() KS_PEER_FRAME_ACQUIRED(jemalloc_tsan_sync)
#define JEMALLOC_FRAME_RELEASED() KS_PEER_FRAME_RELEASED(jemalloc_tsan_sync)

/* The family name under which instances share a heap's arena. */
#define JEMALLOC_HEAP_FAMILY "jemalloc"

_Static_assert((KS_JEMALLOC_MAX_ALIGN_BYTES & (KS_JEMALLOC_MAX_ALIGN_BYTES - 1)) == 0, "alignment limit is a power of two");
_Static_assert(KS_JEMALLOC_MAX_ALIGN_BYTES <= INT_MAX, "MALLOCX_ALIGN takes the int branch");
_Static_assert(KS_JEMALLOC_DEFAULT_FRAME_BYTES <= KS_JEMALLOC_MAX_FRAME_BYTES, "default frame within the limit");
_Static_assert(KS_JEMALLOC_MAX_FRAME_BYTES <= ULONG_MAX, "FrameSize is a ULONG");
_Static_assert(KS_JEMALLOC_IDLE_ARENAS <= 64, "the idle set is copied on the stack: keep it small");
_Static_assert((KS_JEMALLOC_THREAD_SLOTS & (KS_JEMALLOC_THREAD_SLOTS - 1)) == 0, "thread slots: a power of two");


/* ---- Statistics ----------------------------------------------------------------------------- */

static size_t jemalloc_arena_stat(unsigned arena_index, const char *stat)
{
    char name[96];
    size_t value = 0, value_bytes = sizeof value;
    snprintf(name, sizeof name, "stats.arenas.%u.%s", arena_index, stat);
    return mallctl(name, &value, &value_bytes, NULL, 0) == 0 ? value : 0;
}

/* Statistics are snapshots taken at the last "epoch" write; refresh before reading them. */
static void jemalloc_refresh_stats(void)
{
    uint64_t epoch = 1;
    size_t epoch_bytes = sizeof epoch;
    (void)mallctl("epoch", &epoch, &epoch_bytes, &epoch, epoch_bytes);
}

/* Names looked up once: jemalloc parses a mallctl name on every call (string compares down its
 * ctl tree), and the shared-mode self-check asks "arenas.lookup" for every live frame -- under
 * ASan the intercepted strncmp of that parse was 8% of fuzz_alloc_jemalloc. jemalloc's manual
 * gives mallctlnametomib + mallctlbymib for repeated queries; "arenas.page" is a constant. */
static pthread_once_t ctl_once = PTHREAD_ONCE_INIT;
static size_t ctl_page_bytes = 4096;
static size_t ctl_lookup_mib[2];
static size_t ctl_lookup_mib_length; /* 0: the lookup could not be resolved; by name instead */

static void jemalloc_ctl_init(void)
{
    size_t page_bytes = 0, value_bytes = sizeof page_bytes;
    if (mallctl("arenas.page", &page_bytes, &value_bytes, NULL, 0) == 0 && page_bytes != 0)
        ctl_page_bytes = page_bytes;
    size_t length = sizeof ctl_lookup_mib / sizeof ctl_lookup_mib[0];
    if (mallctlnametomib("arenas.lookup", ctl_lookup_mib, &length) == 0)
        ctl_lookup_mib_length = length;
}

static size_t jemalloc_page_bytes(void)
{
    pthread_once(&ctl_once, jemalloc_ctl_init);
    return ctl_page_bytes;
}

/* The arena index that owns frame, through "arenas.lookup"; false if jemalloc does not know it. */
static bool jemalloc_arena_of(void *frame, unsigned *owner)
{
    pthread_once(&ctl_once, jemalloc_ctl_init);
    size_t owner_bytes = sizeof *owner;
    if (ctl_lookup_mib_length == 0)
        return mallctl("arenas.lookup", owner, &owner_bytes, &frame, sizeof frame) == 0;
    return mallctlbymib(ctl_lookup_mib, ctl_lookup_mib_length, owner, &owner_bytes, &frame, sizeof frame) == 0;
}

/* ---- Arenas --------------------------------------------------------------------------------- */

/* An arena as it passes from instance (or shared heap) to the idle set and back. */
typedef struct jemalloc_arena {
    unsigned index;
    const size_t *active_pages; /* jemalloc's live page counter, or NULL (see jemalloc_arena_active_pages) */
    size_t dirty_bytes_estimate; /* what it may keep resident after a reset: see the top comment */
    bool reused;                /* taken from the idle set rather than created */
} jemalloc_arena;

/* Runs "arena.<index>.<verb>" (reset, purge, destroy); true on success. */
static bool jemalloc_arena_ctl(unsigned arena_index, const char *verb)
{
    char name[64];
    snprintf(name, sizeof name, "arena.%u.%s", arena_index, verb);
    return mallctl(name, NULL, NULL, NULL, 0) == 0;
}

/* The arena's live count of active pages, which jemalloc exposes for reading without an "epoch"
 * refresh; NULL if this jemalloc does not (built without stats, or without the mallctl). The counter
 * lives in the arena, so the pointer holds until the arena is destroyed. jemalloc answers only
 * for an arena that an "epoch" refresh has seen, hence the refresh, paid once per arena created. */
static const size_t *jemalloc_arena_active_pages(unsigned arena_index)
{
    jemalloc_refresh_stats();
    char name[64];
    size_t *active_pages = NULL, pointer_bytes = sizeof active_pages;
    snprintf(name, sizeof name, "experimental.arenas.%u.pactivep", arena_index);
    return mallctl(name, &active_pages, &pointer_bytes, NULL, 0) == 0 ? active_pages : NULL;
}

/* A variable, not the macro, so that KS_JEMALLOC_IDLE_ARENAS 0 compiles without -Wtype-limits. */
static const unsigned idle_arenas_max = KS_JEMALLOC_IDLE_ARENAS;
static pthread_mutex_t idle_lock = PTHREAD_MUTEX_INITIALIZER;
static jemalloc_arena idle_arenas[KS_JEMALLOC_IDLE_ARENAS + 1]; /* parked, most recent last; +1: never 0-sized */
static unsigned idle_arena_count;

/* The most recently parked arena (its pages are the likeliest to be resident), or a new one. */
static bool jemalloc_arena_take(jemalloc_arena *arena)
{
    pthread_mutex_lock(&idle_lock);
    bool found = idle_arena_count > 0;
    if (found)
        *arena = idle_arenas[--idle_arena_count];
    pthread_mutex_unlock(&idle_lock);
    if (found) {
        arena->reused = true;
        return true;
    }
    size_t index_bytes = sizeof arena->index;
    if (mallctl("arenas.create", &arena->index, &index_bytes, NULL, 0) != 0)
        return false;
    arena->active_pages = jemalloc_arena_active_pages(arena->index);
    arena->dirty_bytes_estimate = 0;
    arena->reused = false;
    return true;
}

/* Discards every allocation in the arena and parks it, or destroys it when the idle set is full.
 * Every tcache that touched the arena has been flushed (jemalloc's rule for reset and destroy). */
static void jemalloc_arena_give_back(jemalloc_arena arena)
{
    /* Fails only for an arena jemalloc did not create through arenas.create: never here. */
    bool emptied = jemalloc_arena_ctl(arena.index, "reset");
    if (emptied && arena.dirty_bytes_estimate > KS_JEMALLOC_IDLE_ARENA_MAX_BYTES) {
        (void)jemalloc_arena_ctl(arena.index, "purge"); /* a failed purge leaves pages, not frames */
        arena.dirty_bytes_estimate = 0;
    }
    bool parked = false;
    pthread_mutex_lock(&idle_lock);
    if (emptied && idle_arena_count < idle_arenas_max) {
        idle_arenas[idle_arena_count++] = arena;
        parked = true;
    }
    pthread_mutex_unlock(&idle_lock);
    if (!parked) /* fails only for an arena bound by thread.arena: never here */
        (void)jemalloc_arena_ctl(arena.index, "destroy");
}

unsigned ks_jemalloc_idle_trim(void)
{
    jemalloc_arena arenas[KS_JEMALLOC_IDLE_ARENAS + 1];
    pthread_mutex_lock(&idle_lock);
    unsigned arena_count = idle_arena_count;
    for (unsigned index = 0; index < arena_count; index++)
        arenas[index] = idle_arenas[index];
    idle_arena_count = 0;
    pthread_mutex_unlock(&idle_lock);
    for (unsigned index = 0; index < arena_count; index++)
        (void)jemalloc_arena_ctl(arenas[index].index, "destroy");
    return arena_count;
}

/* ---- The shared heap's arena ---------------------------------------------------------------- */

/* The shared state of a heap's jemalloc instances: one arena, and the sum of its instances' peak
 * live bytes, which each adds as it leaves (they may leave from different threads). */
typedef struct jemalloc_shared_arena {
    jemalloc_arena arena;
    atomic_size_t peak_bytes_sum;
} jemalloc_shared_arena;

static NTSTATUS jemalloc_shared_create(ks_heap *heap, void *arg, void **state)
{
    (void)heap;
    (void)arg;
    jemalloc_shared_arena *shared = malloc(sizeof *shared);
    if (shared == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    if (!jemalloc_arena_take(&shared->arena)) {
        free(shared);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    atomic_init(&shared->peak_bytes_sum, 0);
    *state = shared;
    return STATUS_SUCCESS;
}

static void jemalloc_shared_destroy(ks_heap *heap, void *state)
{
    (void)heap;
    jemalloc_shared_arena *shared = state;
    size_t peak_bytes_sum = atomic_load(&shared->peak_bytes_sum);
    if (peak_bytes_sum > shared->arena.dirty_bytes_estimate)
        shared->arena.dirty_bytes_estimate = peak_bytes_sum;
    jemalloc_arena_give_back(shared->arena);
    free(shared);
}

/* ---- Threads ------------------------------------------------------------------------------------ */

/* Instances and threads are told apart by serial numbers (serial.h), never reused (an address or
 * a pthread_t may be); 0 is never handed out, so a zeroed thread-local slot matches no instance. */

/* A counter only its owner thread writes: a relaxed load and store, plain moves with no lock
 * prefix, which other threads may read at any time without a data race. */
static inline void jemalloc_count(atomic_ullong *counter)
{
    atomic_store_explicit(counter, atomic_load_explicit(counter, memory_order_relaxed) + 1, memory_order_relaxed);
}

/* One thread's use of one instance, on a cache line of its own (its owner writes its counts on
 * every call). The owner thread alone writes it after it is linked (the instance's
 * DeleteAllocator reads it when no callback runs); the atomics are read by counters() at any
 * time. */
typedef struct jemalloc_thread_use {
    _Alignas(64) int flags;       /* owner only: placement | MALLOCX_TCACHE(tcache_index) or _NONE */
    unsigned calls_before_tcache; /* owner only: counts down to the explicit tcache; 0 once decided */
    atomic_ullong allocs;         /* frames this thread allocated from the instance */
    atomic_ullong frees;          /* frames this thread freed to it */
    atomic_ullong live_peak;      /* the most allocs - frees has been (a producer's only grows) */
    atomic_bool has_tcache;
    unsigned tcache_index;              /* valid once has_tcache */
    uint64_t thread_serial;             /* the owner; set at creation */
    struct jemalloc_thread_use *next;   /* the instance's list, under its uses_lock */
} jemalloc_thread_use;

/* The calling thread's records of the instances it called last, by instance serial. A slot holds
 * the serial next to the pointer so that a slot left by a deleted instance never matches (its
 * record is gone; the serial is never reused). */
typedef struct jemalloc_thread_slot {
    uint64_t instance_serial;
    jemalloc_thread_use *use;
} jemalloc_thread_slot;

_Static_assert(sizeof(jemalloc_thread_use) == 64, "a thread's record is one cache line");

static _Thread_local jemalloc_thread_slot jemalloc_thread_slots[KS_JEMALLOC_THREAD_SLOTS];

/* ---- The instance --------------------------------------------------------------------------- */

typedef struct jemalloc_instance {
    uint64_t serial; /* first: the fast path compares it with the thread's slot */
    size_t frame_bytes;
    int placement;                /* MALLOCX_ALIGN | MALLOCX_ARENA: where frames come from */
    ks_heap *heap;                /* the shared heap, or NULL for a private arena */
    ks_sharded_frame_set live;    /* shared mode only: frames to free at DeleteAllocator */
    size_t usable_bytes;          /* the size class a frame really occupies */
    size_t align_bytes;
    jemalloc_arena arena;         /* private: the instance's; shared: a copy of the heap's, read-only */
    jemalloc_shared_arena *shared; /* shared mode only */
    pthread_mutex_t uses_lock;    /* guards the list of uses (not what a use holds) */
    jemalloc_thread_use *uses;    /* one per thread that called the instance */
    atomic_ullong frees_unrecorded; /* frees by a thread whose record could not be allocated */
} jemalloc_instance;

static const ks_framing_rules jemalloc_framing_rules = {
    .default_frames = 0, /* Frames is not a bound: 0 stays 0 */
    .default_frame_bytes = KS_JEMALLOC_DEFAULT_FRAME_BYTES,
    .max_frame_bytes = KS_JEMALLOC_MAX_FRAME_BYTES,
    .max_align_bytes = KS_JEMALLOC_MAX_ALIGN_BYTES,
    .min_align_bytes = 1, /* MALLOCX_ALIGN(1) is no constraint */
};

/* Frames live and the peak estimate (top comment), summed over the threads' records. */
static void jemalloc_frame_counts(jemalloc_instance *instance, uint64_t *frames_live, uint64_t *frames_peak)
{
    uint64_t allocs = 0, frees = atomic_load_explicit(&instance->frees_unrecorded, memory_order_relaxed), peak = 0;
    pthread_mutex_lock(&instance->uses_lock);
    for (const jemalloc_thread_use *use = instance->uses; use != NULL; use = use->next) {
        allocs += atomic_load_explicit(&use->allocs, memory_order_relaxed);
        frees += atomic_load_explicit(&use->frees, memory_order_relaxed);
        peak += atomic_load_explicit(&use->live_peak, memory_order_relaxed);
    }
    pthread_mutex_unlock(&instance->uses_lock);
    *frames_live = allocs > frees ? allocs - frees : 0; /* read while threads run, a snapshot */
    if (frames_peak != NULL)
        *frames_peak = peak;
}

/* Joins the heap's shared arena (with a live-frame set), or takes a private one. */
static NTSTATUS jemalloc_open_arena(jemalloc_instance *instance, const KSPIN *pin)
{
    if (pin == NULL || pin->heap == NULL)
        return jemalloc_arena_take(&instance->arena) ? STATUS_SUCCESS : STATUS_INSUFFICIENT_RESOURCES;
    if (!ks_sharded_frame_set_init(&instance->live))
        return STATUS_INSUFFICIENT_RESOURCES;
    void *state = NULL;
    NTSTATUS status = pin->heap->attach(pin->heap, JEMALLOC_HEAP_FAMILY, jemalloc_shared_create, NULL, &state);
    if (!NT_SUCCESS(status)) {
        ks_sharded_frame_set_destroy(&instance->live);
        return status;
    }
    instance->heap = pin->heap;
    instance->shared = state;
    instance->arena = instance->shared->arena;
    return STATUS_SUCCESS;
}

/* Every tcache that touched the arena is flushed by now. */
static void jemalloc_close_arena(jemalloc_instance *instance, uint64_t frames_peak)
{
    size_t peak_bytes = frames_peak * instance->usable_bytes;
    if (instance->heap == NULL) {
        if (peak_bytes > instance->arena.dirty_bytes_estimate)
            instance->arena.dirty_bytes_estimate = peak_bytes;
        jemalloc_arena_give_back(instance->arena);
        return;
    }
    atomic_fetch_add(&instance->shared->peak_bytes_sum, peak_bytes);
    ks_sharded_frame_set_destroy(&instance->live);
    instance->heap->detach(instance->heap, JEMALLOC_HEAP_FAMILY, jemalloc_shared_destroy);
}

/* From here on this thread's Allocates and Frees of the instance go through an explicit tcache
 * of their own; if jemalloc has none left, the thread stays on MALLOCX_TCACHE_NONE. */
static void jemalloc_start_tcache(const jemalloc_instance *instance, jemalloc_thread_use *use)
{
    unsigned tcache_index = 0;
    size_t index_bytes = sizeof tcache_index;
    use->calls_before_tcache = 0;
    if (mallctl("tcache.create", &tcache_index, &index_bytes, NULL, 0) != 0 || index_bytes != sizeof tcache_index)
        return;
    use->tcache_index = tcache_index;
    use->flags = instance->placement | MALLOCX_TCACHE(tcache_index);
    atomic_store_explicit(&use->has_tcache, true, memory_order_release);
}

/* The calling thread's record for the instance when the thread-local slot missed: found in the
 * instance's list, or made; the slot then points at it. NULL when out of memory. */
static jemalloc_thread_use *__attribute__((noinline)) jemalloc_use_slow(jemalloc_instance *instance,
                                                                        jemalloc_thread_slot *slot)
{
    uint64_t thread = ks_thread_serial();
    pthread_mutex_lock(&instance->uses_lock);
    jemalloc_thread_use *use = instance->uses;
    while (use != NULL && use->thread_serial != thread)
        use = use->next;
    if (use == NULL && (use = aligned_alloc(_Alignof(jemalloc_thread_use), sizeof *use)) != NULL) {
        memset(use, 0, sizeof *use);
        use->flags = instance->placement | MALLOCX_TCACHE_NONE;
        use->calls_before_tcache = KS_JEMALLOC_TCACHE_AFTER_CALLS;
        use->thread_serial = thread;
        use->next = instance->uses;
        instance->uses = use;
    }
    pthread_mutex_unlock(&instance->uses_lock);
    if (use == NULL)
        return NULL;
    slot->instance_serial = instance->serial;
    slot->use = use;
    if (KS_JEMALLOC_TCACHE_AFTER_CALLS == 0 && use->calls_before_tcache == 0 &&
        !atomic_load_explicit(&use->has_tcache, memory_order_relaxed))
        jemalloc_start_tcache(instance, use);
    return use;
}

/* The calling thread's record for the instance, counting this call towards its tcache. */
static inline jemalloc_thread_use *jemalloc_use(jemalloc_instance *instance)
{
    jemalloc_thread_slot *slot = &jemalloc_thread_slots[instance->serial & (KS_JEMALLOC_THREAD_SLOTS - 1)];
    jemalloc_thread_use *use = slot->instance_serial == instance->serial ? slot->use
                                                                         : jemalloc_use_slow(instance, slot);
    if (use != NULL && use->calls_before_tcache != 0 && --use->calls_before_tcache == 0)
        jemalloc_start_tcache(instance, use);
    return use;
}

static NTSTATUS jemalloc_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    ks_framing_settled settled;
    NTSTATUS status = ks_framing_settle(framing, &jemalloc_framing_rules, &settled);
    if (!NT_SUCCESS(status))
        return status;
    jemalloc_instance *instance = calloc(1, sizeof *instance);
    if (instance == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    if (pthread_mutex_init(&instance->uses_lock, NULL) != 0) {
        free(instance);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    status = jemalloc_open_arena(instance, initial_context);
    if (!NT_SUCCESS(status)) {
        pthread_mutex_destroy(&instance->uses_lock);
        free(instance);
        return status;
    }
    ks_framing_write_back(framing, &settled);
    instance->serial = ks_serial_next();
    instance->frame_bytes = settled.frame_bytes;
    instance->align_bytes = settled.align_bytes;
    instance->placement = MALLOCX_ALIGN(instance->align_bytes) | MALLOCX_ARENA(instance->arena.index);
    instance->usable_bytes = nallocx(instance->frame_bytes, instance->placement);
    atomic_init(&instance->frees_unrecorded, 0);
    *context = instance;
    return STATUS_SUCCESS;
}

static void jemalloc_delete(PVOID context)
{
    jemalloc_instance *instance = context;
    int untracked_flags = instance->placement | MALLOCX_TCACHE_NONE;
    JEMALLOC_FRAME_RELEASED(); /* frames still live go back to jemalloc too */
    ks_sharded_frame_set_cursor cursor = {0, 0}; /* a private arena tracks nothing: its reset discards them */
    for (void *frame; (frame = ks_sharded_frame_set_next(&instance->live, &cursor)) != NULL;)
        sdallocx(frame, instance->frame_bytes, untracked_flags);
    uint64_t frames_live, frames_peak;
    jemalloc_frame_counts(instance, &frames_live, &frames_peak);
    for (jemalloc_thread_use *use = instance->uses, *next; use != NULL; use = next) {
        next = use->next;
        if (atomic_load_explicit(&use->has_tcache, memory_order_acquire)) /* flushes it: before the reset */
            (void)mallctl("tcache.destroy", NULL, NULL, &use->tcache_index, sizeof use->tcache_index);
        free(use);
    }
    jemalloc_close_arena(instance, frames_peak);
    pthread_mutex_destroy(&instance->uses_lock);
    free(instance);
}

static PVOID jemalloc_allocate(PVOID context)
{
    jemalloc_instance *instance = context;
    jemalloc_thread_use *use = jemalloc_use(instance);
    if (use == NULL)
        return NULL; /* out of memory for this thread's record */
    void *frame = mallocx(instance->frame_bytes, use->flags);
    if (frame == NULL)
        return NULL;
    JEMALLOC_FRAME_ACQUIRED();
    if (instance->heap != NULL && !ks_sharded_frame_set_insert(&instance->live, frame)) {
        JEMALLOC_FRAME_RELEASED();
        sdallocx(frame, instance->frame_bytes, use->flags); /* untracked, it could not be released */
        return NULL;
    }
    jemalloc_count(&use->allocs);
    uint64_t live = atomic_load_explicit(&use->allocs, memory_order_relaxed) -
                    atomic_load_explicit(&use->frees, memory_order_relaxed);
    if ((int64_t)live > 0 && live > atomic_load_explicit(&use->live_peak, memory_order_relaxed))
        atomic_store_explicit(&use->live_peak, live, memory_order_relaxed);
    return frame;
}

static void jemalloc_free(PVOID context, PVOID buffer)
{
    jemalloc_instance *instance = context;
    if (instance->heap != NULL && !ks_sharded_frame_set_release(&instance->live, buffer))
        return; /* shared mode only: not live here, ignored, reported by self_check */
    jemalloc_thread_use *use = jemalloc_use(instance);
    JEMALLOC_FRAME_RELEASED();
    if (use == NULL) { /* no record for this thread: no tcache either, counted on the instance */
        atomic_fetch_add_explicit(&instance->frees_unrecorded, 1, memory_order_relaxed);
        sdallocx(buffer, instance->frame_bytes, instance->placement | MALLOCX_TCACHE_NONE);
        return;
    }
    jemalloc_count(&use->frees);
    sdallocx(buffer, instance->frame_bytes, use->flags);
}

/* Shared mode: every tracked frame belongs to the shared arena and is a full frame. */
static bool jemalloc_check_tracked(jemalloc_instance *instance, char *why, size_t why_bytes)
{
    if (!ks_sharded_frame_set_check(&instance->live, instance->align_bytes, "jemalloc", why, why_bytes))
        return false;
    uint64_t frames_live, tracked = ks_sharded_frame_set_count(&instance->live);
    jemalloc_frame_counts(instance, &frames_live, NULL);
    if (tracked != frames_live) {
        snprintf(why, why_bytes, "jemalloc: %llu frames tracked but frames_live is %llu", (unsigned long long)tracked,
                 (unsigned long long)frames_live);
        return false;
    }
    ks_sharded_frame_set_cursor cursor = {0, 0}; /* the host runs no other callback meanwhile (ksalloc.h) */
    for (void *frame; (frame = ks_sharded_frame_set_next(&instance->live, &cursor)) != NULL;) {
        unsigned owner = UINT_MAX;
        if (!jemalloc_arena_of(frame, &owner) || owner != instance->arena.index || sallocx(frame, 0) < instance->frame_bytes) {
            snprintf(why, why_bytes, "jemalloc: live frame %p belongs to arena %u (expected %u) with %zu bytes",
                     frame, owner, instance->arena.index, sallocx(frame, 0));
            return false;
        }
    }
    return true;
}

/* The arena's active pages now: jemalloc's live counter, or the last snapshot after a refresh. */
static uint64_t jemalloc_arena_active_bytes(const jemalloc_arena *arena)
{
    if (arena->active_pages != NULL)
        return (uint64_t)__atomic_load_n(arena->active_pages, __ATOMIC_RELAXED) * jemalloc_page_bytes();
    jemalloc_refresh_stats();
    return (uint64_t)jemalloc_arena_stat(arena->index, "pactive") * jemalloc_page_bytes();
}

static NTSTATUS jemalloc_self_check(PVOID context, char *why, size_t why_bytes)
{
    jemalloc_instance *instance = context;
    if (instance->heap != NULL)
        return jemalloc_check_tracked(instance, why, why_bytes) ? STATUS_SUCCESS : STATUS_DATA_ERROR;
    /* Private arena: nothing is tracked, but the live frames (and any the tcaches hold) are in
     * its active pages, so fewer active bytes than live frames means frames came from elsewhere
     * or the counts drifted. A reused arena starts with none: its reset returned them all. */
    uint64_t frames_live;
    jemalloc_frame_counts(instance, &frames_live, NULL);
    uint64_t active_bytes = jemalloc_arena_active_bytes(&instance->arena);
    if (active_bytes < frames_live * instance->usable_bytes) {
        snprintf(why, why_bytes, "jemalloc: arena %u has %llu active bytes, fewer than %llu live frames of %zu",
                 instance->arena.index, (unsigned long long)active_bytes, (unsigned long long)frames_live,
                 instance->usable_bytes);
        return STATUS_DATA_ERROR;
    }
    return STATUS_SUCCESS;
}

static size_t jemalloc_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    jemalloc_instance *instance = context;
    unsigned arena_index = instance->arena.index;
    jemalloc_refresh_stats();
    uint64_t arena_mapped_bytes = jemalloc_arena_stat(arena_index, "mapped");
    uint64_t arena_active_bytes = (uint64_t)jemalloc_arena_stat(arena_index, "pactive") * jemalloc_page_bytes();
    uint64_t tracking_bytes = ks_sharded_frame_set_table_bytes(&instance->live); /* 0 for a private arena */
    uint64_t frames_live;
    jemalloc_frame_counts(instance, &frames_live, NULL);
    uint64_t tcaches = 0, threads = 0;
    pthread_mutex_lock(&instance->uses_lock);
    for (const jemalloc_thread_use *use = instance->uses; use != NULL; use = use->next, threads++)
        tcaches += atomic_load_explicit(&use->has_tcache, memory_order_relaxed) ? 1u : 0u;
    pthread_mutex_unlock(&instance->uses_lock);
    /* "mapped" needs a jemalloc built with --enable-stats; active pages are the floor without it. */
    uint64_t private_bytes = arena_mapped_bytes ? arena_mapped_bytes : arena_active_bytes;
    uint64_t reserved_bytes = instance->heap ? frames_live * instance->usable_bytes + tracking_bytes : private_bytes;
    const ks_counter counters[] = {
        {"frames_live", frames_live},
        {"reserved_bytes", reserved_bytes},
        {"usable_frame_bytes", instance->usable_bytes},
        {"arena", arena_index},
        {"arena_reused", instance->arena.reused},
        {"arena_active_bytes", arena_active_bytes},
        {"arena_mapped_bytes", arena_mapped_bytes},
        {"explicit_tcache", tcaches}, /* one per thread past its first KS_JEMALLOC_TCACHE_AFTER_CALLS calls */
        {"threads", threads},
        {"bad_frees", ks_sharded_frame_set_foreign_releases(&instance->live)},
    };
    size_t count = 0;
    for (; count < sizeof counters / sizeof counters[0] && count < max_counters; count++)
        out[count] = counters[count];
    return count;
}

/* ---- Bare: jemalloc as its users call it ------------------------------------------------------ */

static void *jemalloc_bare_allocate(size_t frame_bytes, size_t align_bytes)
{
    void *frame = mallocx(frame_bytes, MALLOCX_ALIGN(align_bytes));
    if (frame != NULL)
        JEMALLOC_FRAME_ACQUIRED();
    return frame;
}

/* The sized free, with the flags of the allocation: jemalloc then never looks the size up. */
static void jemalloc_bare_free(void *frame, size_t frame_bytes, size_t align_bytes)
{
    JEMALLOC_FRAME_RELEASED();
    sdallocx(frame, frame_bytes, MALLOCX_ALIGN(align_bytes));
}

static const ks_bare_ops jemalloc_bare = {.allocate = jemalloc_bare_allocate, .free = jemalloc_bare_free};

static const KSALLOCATOR_DISPATCH jemalloc_dispatch = {
    .InitializeAllocator = jemalloc_initialize,
    .DeleteAllocator = jemalloc_delete,
    .Allocate = jemalloc_allocate,
    .Free = jemalloc_free,
};

const ks_allocator_entry ks_allocator_jemalloc = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "jemalloc",
    .description = "jemalloc 5 mallocx/sdallocx on an arena per instance (one per shared heap, reset and reused), "
                   "an explicit tcache per thread; thread-safe",
    .caps = KS_CAP_THREAD_SAFE | KS_CAP_SHARED_HEAP | KS_CAP_ANY_SIZE,
    .max_frame_bytes = KS_JEMALLOC_MAX_FRAME_BYTES,
    .max_align_bytes = KS_JEMALLOC_MAX_ALIGN_BYTES,
    .dispatch = &jemalloc_dispatch,
    .self_check = jemalloc_self_check,
    .counters = jemalloc_counters,
    .bare = &jemalloc_bare,
};
