/*
 * frame_set.c -- internal: the live-frame sets. ks_frame_set is used by `lookaside`, and as the
 * table of each shard of ks_sharded_frame_set, which the thread-safe peers use: `system`,
 * `tcmalloc`, `mimalloc`, and `jemalloc` on a shared heap.
 *
 * Design of ks_frame_set: a hash set of frame addresses with open addressing, linear probing and
 * backward-shift deletion: no tombstones, so a long run of Allocate/Free never degrades the
 * probes. Fibonacci hashing (multiply by 2^64 / golden ratio, keep the high bits) spreads aligned
 * addresses whose low bits are all zero. The table is kept at most half full and doubles when an
 * insert would pass that; it never shrinks, so a set sized by its high-water mark stays sized for
 * it. Address 0 marks an empty slot (no frame lives there). The set lives outside the frames on
 * purpose: a header or trailer in the frame would change what the heap is asked for -- a
 * 4096-byte, 4096-aligned frame would cost 8 KiB, a 4096-byte tcmalloc frame would move to the
 * 4608-byte class -- and would sit where a driver's overrun lands.
 *
 * Design of ks_sharded_frame_set: KS_FRAME_SET_SHARDS such tables, the shard of a frame picked by
 * bits 32.. of the same Fibonacci product (the table's home slot takes the top bits, so the two
 * choices do not correlate), each behind a test-and-set spinlock on its own cache line. Why this
 * and not one mutex, or no lock:
 *  - an uncontended glibc mutex is two locked instructions per critical section (lock and
 *    unlock); the spinlock is one atomic exchange and one plain release store. That is the whole
 *    price of thread safety once a second thread has called the set (the bias, below, spares a
 *    set that only one thread calls even that);
 *  - threads working on different frames mostly land in different shards, so a frame freed on
 *    another thread (producer -> consumer) contends only with operations on its own shard;
 *  - a lock-free table would still pay one locked instruction per insert, and resizing one safely
 *    costs more than it saves; a table per thread cannot find a frame freed by another thread
 *    without a lookup in every other thread's table.
 * Critical sections are short (a probe run; a rehash when a shard grows, amortised O(1)), so a
 * waiter spins on a plain load for a while, then yields the CPU to a holder that was preempted.
 *
 * Bias. Most instances are only ever called from one thread, and to them the locks are pure cost
 * (the exchange is the dearest instruction of an Allocate on a virtual machine). So a set starts
 * biased to the first thread that calls it: that thread skips the locks and instead brackets each
 * operation with owner_busy = true / false and a second look at `owner` -- plain loads and stores,
 * no locked instruction. The first call from another thread revokes the bias, once and for good:
 * it marks the set REVOKING, runs membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED), which makes every
 * thread of the process execute a full memory barrier, waits for owner_busy to clear, and marks
 * the set SHARED; from then on every thread takes the shard locks. This is the asymmetric Dekker
 * handshake of userspace RCU's membarrier flavour: the barrier the owner's fast path leaves out
 * between its store to owner_busy and its load of `owner` is supplied by the revoker's system
 * call, so either the owner sees the revocation and takes the lock, or the revoker sees the owner
 * busy and waits. The owner's release store clearing owner_busy, read by the revoker's acquire
 * load, orders the owner's unlocked work before everything after the revocation. Where
 * membarrier is unavailable (an old kernel, a seccomp filter), or KS_FRAME_SET_BIASED is 0, sets
 * start SHARED.
 *
 * Complexity: insert, remove and lookup are expected O(1) at load factor <= 1/2; a growth rehashes
 * every frame of the table, O(capacity), amortised O(1) per insert. Walks, counts and checks are
 * O(capacity) (the check's probe walks are short at this load); the sharded ones visit every shard.
 *
 * Memory: 8 bytes per slot, 2 to 4 slots per frame at the high-water mark of live frames, so 16
 * to 32 bytes per frame; at least the initial capacity (a sharded set: 64 bytes per shard, and a
 * table of KS_FRAME_SET_MIN_CAPACITY slots in each shard a frame ever landed in).
 *
 * Thread safety: ks_frame_set none (see frame_set.h); ks_sharded_frame_set's insert, release,
 * contains and snapshots are thread-safe, its walk is not.
 */
#include "frame_set.h"
#include "serial.h"
#include "spinlock.h"

#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define FRAME_SET_FIBONACCI UINT64_C(0x9E3779B97F4A7C15) /* 2^64 / golden ratio, odd */

_Static_assert(sizeof(uintptr_t) == sizeof(uint64_t), "the set hashes 64-bit addresses");
_Static_assert((KS_FRAME_SET_MIN_CAPACITY & (KS_FRAME_SET_MIN_CAPACITY - 1)) == 0 && KS_FRAME_SET_MIN_CAPACITY >= 2,
               "capacity is a power of two that holds a frame");

static size_t frame_set_home(const ks_frame_set *set, uintptr_t frame)
{
    return (size_t)(((uint64_t)frame * FRAME_SET_FIBONACCI) >> set->shift);
}

bool ks_frame_set_init(ks_frame_set *set, size_t initial_capacity)
{
    bool power_of_two = initial_capacity >= 2 && (initial_capacity & (initial_capacity - 1)) == 0;
    set->slots = power_of_two ? calloc(initial_capacity, sizeof *set->slots) : NULL;
    set->capacity = set->slots != NULL ? initial_capacity : 0;
    set->count = 0;
    set->shift = power_of_two ? 64u - (unsigned)__builtin_ctzll((unsigned long long)initial_capacity) : 0;
    set->foreign_releases = 0;
    set->first_foreign_release = 0;
    return set->slots != NULL;
}

void ks_frame_set_destroy(ks_frame_set *set)
{
    free(set->slots);
    set->slots = NULL;
    set->capacity = 0;
    set->count = 0;
}

/* Puts a frame known to be absent into the first empty slot of its probe run. */
static void frame_set_place(ks_frame_set *set, uintptr_t frame)
{
    size_t mask = set->capacity - 1;
    size_t slot = frame_set_home(set, frame);
    while (set->slots[slot] != 0)
        slot = (slot + 1) & mask;
    set->slots[slot] = frame;
}

static bool frame_set_rehash(ks_frame_set *set, size_t capacity)
{
    ks_frame_set bigger;
    if (!ks_frame_set_init(&bigger, capacity))
        return false;
    for (size_t slot = 0; slot < set->capacity; slot++)
        if (set->slots[slot] != 0)
            frame_set_place(&bigger, set->slots[slot]);
    free(set->slots);
    set->slots = bigger.slots;
    set->capacity = bigger.capacity;
    set->shift = bigger.shift;
    return true;
}

bool ks_frame_set_reserve(ks_frame_set *set, size_t more_frames)
{
    if (more_frames > SIZE_MAX / 2 - set->count)
        return false;
    size_t needed = (set->count + more_frames) * 2;
    size_t capacity = set->capacity != 0 ? set->capacity : KS_FRAME_SET_MIN_CAPACITY;
    while (capacity < needed) {
        if (capacity > SIZE_MAX / 2 / sizeof *set->slots)
            return false;
        capacity *= 2;
    }
    return (capacity == set->capacity && set->slots != NULL) || frame_set_rehash(set, capacity);
}

bool ks_frame_set_insert(ks_frame_set *set, const void *frame)
{
    if (!ks_frame_set_reserve(set, 1))
        return false;
    frame_set_place(set, (uintptr_t)frame);
    set->count++;
    return true;
}

/* The slot holding frame, or capacity when it is not in the set. */
static size_t frame_set_find(const ks_frame_set *set, uintptr_t frame)
{
    if (frame == 0 || set->capacity == 0)
        return set->capacity;
    size_t mask = set->capacity - 1;
    for (size_t slot = frame_set_home(set, frame);; slot = (slot + 1) & mask) {
        if (set->slots[slot] == frame)
            return slot;
        if (set->slots[slot] == 0)
            return set->capacity;
    }
}

bool ks_frame_set_contains(const ks_frame_set *set, const void *frame)
{
    return frame_set_find(set, (uintptr_t)frame) != set->capacity;
}

/* Every later entry of the probe run that may move back into the hole does so, so that each
 * entry stays reachable from its home slot without a tombstone. */
bool ks_frame_set_remove(ks_frame_set *set, const void *frame)
{
    size_t hole = frame_set_find(set, (uintptr_t)frame);
    if (hole == set->capacity)
        return false;
    size_t mask = set->capacity - 1;
    for (size_t next = (hole + 1) & mask; set->slots[next] != 0; next = (next + 1) & mask) {
        size_t home = frame_set_home(set, set->slots[next]);
        /* It may move iff its home is not strictly after the hole on the way to next. */
        if (((next - home) & mask) >= ((next - hole) & mask)) {
            set->slots[hole] = set->slots[next];
            hole = next;
        }
    }
    set->slots[hole] = 0;
    set->count--;
    return true;
}

bool ks_frame_set_release(ks_frame_set *set, const void *frame)
{
    if (ks_frame_set_remove(set, frame))
        return true;
    if (set->foreign_releases++ == 0)
        set->first_foreign_release = (uintptr_t)frame;
    return false;
}

void *ks_frame_set_next(const ks_frame_set *set, size_t *cursor)
{
    for (size_t slot = *cursor; slot < set->capacity; slot++) {
        if (set->slots[slot] != 0) {
            *cursor = slot + 1;
            return (void *)set->slots[slot];
        }
    }
    *cursor = set->capacity;
    return NULL;
}

size_t ks_frame_set_table_bytes(const ks_frame_set *set)
{
    return set->capacity * sizeof *set->slots;
}

/* The walk from the frame's home slot to its own slot meets no empty slot (else a lookup stops
 * short) and no other copy of the frame (else a remove leaves one behind). */
static bool frame_set_check_slot(const ks_frame_set *set, size_t slot, const char *owner, char *why,
                                 size_t why_bytes)
{
    size_t mask = set->capacity - 1;
    uintptr_t frame = set->slots[slot];
    for (size_t probe = frame_set_home(set, frame); probe != slot; probe = (probe + 1) & mask) {
        if (set->slots[probe] == 0) {
            snprintf(why, why_bytes, "%s: live frame %p in slot %zu is unreachable from its home slot %zu (slot %zu "
                     "is empty)", owner, (void *)frame, slot, frame_set_home(set, frame), probe);
            return false;
        }
        if (set->slots[probe] == frame) {
            snprintf(why, why_bytes, "%s: live frame %p is listed twice, in slots %zu and %zu", owner, (void *)frame,
                     probe, slot);
            return false;
        }
    }
    return true;
}

bool ks_frame_set_check(const ks_frame_set *set, size_t align_bytes, const char *owner, char *why, size_t why_bytes)
{
    if (set->foreign_releases != 0) {
        snprintf(why, why_bytes, "%s: %llu Free call(s) of a frame not live in this instance, first %p", owner,
                 (unsigned long long)set->foreign_releases, (void *)set->first_foreign_release);
        return false;
    }
    size_t entries = 0;
    for (size_t slot = 0; slot < set->capacity; slot++) {
        uintptr_t frame = set->slots[slot];
        if (frame == 0)
            continue;
        entries++;
        if (frame & (align_bytes - 1)) {
            snprintf(why, why_bytes, "%s: live frame %p is not aligned to %zu bytes", owner, (void *)frame,
                     align_bytes);
            return false;
        }
        if (!frame_set_check_slot(set, slot, owner, why, why_bytes))
            return false;
    }
    if (entries != set->count || set->count * 2 > set->capacity) {
        snprintf(why, why_bytes, "%s: live-frame table holds %zu entries but counts %zu (capacity %zu)", owner,
                 entries, set->count, set->capacity);
        return false;
    }
    return true;
}

/* ---- The thread-safe set ----------------------------------------------------------------------- */

_Static_assert((KS_FRAME_SET_SHARDS & (KS_FRAME_SET_SHARDS - 1)) == 0 && KS_FRAME_SET_SHARDS >= 1,
               "shards are a power of two");
_Static_assert(KS_FRAME_SET_SHARDS <= (1u << 16), "the shard bits stay clear of a table's home-slot bits");
_Static_assert(sizeof(ks_frame_set_shard) == 64, "a shard is one cache line");

/* `owner` besides a thread serial (which counts up from 1): not yet called; being revoked;
 * revoked, every call locks. */
#define FRAME_SET_UNCLAIMED UINT64_C(0)
#define FRAME_SET_REVOKING (UINT64_MAX - 1)
#define FRAME_SET_SHARED UINT64_MAX

static size_t frame_set_shard_of(uintptr_t frame)
{
    return (size_t)(((uint64_t)frame * FRAME_SET_FIBONACCI) >> 32) & (KS_FRAME_SET_SHARDS - 1);
}

static inline ks_frame_set_shard *frame_set_lock(ks_sharded_frame_set *set, uintptr_t frame)
{
    ks_frame_set_shard *shard = &set->shards[frame_set_shard_of(frame)];
    ks_spin_lock(&shard->lock);
    return shard;
}

static inline void frame_set_lock_shard(ks_frame_set_shard *shard)
{
    ks_spin_lock(&shard->lock);
}

static inline void frame_set_unlock(ks_frame_set_shard *shard)
{
    ks_spin_unlock(&shard->lock);
}

/* ---- Bias --------------------------------------------------------------------------------------- */

static pthread_once_t frame_set_membarrier_once = PTHREAD_ONCE_INIT;
static bool frame_set_membarrier_ready; /* written once under frame_set_membarrier_once */

static long frame_set_membarrier(int command)
{
    return syscall(__NR_membarrier, command, 0, 0);
}

/* A process must register before it may use the private expedited command. */
static void frame_set_membarrier_register(void)
{
    long commands = frame_set_membarrier(MEMBARRIER_CMD_QUERY);
    frame_set_membarrier_ready = commands > 0 && (commands & MEMBARRIER_CMD_PRIVATE_EXPEDITED) &&
                                 frame_set_membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0;
}

static bool frame_set_bias_available(void)
{
    if (!KS_FRAME_SET_BIASED)
        return false;
    pthread_once(&frame_set_membarrier_once, frame_set_membarrier_register);
    return frame_set_membarrier_ready;
}


/* True when the calling thread owns the set's bias and may work without locks until
 * frame_set_leave_owned. The signal fence only stops the compiler; the revoker's membarrier makes
 * it a full barrier whenever it matters (top comment). */
static inline bool frame_set_enter_owned(ks_sharded_frame_set *set, uint64_t thread)
{
    if (atomic_load_explicit(&set->owner, memory_order_relaxed) != thread)
        return false;
    atomic_store_explicit(&set->owner_busy, true, memory_order_relaxed);
    atomic_signal_fence(memory_order_seq_cst);
    if (__builtin_expect(atomic_load_explicit(&set->owner, memory_order_relaxed) == thread, 1))
        return true;
    atomic_store_explicit(&set->owner_busy, false, memory_order_release); /* revoked meanwhile */
    return false;
}

static inline void frame_set_leave_owned(ks_sharded_frame_set *set)
{
    atomic_store_explicit(&set->owner_busy, false, memory_order_release);
}

/* The calling thread is not the set's owner: it claims an unclaimed set (true: it now owns it),
 * or revokes another thread's bias, or waits for a revocation under way to finish (false: take
 * the locks). */
static bool __attribute__((noinline)) frame_set_claim_or_share(ks_sharded_frame_set *set, uint64_t thread)
{
    for (unsigned spins = 0;;) {
        uint64_t owner = atomic_load_explicit(&set->owner, memory_order_acquire);
        if (owner == FRAME_SET_SHARED || owner == thread)
            return owner == thread;
        if (owner == FRAME_SET_UNCLAIMED) {
            if (atomic_compare_exchange_strong_explicit(&set->owner, &owner, thread, memory_order_acquire,
                                                        memory_order_acquire))
                return true;
            continue;
        }
        if (owner != FRAME_SET_REVOKING &&
            atomic_compare_exchange_strong_explicit(&set->owner, &owner, FRAME_SET_REVOKING, memory_order_seq_cst,
                                                    memory_order_acquire)) {
            /* Registered before any set was biased, and a forked child inherits that; should a
             * process have lost it anyway, register again rather than revoke without a barrier. */
            if (frame_set_membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 &&
                frame_set_membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0)
                (void)frame_set_membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
            while (atomic_load_explicit(&set->owner_busy, memory_order_acquire))
                sched_yield(); /* the owner finishes one operation: a probe run, or a rehash */
            atomic_store_explicit(&set->owner, FRAME_SET_SHARED, memory_order_release);
            return false;
        }
        if (++spins < KS_SPIN_BEFORE_YIELD) /* another thread is revoking */
            ks_cpu_relax();
        else
            sched_yield();
    }
}

/* Before a thread-safe call that reads or writes the tables: true when the calling thread may
 * work without locks (frame_set_leave_owned after), false when it must take the shard locks. */
static inline bool frame_set_begin(ks_sharded_frame_set *set, uint64_t thread)
{
    if (frame_set_enter_owned(set, thread))
        return true;
    if (atomic_load_explicit(&set->owner, memory_order_relaxed) == FRAME_SET_SHARED)
        return false;
    return frame_set_claim_or_share(set, thread) && frame_set_enter_owned(set, thread);
}

bool ks_sharded_frame_set_init(ks_sharded_frame_set *set)
{
    atomic_init(&set->owner, frame_set_bias_available() ? FRAME_SET_UNCLAIMED : FRAME_SET_SHARED);
    atomic_init(&set->owner_busy, false);
    set->shards = aligned_alloc(sizeof(ks_frame_set_shard), KS_FRAME_SET_SHARDS * sizeof(ks_frame_set_shard));
    if (set->shards == NULL)
        return false;
    memset(set->shards, 0, KS_FRAME_SET_SHARDS * sizeof(ks_frame_set_shard)); /* no table yet: made on insert */
    for (size_t index = 0; index < KS_FRAME_SET_SHARDS; index++)
        atomic_init(&set->shards[index].lock, false);
    return true;
}

void ks_sharded_frame_set_destroy(ks_sharded_frame_set *set)
{
    if (set->shards == NULL)
        return;
    for (size_t index = 0; index < KS_FRAME_SET_SHARDS; index++)
        ks_frame_set_destroy(&set->shards[index].set);
    free(set->shards);
    set->shards = NULL;
}

bool ks_sharded_frame_set_insert(ks_sharded_frame_set *set, const void *frame)
{
    if (frame_set_begin(set, ks_thread_serial())) {
        bool inserted = ks_frame_set_insert(&set->shards[frame_set_shard_of((uintptr_t)frame)].set, frame);
        frame_set_leave_owned(set);
        return inserted;
    }
    ks_frame_set_shard *shard = frame_set_lock(set, (uintptr_t)frame);
    bool inserted = ks_frame_set_insert(&shard->set, frame);
    frame_set_unlock(shard);
    return inserted;
}

bool ks_sharded_frame_set_release(ks_sharded_frame_set *set, const void *frame)
{
    if (frame_set_begin(set, ks_thread_serial())) {
        bool released = ks_frame_set_release(&set->shards[frame_set_shard_of((uintptr_t)frame)].set, frame);
        frame_set_leave_owned(set);
        return released;
    }
    ks_frame_set_shard *shard = frame_set_lock(set, (uintptr_t)frame);
    bool released = ks_frame_set_release(&shard->set, frame);
    frame_set_unlock(shard);
    return released;
}

bool ks_sharded_frame_set_contains(ks_sharded_frame_set *set, const void *frame)
{
    if (frame_set_begin(set, ks_thread_serial())) {
        bool contained = ks_frame_set_contains(&set->shards[frame_set_shard_of((uintptr_t)frame)].set, frame);
        frame_set_leave_owned(set);
        return contained;
    }
    ks_frame_set_shard *shard = frame_set_lock(set, (uintptr_t)frame);
    bool contained = ks_frame_set_contains(&shard->set, frame);
    frame_set_unlock(shard);
    return contained;
}

/* Before a snapshot or check that takes every shard's lock in turn: another thread's bias is
 * revoked first (an owner takes no lock), and an unclaimed set is claimed, so that no thread can
 * start working without locks meanwhile; the owner may take the locks, which nobody else holds. */
static void frame_set_begin_locked(ks_sharded_frame_set *set)
{
    uint64_t thread = ks_thread_serial();
    uint64_t owner = atomic_load_explicit(&set->owner, memory_order_acquire);
    if (owner != thread && owner != FRAME_SET_SHARED)
        (void)frame_set_claim_or_share(set, thread);
}

void *ks_sharded_frame_set_next(const ks_sharded_frame_set *set, ks_sharded_frame_set_cursor *cursor)
{
    for (; set->shards != NULL && cursor->shard < KS_FRAME_SET_SHARDS; cursor->shard++, cursor->slot = 0) {
        if (set->shards[cursor->shard].set.count == 0)
            continue; /* a walk is not a check: an empty shard's slots need no visit */
        void *frame = ks_frame_set_next(&set->shards[cursor->shard].set, &cursor->slot);
        if (frame != NULL)
            return frame;
    }
    return NULL;
}

size_t ks_sharded_frame_set_count(ks_sharded_frame_set *set)
{
    frame_set_begin_locked(set);
    size_t count = 0;
    for (size_t index = 0; set->shards != NULL && index < KS_FRAME_SET_SHARDS; index++) {
        frame_set_lock_shard(&set->shards[index]);
        count += set->shards[index].set.count;
        frame_set_unlock(&set->shards[index]);
    }
    return count;
}

size_t ks_sharded_frame_set_table_bytes(ks_sharded_frame_set *set)
{
    frame_set_begin_locked(set);
    size_t table_bytes = 0;
    for (size_t index = 0; set->shards != NULL && index < KS_FRAME_SET_SHARDS; index++) {
        frame_set_lock_shard(&set->shards[index]);
        table_bytes += ks_frame_set_table_bytes(&set->shards[index].set);
        frame_set_unlock(&set->shards[index]);
    }
    return table_bytes;
}

uint64_t ks_sharded_frame_set_foreign_releases(ks_sharded_frame_set *set)
{
    frame_set_begin_locked(set);
    uint64_t foreign_releases = 0;
    for (size_t index = 0; set->shards != NULL && index < KS_FRAME_SET_SHARDS; index++) {
        frame_set_lock_shard(&set->shards[index]);
        foreign_releases += set->shards[index].set.foreign_releases;
        frame_set_unlock(&set->shards[index]);
    }
    return foreign_releases;
}

/* Shard lock held: the shard's table, and each of its frames in the shard its address picks. */
static bool frame_set_check_shard(const ks_frame_set_shard *shard, size_t index, size_t align_bytes,
                                  const char *owner, char *why, size_t why_bytes)
{
    if (!ks_frame_set_check(&shard->set, align_bytes, owner, why, why_bytes))
        return false;
    size_t cursor = 0;
    for (void *frame; (frame = ks_frame_set_next(&shard->set, &cursor)) != NULL;) {
        if (frame_set_shard_of((uintptr_t)frame) != index) {
            snprintf(why, why_bytes, "%s: live frame %p is in shard %zu, its address picks shard %zu", owner, frame,
                     index, frame_set_shard_of((uintptr_t)frame));
            return false;
        }
    }
    return true;
}

bool ks_sharded_frame_set_check(ks_sharded_frame_set *set, size_t align_bytes, const char *owner, char *why,
                                size_t why_bytes)
{
    if (set->shards == NULL) {
        snprintf(why, why_bytes, "%s: the live-frame set has no shards", owner);
        return false;
    }
    frame_set_begin_locked(set);
    /* Foreign releases first, summed: each shard would report only its own. */
    uint64_t foreign_releases = 0;
    uintptr_t first_foreign_release = 0;
    for (size_t index = 0; index < KS_FRAME_SET_SHARDS; index++) {
        ks_frame_set_shard *shard = &set->shards[index];
        frame_set_lock_shard(shard);
        if (shard->set.foreign_releases != 0 && foreign_releases == 0)
            first_foreign_release = shard->set.first_foreign_release;
        foreign_releases += shard->set.foreign_releases;
        frame_set_unlock(shard);
    }
    if (foreign_releases != 0) {
        snprintf(why, why_bytes, "%s: %llu Free call(s) of a frame not live in this instance, one of them %p", owner,
                 (unsigned long long)foreign_releases, (void *)first_foreign_release);
        return false;
    }
    for (size_t index = 0; index < KS_FRAME_SET_SHARDS; index++) {
        ks_frame_set_shard *shard = &set->shards[index];
        frame_set_lock_shard(shard);
        bool intact = frame_set_check_shard(shard, index, align_bytes, owner, why, why_bytes);
        frame_set_unlock(shard);
        if (!intact)
            return false;
    }
    return true;
}
