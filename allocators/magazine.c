/*
 * magazine.c -- `magazine`: Bonwick-style per-thread magazines over a depot (Bonwick 1994, the
 * slab allocator; Bonwick & Adams 2001, magazines and vmem), in front of a fixed pool of frames.
 *
 * Design. The backing store is a fixed pool: Frames frames (1024 when 0, written back) of
 * FrameSize bytes (4096 when 0, written back) carved from one aligned, mapped block (region.h:
 * pages are committed as frames on them are first handed out), the free ones kept on a stack of
 * frame pointers -- except frames never handed out, which sit past a cursor and are taken, in
 * address order, only when the stack is empty (as the pool does), so initialisation and the
 * self-check cost what has been used, not Frames. A magazine is an array of KS_MAGAZINE_ROUNDS frame pointers
 * ("rounds"). Each thread that calls an instance gets its own cache holding two magazines,
 * `loaded` and `previous`, with Bonwick's invariant that `previous` is always either full or
 * empty. The depot, behind one mutex, holds a list of full magazines, a list of empty ones and
 * the backing stack.
 *   Allocate: pop from loaded. If loaded is empty and previous full, swap them. Otherwise, at the
 *   depot, return previous (empty) to the empty list, make loaded the new previous, and load a
 *   full magazine. With no full magazine there, take one frame from the backing stack; with none
 *   there either, purge every thread cache of the instance (below) and try the depot once more;
 *   only then return NULL.
 *   Free: push onto loaded. If loaded is full and previous empty, swap them. Otherwise, at the
 *   depot, put previous (full) on the full list, make loaded the new previous, and load an empty
 *   magazine (creating one when the empty list is bare). If no magazine can be had (out of
 *   memory), the frame goes to the backing stack.
 * The invariant on previous is what makes the scheme stable: after any depot exchange the thread
 * can do at least KS_MAGAZINE_ROUNDS allocations or frees before it visits the depot again, so a
 * thread oscillating around a magazine boundary never thrashes the lock. A frame freed on another
 * thread goes into that thread's magazine and comes back to the allocating thread through the
 * depot, a magazine at a time (the producer -> consumer flow: the consumer's full magazines reach
 * the producer through the full list, the producer's empties reach the consumer through the
 * empty list).
 *
 * Cache locks and the purge (Solaris kmem's cc_lock and kmem_cache_magazine_purge). A consumer
 * that only frees keeps up to 2 * KS_MAGAZINE_ROUNDS frames in its two magazines without
 * visiting the depot, and only it could allocate them. With one producer and C consumers,
 * 2 * KS_MAGAZINE_ROUNDS * C >= Frames lets every free frame end up in consumers' partly filled
 * magazines while the consumers wait for frames the producer cannot allocate: a livelock
 * (`ksalloc run --allocator magazine --profile producer-consumer --fan-out --threads 4 --frames
 * 64` did exactly that). So every cache has a lock, a test-and-set spinlock (acquire exchange,
 * release store), that its owner takes around each Allocate and Free: uncontended, one atomic
 * exchange and one plain store per operation. An Allocate that finds its magazines, the depot's
 * full list and the backing stack all empty drops its own cache lock, takes the registry lock,
 * the lock of every cache of the instance and then the depot lock, and moves every free frame of
 * every cache to the depot: a full magazine onto the full list in exchange for a spare empty one
 * when the depot has one, any other rounds onto the backing stack; each cache is left with two
 * empty magazines. Still holding all those locks it takes its frame from the depot (a full
 * magazine into its own cache, or a frame from the backing stack), so the frames it collected
 * cannot be taken by another thread before its retry; with none there, it returns NULL.
 *
 * Lock order: magazine_registry_lock, then cache locks, then a depot lock. Only a thread holding
 * the registry lock takes a cache lock other than its own, or more than one (a purge takes all of
 * its instance's; a thread-exit destructor takes its own under it); an owner holds only its own
 * cache lock and takes the depot lock under it (Allocate and Free slow paths), never the registry
 * lock: an Allocate that must purge releases its cache lock first. A new cache is built under the
 * depot lock alone and linked under the registry lock alone, never both. The cache lock is not a
 * pthread mutex: once a process has a second thread, glibc's uncontended lock and unlock are two
 * locked instructions, measured at about twice the cost of the exchange and plain store.
 *
 * Thread caches: found with pthread_getspecific on a key the instance creates (one of the
 * process's PTHREAD_KEYS_MAX, so InitializeAllocator fails with STATUS_INSUFFICIENT_RESOURCES
 * when none is left). A cache and its magazines are heap objects that the instance can reach
 * through a process-wide registry, so DeleteAllocator frees every cache, including those of
 * threads still alive; it deletes the key first, so no destructor runs later for a deleted
 * instance. When a thread exits, the key's destructor returns its magazines to the depot (full
 * ones to the full list; the rounds of a partly filled one to the backing stack) and frees the
 * cache, so nothing leaks and no frame is stranded in a dead thread. A destructor may already be
 * running when DeleteAllocator deletes the key (POSIX cannot wait for it), so the destructor
 * never dereferences its argument blindly: under the registry lock it looks the pointer up among
 * the live caches and acts only on a cache that is registered and owned by the calling thread;
 * DeleteAllocator unlinks and frees caches under the same lock. A purge holds the registry lock
 * throughout, so it never meets a cache being retired or freed.
 *
 * Complexity: Free is O(1); Allocate is O(1) unless it purges. The fast path (loaded non-empty /
 * non-full) is a pthread_getspecific, the cache lock (one uncontended atomic exchange to take it,
 * a plain release store to drop it), a few loads and stores on the thread's own cache and
 * magazine, and one relaxed single-writer counter update (a plain load and store). Every
 * KS_MAGAZINE_ROUNDS operations at most, a thread takes the depot mutex once. A purge happens
 * only when the instance's depot and backing stack are both empty: it walks the registry (O(live
 * caches in the process)) and moves at most 2 * KS_MAGAZINE_ROUNDS rounds per cache of the
 * instance; while it runs the instance's other threads wait on their cache locks (spinning
 * briefly, then yielding). An Allocate that returns NULL always purges first, so a refusal is
 * that slow path, not O(1). Thread exit costs a walk of the registry (O(live caches in the
 * process), once per instance the thread used), as do DeleteAllocator, self_check and counters;
 * none of them is on a hot path. A Free outside the block is ignored and counted in bad_frees; in
 * KS_DEBUG builds a pointer off a frame boundary is too. A double Free inside the block is not
 * detected: it makes two rounds of one frame, which self_check reports as a duplicate.
 *
 * Memory: Frames * stride bytes of frames; 8 bytes a frame for the backing stack and a
 * Frames-bit bitmap for self_check, in a second mapping; 128 bytes a thread cache (two cache lines: what the owner
 * touches on every operation, lock included, and the registry fields) and 128 bytes a magazine.
 * A magazine is created only when the depot's empty list is bare (a Free that needs one, or a new
 * thread cache), i.e. when every magazine is full in the depot or held by a live thread cache; so
 * there are never more than Frames / KS_MAGAZINE_ROUNDS + 2 * (peak live thread caches) of them
 * (a purge creates none: it exchanges full magazines only for spare empty ones). They go back to
 * the depot, not to the heap, until DeleteAllocator.
 *
 * Caps: KS_CAP_THREAD_SAFE | KS_CAP_BOUNDED | KS_CAP_GUARANTEED. Bounded: every frame is handed
 * out from the pool of Frames. Guaranteed: no free frame is ever out of reach of Allocate.
 * Allocate returns NULL only after a purge that, at one instant, held the lock of every cache of
 * the instance and the depot lock, emptied every cache into the depot and still found no frame
 * there; at that instant every one of the Frames frames was live, or in a Free that had not yet
 * taken its cache lock (or the depot lock, for a thread without a cache), frames handed out by
 * other Allocates running at the same time counting as live. So Allocate serves whenever the
 * frames live plus the Allocates and Frees running alongside it number fewer than Frames, which
 * is the rule the verifier holds a capacity promise to. (Before the cache locks a thread's
 * cache held up to 2 * KS_MAGAZINE_ROUNDS free frames only that thread could allocate, and the
 * instance could not make this promise with more than one thread.) self_check reads every
 * thread's magazines without their locks, and a thread building its cache holds magazines no
 * registry walk can see yet: call it only when no Allocate or Free is running (otherwise it races
 * with them). counters reads only atomics and depot fields and may be called at any time;
 * frames_live and hits are exact when the instance is quiescent, approximate (clamped at 0) while
 * threads run.
 */
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framing.h"
#include "spinlock.h"
#include "ksalloc.h"
#include "region.h"

/* Rounds per magazine. A fixed constant, chosen so that a magazine (link, count, rounds) fills
 * exactly two cache lines. Bonwick sizes magazines per cache; for frames of a few KiB, 14 keeps
 * a thread's hoard (2 magazines = 28 frames) small against a default pool of 1024 while making
 * the depot lock a once-per-14-operations event. */
#define KS_MAGAZINE_ROUNDS 14u

/* Frames when the pin names none; written back into the framing. */
#ifndef KS_MAGAZINE_DEFAULT_FRAMES
#define KS_MAGAZINE_DEFAULT_FRAMES 1024u
#endif
/* FrameSize when the pin names none; written back into the framing. */
#ifndef KS_MAGAZINE_DEFAULT_FRAME_BYTES
#define KS_MAGAZINE_DEFAULT_FRAME_BYTES 4096u
#endif
/* Stated limits (the catalogue entry publishes the first two). */
#ifndef KS_MAGAZINE_MAX_FRAME_BYTES
#define KS_MAGAZINE_MAX_FRAME_BYTES ((size_t)256 << 20)
#endif
#ifndef KS_MAGAZINE_MAX_ALIGN_BYTES
#define KS_MAGAZINE_MAX_ALIGN_BYTES ((size_t)1 << 20)
#endif
#ifndef KS_MAGAZINE_MAX_FRAMES
#define KS_MAGAZINE_MAX_FRAMES (1u << 20)
#endif
/* The whole block is preallocated, so Frames * stride is capped (as the pool caps it). */
#ifndef KS_MAGAZINE_MAX_BLOCK_BYTES
#define KS_MAGAZINE_MAX_BLOCK_BYTES ((size_t)1 << 30)
#endif

#define MAGAZINE_CACHE_LINE_BYTES 64u

_Static_assert(KS_MAGAZINE_ROUNDS >= 2, "a magazine must hold more than one round to amortise the depot lock");
_Static_assert((KS_MAGAZINE_MAX_ALIGN_BYTES & (KS_MAGAZINE_MAX_ALIGN_BYTES - 1)) == 0, "alignment limit is a power of two");
_Static_assert(KS_MAGAZINE_DEFAULT_FRAME_BYTES <= KS_MAGAZINE_MAX_FRAME_BYTES, "default frame within the limit");
_Static_assert(KS_MAGAZINE_DEFAULT_FRAMES <= KS_MAGAZINE_MAX_FRAMES, "default pool within the limit");
_Static_assert(KS_MAGAZINE_MAX_FRAME_BYTES <= ULONG_MAX, "FrameSize is a ULONG");
_Static_assert(sizeof(size_t) >= 8, "Frames * stride is computed in size_t without overflow");
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "per-thread counters are plain loads and stores");

typedef struct magazine {
    struct magazine *next; /* depot list link; meaningless while a thread cache holds it */
    uint32_t rounds;       /* frames held, 0..KS_MAGAZINE_ROUNDS; round[0..rounds) are valid */
    void *round[KS_MAGAZINE_ROUNDS];
} magazine;
_Static_assert(sizeof(magazine) == 2 * MAGAZINE_CACHE_LINE_BYTES, "a magazine is exactly two cache lines");

typedef struct magazine_allocator magazine_allocator;

/* One thread's cache for one instance. loaded, previous, their magazines and the two counters
 * change only under lock: taken by the owner around each Allocate and Free, and by a purge (under
 * the registry lock) or the owner's destructor; DeleteAllocator frees caches without it, when no
 * thread may call the instance. Two cache lines, the first holding everything the owner touches
 * on every operation, so caches of different threads never share one. */
typedef struct magazine_cache {
    ks_spinlock lock;     /* test-and-set spinlock (spinlock.h) */
    magazine *loaded;
    magazine *previous;   /* always full or empty */
    atomic_ullong allocs; /* frames this cache handed out; written under lock: relaxed load + store */
    atomic_ullong frees;  /* frames freed through this cache; written under lock */
    /* Set at creation, then read-only; the links change under magazine_registry_lock. */
    _Alignas(MAGAZINE_CACHE_LINE_BYTES) magazine_allocator *allocator;
    pthread_t owner;
    struct magazine_cache *registry_prev; /* the process-wide registry, under magazine_registry_lock */
    struct magazine_cache *registry_next;
} magazine_cache;
_Static_assert(sizeof(magazine_cache) == 2 * MAGAZINE_CACHE_LINE_BYTES, "a thread cache is two cache lines");

struct magazine_allocator {
    pthread_key_t key; /* this thread's magazine_cache */
    unsigned char *block;
    size_t stride_bytes;
    size_t block_bytes;
    uint32_t frames;
    /* Guarded by magazine_registry_lock. */
    uint32_t caches; /* live thread caches of this instance */
    /* The depot, guarded by depot_lock. Invariant when quiescent: every frame is live, or a round
     * of exactly one magazine, or on the backing stack, exactly once, or never handed out. */
    pthread_mutex_t depot_lock;
    magazine *depot_full; /* each holds KS_MAGAZINE_ROUNDS rounds */
    magazine *depot_empty;
    uint32_t depot_full_count;
    uint32_t depot_empty_count;
    uint32_t magazines;     /* in existence: in thread caches and in the depot */
    uint32_t backing_count; /* free frames on the backing stack */
    void **backing;         /* capacity Frames */
    uint32_t fresh_index;   /* frames [fresh_index, frames) were never handed out; free, on no stack */
    uint64_t alloc_exchanges; /* Allocates that loaded a full magazine from the depot */
    uint64_t free_exchanges;  /* Frees that loaded an empty magazine from the depot */
    uint64_t backing_allocs;  /* Allocates served from the backing stack */
    uint64_t backing_frees;   /* Frees that went to the backing stack */
    uint64_t refusals;        /* Allocates that returned NULL */
    uint64_t purges;          /* Allocates that emptied every thread cache into the depot */
    uint64_t allocs_folded;   /* allocs of exited threads' caches, and of calls made without a cache */
    uint64_t frees_folded;
    uint64_t *seen; /* self_check's bitmap, one bit per frame */
    /* Outside every lock: touched only on the bad-free path. */
    atomic_ullong bad_frees;
};

/* Every live thread cache of every instance, so that a key destructor can tell whether the
 * pointer it was handed is still a live cache, and a purge can find an instance's caches (see the
 * top comment). Lock order: registry, then cache locks, then a depot. */
static pthread_mutex_t magazine_registry_lock = PTHREAD_MUTEX_INITIALIZER;
static magazine_cache *magazine_registry;

/* ---- Small pieces ------------------------------------------------------------------------------ */

/* A counter written only under its cache's lock: a relaxed load and store, which compile to plain
 * moves (no lock prefix), and which other threads may read at any time without a data race. */
static inline void magazine_count(atomic_ullong *counter)
{
    atomic_store_explicit(counter, atomic_load_explicit(counter, memory_order_relaxed) + 1, memory_order_relaxed);
}

static inline void magazine_cache_lock(magazine_cache *cache)
{
    ks_spin_lock(&cache->lock);
}

static inline void magazine_cache_unlock(magazine_cache *cache)
{
    ks_spin_unlock(&cache->lock);
}

static bool magazine_owns(const magazine_allocator *allocator, const void *frame)
{
    uintptr_t offset_bytes = (uintptr_t)frame - (uintptr_t)allocator->block; /* wraps below block */
#if defined(KS_DEBUG) && KS_DEBUG >= 1
    if (offset_bytes % allocator->stride_bytes != 0)
        return false;
#endif
    return offset_bytes < allocator->block_bytes;
}

static void magazine_swap(magazine_cache *cache)
{
    magazine *loaded = cache->loaded;
    cache->loaded = cache->previous;
    cache->previous = loaded;
}

/* Depot lock held. An empty magazine from the depot, or a new one; NULL when out of memory. */
static magazine *magazine_depot_take_empty(magazine_allocator *allocator)
{
    magazine *empty = allocator->depot_empty;
    if (empty != NULL) {
        allocator->depot_empty = empty->next;
        allocator->depot_empty_count--;
        return empty;
    }
    void *memory = NULL;
    if (posix_memalign(&memory, MAGAZINE_CACHE_LINE_BYTES, sizeof(magazine)) != 0)
        return NULL;
    empty = memory;
    empty->next = NULL;
    empty->rounds = 0;
    allocator->magazines++;
    return empty;
}

/* Depot lock held. Moves a magazine's rounds onto the backing stack. The stack holds Frames
 * entries, which valid frees never exceed; a round beyond that can only be a frame freed twice,
 * and is dropped and counted rather than written past the stack. */
static void magazine_depot_unload(magazine_allocator *allocator, magazine *unloaded)
{
    while (unloaded->rounds != 0) {
        void *frame = unloaded->round[--unloaded->rounds];
        if (allocator->backing_count < allocator->frames)
            allocator->backing[allocator->backing_count++] = frame;
        else
            atomic_fetch_add_explicit(&allocator->bad_frees, 1, memory_order_relaxed);
    }
}

/* Depot lock held. Moves a magazine's rounds onto the backing stack and files it as empty. */
static void magazine_depot_spill(magazine_allocator *allocator, magazine *spilled)
{
    magazine_depot_unload(allocator, spilled);
    spilled->next = allocator->depot_empty;
    allocator->depot_empty = spilled;
    allocator->depot_empty_count++;
}

/* Depot lock held. Puts a magazine a thread gives up into the depot: a full one on the full
 * list, any other one spilled (the depot keeps only full and empty magazines). */
static void magazine_depot_put(magazine_allocator *allocator, magazine *returned)
{
    if (returned->rounds != KS_MAGAZINE_ROUNDS) {
        magazine_depot_spill(allocator, returned);
        return;
    }
    returned->next = allocator->depot_full;
    allocator->depot_full = returned;
    allocator->depot_full_count++;
}

/* Depot lock held. A full magazine from the depot, or NULL. */
static magazine *magazine_depot_take_full(magazine_allocator *allocator)
{
    magazine *full = allocator->depot_full;
    if (full != NULL) {
        allocator->depot_full = full->next;
        allocator->depot_full_count--;
    }
    return full;
}

/* ---- Thread caches ------------------------------------------------------------------------------ */

static void magazine_registry_link(magazine_cache *cache)
{
    cache->registry_prev = NULL;
    cache->registry_next = magazine_registry;
    if (magazine_registry != NULL)
        magazine_registry->registry_prev = cache;
    magazine_registry = cache;
    cache->allocator->caches++;
}

static void magazine_registry_unlink(magazine_cache *cache)
{
    if (cache->registry_prev != NULL)
        cache->registry_prev->registry_next = cache->registry_next;
    else
        magazine_registry = cache->registry_next;
    if (cache->registry_next != NULL)
        cache->registry_next->registry_prev = cache->registry_prev;
    cache->allocator->caches--;
}

/* The calling thread's first operation on this instance: a cache with two empty magazines
 * (recycled from the depot when it has them, which is what keeps thread churn from growing the
 * magazine count). NULL when out of memory; the caller then works on the depot directly. */
static magazine_cache *magazine_cache_create(magazine_allocator *allocator)
{
    void *memory = NULL;
    if (posix_memalign(&memory, MAGAZINE_CACHE_LINE_BYTES, sizeof(magazine_cache)) != 0)
        return NULL;
    magazine_cache *cache = memset(memory, 0, sizeof(magazine_cache));
    atomic_init(&cache->lock, false);
    atomic_init(&cache->allocs, 0);
    atomic_init(&cache->frees, 0);
    cache->allocator = allocator;
    cache->owner = pthread_self();
    pthread_mutex_lock(&allocator->depot_lock);
    cache->loaded = magazine_depot_take_empty(allocator);
    cache->previous = magazine_depot_take_empty(allocator);
    pthread_mutex_unlock(&allocator->depot_lock);
    if (cache->loaded == NULL || cache->previous == NULL || pthread_setspecific(allocator->key, cache) != 0) {
        pthread_mutex_lock(&allocator->depot_lock);
        if (cache->loaded != NULL)
            magazine_depot_put(allocator, cache->loaded);
        if (cache->previous != NULL)
            magazine_depot_put(allocator, cache->previous);
        pthread_mutex_unlock(&allocator->depot_lock);
        free(cache);
        return NULL;
    }
    pthread_mutex_lock(&magazine_registry_lock);
    magazine_registry_link(cache);
    pthread_mutex_unlock(&magazine_registry_lock);
    return cache;
}

static inline magazine_cache *magazine_cache_of(magazine_allocator *allocator)
{
    magazine_cache *cache = pthread_getspecific(allocator->key);
    return cache != NULL ? cache : magazine_cache_create(allocator);
}

/* Registry and depot locks held (and the cache's, which is freed with it). Returns the cache's
 * magazines and counts to the depot and frees the cache. */
static void magazine_cache_retire(magazine_cache *cache)
{
    magazine_allocator *allocator = cache->allocator;
    magazine_registry_unlink(cache);
    magazine_depot_put(allocator, cache->loaded);
    magazine_depot_put(allocator, cache->previous);
    allocator->allocs_folded += atomic_load_explicit(&cache->allocs, memory_order_relaxed);
    allocator->frees_folded += atomic_load_explicit(&cache->frees, memory_order_relaxed);
    free(cache);
}

/* The key's destructor, run by an exiting thread. value may be a cache DeleteAllocator has
 * already freed (the destructor can start before pthread_key_delete and run after it), so it is
 * only compared, never dereferenced, until the registry confirms it is live and ours. */
static void magazine_thread_exit(void *value)
{
    pthread_mutex_lock(&magazine_registry_lock);
    magazine_cache *cache = magazine_registry;
    while (cache != NULL && !(cache == value && pthread_equal(cache->owner, pthread_self())))
        cache = cache->registry_next;
    if (cache != NULL) {
        magazine_allocator *allocator = cache->allocator;
        magazine_cache_lock(cache); /* uncontended: only a purge, which needs the registry lock, could hold it */
        pthread_mutex_lock(&allocator->depot_lock);
        magazine_cache_retire(cache);
        pthread_mutex_unlock(&allocator->depot_lock);
        /* Already NULL when this is the key being destroyed; clears it when value named a newer
         * cache of this thread at a recycled address, whose key is still live. */
        pthread_setspecific(allocator->key, NULL);
    }
    pthread_mutex_unlock(&magazine_registry_lock);
}

/* ---- Initialisation and deletion ---------------------------------------------------------------- */

/* Defaults (written back on success only), limits; frames are carved from one block. */
static const ks_framing_rules magazine_framing_rules = {
    .default_frames = KS_MAGAZINE_DEFAULT_FRAMES,
    .default_frame_bytes = KS_MAGAZINE_DEFAULT_FRAME_BYTES,
    .max_frame_bytes = KS_MAGAZINE_MAX_FRAME_BYTES,
    .max_align_bytes = KS_MAGAZINE_MAX_ALIGN_BYTES,
    .min_align_bytes = 1,
    .max_frames = KS_MAGAZINE_MAX_FRAMES,
    .max_block_bytes = KS_MAGAZINE_MAX_BLOCK_BYTES,
};

/* The backing stack and the self-check bitmap share one mapping from the region cache, as the
 * block does: an instance made per fuzz input reuses them instead of taking fresh pages (8 KiB
 * at the default 1024 frames), and neither needs zeroing (the stack is empty, self_check clears
 * the bitmap it uses). */
static size_t magazine_parts_bytes(uint32_t frames)
{
    return (size_t)frames * sizeof(void *) + ((size_t)frames + 63) / 64 * sizeof(uint64_t);
}

static void magazine_free_parts(magazine_allocator *allocator)
{
    ks_region_unmap(allocator->block, allocator->block_bytes); /* frames still live go with it */
    ks_region_unmap(allocator->backing, magazine_parts_bytes(allocator->frames));
}

/* The mapped parts; the key and mutex are the caller's. */
static NTSTATUS magazine_allocate_parts(magazine_allocator *allocator, size_t align_bytes)
{
    void *parts = ks_region_map_aligned(magazine_parts_bytes(allocator->frames), _Alignof(uint64_t));
    void *block = parts != NULL ? ks_region_map_aligned(allocator->block_bytes, align_bytes) : NULL;
    if (block == NULL) {
        ks_region_unmap(parts, magazine_parts_bytes(allocator->frames));
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    allocator->backing = parts;
    allocator->seen = (uint64_t *)(allocator->backing + allocator->frames);
    allocator->block = block;
    allocator->backing_count = 0;
    allocator->fresh_index = 0; /* every frame is fresh: the first Allocates return them in address order */
    return STATUS_SUCCESS;
}

static NTSTATUS magazine_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    const KSPIN *pin = initial_context; /* a shared heap, if any, is not used: the pool is private */
    if (framing == NULL || context == NULL)
        return STATUS_INVALID_PARAMETER;
    if (pin != NULL && pin->abi_version != KSALLOC_ABI_VERSION)
        return STATUS_REVISION_MISMATCH;
    ks_framing_settled settled;
    NTSTATUS status = ks_framing_settle(framing, &magazine_framing_rules, &settled);
    if (!NT_SUCCESS(status))
        return status;

    magazine_allocator *allocator = calloc(1, sizeof *allocator);
    if (allocator == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    allocator->frames = settled.frames;
    allocator->stride_bytes = settled.stride_bytes;
    allocator->block_bytes = settled.block_bytes;
    atomic_init(&allocator->bad_frees, 0);
    status = magazine_allocate_parts(allocator, settled.align_bytes);
    if (NT_SUCCESS(status) && pthread_key_create(&allocator->key, magazine_thread_exit) != 0) {
        magazine_free_parts(allocator);
        status = STATUS_INSUFFICIENT_RESOURCES; /* the process ran out of keys */
    }
    if (!NT_SUCCESS(status)) {
        free(allocator);
        return status;
    }
    pthread_mutex_init(&allocator->depot_lock, NULL);
    ks_framing_write_back(framing, &settled);
    *context = allocator;
    return STATUS_SUCCESS;
}

static void magazine_free_list(magazine *head)
{
    while (head != NULL) {
        magazine *next = head->next;
        free(head);
        head = next;
    }
}

static void magazine_delete(PVOID context)
{
    magazine_allocator *allocator = context;
    pthread_mutex_lock(&magazine_registry_lock);
    /* First, so that threads exiting from now on run no destructor for this instance; one that
     * already started finds its cache gone from the registry once it gets the lock. */
    pthread_key_delete(allocator->key);
    for (magazine_cache *cache = magazine_registry, *next; cache != NULL; cache = next) {
        next = cache->registry_next;
        if (cache->allocator != allocator)
            continue;
        magazine_registry_unlink(cache);
        free(cache->loaded);
        free(cache->previous);
        free(cache);
    }
    pthread_mutex_unlock(&magazine_registry_lock);
    magazine_free_list(allocator->depot_full);
    magazine_free_list(allocator->depot_empty);
    pthread_mutex_destroy(&allocator->depot_lock);
    magazine_free_parts(allocator);
    free(allocator);
}

/* ---- Allocate and Free ------------------------------------------------------------------------ */

/* Depot lock held, no cache: take a full magazine apart onto the backing stack so that a thread
 * without a cache still reaches frames parked in the depot. */
static void magazine_depot_break_full(magazine_allocator *allocator)
{
    magazine *full = magazine_depot_take_full(allocator);
    if (full != NULL)
        magazine_depot_spill(allocator, full);
}

/* Depot lock held, and the cache's lock when there is a cache. A frame from the depot: a full
 * magazine loaded into the cache (with its previous, empty, given back), else a frame from the
 * backing stack; NULL when both are bare. Counts nothing on failure. */
static void *magazine_depot_allocate(magazine_allocator *allocator, magazine_cache *cache)
{
    magazine *full = cache != NULL ? magazine_depot_take_full(allocator) : NULL;
    if (full != NULL) {
        magazine_depot_put(allocator, cache->previous); /* empty */
        cache->previous = cache->loaded;                /* empty */
        cache->loaded = full;
        allocator->alloc_exchanges++;
        return full->round[--full->rounds];
    }
    bool fresh_left = allocator->fresh_index < allocator->frames;
    if (cache == NULL && allocator->backing_count == 0 && !fresh_left)
        magazine_depot_break_full(allocator);
    if (allocator->backing_count == 0 && !fresh_left)
        return NULL;
    allocator->backing_allocs++;
    allocator->allocs_folded += cache == NULL;
    if (allocator->backing_count == 0)
        return allocator->block + (size_t)allocator->fresh_index++ * allocator->stride_bytes;
    return allocator->backing[--allocator->backing_count];
}

/* Allocate when the loaded magazine is empty (or the thread has no cache); the cache's lock held
 * when there is a cache. NULL when the depot is bare too: the caller then purges. */
static void *magazine_allocate_slow(magazine_allocator *allocator, magazine_cache *cache)
{
    if (cache != NULL && cache->previous->rounds == KS_MAGAZINE_ROUNDS) {
        magazine_swap(cache);
        return cache->loaded->round[--cache->loaded->rounds];
    }
    pthread_mutex_lock(&allocator->depot_lock);
    void *frame = magazine_depot_allocate(allocator, cache);
    pthread_mutex_unlock(&allocator->depot_lock);
    return frame;
}

/* Depot lock and the cache's lock held. Empties one of the cache's magazines into the depot: a
 * full one is exchanged for a spare empty magazine (no allocation under the locks), any other
 * rounds go to the backing stack. */
static void magazine_purge_magazine(magazine_allocator *allocator, magazine **held)
{
    magazine *purged = *held;
    if (purged->rounds == KS_MAGAZINE_ROUNDS && allocator->depot_empty != NULL) {
        *held = magazine_depot_take_empty(allocator); /* the list head: never allocates */
        magazine_depot_put(allocator, purged);         /* full: onto the full list */
    } else {
        magazine_depot_unload(allocator, purged);
    }
}

/* Allocate found its magazines, the depot's full list and the backing stack empty. Called with no
 * lock held. Purges every cache of the instance into the depot (kmem_cache_magazine_purge) and
 * takes a frame from the depot while still holding every cache lock and the depot lock, so that
 * no frame was out of reach and none of those collected can be taken first. NULL only when, at
 * that instant, every frame of the pool was live (or on its way back in a Free that had not yet
 * taken its lock). Lock order: registry, every cache of the instance, depot. */
static void *magazine_allocate_purged(magazine_allocator *allocator, magazine_cache *self)
{
    pthread_mutex_lock(&magazine_registry_lock);
    for (magazine_cache *cache = magazine_registry; cache != NULL; cache = cache->registry_next)
        if (cache->allocator == allocator)
            magazine_cache_lock(cache);
    pthread_mutex_lock(&allocator->depot_lock);
    for (magazine_cache *cache = magazine_registry; cache != NULL; cache = cache->registry_next) {
        if (cache->allocator != allocator)
            continue;
        magazine_purge_magazine(allocator, &cache->loaded);
        magazine_purge_magazine(allocator, &cache->previous);
    }
    allocator->purges++;
    /* self, when not NULL, is registered (linked right after pthread_setspecific succeeded, and
     * unlinked only by its own thread's exit or DeleteAllocator), so its lock is held here. */
    void *frame = magazine_depot_allocate(allocator, self);
    if (frame == NULL)
        allocator->refusals++;
    else if (self != NULL)
        magazine_count(&self->allocs);
    pthread_mutex_unlock(&allocator->depot_lock);
    for (magazine_cache *cache = magazine_registry; cache != NULL; cache = cache->registry_next)
        if (cache->allocator == allocator)
            magazine_cache_unlock(cache);
    pthread_mutex_unlock(&magazine_registry_lock);
    return frame;
}

static PVOID magazine_allocate(PVOID context)
{
    magazine_allocator *allocator = context;
    magazine_cache *cache = magazine_cache_of(allocator);
    if (cache == NULL) {
        void *frame = magazine_allocate_slow(allocator, NULL);
        return frame != NULL ? frame : magazine_allocate_purged(allocator, NULL);
    }
    magazine_cache_lock(cache);
    magazine *loaded = cache->loaded;
    void *frame = loaded->rounds != 0 ? loaded->round[--loaded->rounds] : magazine_allocate_slow(allocator, cache);
    if (frame != NULL)
        magazine_count(&cache->allocs);
    magazine_cache_unlock(cache);
    if (__builtin_expect(frame == NULL, 0))
        frame = magazine_allocate_purged(allocator, cache); /* takes the cache lock again, after the registry's */
    return frame;
}

/* Free when the loaded magazine is full (or the thread has no cache); the cache's lock held when
 * there is a cache. */
static void magazine_free_slow(magazine_allocator *allocator, magazine_cache *cache, void *frame)
{
    if (cache != NULL && cache->previous->rounds == 0) {
        magazine_swap(cache);
        cache->loaded->round[cache->loaded->rounds++] = frame;
        return;
    }
    pthread_mutex_lock(&allocator->depot_lock);
    magazine *empty = cache != NULL ? magazine_depot_take_empty(allocator) : NULL;
    if (empty != NULL) {
        magazine_depot_put(allocator, cache->previous); /* full */
        cache->previous = cache->loaded;                /* full */
        cache->loaded = empty;
        allocator->free_exchanges++;
        empty->round[empty->rounds++] = frame;
    } else if (allocator->backing_count < allocator->frames) {
        allocator->backing[allocator->backing_count++] = frame;
        allocator->backing_frees++;
        allocator->frees_folded += cache == NULL;
    } else {
        /* More free frames than the pool has: a double free. Dropping it keeps the stack in
         * bounds; the frame is already free. */
        atomic_fetch_add_explicit(&allocator->bad_frees, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&allocator->depot_lock);
}

static void magazine_free(PVOID context, PVOID buffer)
{
    magazine_allocator *allocator = context;
    if (!magazine_owns(allocator, buffer)) {
        atomic_fetch_add_explicit(&allocator->bad_frees, 1, memory_order_relaxed);
        return;
    }
    magazine_cache *cache = magazine_cache_of(allocator);
    if (cache == NULL) {
        magazine_free_slow(allocator, NULL, buffer);
        return;
    }
    magazine_cache_lock(cache);
    magazine *loaded = cache->loaded;
    if (loaded->rounds != KS_MAGAZINE_ROUNDS)
        loaded->round[loaded->rounds++] = buffer;
    else
        magazine_free_slow(allocator, cache, buffer);
    magazine_count(&cache->frees);
    magazine_cache_unlock(cache);
}

/* ---- self_check and counters ------------------------------------------------------------------- */

/* Marks one free frame seen; fails if it is not a frame of the block or was seen already. where
 * names the container up to the position: "backing stack entry", "depot full magazine 2 round". */
static NTSTATUS magazine_check_frame(magazine_allocator *allocator, const void *frame, const char *where,
                                     unsigned position, char *why, size_t why_bytes)
{
    uintptr_t offset_bytes = (uintptr_t)frame - (uintptr_t)allocator->block;
    if (offset_bytes >= allocator->block_bytes || offset_bytes % allocator->stride_bytes != 0) {
        snprintf(why, why_bytes, "magazine: %s %u holds %p, not a frame of the block [%p, +%zu) (stride %zu)",
                 where, position, frame, (void *)allocator->block, allocator->block_bytes, allocator->stride_bytes);
        return STATUS_DATA_ERROR;
    }
    size_t index = offset_bytes / allocator->stride_bytes;
    if (index >= allocator->fresh_index) {
        snprintf(why, why_bytes, "magazine: %s %u holds frame %zu (%p), which was never handed out (frames from %u on "
                 "were not): a Free of a pointer this instance did not hand out", where, position, index, frame,
                 (unsigned)allocator->fresh_index);
        return STATUS_DATA_ERROR;
    }
    uint64_t bit = UINT64_C(1) << (index % 64);
    if (allocator->seen[index / 64] & bit) {
        snprintf(why, why_bytes, "magazine: %s %u holds frame %zu (%p), which is free elsewhere too (a double free)",
                 where, position, index, frame);
        return STATUS_DATA_ERROR;
    }
    allocator->seen[index / 64] |= bit;
    return STATUS_SUCCESS;
}

/* One magazine's rounds; also checks the count is what its place requires. */
static NTSTATUS magazine_check_magazine(magazine_allocator *allocator, const magazine *checked, const char *where,
                                        bool must_be_full_or_empty, char *why, size_t why_bytes)
{
    if (checked->rounds > KS_MAGAZINE_ROUNDS ||
        (must_be_full_or_empty && checked->rounds != 0 && checked->rounds != KS_MAGAZINE_ROUNDS)) {
        snprintf(why, why_bytes, "magazine: %s holds %u rounds (capacity %u%s)", where, (unsigned)checked->rounds,
                 KS_MAGAZINE_ROUNDS, must_be_full_or_empty ? ", and must be full or empty" : "");
        return STATUS_DATA_ERROR;
    }
    char round_where[112];
    snprintf(round_where, sizeof round_where, "%s round", where);
    for (uint32_t position = 0; position < checked->rounds; position++) {
        NTSTATUS status = magazine_check_frame(allocator, checked->round[position], round_where, position, why,
                                               why_bytes);
        if (!NT_SUCCESS(status))
            return status;
    }
    return STATUS_SUCCESS;
}

/* A depot list: every magazine full (or every one empty), and as many as the count says. */
static NTSTATUS magazine_check_depot_list(magazine_allocator *allocator, const magazine *head, bool full,
                                          uint32_t expected, char *why, size_t why_bytes)
{
    char where[64];
    uint32_t listed = 0;
    for (const magazine *entry = head; entry != NULL; entry = entry->next, listed++) {
        snprintf(where, sizeof where, "depot %s magazine %u", full ? "full" : "empty", (unsigned)listed);
        if (listed == expected || entry->rounds != (full ? KS_MAGAZINE_ROUNDS : 0)) {
            snprintf(why, why_bytes, "magazine: %s holds %u rounds or is past the %u counted (a cycle?)", where,
                     (unsigned)entry->rounds, (unsigned)expected);
            return STATUS_DATA_ERROR;
        }
        NTSTATUS status = magazine_check_magazine(allocator, entry, where, true, why, why_bytes);
        if (!NT_SUCCESS(status))
            return status;
    }
    if (listed != expected) {
        snprintf(why, why_bytes, "magazine: depot %s list has %u magazines, counted %u", full ? "full" : "empty",
                 (unsigned)listed, (unsigned)expected);
        return STATUS_DATA_ERROR;
    }
    return STATUS_SUCCESS;
}

/* Every cache of this instance: magazines and their rounds; sums the magazines and the counts. */
static NTSTATUS magazine_check_caches(magazine_allocator *allocator, uint32_t *caches_seen, uint64_t *live,
                                      char *why, size_t why_bytes)
{
    char where[96];
    for (const magazine_cache *cache = magazine_registry; cache != NULL; cache = cache->registry_next) {
        if (cache->allocator != allocator)
            continue;
        snprintf(where, sizeof where, "thread cache %u loaded magazine", (unsigned)*caches_seen);
        NTSTATUS status = magazine_check_magazine(allocator, cache->loaded, where, false, why, why_bytes);
        if (NT_SUCCESS(status)) {
            snprintf(where, sizeof where, "thread cache %u previous magazine", (unsigned)*caches_seen);
            status = magazine_check_magazine(allocator, cache->previous, where, true, why, why_bytes);
        }
        if (!NT_SUCCESS(status))
            return status;
        *live += atomic_load_explicit(&cache->allocs, memory_order_relaxed);
        *live -= atomic_load_explicit(&cache->frees, memory_order_relaxed);
        (*caches_seen)++;
    }
    return STATUS_SUCCESS;
}

/* Both locks held: every free frame exactly once; magazines and caches all accounted for. */
static NTSTATUS magazine_check_locked(magazine_allocator *allocator, char *why, size_t why_bytes)
{
    memset(allocator->seen, 0, ((size_t)allocator->fresh_index + 63) / 64 * sizeof allocator->seen[0]);
    for (uint32_t position = 0; position < allocator->backing_count; position++) {
        NTSTATUS status = magazine_check_frame(allocator, allocator->backing[position], "backing stack entry", position,
                                               why, why_bytes);
        if (!NT_SUCCESS(status))
            return status;
    }
    NTSTATUS status = magazine_check_depot_list(allocator, allocator->depot_full, true, allocator->depot_full_count,
                                                why, why_bytes);
    if (NT_SUCCESS(status))
        status = magazine_check_depot_list(allocator, allocator->depot_empty, false, allocator->depot_empty_count,
                                           why, why_bytes);
    uint32_t caches_seen = 0;
    uint64_t live = allocator->allocs_folded - allocator->frees_folded; /* wraps as unsigned, sums right */
    if (NT_SUCCESS(status))
        status = magazine_check_caches(allocator, &caches_seen, &live, why, why_bytes);
    if (!NT_SUCCESS(status))
        return status;
    uint64_t magazines = (uint64_t)allocator->depot_full_count + allocator->depot_empty_count + 2u * caches_seen;
    uint64_t free_frames = allocator->backing_count + (uint64_t)allocator->depot_full_count * KS_MAGAZINE_ROUNDS +
                           (allocator->frames - allocator->fresh_index);
    for (const magazine_cache *cache = magazine_registry; cache != NULL; cache = cache->registry_next)
        if (cache->allocator == allocator)
            free_frames += cache->loaded->rounds + cache->previous->rounds;
    if (caches_seen != allocator->caches || magazines != allocator->magazines || free_frames + live != allocator->frames) {
        snprintf(why, why_bytes, "magazine: %u caches (counted %u), %llu magazines (created %u), %llu free + %llu "
                 "live frames (pool has %u)", (unsigned)caches_seen, (unsigned)allocator->caches,
                 (unsigned long long)magazines, (unsigned)allocator->magazines, (unsigned long long)free_frames,
                 (unsigned long long)live, (unsigned)allocator->frames);
        return STATUS_DATA_ERROR;
    }
    return STATUS_SUCCESS;
}

static NTSTATUS magazine_self_check(PVOID context, char *why, size_t why_bytes)
{
    magazine_allocator *allocator = context;
    pthread_mutex_lock(&magazine_registry_lock);
    pthread_mutex_lock(&allocator->depot_lock);
    NTSTATUS status = magazine_check_locked(allocator, why, why_bytes);
    pthread_mutex_unlock(&allocator->depot_lock);
    pthread_mutex_unlock(&magazine_registry_lock);
    return status;
}

static size_t magazine_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    magazine_allocator *allocator = context;
    uint64_t allocs = 0, frees = 0;
    pthread_mutex_lock(&magazine_registry_lock);
    for (const magazine_cache *cache = magazine_registry; cache != NULL; cache = cache->registry_next) {
        if (cache->allocator == allocator) {
            allocs += atomic_load_explicit(&cache->allocs, memory_order_relaxed);
            frees += atomic_load_explicit(&cache->frees, memory_order_relaxed);
        }
    }
    uint32_t caches = allocator->caches;
    pthread_mutex_lock(&allocator->depot_lock);
    allocs += allocator->allocs_folded;
    frees += allocator->frees_folded;
    /* Threads keep running while the caches are summed, and a cache counts its op just after the
     * depot counted the same op: while they run the differences are approximate and clamped at 0;
     * when quiescent they are exact. */
    uint64_t slow_allocs = allocator->alloc_exchanges + allocator->backing_allocs;
    frees = frees < allocs ? frees : allocs;
    slow_allocs = slow_allocs < allocs ? slow_allocs : allocs;
    const ks_counter counters[] = {
        {"frames", allocator->frames},
        {"untouched_frames", allocator->frames - allocator->fresh_index},
        {"stride_bytes", allocator->stride_bytes},
        {"reserved_bytes", allocator->block_bytes + (size_t)allocator->frames * sizeof(void *) +
                               (size_t)allocator->magazines * sizeof(magazine) + (size_t)caches * sizeof(magazine_cache)},
        {"frames_live", allocs - frees},
        {"hits", allocs - slow_allocs},
        {"depot_exchanges", allocator->alloc_exchanges + allocator->free_exchanges},
        {"backing_allocs", allocator->backing_allocs},
        {"backing_frees", allocator->backing_frees},
        {"refusals", allocator->refusals},
        {"purges", allocator->purges},
        {"magazines", allocator->magazines},
        {"depot_full", allocator->depot_full_count},
        {"thread_caches", caches},
        {"bad_frees", atomic_load_explicit(&allocator->bad_frees, memory_order_relaxed)},
    };
    pthread_mutex_unlock(&allocator->depot_lock);
    pthread_mutex_unlock(&magazine_registry_lock);
    size_t count = 0;
    for (; count < sizeof counters / sizeof counters[0] && count < max_counters; count++)
        out[count] = counters[count];
    return count;
}

static const KSALLOCATOR_DISPATCH magazine_dispatch = {
    .InitializeAllocator = magazine_initialize,
    .DeleteAllocator = magazine_delete,
    .Allocate = magazine_allocate,
    .Free = magazine_free,
};

const ks_allocator_entry ks_allocator_magazine = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "magazine",
    .description = "Bonwick per-thread magazines over a locked depot, in front of a fixed pool of Frames",
    .caps = KS_CAP_THREAD_SAFE | KS_CAP_BOUNDED | KS_CAP_GUARANTEED,
    .max_frame_bytes = KS_MAGAZINE_MAX_FRAME_BYTES,
    .max_align_bytes = KS_MAGAZINE_MAX_ALIGN_BYTES,
    .dispatch = &magazine_dispatch,
    .self_check = magazine_self_check,
    .counters = magazine_counters,
};
