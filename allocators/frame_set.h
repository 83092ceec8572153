/*
 * frame_set.h -- internal: the set of live frames an allocator keeps beside its frames.
 *
 * Allocators over a heap they cannot drop per instance (glibc, tcmalloc, a shared jemalloc arena,
 * the lookaside list's process heap) must still release every frame still live at
 * DeleteAllocator, and should turn a Free of a frame that is not theirs into a counted no-op
 * instead of heap corruption. They keep the addresses of their live frames in this set. It is
 * not part of the plugin ABI (harness/ksalloc.h): only allocators/ includes it, by relative path.
 *
 * Two flavours, one table underneath:
 *  - ks_frame_set: not thread-safe; callers serialise every call on one set (the instance's own
 *    one-thread-at-a-time contract, or a lock of their own);
 *  - ks_sharded_frame_set: for KS_CAP_THREAD_SAFE instances, ks_frame_set tables in shards chosen
 *    by address, each behind its own spinlock, so that threads working on different frames
 *    rarely meet. While one thread alone has used a set, it skips the locks (the set is biased
 *    to it); the first call from a second thread revokes that for good, and from then on every
 *    call takes its shard's lock: one atomic exchange and one plain store.
 * Design, complexity and memory: frame_set.c.
 */
#ifndef KS_FRAME_SET_H
#define KS_FRAME_SET_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The table a new set starts with unless its owner has a reason for more; a power of two. */
#define KS_FRAME_SET_MIN_CAPACITY 16u

typedef struct ks_frame_set {
    uintptr_t *slots; /* 0 marks an empty slot: no frame lives at address 0 */
    size_t capacity;  /* a power of two; 0 only for a set never initialised or destroyed */
    size_t count;     /* frames in the set; invariant: count * 2 <= capacity */
    unsigned shift;   /* 64 - log2(capacity), for Fibonacci hashing */
    uint64_t foreign_releases;      /* ks_frame_set_release calls for a frame not in the set */
    uintptr_t first_foreign_release; /* the first such address */
} ks_frame_set;

/* An empty set with a table of initial_capacity slots (a power of two, at least 2; it holds
 * initial_capacity / 2 frames before it first grows). False when initial_capacity is not such a
 * power of two or the table cannot be allocated; the set is then empty with no table (an insert
 * would give it one) and ks_frame_set_destroy is still safe. */
bool ks_frame_set_init(ks_frame_set *set, size_t initial_capacity);

/* Frees the table. Safe on a zero-filled or already destroyed set. The frames are the caller's:
 * release them first (ks_frame_set_next). */
void ks_frame_set_destroy(ks_frame_set *set);

/* Grows the table now so that the next more_frames inserts cannot fail. For an owner that must
 * not take a frame from its heap unless it can track it. False, set unchanged, when it cannot. */
bool ks_frame_set_reserve(ks_frame_set *set, size_t more_frames);

/* Adds frame, which must be non-NULL and not in the set. False, set unchanged, when the table is
 * full and cannot grow (never after a successful ks_frame_set_reserve that covers it). */
bool ks_frame_set_insert(ks_frame_set *set, const void *frame);

/* Removes frame; false when it is not in the set (NULL never is). */
bool ks_frame_set_remove(ks_frame_set *set, const void *frame);

/* The owner's Free: removes frame, or, when it is not in the set, counts it as a foreign release
 * (a Free of a frame not live here, which the owner then ignores) and returns false.
 * ks_frame_set_check reports foreign releases. */
bool ks_frame_set_release(ks_frame_set *set, const void *frame);

/* True when frame is in the set (NULL never is). */
bool ks_frame_set_contains(const ks_frame_set *set, const void *frame);

/* Visits every frame, in no particular order: start with *cursor = 0 and call until it returns
 * NULL. The set must not change during the walk. */
void *ks_frame_set_next(const ks_frame_set *set, size_t *cursor);

/* Bytes the table takes (what a `tracking_bytes` or `reserved_bytes` counter adds). */
size_t ks_frame_set_table_bytes(const ks_frame_set *set);

/* No foreign release so far, and the table's invariants: every frame aligned to align_bytes (a
 * power of two), listed once and reachable from its home slot; the count true and within the
 * load bound. On the first broken one writes "<owner>: ..." into why and returns false.
 * Allocates nothing. */
bool ks_frame_set_check(const ks_frame_set *set, size_t align_bytes, const char *owner, char *why, size_t why_bytes);

/* ---- The thread-safe set ----------------------------------------------------------------------- */

/* Shards of a ks_sharded_frame_set: a power of two. More shards make two threads' frames meet in
 * one lock less often and cost 64 bytes each per instance, plus a table once a frame lands there. */
#ifndef KS_FRAME_SET_SHARDS
#define KS_FRAME_SET_SHARDS 16u
#endif

/* 1: a set starts biased to the first thread that uses it (frame_set.c); 0: always locked. */
#ifndef KS_FRAME_SET_BIASED
#define KS_FRAME_SET_BIASED 1
#endif

/* One cache line per shard, so that threads on different shards never share one. */
typedef struct ks_frame_set_shard {
    _Alignas(64) atomic_bool lock; /* a ks_spinlock (spinlock.h) */
    ks_frame_set set;              /* guarded by lock */
} ks_frame_set_shard;

typedef struct ks_sharded_frame_set {
    ks_frame_set_shard *shards; /* KS_FRAME_SET_SHARDS of them; each table made on its first insert */
    /* The thread the set is biased to (a serial number, see frame_set.c), or 0 before its first
     * call, or one of the two revoked states; the owner works without locks, flagging owner_busy. */
    _Atomic uint64_t owner;
    atomic_bool owner_busy;
} ks_sharded_frame_set;

/* Where a walk of a sharded set is. Start from {0, 0}. */
typedef struct ks_sharded_frame_set_cursor {
    size_t shard;
    size_t slot;
} ks_sharded_frame_set_cursor;

/* An empty set; no table is allocated until a frame lands in its shard. False when the shards
 * cannot be allocated; ks_sharded_frame_set_destroy is still safe then. */
bool ks_sharded_frame_set_init(ks_sharded_frame_set *set);

/* Frees the shards and tables. Safe on a zero-filled or already destroyed set. The frames are
 * the caller's: release them first (ks_sharded_frame_set_next). */
void ks_sharded_frame_set_destroy(ks_sharded_frame_set *set);

/* Thread-safe (as are release, contains and the snapshots below; the first such call from a
 * second thread revokes the set's bias, once, at the price of one membarrier system call). Adds
 * frame, which must be non-NULL and not in the set; false, set unchanged, when its shard's table
 * is full and cannot grow. */
bool ks_sharded_frame_set_insert(ks_sharded_frame_set *set, const void *frame);

/* Thread-safe. The owner's Free: removes frame, or counts a foreign release and returns false
 * when it is not in the set (see ks_frame_set_release). */
bool ks_sharded_frame_set_release(ks_sharded_frame_set *set, const void *frame);

/* Thread-safe. True when frame is in the set at the moment of the call. */
bool ks_sharded_frame_set_contains(ks_sharded_frame_set *set, const void *frame);

/* Visits every frame, in no particular order, until it returns NULL. Not thread-safe: nothing
 * may change the set during the walk (DeleteAllocator, a self_check). */
void *ks_sharded_frame_set_next(const ks_sharded_frame_set *set, ks_sharded_frame_set_cursor *cursor);

/* Thread-safe snapshots, each shard read under its lock (the total is exact when nothing runs
 * concurrently): frames in the set, bytes of its tables, foreign releases so far. */
size_t ks_sharded_frame_set_count(ks_sharded_frame_set *set);
size_t ks_sharded_frame_set_table_bytes(ks_sharded_frame_set *set);
uint64_t ks_sharded_frame_set_foreign_releases(ks_sharded_frame_set *set);

/* ks_frame_set_check for every shard (under its lock), and every frame in the shard its address
 * picks (else a release could not find it). On the first broken one writes "<owner>: ..." into
 * why and returns false. Allocates nothing. */
bool ks_sharded_frame_set_check(ks_sharded_frame_set *set, size_t align_bytes, const char *owner, char *why,
                                size_t why_bytes);

#endif /* KS_FRAME_SET_H */
